"""The fake provider as a standalone process on 127.0.0.1, for benchmarks (which share the machine with it)
and for trying batchembed without an API key, the batch tier included:

    python -m batchembed.testing.standalone --port 0 --dim 1024 [--rpm N --tpm N] [--pool 4096] [--style S]
    python -m batchembed.testing.standalone --batch-api openai --dim 384 --detach --pid-file fake.pid

The first line on stdout is ``listening on http://127.0.0.1:PORT`` (flushed), so a parent process can
start it with ``--port 0`` and read the port back. It serves the same handler as the tests' fake in
pool mode (vectors picked from ``--pool`` precomputed ones by the CRC32 of each text, answers spliced
from precomputed fragments) and keeps no requests, only the counters of ``GET /stats``
(``?timeline=1`` adds per-second buckets ``[second, ok, throttled, tokens, adaptive limit]``);
``POST /stats/reset`` zeroes them and the rate windows.

With ``--batch-api SHAPE`` (``openai``, ``mistral``, ``voyage``) it also serves that provider's Batch API
(``batchapi.FakeBatchProvider``: files, batches, the list; a batch moves one state per look at it, so a
job with ``model.batch_poll_seconds = 1`` finishes in seconds). ``--detach`` starts it in the background
and returns once it listens, printing only its URL (``URL=$(python -m ... --detach)``); ``--pid-file``
says where to write its process id, to stop it with ``kill``.

With ``--rpm``/``--tpm`` it enforces requests and tokens per sliding 60 s window (429 with an integer
``Retry-After``), announced in ``--style``: ``openai`` (``x-ratelimit-*``), ``ietf``,
``ietf-structured``, ``x-ratelimit``, ``none``, or ``fireworks-adaptive``: an adaptive limit instead
(``--adaptive-*``: start, cap, doubling period, measuring window).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys

from aiohttp import web

from batchembed.testing.batchapi import FakeBatchProvider
from batchembed.testing.fakeserver import FakeProvider
from batchembed.testing.loopback import make_app

STYLES = ["openai", "ietf", "ietf-structured", "x-ratelimit", "none", "fireworks-adaptive"]


def provider_from(args: argparse.Namespace) -> FakeProvider:
    """The fake provider the arguments describe: pool mode, no records kept, the limits asked for."""
    if args.batch_api:
        provider: FakeProvider = FakeBatchProvider(dim=args.dim, shape=args.batch_api)
    else:
        provider = FakeProvider(dim=args.dim)
    provider.pool = args.pool
    provider.pool_seed = args.seed
    provider.keep_records = False
    provider.max_inputs = 2048
    if args.style == "fireworks-adaptive":
        provider.adaptive_limit(args.adaptive_start, args.adaptive_cap, args.adaptive_period, args.adaptive_window)
    elif args.rpm or args.tpm:
        provider.rate_limit(args.rpm, args.tpm, style=args.style)
    return provider


async def serve(args: argparse.Namespace) -> None:
    """Serve until cancelled, printing the listening line first."""
    runner = web.AppRunner(make_app(provider_from(args)), access_log=None, handle_signals=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    if args.silent_after_ready:  # a --detach child: its parent has read the line and gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def build_parser() -> argparse.ArgumentParser:
    """The launcher's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=4096, help="distinct precomputed vectors")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute (sliding 60 s window)")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute (sliding 60 s window)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default="openai", choices=STYLES, help="how limits are announced")
    parser.add_argument("--adaptive-start", type=int, default=300_000, help="adaptive limit at start, tokens/min")
    parser.add_argument("--adaptive-cap", type=int, default=2_400_000, help="adaptive limit ceiling, tokens/min")
    parser.add_argument("--adaptive-period", type=float, default=30.0, help="seconds of >= 70%% use per doubling")
    parser.add_argument("--adaptive-window", type=float, default=10.0, help="seconds the use is measured over")
    parser.add_argument(
        "--batch-api", choices=["openai", "mistral", "voyage"], help="also serve that provider's Batch API"
    )
    parser.add_argument(
        "--detach", action="store_true", help="run in the background; print only the URL once it listens"
    )
    parser.add_argument("--pid-file", metavar="PATH", help="with --detach: write the server's process id here")
    parser.add_argument("--silent-after-ready", action="store_true", help=argparse.SUPPRESS)
    return parser


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt X`` or ``--opt=X``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def detach(argv: list[str], pid_file: str | None) -> int:
    """Start the server as a background process; print its URL once it listens (and write its pid)."""
    args = [a for a in argv if a != "--detach"]
    child = subprocess.Popen(
        [sys.executable, "-m", "batchembed.testing.standalone", *args, "--silent-after-ready"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # not stopped by the terminal's Ctrl-C meant for the shell
    )
    line = child.stdout.readline() if child.stdout is not None else ""
    if not line.startswith("listening on "):
        child.kill()
        print(f"the fake server did not start: {line.strip() or 'no output'}", file=sys.stderr)
        return 1
    if pid_file:
        with open(pid_file, "w", encoding="utf-8") as fh:
            fh.write(f"{child.pid}\n")
    print(line.split()[-1], flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the standalone fake until interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.detach:
        return detach(_without(argv, "--pid-file"), args.pid_file)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
