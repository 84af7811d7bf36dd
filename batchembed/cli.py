"""The ``batchembed`` command: parse arguments, call the library, map errors to exit codes.

Exit codes (``batchembed.exitcodes.ExitCode``): 0 success; 1 the job failed (config, input, auth, I/O,
server refuses); 2 usage error; 3 finished but some rows are in ``_failed.parquet``; 68 the server could not be
reached; 69 published but a sink is behind (``batchembed sync``); 75 batches still running
(``run --no-wait``); 130/143 stopped
by SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from batchembed import __version__
from batchembed.errors import BatchEmbedError, ConfigError, ServerUnreachable, UsageError, redact
from batchembed.exitcodes import ExitCode
from batchembed.serve import add_serve_arguments

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
    parser.add_argument(
        "--unset",
        dest="unsets",
        action="append",
        default=[],
        metavar="KEY",
        help="take a job setting back to its default, e.g. --unset input.id (repeatable)",
    )


#: What ``batchembed --help`` says first: what the tool is for, in one line.
SUMMARY = (
    "Embed (or rerank) millions of Parquet/CSV/JSON Lines rows with an API or a local model: rate-limited, "
    "resumable, refreshed daily at the cost of what changed."
)


def _readme() -> str:
    """Where the full guide is: the README next to this package when it is there (a source checkout)."""
    path = Path(__file__).resolve().parents[1] / "README.md"
    return str(path) if path.is_file() else "README.md in the batchembed source"


def _epilog() -> str:
    return f"""examples:
  batchembed init data/docs.parquet   # write jobs/docs.toml: text and id columns, the local model
  batchembed plan jobs/docs.toml      # rows, tokens, cost and ETA; sends nothing
  batchembed run jobs/docs.toml       # embed; stop any time, run the same command again to resume
  batchembed status jobs/docs.toml    # how far it got
  batchembed search jobs/docs.toml "read a CSV file"   # the nearest rows: do the vectors make sense?

exit codes: 0 done, 1 failed, 2 usage error, 3 done but some rows failed (_failed.parquet),
68 the server could not be reached (run again once it answers),
69 published but a [[sink]] is behind (batchembed sync),
75 batches still running at the provider (run --no-wait: run again later),
130/143 stopped by a signal (run again to resume)

Every job-file key, the providers, scaling out: {_readme()}"""


def _command(sub, name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does and shows how it is called."""
    label = "example" if len(examples) == 1 else "examples"
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"{label}:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="batchembed",
        description=SUMMARY,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchembed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    init = _command(
        sub,
        "init",
        "write a commented job file for your own Parquet, CSV or JSON Lines file (never overwrites one)",
        "batchembed init data/docs.parquet                # proposes text and id columns; the local model",
        "batchembed init data/ --text body --id doc_id --model text-embedding-3-small -o jobs/docs.toml",
    )
    init.add_argument(
        "input",
        help="the data: a file, a directory or a glob (Parquet, CSV, JSON Lines; CSV and JSON Lines also .gz...)",
    )
    init.add_argument("--text", metavar="COL", help="the column to embed, or a template: '{title}: {body}'")
    init.add_argument("--id", metavar="COL", help="the unique id column (default: one unique on a sample)")
    init.add_argument("--model", metavar="NAME", help="a model from `batchembed models` (default: the local one)")
    init.add_argument("-o", "--output", metavar="PATH", help="the job file to write (default: jobs/NAME.toml)")

    run = _command(
        sub,
        "run",
        "run, resume or refresh a job (a rerun buys only what changed in the inputs)",
        "batchembed run jobs/docs.toml",
        "batchembed run jobs/docs.toml --quiet --set model.dimensions=256 --set output.path=out/docs-256",
    )
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
        "--allow-removal",
        action="store_true",
        help="let a refresh remove more than output.max_removed of the output's rows (inputs really deleted)",
    )
    run.add_argument(
        "--rebuild-table",
        action="store_true",
        help="first rebuild the Delta table's log from the manifest (a damaged log, or others' changes to undo); "
        "the table's earlier versions are forgotten, no data file is deleted",
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

    status = _command(sub, "status", "how far a job has got", "batchembed status jobs/docs.toml --json")
    _job_arguments(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    cancel = _command(
        sub,
        "cancel",
        'cancel the running batches of a model.tier = "batch" job (they stay cancelled; run again to resubmit)',
        "batchembed cancel jobs/docs.toml",
    )
    _job_arguments(cancel)

    verify = _command(
        sub, "verify", "prove the output holds every input row exactly once", "batchembed verify jobs/docs.toml"
    )
    _job_arguments(verify)

    sync = _command(
        sub,
        "sync",
        "bring the job's [[sink]] tables (Postgres/pgvector, LanceDB) to the output's current version; embeds nothing",
        "batchembed sync jobs/docs.toml",
        "batchembed sync jobs/docs.toml --sink search.doc_vectors",
    )
    _job_arguments(sync)
    sync.add_argument("--sink", metavar="TABLE", help="only the sink with this table (default: every sink)")

    plan = _command(
        sub,
        "plan",
        "dry run: rows, unique texts, tokens, requests, cost and ETA; sends nothing",
        "batchembed plan jobs/docs.toml --price 0.02",
    )
    _job_arguments(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--price", type=float, metavar="USD_PER_1M", help="price per million tokens for the estimate")
    plan.add_argument("--allow-removal", action="store_true", help="plan the refresh `run --allow-removal` would make")
    plan.add_argument("--restart", action="store_true", help="plan `run --restart`: the whole job bought again")

    search = _command(
        sub,
        "search",
        "the rows of a job's output nearest to a text, to see that the vectors make sense (sends one request)",
        'batchembed search jobs/docs.toml "read a CSV file" -k 5',
        'batchembed search jobs/docs.toml "open a file" --where "module = \'os\' AND lines > 3" --json',
    )
    _job_arguments(search)
    search.add_argument("text", help="the text to search for: embedded by the job's model, as a query")
    search.add_argument("-k", type=int, default=10, metavar="N", help="how many rows (default 10)")
    search.add_argument(
        "--where",
        metavar="FILTER",
        help="only rows this SQL condition over the output's columns selects (the id and input.keep columns), "
        "e.g. \"module = 'os' AND lines > 3\": =, <>, <, >, AND, OR, NOT, IN (...), LIKE, BETWEEN, IS NULL",
    )
    search.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")

    models = _command(sub, "models", "list the built-in model presets", "batchembed models")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    serve = _command(
        sub,
        "serve",
        "serve the local model over an OpenAI/Fireworks-compatible HTTP API",
        "batchembed serve --port 8080   # then POST http://127.0.0.1:8080/v1/embeddings",
    )
    add_serve_arguments(serve)
    return parser


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
    except ServerUnreachable as exc:
        print(f"batchembed: error: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.SERVER_UNREACHABLE
    except BatchEmbedError as exc:
        print(f"batchembed: error: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as exc:  # disk full, permission denied, read-only file system...: one line, no traceback
        from batchembed.faults import describe_fault

        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return ExitCode.FAILED  # `batchembed status | head`: the reader left; nothing to tell it
        print(f"batchembed: error: {redact(describe_fault(exc, resumable=args.command == 'run'))}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.SIGINT


def console() -> int:
    """The ``batchembed`` command: ``main`` in a process without pandas (``without_pandas``), then what it
    built is frozen out of the cyclic collector's sight before the interpreter exits. Its collections at
    exit otherwise walk every object pyarrow, polars and the run left (0.2 s after a 100k-row run; 0.05 s
    frozen); objects are still released, files closed and atexit handlers run as before. Not in ``main``:
    a program calling it in-process keeps its pandas and its collector whole."""
    from batchembed.without_pandas import hide_pandas

    hide_pandas()
    code = main()
    gc.freeze()
    return code


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (a pipe into ``head``): then stdout is pointed at /dev/null, so the
    interpreter's own flush at exit does not fail again."""
    import os

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    except (OSError, ValueError):
        return False
    return False


def dispatch(args: argparse.Namespace, transport: Transport | None = None) -> int:
    """Run the chosen subcommand.

    Each command imports what it needs here, not at the top: ``batchembed --help``, ``init`` and ``models``
    stay fast (no pyarrow, aiohttp or onnxruntime), and a missing optional extra fails only the command
    that needs it."""
    if args.command == "serve":
        try:
            from batchembed.serve import server as serve
        except ImportError as exc:  # the local extra (onnxruntime, tokenizers) is not installed
            raise ConfigError(
                f"batchembed serve needs the local extra: pip install 'batchembed[local]' ({exc})"
            ) from None

        return serve.command(args)
    if args.command == "init":
        from batchembed.init.propose import init_command

        return init_command(args.input, args.text, args.id, args.model, args.output)
    if args.command == "models":
        from batchembed.job.catalog import models_command

        return models_command(args.json)
    if args.command == "run":
        from batchembed.run.allocators import settle_allocators

        settle_allocators()  # before pyarrow is imported or a thread allocates
    from batchembed.job.config import load_job

    job = load_job(args.job, args.overrides, args.unsets)
    if getattr(args, "allow_removal", False):  # run and plan: the removal guard lifted
        import dataclasses

        job = dataclasses.replace(job, output=dataclasses.replace(job.output, max_removed=1.0))
    if args.command == "run":
        from batchembed.run.engines import run_job

        if args.rebuild_table:
            from batchembed.output.shared_table import rebuild_table

            rebuild_table(job, lambda text: print(f"batchembed: {text}", file=sys.stderr, flush=True))
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
        from batchembed.run.batch.cancel import cancel

        return cancel(job, transport=transport)
    if args.command == "search":
        from batchembed.search import search_command

        return search_command(job, args.text, args.k, args.where, args.json, transport)
    if args.command == "sync":
        from batchembed.sinks.sync import sync_command

        return sync_command(job, args.sink)
    if args.command == "plan":
        from batchembed.plan.dry_run import plan

        price = args.price if args.price is not None else job.model.price_per_million_tokens
        return plan(job, as_json=args.json, price_per_million=price, restart=args.restart)
    if args.command == "status":
        from batchembed.audit.status import status

        return status(job, as_json=args.json)
    from batchembed.audit.verify import verify

    return verify(job)


if __name__ == "__main__":
    sys.exit(console())
