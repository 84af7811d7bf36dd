"""What every benchmark shares: the fake server as a child process, job files, measured children.

* :class:`Server`: ``benchmarks.server`` on 127.0.0.1 (a free port), with its ``/stats``;
* :func:`write_job` (with :func:`unlimited`): the one way a benchmark writes a ``batchembed`` job file;
* :class:`MeasuredChild` and :func:`run_measured`: a child process measured from outside (wall time
  spawn to exit, CPU from ``wait4``, peak RSS from ``VmHWM``), stopped by a signal when the caller
  decides (a time limit, a number of answers, ...);
* :func:`batchembed_command`, :func:`child_env`: how to start ``batchembed``, optionally from
  another tree's package.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import data

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = data.DATA_DIR
PY = sys.executable
SERVER_POOL = 4096


# ------------------------------------------------------------------------------------ processes


@dataclass
class Measured:
    """What one child process cost."""

    returncode: int
    wall: float
    cpu: float
    peak_rss_mb: float
    interrupted: bool = False
    log: str = ""


def vm_hwm(pid: int) -> int:
    """The kernel's RSS high-water mark (VmHWM) of ``pid`` in bytes; 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class MeasuredChild:
    """A child process measured from outside while the caller decides when it must stop.

    Drive it with ``while child.running(): ...`` (each call samples memory and sleeps ``poll``
    seconds), ``stop`` it with a signal whenever the caller's condition holds, and read
    :meth:`measured` once it has exited. Wall time runs from spawn to exit; CPU is user + system of
    all its threads, from ``os.wait4``. Peak RSS is the child's own ``VmHWM`` (a high-water mark, so
    sampling only misses a peak reached in the last poll) plus the RSS of any grandchildren.
    ``ru_maxrss`` from wait4 is NOT used: Linux carries the forking parent's high-water mark into
    the child across fork+exec, so it reports max(driver's RSS, child's peak).

    Output (stdout and stderr) goes to ``log_path``, appended to with ``append_log``.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        append_log: bool = False,
        poll: float = 0.02,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.poll = poll
        self.interrupted = False  # stopped by the caller rather than ended by itself
        self._peak = 0
        self._wall: float | None = None
        self._usage = None
        self._t0 = time.perf_counter()
        with open(log_path, "ab" if append_log else "wb") as log:
            self.proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        try:
            self._ps: psutil.Process | None = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            self._ps = None

    @property
    def elapsed(self) -> float:
        """Seconds since the spawn."""
        return time.perf_counter() - self._t0

    def running(self) -> bool:
        """False once the child has exited (it is reaped then); else sample its memory, sleep, True."""
        if self._usage is not None:
            return False
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid:
            self._wall = self.elapsed
            self._usage = usage
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            return False
        if self._ps is not None:
            try:
                rss = max(vm_hwm(self.proc.pid), self._ps.memory_info().rss)
                for child in self._ps.children(recursive=True):
                    rss += child.memory_info().rss
                self._peak = max(self._peak, rss)
            except psutil.Error:
                pass
        time.sleep(self.poll)
        return True

    def stop(self, sig: int, grace: float = 60.0) -> Measured:
        """Send ``sig`` unless it has exited, SIGKILL it if still running ``grace`` s later; its figures."""
        if self._usage is None:
            self.interrupted = True
            self.proc.send_signal(sig)
        deadline = time.perf_counter() + grace
        while self.running():
            if time.perf_counter() > deadline:
                self.proc.kill()
                deadline = float("inf")
        return self.measured()

    def wait(self) -> Measured:
        """Wait (measuring) until it exits by itself; its figures."""
        while self.running():
            pass
        return self.measured()

    def measured(self) -> Measured:
        """The figures of the exited child (the last 2,000 characters of its log included)."""
        if self._usage is None or self._wall is None:
            raise RuntimeError("the child is still running")
        return Measured(
            self.proc.returncode,
            self._wall,
            self._usage.ru_utime + self._usage.ru_stime,
            self._peak / 2**20,
            self.interrupted,
            self.log_path.read_text(errors="replace")[-2000:],
        )


def run_measured(
    cmd: Sequence[str], log_path: Path, timeout: float, poll: float = 0.02, env: dict[str, str] | None = None
) -> Measured:
    """Run ``cmd`` to its end, measured (see :class:`MeasuredChild`).

    After ``timeout`` seconds the child gets SIGINT (batchembed stops cleanly), 60 s later SIGKILL.
    """
    child = MeasuredChild(cmd, log_path, env=env, poll=poll)
    while child.running():
        if child.elapsed > timeout:
            return child.stop(signal.SIGINT, grace=60)
    return child.measured()


def batchembed_command() -> tuple[list[str], str]:
    """How to start ``batchembed``: the venv's console script, else ``python -m batchembed.cli``."""
    script = Path(PY).parent / "batchembed"
    if script.exists():
        return [str(script)], "console script"
    return [PY, "-m", "batchembed.cli"], "python -m batchembed.cli"


def child_env(src: str | None) -> dict[str, str]:
    """This environment, with ``src`` (a directory holding another ``batchembed`` package) first on PYTHONPATH."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------------ server


class Server:
    """``benchmarks.server`` as a child process; ``url`` is its ``/v1`` base URL.

    ``rpm``/``tpm`` make it enforce those limits; ``args`` are further ``benchmarks.server`` options
    (``--style ...``, ``--adaptive-start ...``).
    """

    def __init__(self, dim: int, rpm: int | None = None, tpm: int | None = None, args: Sequence[str] = ()) -> None:
        cmd = [PY, "-m", "benchmarks.server", "--port", "0", "--dim", str(dim), "--pool", str(SERVER_POOL)]
        if rpm:
            cmd += ["--rpm", str(rpm)]
        if tpm:
            cmd += ["--tpm", str(tpm)]
        self.proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, cwd=ROOT)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"benchmark server did not start (got {line!r})")
        self.root = line.removeprefix("listening on ")
        self.url = self.root + "/v1"
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def stats(self, timeline: bool = False) -> dict:
        """The server's ``/stats`` (``timeline``: with its per-second buckets)."""
        with urllib.request.urlopen(self.root + "/stats" + ("?timeline=1" if timeline else ""), timeout=30) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        """Zero the server's counters."""
        req = urllib.request.Request(self.root + "/stats/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=30).read()

    def close(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------ job files


def unlimited(concurrency: int | str = 16, batch_inputs: int = 256) -> dict:
    """``[limits]`` that never hold a run back (the benchmark server enforces none unless told);
    ``concurrency = "auto"`` leaves the key out (the default: learned while sending)."""
    limits = {
        "requests_per_minute": 1_000_000,
        "tokens_per_minute": 1_000_000_000,
        "concurrency": concurrency,
        "batch_inputs": batch_inputs,
    }
    if concurrency == "auto":
        del limits["concurrency"]
    return limits


def write_job(
    path: Path,
    *,
    input_path: Path | str,
    url: str,
    out: Path | str,
    limits: dict,
    shard_rows: int = 100_000,
    encoding: str = "base64",
) -> Path:
    """Write a job file: ``input_path`` (columns ``id``, ``text``) through the server at ``url``
    (an OpenAI-compatible ``/v1`` base URL) into ``out``; paths may be object-store URLs."""
    lim = "\n".join(f"{k} = {json.dumps(v) if isinstance(v, str) else v}" for k, v in limits.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""[input]
path = {json.dumps(str(input_path))}
text = "text"
id = "id"

[model]
provider = "openai-compatible"
base_url = {json.dumps(url)}
encoding = {json.dumps(encoding)}

[limits]
{lim}

[output]
path = {json.dumps(str(out))}
shard_rows = {shard_rows}
"""
    )
    return path


def print_markdown(rows: Sequence[dict]) -> None:
    """Print ``rows`` (dicts with the same keys) as a Markdown table, ready for ``benchmarks/README.md``."""
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
