"""`batchembed --help` tells a newcomer what the tool does, its commands, how to call them and where the
guide is; every command's help shows an example; no developer docstring leaks into either."""

from __future__ import annotations

import pytest

from batchembed import cli
from tests.conftest import ROOT, run_here

COMMANDS = sorted(cli.build_parser()._subparsers._group_actions[0].choices)


def _help(*args: str) -> str:
    result = run_here(None, *args, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _first_line(text: str) -> str:
    return next(line for line in text.splitlines()[1:] if line.strip())


def test_top_level_help_sells_and_teaches():
    text = _help()
    assert _first_line(text).startswith("Embed (or rerank) millions of Parquet/CSV/JSON Lines rows")
    for command in COMMANDS:
        assert f"\n    {command} " in text, f"{command} is not listed"
    examples = [line for line in text.splitlines() if line.startswith("  batchembed ")]
    assert len(examples) >= 3 and any(" run " in e for e in examples) and any(" plan " in e for e in examples)
    assert f"{ROOT / 'README.md'}" in text  # where the full guide is, on this machine
    assert "exit codes: 0 done" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_and_an_example(command):
    text = _help(command)
    assert _first_line(text).strip(), f"{command} --help has no description"
    assert "example" in text and f"\n  batchembed {command}" in text, f"{command} --help shows no example"


@pytest.mark.parametrize("args", [(), *((c,) for c in COMMANDS)])
def test_no_developer_docstring_in_user_facing_help(args):
    text = _help(*args)
    assert "``" not in text and ":mod:" not in text and ":class:" not in text
    assert (cli.__doc__ or "").splitlines()[0] not in text
