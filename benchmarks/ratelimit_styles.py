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
import signal
import sys
from pathlib import Path

import numpy as np

from benchmarks import data
from benchmarks.common import HERE, PY, WORK, MeasuredChild, Server, child_env, write_job

STYLES = ["openai", "ietf", "ietf-structured", "x-ratelimit", "none", "fireworks-adaptive"]
TPM, RPM = 600_000, 600
ADAPTIVE_START, ADAPTIVE_CAP = 300_000, 2_400_000


def server_options(style: str, period: float) -> list[str]:
    """``benchmarks.server`` options for ``style``: its adaptive schedule, or the fixed limits."""
    if style == "fireworks-adaptive":
        limits = {"--adaptive-start": ADAPTIVE_START, "--adaptive-cap": ADAPTIVE_CAP, "--adaptive-period": period}
    else:
        limits = {"--tpm": TPM, "--rpm": RPM}
    return ["--style", style, *(str(x) for option in limits.items() for x in option)]


def run_style(style: str, args: argparse.Namespace, input_path: Path) -> dict:
    adaptive = style == "fireworks-adaptive"
    told_tpm = 2 * (ADAPTIVE_CAP if adaptive else TPM)
    out = WORK / "out" / f"rl-{style}"
    with Server(256, args=server_options(style, args.adaptive_period)) as srv:
        job = write_job(
            WORK / "jobs" / f"rl-{style}.toml",
            input_path=input_path,
            url=srv.url,
            out=out,
            limits={
                "tokens_per_minute": told_tpm,
                "requests_per_minute": 2 * RPM,
                "concurrency": 16,
                "batch_inputs": args.batch_inputs,
            },
            shard_rows=20_000,
        )
        # ``python -m`` from outside this checkout: a --client-path package is not shadowed by ours
        client = MeasuredChild(
            [PY, "-m", "batchembed.cli", "run", str(job), "--quiet", "--restart"],
            WORK / "logs" / f"rl-{style}.log",
            env=child_env(args.client_path),
            cwd=WORK,
            poll=0.5,
        )
        while client.running() and client.elapsed < args.seconds:
            pass
        st = srv.stats(timeline=True)
        client.stop(signal.SIGTERM)
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
