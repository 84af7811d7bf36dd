"""The ``batchembed`` command: parse arguments, call the library, map errors to exit codes.

Exit codes (``batchembed.exitcodes.ExitCode``): 0 success; 1 the job failed (config, input, auth, I/O,
server refuses); 2 usage error; 3 finished but some rows are in ``_failed.parquet``; 75 batches still running
(``run --no-wait``); 130/143 stopped
by SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from batchembed import __version__
from batchembed.errors import BatchEmbedError, ConfigError, UsageError, redact
from batchembed.exitcodes import ExitCode

if TYPE_CHECKING:  # aiohttp is imported only by commands that send requests
    from batchembed.providers.transport import Transport


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (TOML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job setting, e.g. --set model.dimensions=256 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="batchembed", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"batchembed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an embedding job")
    _job_arguments(run)
    run.add_argument("--quiet", "-q", action="store_true", help="plain periodic log lines instead of a progress bar")
    run.add_argument("--restart", action="store_true", help="discard existing output and start over")
    run.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        help="do not retry rows in _failed.parquet",
    )
    run.add_argument(
        "--accept-model-change",
        action="store_true",
        help="resume even though the server's model changed since the committed rows (the canary check)",
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only part I of N (I from 0) of the job, e.g. from a Slurm array or Kubernetes indexed job; "
        "paced to 1/N of the limits (engine.shard_pacing=full to override)",
    )
    run.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help='model.tier = "batch": submit what is not submitted, collect what is finished, then exit '
        "(exit code 75 while batches are still running; run again later)",
    )
    run.add_argument("--engine", choices=["local", "ray"], help="where to run (default: [engine] kind, else local)")
    run.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: [engine] workers)")

    status = sub.add_parser("status", help="how far a job has got")
    _job_arguments(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    cancel = sub.add_parser("cancel", help='cancel the running batches of a model.tier = "batch" job')
    _job_arguments(cancel)

    verify = sub.add_parser("verify", help="prove the output holds every input row exactly once")
    _job_arguments(verify)

    plan = sub.add_parser("plan", help="dry run: rows, unique texts, tokens, requests, cost and ETA; sends nothing")
    _job_arguments(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--price", type=float, metavar="USD_PER_1M", help="price per million tokens for the estimate")

    models = sub.add_parser("models", help="list the built-in model presets")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    serve = sub.add_parser("serve", help="serve the local model over an OpenAI/Fireworks-compatible HTTP API")
    add_serve_arguments(serve)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``batchembed serve``'s options (here, so that other commands never import the server)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--model", metavar="PATH", help="ONNX sentence-transformers directory (default: MiniLM)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all CPUs)")
    parser.add_argument("--max-batch", type=int, default=2048, help="max inputs per request (default 2048)")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20, help="max request body in bytes (default 8 MiB)")


def main(argv: list[str] | None = None, *, transport: Transport | None = None) -> int:
    """Entry point of the console script; returns the exit code. ``transport`` (tests: the fake provider
    in-process) carries a run's HTTP requests instead of the network."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args, transport)
    except UsageError as exc:
        print(f"batchembed: usage error: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.USAGE
    except BatchEmbedError as exc:
        print(f"batchembed: error: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as exc:  # disk full, permission denied, read-only file system...: one line, no traceback
        from batchembed.faults import describe_fault

        print(f"batchembed: error: {redact(describe_fault(exc))}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.SIGINT


def dispatch(args: argparse.Namespace, transport: Transport | None = None) -> int:
    """Run the chosen subcommand."""
    if args.command == "serve":
        try:
            from batchembed import serve
        except ImportError as exc:  # the local extra (onnxruntime, tokenizers) is not installed
            raise ConfigError(
                f"batchembed serve needs the local extra: pip install 'batchembed[local]' ({exc})"
            ) from None

        return serve.command(args)
    if args.command == "models":
        from batchembed.catalog import models_command

        return models_command(args.json)
    from batchembed.config import load_job

    job = load_job(args.job, args.overrides)
    if args.command == "run":
        from batchembed.engines import run_job

        return run_job(
            job,
            quiet=args.quiet,
            restart=args.restart,
            retry_failed=args.retry_failed,
            accept_model_change=args.accept_model_change,
            engine=args.engine,
            workers=args.workers,
            shard=args.shard,
            transport=transport,
            wait=args.wait,
        )
    if args.command == "cancel":
        from batchembed.batch.cancel import cancel

        return cancel(job, transport=transport)
    if args.command == "plan":
        from batchembed.plan import plan

        price = args.price if args.price is not None else job.model.price_per_million_tokens
        return plan(job, as_json=args.json, price_per_million=price)
    from batchembed import audit

    if args.command == "status":
        return audit.status(job, as_json=args.json)
    return audit.verify(job)


if __name__ == "__main__":
    sys.exit(main())
