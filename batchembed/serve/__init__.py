"""``batchembed serve``: the local model behind an OpenAI / Fireworks-compatible HTTP API (``server``).

This package's face holds only the command's options, so the CLI can describe ``serve`` without
importing the server (aiohttp's web side, onnxruntime); ``python -m batchembed.serve`` runs it.
"""

from __future__ import annotations

import argparse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``batchembed serve``'s options (here, apart from the server, so that ``batchembed --help`` never imports it)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--model", metavar="PATH", help="ONNX sentence-transformers directory (default: MiniLM)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all CPUs)")
    parser.add_argument("--max-batch", type=int, default=2048, help="max inputs per request (default 2048)")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20, help="max request body in bytes (default 8 MiB)")
