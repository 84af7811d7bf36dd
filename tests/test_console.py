"""The ``batchembed`` command as installed: ``cli.console`` returns what ``main`` returns, and freezes what the
command built before the interpreter exits (its collections at exit walked it: 0.2 s after a 100k-row run),
while atexit handlers still run."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from tests.conftest import cli_env, run_here

_CHILD = """
import atexit, gc, sys
from batchembed import cli
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
sys.argv = ["batchembed", *sys.argv[1:]]
sys.exit(cli.console())
"""


def test_the_installed_command_is_console():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "batchembed"]
    assert script.value == "batchembed.cli:console"


def test_console_exits_with_mains_code_after_the_atexit_handlers_with_the_collector_frozen(tmp_path):
    args = ["status", str(tmp_path / "missing.toml")]
    expected = run_here(None, *args)
    assert expected.returncode != 0  # a failure: its code is the one to carry

    child = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=cli_env())

    assert child.returncode == expected.returncode
    assert child.stderr.strip() == expected.stderr.strip()
    assert child.stdout.strip().endswith("frozen at exit: True")
