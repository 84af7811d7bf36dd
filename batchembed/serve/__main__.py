"""``python -m batchembed.serve``: the server on its own, without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from batchembed.errors import BatchEmbedError
from batchembed.exitcodes import ExitCode
from batchembed.serve import add_serve_arguments, server

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m batchembed.serve", description=server.__doc__.splitlines()[0])
    add_serve_arguments(parser)
    try:
        sys.exit(server.command(parser.parse_args()))
    except BatchEmbedError as exc:
        print(f"batchembed serve: error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.FAILED)
