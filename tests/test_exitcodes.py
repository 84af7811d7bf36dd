"""The exit codes: one enum, and README's table says exactly what it says."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from batchembed.exitcodes import ExitCode
from batchembed.run import runner

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_exit_codes() -> dict[int, str]:
    """code -> meaning from the table under README's "### Exit codes" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    codes: dict[int, str] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\|\s*([\d /]+?)\s*\|\s*(.+?)\s*\|", line.strip())
        if match:
            for code in match.group(1).split("/"):
                codes[int(code)] = match.group(2)
    return codes


def test_readme_table_lists_exactly_the_enum():
    codes = readme_exit_codes()
    assert sorted(codes) == sorted(int(c) for c in ExitCode)
    assert "usage" in codes[ExitCode.USAGE] and "_failed.parquet" in codes[ExitCode.PARTIAL]
    assert "SIGINT" in codes[ExitCode.SIGINT] and "SIGTERM" in codes[ExitCode.SIGTERM]


def test_signal_codes_are_128_plus_the_signal_and_the_runner_uses_the_enum():
    assert ExitCode.SIGINT == 128 + signal.SIGINT and ExitCode.SIGTERM == 128 + signal.SIGTERM
    assert (runner.EXIT_OK, runner.EXIT_PARTIAL, runner.EXIT_SIGINT, runner.EXIT_SIGTERM) == (
        ExitCode.OK,
        ExitCode.PARTIAL,
        ExitCode.SIGINT,
        ExitCode.SIGTERM,
    )
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 68, 69, 75, 130, 143]  # pipelines depend on these numbers
