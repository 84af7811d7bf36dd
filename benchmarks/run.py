"""Benchmark batchembed against the hand-written openai-SDK baseline on a local fast server.

    python -m benchmarks.run --rows 20000 100000 [--dim 1024] [--rate-limited-minutes 2] [--profile]
    python -m benchmarks.run --rows 100000 --concurrency 8 16 32 64 auto --rounds 2 --tools transport decode batchembed

For each row count, on the same cached input (``benchmarks/.data/texts-<rows>.parquet``) and the
same server process (``benchmarks.server``), run as child processes:

* ``baseline`` (``benchmarks.baseline``: AsyncOpenAI + gather + Semaphore(32), one Parquet file),
  with ``encoding_format`` float and base64;
* ``batchembed run JOB --quiet --restart`` with ``model.encoding`` float and base64;
* the two ceiling clients of ``benchmarks.ceiling`` with the same batches and concurrency as
  batchembed: ``transport`` (reads the answers' bytes, nothing else: the transport's limit on this
  machine) and ``decode`` (also decodes every vector into one numpy matrix, writes nothing).
  batchembed's rows/s is reported as a share of theirs.

With several ``--concurrency`` values (``auto``: batchembed's default, learned while sending; the
ceiling clients have no such mode and skip it) and ``--rounds``, the clients alternate: for each round,
each concurrency, each client in turn, so a change in the shared machine's load falls on all of them
alike. The 1-minute load average is recorded beside every run.

Each child is measured from outside: wall time from spawn to exit (interpreter start-up, reading,
embedding and writing included), CPU seconds (user + system, from ``os.wait4``), and peak RSS (the
kernel's ``VmHWM`` high-water mark, polled every 20 ms: ``benchmarks.common.MeasuredChild``). The server's
own CPU time during each run is reported too: both share the machine's cores. Every output is
checked (row count, ids, and 256 sampled vectors against what the server must have sent).

``--rate-limited-minutes M`` then runs batchembed against a server enforcing ``--rl-tpm`` /
``--rl-rpm`` over a sliding 60 s window, with batchembed configured with the same limits, on
enough rows to last about M minutes at the limit, and reports the tokens/min the server accepted
over the steady window (after the first 60 s) as a share of the limit, and the share of 429s.

``--profile`` (alone) runs batchembed once under pyinstrument and writes ``benchmarks/profile.txt``
(call tree) and ``benchmarks/profile-flat.txt`` (functions by own time).

Results: a table on stdout and ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import data
from benchmarks.common import (
    HERE,
    PY,
    ROOT,
    SERVER_POOL,
    WORK,
    Measured,
    Server,
    batchembed_command,
    run_measured,
    unlimited,
    write_job,
)
from benchmarks.server import expected_vectors, make_pool

# ------------------------------------------------------------------------------------ checking


def check_output(files: list[Path], input_path: Path, rows: int, pool: np.ndarray, sample: int = 256) -> str:
    """ "ok", or what is wrong: row count, ids, and sampled vectors against the server's answers."""
    if not files:
        return "no output files"
    table = pa.concat_tables([pq.read_table(f, columns=["id", "embedding"]) for f in sorted(files)])
    if table.num_rows != rows:
        return f"{table.num_rows} rows written, expected {rows}"
    ids = table.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(rows)):
        return "ids are not exactly 0..rows-1 once each"
    src = pq.read_table(input_path, columns=["text"]).column("text")
    rng = np.random.default_rng(rows)
    pick = np.sort(rng.choice(rows, size=min(sample, rows), replace=False))
    at = order[pick]  # output positions of ids ``pick``
    emb = table.column("embedding").take(pa.array(at)).combine_chunks()
    got = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(pick), -1)
    want = expected_vectors(src.take(pa.array(pick)).to_pylist(), pool)
    if got.shape != want.shape or not np.array_equal(got, want):
        return "sampled vectors differ from what the server sent"
    return "ok"


# ------------------------------------------------------------------------------------ comparison

#: The clients of the side-by-side runs, in the order they run.
TOOLS = ("transport", "decode", "baseline", "batchembed")


@dataclass
class Result:
    rows: int
    tool: str
    encoding: str
    wall_seconds: float
    rows_per_second: float
    cpu_seconds: float
    cpu_s_per_1k_rows: float
    peak_rss_mb: float
    server_cpu_seconds: float
    server_requests: int
    check: str
    returncode: int
    measured_rows: int
    note: str = ""
    extra: dict = field(default_factory=dict)
    concurrency: str = ""  # as asked ("auto": batchembed's default); what auto used is in extra["concurrency"]
    load: float = 0.0  # the machine's 1-minute load average when the run started
    round: int = 0


def run_baseline(srv: Server, rows: int, encoding: str, pool: np.ndarray, cap: int | None) -> Result:
    n = min(rows, cap) if cap else rows
    input_path = data.dataset(n)
    out = WORK / "out" / f"baseline-{encoding}-{n}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    srv.reset()
    cpu0 = srv.cpu()
    cmd = [PY, "-m", "benchmarks.baseline", "--input", str(input_path), "--base-url", srv.url]
    cmd += ["--encoding", encoding, "--out", str(out)]
    m = run_measured(cmd, WORK / "logs" / f"baseline-{encoding}-{n}.log", timeout=120 + n * 0.02)
    server_cpu = srv.cpu() - cpu0
    st = srv.stats()
    check = check_output([out], input_path, n, pool) if m.returncode == 0 else f"exit {m.returncode}: {m.log[-300:]}"
    out.unlink(missing_ok=True)
    extra = {}
    for line in m.log.splitlines():
        if line.startswith("{"):
            extra = json.loads(line)
    note = f"measured on the first {n:,} rows (--baseline-float-max-rows)" if n != rows else ""
    return _result(rows, n, "baseline", encoding, m, server_cpu, st, check, note, extra)


def run_batchembed(
    srv: Server,
    rows: int,
    encoding: str,
    pool: np.ndarray,
    entry: list[str],
    concurrency: int | str,
    env: dict[str, str] | None = None,
) -> Result:
    """One measured ``batchembed run`` of ``rows`` rows (``env``: the child's environment, default this one;
    ``concurrency``: a number, or "auto")."""
    input_path = data.dataset(rows)
    out = WORK / "out" / f"batchembed-{encoding}-{rows}"
    job = write_job(
        WORK / "jobs" / f"batchembed-{encoding}-{rows}.toml",
        input_path=input_path,
        url=srv.url,
        encoding=encoding,
        out=out,
        limits=unlimited(concurrency),
    )
    srv.reset()
    cpu0 = srv.cpu()
    m = run_measured(
        [*entry, "run", str(job), "--quiet", "--restart"],
        WORK / "logs" / f"batchembed-{encoding}-{rows}.log",
        timeout=120 + rows * 0.02,
        env=env,
    )
    server_cpu = srv.cpu() - cpu0
    st = srv.stats()
    report = {}
    if (out / "_report.json").exists():
        report = json.loads((out / "_report.json").read_text())
    if m.returncode == 0:
        check = check_output(sorted(out.glob("part-*.parquet")), input_path, rows, pool)
    else:
        check = f"exit {m.returncode}: {m.log[-300:]}"
    shutil.rmtree(out, ignore_errors=True)
    extra = {k: report.get(k) for k in ("elapsed_seconds", "rows_per_second", "requests", "retries", "latency_seconds")}
    extra["concurrency"] = (report.get("limits") or {}).get("concurrency")
    return _result(rows, rows, "batchembed", encoding, m, server_cpu, st, check, "", extra)


def run_ceiling(srv: Server, rows: int, encoding: str, mode: str, concurrency: int | str) -> Result:
    """One measured ``benchmarks.ceiling`` client (``mode`` transport or decode) on ``rows`` rows."""
    input_path = data.dataset(rows)
    srv.reset()
    cpu0 = srv.cpu()
    cmd = [PY, "-m", "benchmarks.ceiling", "--mode", mode, "--input", str(input_path), "--base-url", srv.url]
    cmd += ["--encoding", encoding, "--concurrency", str(concurrency)]
    m = run_measured(cmd, WORK / "logs" / f"{mode}-{encoding}-{rows}.log", timeout=120 + rows * 0.02)
    server_cpu = srv.cpu() - cpu0
    st = srv.stats()
    extra = {}
    for line in m.log.splitlines():
        if line.startswith("{"):
            extra = json.loads(line)
    if m.returncode != 0:
        check = f"exit {m.returncode}: {m.log[-300:]}"
    elif st.get("inputs") != rows or (mode == "decode" and extra.get("matrix", [0])[0] != rows):
        check = f"server answered {st.get('inputs')} inputs, expected {rows}"
    else:
        check = "ok"  # writes nothing: the server's count is what can be checked
    return _result(rows, rows, mode, encoding, m, server_cpu, st, check, "", extra)


def _result(rows, n, tool, encoding, m: Measured, server_cpu, st, check, note, extra) -> Result:
    return Result(
        rows=rows,
        tool=tool,
        encoding=encoding,
        wall_seconds=round(m.wall, 2),
        rows_per_second=round(n / m.wall, 1),
        cpu_seconds=round(m.cpu, 2),
        cpu_s_per_1k_rows=round(m.cpu / n * 1000, 3),
        peak_rss_mb=round(m.peak_rss_mb, 1),
        server_cpu_seconds=round(server_cpu, 2),
        server_requests=st.get("requests", 0),
        check=check,
        returncode=m.returncode,
        measured_rows=n,
        note=note,
        extra=extra,
    )


def print_table(results: list[Result]) -> tuple[list[dict], list[dict]]:
    """Print the runs, batchembed's share of the ceiling clients' rows/s and its ratios to the
    baseline; return (ratios to the baseline, shares of the ceilings)."""
    head = (
        f"{'rows':>9} {'tool':<10} {'enc':<6} {'conc':>5} {'load':>5} {'wall s':>8} {'rows/s':>9} {'CPU s':>7} "
        f"{'CPU s/1k':>9} {'peak RSS MB':>11} {'srv CPU s':>9}  check"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        mark = "*" if r.note else " "
        print(
            f"{r.rows:>9,} {r.tool:<10} {r.encoding:<6} {r.concurrency:>5} {r.load:>5.1f} {r.wall_seconds:>8.2f} "
            f"{r.rows_per_second:>8,.0f}{mark} {r.cpu_seconds:>7.2f} {r.cpu_s_per_1k_rows:>9.3f} "
            f"{r.peak_rss_mb:>11,.0f} {r.server_cpu_seconds:>9.2f}  {r.check}{_used(r)}"
        )
    if any(r.note for r in results):
        print("* " + next(r.note for r in results if r.note) + "; its RSS is for that smaller run")
    ceilings = []
    print("\nbatchembed / the ceiling clients (benchmarks.ceiling) of the same round and concurrency:")
    for r in results:
        if r.tool != "batchembed":
            continue
        same = [x for x in results if (x.rows, x.encoding, x.round) == (r.rows, r.encoding, r.round)]
        limit = {x.tool: x for x in same if x.concurrency == r.concurrency}
        if r.concurrency == "auto":  # no ceiling client learns its concurrency: the best of the round's fixed ones
            for tool in ("transport", "decode"):
                runs = [x for x in same if x.tool == tool]
                if runs:
                    limit[tool] = max(runs, key=lambda x: x.rows_per_second)
        if "transport" not in limit and "decode" not in limit:
            continue
        row = {"rows": r.rows, "encoding": r.encoding, "concurrency": r.concurrency, "round": r.round}
        for tool in ("transport", "decode"):
            if tool in limit:
                row[f"pct_of_{tool}"] = round(r.rows_per_second / limit[tool].rows_per_second * 100, 1)
        ceilings.append(row)
        print(
            f"  {r.rows:>9,} {r.encoding:<6} conc {r.concurrency:>4} round {r.round}: "
            + ", ".join(
                f"{row[f'pct_of_{tool}']:.1f}% of the {name}"
                for tool, name in (("transport", "transport limit"), ("decode", "minimal decoding client"))
                if f"pct_of_{tool}" in row
            )
        )
    ratios = []
    print("\nbatchembed / baseline:")
    for r in results:
        if r.tool != "batchembed":
            continue
        b = next((x for x in results if x.tool == "baseline" and x.rows == r.rows and x.encoding == r.encoding), None)
        if b is None:
            continue
        ratio = {
            "rows": r.rows,
            "encoding": r.encoding,
            "rows_per_second": round(r.rows_per_second / b.rows_per_second, 2),
            "cpu_per_row": round(r.cpu_s_per_1k_rows / b.cpu_s_per_1k_rows, 3),
            # a capped baseline ran on fewer rows: its RSS says nothing about this row count
            "peak_rss": None if b.note else round(r.peak_rss_mb / b.peak_rss_mb, 2),
        }
        ratios.append(ratio)
        print(
            f"  {r.rows:>9,} {r.encoding:<6}  rows/s x{ratio['rows_per_second']:<6}  "
            f"CPU/row x{ratio['cpu_per_row']:<6}  peak RSS "
            + (f"x{ratio['peak_rss']}" if ratio["peak_rss"] is not None else "n/a (baseline capped)")
        )
    return ratios, ceilings


def _used(r: Result) -> str:
    """What an "auto" batchembed run settled on, from its report."""
    conc = (r.extra or {}).get("concurrency") or {}
    if r.tool != "batchembed" or conc.get("mode") != "auto":
        return ""
    return f"  (auto: ended at {conc.get('final')}, highest {conc.get('highest')})"


# ------------------------------------------------------------------------------------ rate-limited


def rate_limited(args, entry: list[str]) -> dict:
    tpm, rpm, minutes = args.rl_tpm, args.rl_rpm, args.rate_limited_minutes
    probe = data.dataset(min(args.rows))
    per_row = float(data.server_tokens(probe).mean())
    # A sliding window lets the first minute's budget through at once; after that the limit paces.
    rows = math.ceil((minutes + 1) * tpm / per_row)
    input_path = data.dataset(rows)
    total_tokens = int(data.server_tokens(input_path).sum())
    out = WORK / "out" / "rate-limited"
    limits = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "concurrency": args.concurrency[0],
        "batch_inputs": 256,
    }
    print(
        f"\nrate-limited run: {rows:,} rows (~{total_tokens:,} server tokens), server and batchembed at "
        f"{tpm:,} tokens/min and {rpm:,} requests/min (sliding 60 s window), aiming at ~{minutes} min",
        flush=True,
    )
    with Server(args.dim, rpm=rpm, tpm=tpm) as srv:
        job = write_job(
            WORK / "jobs" / "rate-limited.toml",
            input_path=input_path,
            url=srv.url,
            encoding="base64",
            out=out,
            limits=limits,
        )
        m = run_measured(
            [*entry, "run", str(job), "--quiet", "--restart"],
            WORK / "logs" / "rate-limited.log",
            timeout=minutes * 60 * 2.5 + 90,
        )
        st = srv.stats(timeline=True)
    report = json.loads((out / "_report.json").read_text()) if (out / "_report.json").exists() else {}
    shutil.rmtree(out, ignore_errors=True)
    res = summarise_rate_limited(st, tpm, rpm)
    res.update(
        rows=rows,
        server_tokens_in_input=total_tokens,
        batchembed_returncode=m.returncode,
        batchembed_interrupted=m.interrupted,
        batchembed_wall_seconds=round(m.wall, 1),
        batchembed_cpu_seconds=round(m.cpu, 2),
        batchembed_peak_rss_mb=round(m.peak_rss_mb, 1),
        batchembed_report={k: report.get(k) for k in ("rows", "tokens", "requests", "retries", "elapsed_seconds")},
    )
    print(
        f"  done in {m.wall:.0f}s (exit {m.returncode}{', interrupted at the time limit' if m.interrupted else ''}); "
        f"server answered {res['requests']} requests, {res['throttled']} of them 429 "
        f"({res['throttled_share'] * 100:.1f}%)"
    )
    print(
        f"  steady window (t={res['steady_from_s']}..{res['duration_s']:.0f}s): "
        f"{res['steady_tokens_per_min']:,.0f} tokens/min = {res['steady_pct_of_tpm']:.1f}% of the limit; "
        f"trailing-60s window kept {res['steady_window_fill_pct']:.1f}% full on average"
    )
    print(f"  tokens accepted per minute: {', '.join(f'{x:,}' for x in res['tokens_per_minute'])}")
    print(f"  batchembed retries: {report.get('retries')}")
    return res


def summarise_rate_limited(st: dict, tpm: int, rpm: int) -> dict:
    timeline = st.get("timeline") or []
    duration = (st["last_ts"] - st["first_ts"]) if st.get("first_ts") else 0.0
    secs = int(duration) + 1
    tok = np.zeros(secs + 1, dtype=np.int64)
    for s, _ok, _thr, t, *_ in timeline:
        tok[s] += t
    steady_from = 60 if duration > 90 else 0
    steady = tok[steady_from:secs]
    span = max(duration - steady_from, 1e-9)
    # Fill of the provider's trailing 60 s window at each second of the steady period.
    csum = np.concatenate([[0], np.cumsum(tok)])
    fills = [(csum[s + 1] - csum[max(0, s - 59)]) / tpm for s in range(max(steady_from, 59), secs)]
    per_min = [int(tok[i : i + 60].sum()) for i in range(0, secs, 60)]
    per10 = np.zeros((secs // 10 + 1, 3), dtype=np.int64)
    for s, ok, thr, t, *_ in timeline:
        per10[s // 10] += (ok, thr, t)
    return {
        "tpm": tpm,
        "rpm": rpm,
        "requests": st["requests"],
        "ok": st["ok"],
        "throttled": st["throttled"],
        "throttled_by": st.get("throttled_by"),
        "throttled_share": round(st["throttled"] / st["requests"], 4) if st["requests"] else 0.0,
        "tokens_accepted": st["tokens_accepted"],
        "duration_s": round(duration, 1),
        "overall_tokens_per_min": round(st["tokens_accepted"] / max(duration, 1e-9) * 60),
        "steady_from_s": steady_from,
        "steady_tokens_per_min": round(float(steady.sum()) / span * 60),
        "steady_pct_of_tpm": round(float(steady.sum()) / span * 60 / tpm * 100, 1),
        "steady_window_fill_pct": round(float(np.mean(fills)) * 100, 1) if fills else 0.0,
        "tokens_per_minute": per_min,
        "per_10s_ok_429_tokens": per10.tolist(),
    }


# ------------------------------------------------------------------------------------ profile


def profile(args, entry: list[str]) -> None:
    rows = args.profile_rows or min(max(args.rows), 100_000)
    input_path = data.dataset(rows)
    out = WORK / "out" / "profile"
    session = WORK / "profile.pyisession"
    with Server(args.dim) as srv:
        job = write_job(
            WORK / "jobs" / "profile.toml",
            input_path=input_path,
            url=srv.url,
            encoding=args.profile_encoding,
            out=out,
            limits=unlimited(args.concurrency[0]),
        )
        cmd = [PY, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session), "-m", "batchembed.cli"]
        cmd += ["run", str(job), "--quiet", "--restart"]
        print(f"profiling batchembed ({args.profile_encoding}, {rows:,} rows) under pyinstrument ...", flush=True)
        m = run_measured(cmd, WORK / "logs" / "profile.log", timeout=600 + rows * 0.02)
    shutil.rmtree(out, ignore_errors=True)
    if m.returncode != 0:
        print(m.log)
        raise SystemExit(f"profiled run failed with exit code {m.returncode}")
    load = [PY, "-m", "pyinstrument", "--load", str(session), "-r", "text", "--no-color", "--unicode"]
    subprocess.run([*load, "-o", str(HERE / "profile.txt")], check=True, cwd=ROOT)
    subprocess.run(
        [*load, "-p", "flat=true", "-p", "processor_options.filter_threshold=0", "-o", str(HERE / "profile-flat.txt")],
        check=True,
        cwd=ROOT,
    )
    print(f"wall {m.wall:.1f}s (with profiler); wrote {HERE / 'profile.txt'} and {HERE / 'profile-flat.txt'}")
    print("top of the flat profile (own time):")
    lines = [ln for ln in (HERE / "profile-flat.txt").read_text().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.strip()[:1].isdigit()), 0)
    for ln in lines[start : start + 12]:
        print("  " + ln)


# ------------------------------------------------------------------------------------ main


def _concurrency(text: str) -> int | str:
    """A --concurrency value: a positive number, or "auto"."""
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("concurrency must be at least 1")
    return value


def _schedule(args) -> list[tuple[int, str, int, int | str, str]]:
    """(rows, encoding, round, concurrency, client) of every side-by-side run, in the order they run: for
    each row count and encoding, round after round, each concurrency with every client in turn. The
    openai-SDK baseline (its own Semaphore(32)) runs once per row count and encoding; the ceiling clients
    have no "auto"."""
    runs = []
    for n in args.rows:
        for enc in args.encodings:
            for round_ in range(args.rounds):
                for i, conc in enumerate(args.concurrency):
                    for tool in args.tools:
                        if tool == "baseline" and (round_ or i):
                            continue
                        if tool in ("transport", "decode") and conc == "auto":
                            continue
                        runs.append((n, enc, round_, conc, tool))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        nargs="+",
        default=[16],
        help='requests in flight, for every client ("auto": batchembed learns it; the ceiling clients skip it)',
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the alternating side-by-side runs")
    parser.add_argument(
        "--encodings", nargs="+", choices=["float", "base64"], default=["float", "base64"], help="what to compare"
    )
    parser.add_argument(
        "--baseline-float-max-rows",
        type=int,
        default=20_000,
        help="run the float baseline on at most this many rows; larger row counts reuse that measurement "
        "(the SDK builds every float as a Python object at ~3-5 µs each and keeps them all: ~8 min and "
        "~5 GB per 100k rows at 1024 dims on 2 cores)",
    )
    parser.add_argument(
        "--rate-limited-minutes",
        type=float,
        default=2.0,
        help="then run a rate-limited job sized to last about this long at the limit (0: skip)",
    )
    parser.add_argument("--rl-tpm", type=int, default=600_000, help="tokens/min of the rate-limited run")
    parser.add_argument("--rl-rpm", type=int, default=600, help="requests/min of the rate-limited run")
    parser.add_argument("--profile", action="store_true", help="only profile one batchembed run")
    parser.add_argument("--profile-rows", type=int, default=None, help="default: min(max(--rows), 100000)")
    parser.add_argument("--profile-encoding", choices=["float", "base64"], default="float")
    parser.add_argument("--skip-compare", action="store_true", help="skip the side-by-side runs")
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=TOOLS,
        default=list(TOOLS),
        help="which clients the side-by-side runs measure (default: all)",
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)

    entry, entry_note = batchembed_command()
    print(f"batchembed via {entry_note}; {psutil.cpu_count()} CPUs; dim {args.dim}", flush=True)
    if args.profile:
        profile(args, entry)
        return 0

    t_start = time.perf_counter()
    doc: dict = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": vars(args),
        "batchembed_entry": entry_note,
    }
    failures = 0
    if not args.skip_compare:
        pool = make_pool(args.dim, SERVER_POOL)
        for n in args.rows:
            t = time.perf_counter()
            data.dataset(n)
            print(f"input: {n:,} rows ({time.perf_counter() - t:.1f}s)", flush=True)
        float_cap = args.baseline_float_max_rows
        avail = psutil.virtual_memory().available
        mem_cap = int(avail * 0.6 / (args.dim * 40))  # ~32 B per Python float in a list, plus the rest
        if mem_cap < float_cap:
            print(f"note: float baseline capped at {mem_cap:,} rows to fit in memory", flush=True)
            float_cap = mem_cap
        results: list[Result] = []
        baselines: dict[tuple[int, str], Result] = {}  # (rows actually run, encoding) -> result
        with Server(args.dim) as srv:
            for n, enc, round_, conc, tool in _schedule(args):
                load = os.getloadavg()[0]
                print(f"  {n:>9,} rows  {tool:<10} {enc:<6} c={conc!s:<4} load {load:4.1f} ...", end=" ", flush=True)
                if tool == "baseline":
                    cap = float_cap if enc == "float" else None
                    key = (min(n, cap) if cap else n, enc)
                    if key in baselines:  # capped to a size already measured: reuse it
                        r = dataclasses.replace(baselines[key], rows=n)
                        r.note = f"measured on the first {key[0]:,} rows (--baseline-float-max-rows)"
                    else:
                        r = baselines[key] = run_baseline(srv, n, enc, pool, cap)
                elif tool == "batchembed":
                    r = run_batchembed(srv, n, enc, pool, entry, conc)
                else:
                    r = run_ceiling(srv, n, enc, tool, conc)
                r.concurrency, r.load, r.round = str(conc), round(load, 2), round_
                failures += r.check != "ok"
                print(
                    f"{r.wall_seconds:7.1f}s {r.rows_per_second:9,.0f} rows/s {r.peak_rss_mb:7,.0f} MB  "
                    f"{r.check}{_used(r)}",
                    flush=True,
                )
                results.append(r)
        doc["runs"] = [asdict(r) for r in results]
        doc["ratios"], doc["ceilings"] = print_table(results)
    if args.rate_limited_minutes > 0:
        doc["rate_limited"] = rate_limited(args, entry)
    doc["total_seconds"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out} ({doc['total_seconds']:.0f}s in all)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
