"""Rate-limit styles: does batchembed keep a server busy at its limit without being refused?

    python -m benchmarks.ratelimit_styles [--seconds 90] [--styles openai ietf ...] [--client-path DIR]

For each style of ``benchmarks.server --style`` (openai, ietf, ietf-structured, x-ratelimit, none,
fireworks-adaptive) one server enforces the limit and one ``batchembed run`` is told TWICE the
enforced limit (tokens/min and requests/min), on more input than fits the run, and is stopped with
SIGTERM after ``--seconds``. From the server's ``/stats`` timeline:

* windowed styles (600k tokens/min, 600 requests/min over a sliding 60 s window): how full the
  server's trailing 60 s token window was kept on average over the last 30 s of the run (% of the
  limit), and the share of requests answered 429. The no-headers run lasts ``--none-seconds`` (180):
  AIMD only learns the limit from its first 429, after the server's first window has filled;
* fireworks-adaptive (starts at 300k tokens/min, doubles after each ``--adaptive-period`` seconds of
  >= 70% use measured over 10 s, up to 2.4M; the run is told 4.8M): tokens accepted as a share of
  the announced limit integrated over the run, and the shares of responses marked over-limit and of 429s.

``--client-path DIR`` runs the client from another checkout's ``batchembed`` package (put first on
PYTHONPATH): the "before" figures come from ``git archive <main> batchembed | tar -x -C DIR``.
Results: a table on stdout and ``benchmarks/results-ratelimit-styles.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = data.DATA_DIR
PY = sys.executable
STYLES = ["openai", "ietf", "ietf-structured", "x-ratelimit", "none", "fireworks-adaptive"]
TPM, RPM = 600_000, 600
ADAPTIVE_START, ADAPTIVE_CAP = 300_000, 2_400_000


def start_server(style: str, period: float) -> tuple[subprocess.Popen, str]:
    cmd = [PY, "-m", "benchmarks.server", "--port", "0", "--dim", "256", "--style", style]
    if style == "fireworks-adaptive":
        cmd += ["--adaptive-start", str(ADAPTIVE_START), "--adaptive-cap", str(ADAPTIVE_CAP)]
        cmd += ["--adaptive-period", str(period)]
    else:
        cmd += ["--tpm", str(TPM), "--rpm", str(RPM)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"benchmark server did not start (got {line!r})")
    return proc, line.removeprefix("listening on ")


def write_job(path: Path, input_path: Path, url: str, out: Path, tpm: int, rpm: int, batch: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""[input]
path = "{input_path}"
text = "text"
id = "id"

[model]
provider = "openai-compatible"
base_url = "{url}/v1"
encoding = "base64"

[limits]
tokens_per_minute = {tpm}
requests_per_minute = {rpm}
concurrency = 16
batch_inputs = {batch}

[output]
path = "{out}"
shard_rows = 20000
"""
    )
    return path


def run_style(style: str, args: argparse.Namespace, input_path: Path) -> dict:
    proc, root = start_server(style, args.adaptive_period)
    adaptive = style == "fireworks-adaptive"
    told_tpm = 2 * (ADAPTIVE_CAP if adaptive else TPM)
    out = WORK / "out" / f"rl-{style}"
    job = write_job(WORK / "jobs" / f"rl-{style}.toml", input_path, root, out, told_tpm, 2 * RPM, args.batch_inputs)
    env = dict(os.environ)
    if args.client_path:  # first on the path (the client runs outside this checkout, so it is not shadowed)
        env["PYTHONPATH"] = os.pathsep.join([args.client_path, env.get("PYTHONPATH", "")])
    log = open(WORK / "logs" / f"rl-{style}.log", "w")  # noqa: SIM115 - closed below
    try:
        client = subprocess.Popen(
            [PY, "-m", "batchembed.cli", "run", str(job), "--quiet", "--restart"],
            cwd=WORK,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and client.poll() is None:
            time.sleep(0.5)
        with urllib.request.urlopen(root + "/stats?timeline=1", timeout=30) as r:
            st = json.loads(r.read())
        if client.poll() is None:
            client.send_signal(signal.SIGTERM)
        try:
            client.wait(60)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    finally:
        log.close()
        proc.terminate()
        proc.wait(10)
    return summarise(style, st, args.seconds)


def summarise(style: str, st: dict, seconds: float) -> dict:
    timeline = st.get("timeline") or []
    secs = int(seconds) + 1
    tok = np.zeros(secs + 60, dtype=np.float64)
    lim = np.zeros(secs + 60, dtype=np.float64)
    for s, _ok, _thr, t, limit in timeline:
        if s < len(tok):
            tok[s] += t
            lim[s] = max(lim[s], limit)
    requests = st["requests"] or 1
    res = {
        "style": style,
        "requests": st["requests"],
        "throttled": st["throttled"],
        "pct_429": round(100 * st["throttled"] / requests, 2),
        "tokens_accepted": st["tokens_accepted"],
    }
    if style == "fireworks-adaptive":
        last = max((s for s, *_ in timeline), default=0)
        span = slice(0, min(last + 1, secs))
        known = np.maximum.accumulate(lim[span])  # the limit holds between requests
        res["pct_of_announced"] = round(100 * tok[span].sum() / max(known.sum(), 1), 1)
        res["pct_over_limit"] = round(100 * st.get("over_limit", 0) / requests, 2)
        res["final_limit_tpm"] = int(known[-1] * 60) if len(known) else 0
        return res
    csum = np.concatenate([[0], np.cumsum(tok)])
    # the server's trailing 60 s window, averaged over the last 30 s of the run
    end = min(secs, len(tok))
    fills = [(csum[s + 1] - csum[max(0, s - 59)]) / TPM for s in range(max(59, end - 31), end)]
    res["pct_of_limit"] = round(100 * float(np.mean(fills)), 1) if fills else 0.0
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=STYLES, choices=STYLES)
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each run")
    parser.add_argument(
        "--none-seconds", type=float, default=180.0, help="length of the no-headers run (AIMD needs a first 429)"
    )
    parser.add_argument("--adaptive-period", type=float, default=15.0, help="seconds of >= 70%% use per doubling")
    parser.add_argument("--batch-inputs", type=int, default=64)
    parser.add_argument("--client-path", help="directory whose batchembed package is the client")
    parser.add_argument("--out", default=str(HERE / "results-ratelimit-styles.json"))
    parser.add_argument("--label", default="after")
    args = parser.parse_args(argv)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    # more input than any run can finish: 2.4M tokens/min at most for 90 s ~ 3.6M tokens ~ 32k rows
    input_path = data.dataset(max(40_000, int(args.seconds / 60 * ADAPTIVE_CAP / 100)))
    results = []
    for style in args.styles:
        seconds = args.none_seconds if style == "none" else args.seconds
        res = run_style(style, argparse.Namespace(**{**vars(args), "seconds": seconds}), input_path)
        results.append(res)
        print(json.dumps(res), flush=True)
    path = Path(args.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[args.label] = {
        "seconds": args.seconds,
        "none_seconds": args.none_seconds,
        "adaptive_period": args.adaptive_period,
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=1))
    print(f"\n{'style':<20}{'% of limit':>12}{'% 429':>8}{'% over-limit':>14}")
    for r in results:
        pct = r.get("pct_of_limit", r.get("pct_of_announced"))
        print(f"{r['style']:<20}{pct:>12}{r['pct_429']:>8}{r.get('pct_over_limit', ''):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
