"""The ``batchembed`` command as installed: ``cli.console`` returns what ``main`` returns, runs without pandas
(pyarrow imports it at its first array otherwise: 0.25-0.3 s and ~35 MB of every command), and freezes what
the command built before the interpreter exits (its collections at exit walked it: 0.2 s after a 100k-row
run), while atexit handlers still run."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import cli_env, job_for, make_texts, run_here, write_parquet

_CHILD = """
import atexit, gc, sys
from batchembed import cli
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
atexit.register(lambda: print("pandas imported:", "pandas" in sys.modules, flush=True))
entry, sys.argv = sys.argv[1], ["batchembed", *sys.argv[2:]]
sys.exit(getattr(cli, entry)())
"""


def test_the_installed_command_is_console():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "batchembed"]
    assert script.value == "batchembed.cli:console"


def test_console_exits_with_mains_code_after_the_atexit_handlers_with_the_collector_frozen(tmp_path):
    args = ["status", str(tmp_path / "missing.toml")]
    expected = run_here(None, *args)
    assert expected.returncode != 0  # a failure: its code is the one to carry

    child = _child("console", *args)

    assert child.returncode == expected.returncode
    assert child.stderr.strip() == expected.stderr.strip()
    assert "frozen at exit: True" in child.stdout


def _child(entry: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, entry, *args], capture_output=True, text=True, env=cli_env())


def test_a_run_by_the_command_never_imports_pandas_where_main_in_a_program_would(tmp_path, srv):
    pytest.importorskip("pandas")  # installed with the test extra: what the command keeps out
    write_parquet(tmp_path / "in.parquet", make_texts(300, seed=41))
    job = job_for(tmp_path, srv, tmp_path / "in.parquet", output={"shard_rows": 100})

    command = _child("console", "run", str(job), "--quiet")

    assert command.returncode == 0, command.stderr
    assert "pandas imported: False" in command.stdout
    assert pq.read_table(tmp_path / "out").num_rows == 300
    program = _child("main", "run", str(job), "--quiet", "--restart")  # pyarrow's own habit, for contrast
    assert program.returncode == 0, program.stderr
    assert "pandas imported: True" in program.stdout
