"""Every recipe in the README runs, as written, and prints what the README says it prints.

Each fenced block of README.md is one of:

* ``python``: run in a workspace holding ``out/example``, a real output made by the fake provider
  (384-dim vectors, so no recipe can hard-code a size) with cut rows (``_truncated.parquet``) and failed
  rows (``_failed.parquet``) beside the table's files; what it prints and defines is checked;
* ``sh`` / ``make``: run by bash in a workspace made like a fresh clone after ``make demo`` (the local
  model on the sample data, ``.venv/bin`` as the README names it), in README order; what it prints is
  checked. A block marked ``sh needs=WHAT`` needs something the tests cannot have (an API key, a fixed
  port): its commands are still parsed by the real argparse and its ``make`` targets dry-run;
* ``python runby=TEST``: run by ``tests/TEST.py`` against what it needs (the sinks' recipes: a real
  Postgres and LanceDB); here it is checked that that test reads exactly this block;
* ``toml``: a job-file excerpt: every key must be a job-file key of the right type (``[[sink]]`` too);
* ``text``: what batchembed prints (messages, the output's files): the words of each message must be
  batchembed's, the file names the output's.

A block of another kind, or a recipe this file has no check for, fails the test. Inline commands in the
prose (``batchembed run JOB --no-wait``) name real subcommands and options; ``make X`` names real targets.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed import cli
from batchembed.job.config import JobConfig, from_mapping
from batchembed.job.overrides import known_keys
from batchembed.testing import FakeProvider
from tests.conftest import ROOT, run_here

README = ROOT / "README.md"
KINDS = {"python", "sh", "make", "toml", "text"}


@dataclass
class Block:
    """One fenced block of the README."""

    line: int
    kind: str
    marks: list[str]
    body: str

    @property
    def needs(self) -> str | None:
        return next((m.split("=", 1)[1] for m in self.marks if m.startswith("needs=")), None)

    @property
    def run_by(self) -> str | None:
        return next((m.split("=", 1)[1] for m in self.marks if m.startswith("runby=")), None)

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


def readme_blocks() -> list[Block]:
    """Every fenced block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, flags=re.S | re.M):
        info = match.group(1).split()
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, info[0] if info else "", info[1:], match.group(2)))
    return blocks


BLOCKS = readme_blocks()


def test_every_block_is_a_kind_the_tests_run_or_check():
    unknown = [str(b) for b in BLOCKS if b.kind not in KINDS]
    assert not unknown, f"mark these blocks as one of {sorted(KINDS)}: {unknown}"
    assert sum(b.kind == "python" for b in BLOCKS) >= 8 and sum(b.kind == "sh" for b in BLOCKS) >= 6


# --------------------------------------------------------------------------- shapes: toml, text, commands


def _check_table(section: str, values: dict) -> None:
    keys = known_keys(JobConfig)
    for key in values:
        assert f"{section}.{key}" in keys, f"{section}.{key} is not a job-file key"
    # the types: a table of the right types builds its dataclass (no cross-field validation)
    from_mapping(JobConfig, {section: values}, "")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "toml"], ids=str)
def test_toml_excerpts_hold_only_job_file_keys(block):
    raw = tomllib.loads(block.body)
    assert raw, block
    for section, values in raw.items():
        if isinstance(values, list):  # an array of tables: [[sink]]
            assert section in known_keys(JobConfig) and all(isinstance(v, dict) for v in values), block
            from_mapping(JobConfig, {section: values}, "")  # every key of every table known, of its type
            continue
        assert isinstance(values, dict), f"{block}: {section} is not a table"
        _check_table(section, values)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.run_by], ids=str)
def test_blocks_run_by_another_test_are_the_ones_it_runs(block):
    import importlib

    module = importlib.import_module(f"tests.{block.run_by}")
    assert block.body in module._recipes(), f"{block}: tests/{block.run_by}.py does not run this block"


@functools.cache
def _templates() -> list[tuple[str, re.Pattern]]:
    """Every string batchembed's source holds, as (its longest literal piece, a pattern): each ``{...}`` of an
    f-string stands for up to 80 characters of any text (implicitly joined literals are one string)."""
    found = []
    for path in (ROOT / "batchembed").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = [node.value]
            else:
                continue
            literal = [p for p in parts if p]
            if len(" ".join(literal).split()) < 3:
                continue
            # a value in the middle: up to 80 characters; at the end: to the end of its clause
            pattern = "".join(
                re.escape(p) if p is not None else ".{1,80}?" if i < len(parts) - 1 else "[^;]{1,80}"
                for i, p in enumerate(parts)
            )
            found.append((max(literal, key=len), re.compile(pattern, re.S)))
    return found


#: What a message holds that is not batchembed's words: quoted values, paths, dotted names, numbers.
VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\S*/\S*|\S*\.\S*|\S*\d\S*")


def _foreign_words(message: str, templates: list[tuple[str, re.Pattern]]) -> list[str]:
    """Runs of three words or more of ``message`` that no string of the source says (values aside)."""
    covered = bytearray(len(message))
    for piece, pattern in templates:
        if piece in message:
            for match in pattern.finditer(message):
                covered[match.start() : match.end()] = b"\x01" * (match.end() - match.start())
    for match in VALUES.finditer(message):
        covered[match.start() : match.end()] = b"\x01" * (match.end() - match.start())
    text = "".join(ch if not covered[i] else "\x00" for i, ch in enumerate(message))
    runs = [r.strip(" ,;:()-") for r in text.split("\x00")]
    return [r for r in runs if len(re.findall(r"[A-Za-z]+", r)) >= 3]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "text"], ids=str)
def test_printed_examples_are_batchembeds_own_words(block):
    layout = (ROOT / "batchembed" / "output" / "layout.py").read_text(encoding="utf-8")
    lines = block.body.strip().splitlines()
    if not lines[0].startswith("batchembed:"):  # the output directory's listing
        names = set(re.findall(r"^\s+(_[a-zA-Z_]+(?:\.\w+)?)/?\s", block.body, flags=re.M))  # the entries
        assert names and all(n.split(".")[0] in layout for n in names), sorted(names)
        return
    templates = _templates()
    messages: list[str] = []
    for line in lines:
        if line.startswith("batchembed:") or not messages:
            messages.append(line.strip())
        else:
            messages[-1] += " " + line.strip()
    bare = [re.sub(r"^batchembed: (usage )?error: ", "", m) for m in messages]
    missing = [run for m in bare for run in _foreign_words(m, templates)]
    assert not missing, f"{block}: words batchembed never prints: {missing}"


def _parse(command: list[str]) -> None:
    """``batchembed ARGS`` through the real parser (exits on an unknown command or option)."""
    args = cli.build_parser().parse_args(command)
    assert args.command


def _shape(block: Block) -> None:
    """A block that is not run: its batchembed commands parse, its make targets dry-run."""
    for line in block.body.splitlines():
        words = shlex.split(line.split(" #", 1)[0].replace("$(cat fake.pid)", "1"))
        if not words or words[0] in ("export", "kill") or words[0].startswith("#"):
            continue
        if words[0] == "make":
            done = subprocess.run(["make", "-n", *words[1:], "STAMP=Makefile"], cwd=ROOT, capture_output=True)
            assert done.returncode == 0, f"{block}: {line}: {done.stderr.decode()}"
        elif words[0].endswith("batchembed"):
            _parse([w for w in words[1:] if w != "&"])
        else:
            raise AssertionError(f"{block}: a command the README test does not know: {line}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.needs or "shape" in b.marks], ids=str)
def test_blocks_that_need_what_tests_cannot_have_still_parse(block):
    _shape(block)


def test_inline_commands_name_real_commands_options_and_targets():
    text = README.read_text(encoding="utf-8")
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    checked = 0
    for span in re.findall(r"`([^`\n]+)`", text):
        words = span.replace(".venv/bin/", "").split()
        if words and words[0] == "batchembed" and len(words) > 1 and words[1].isalpha() and words[1].islower():
            assert words[1] in commands, span
            options = commands[words[1]]._option_string_actions
            for word in words[2:]:
                option = word.split("=")[0].strip("[]").rstrip(".,")
                if re.fullmatch(r"--?[a-z][\w-]*", option):
                    assert option in options, f"{span}: {words[1]} has no option {option}"
            checked += 1
        elif words and words[0] == "make" and len(words) > 1:
            assert words[1] in targets, span
    assert checked >= 15


# --------------------------------------------------------------------------- python: against a real output

ROWS = 120


@pytest.fixture(scope="module")
def workspace_a(tmp_path_factory):
    """``out/example`` made by the fake provider (384 dims) from the demo's sample data, with cut rows (a small
    ``limits.input_tokens``) and failed rows (texts the fake answers with all-zero vectors)."""
    root = tmp_path_factory.mktemp("readme-a")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "make_sample.py"),
            "--out",
            str(root / "data/sample"),
            "--rows",
            str(ROWS),
        ],
        check=True,
        capture_output=True,
    )
    sample = pa.concat_tables(pq.read_table(p) for p in sorted((root / "data/sample").glob("*.parquet")))
    fake = FakeProvider(dim=384)
    short = min((r for r in sample.to_pylist() if r["body"]), key=lambda r: len(r["body"]))
    fake.zero_texts = {f"{short['title']}\n\n{short['body']}"}
    args = [
        "--set", "model.provider=openai-compatible", "--set", "model.base_url=http://fake/v1",
        "--set", "model.name=fake", "--set", "limits.input_tokens=40", "--set", "output.shard_rows=50",
    ]  # fmt: skip
    with contextlib.chdir(root):
        result = run_here(fake, "run", str(ROOT / "jobs/example.toml"), "--quiet", *args)
    assert result.returncode == 3, result.stderr  # finished, some rows failed: _failed.parquet
    out = root / "out/example"
    assert (out / "_failed.parquet").exists() and (out / "_truncated.parquet").exists()
    assert len(list(out.glob("part-*.parquet"))) >= 2 and (out / "_delta_log").is_dir()
    return root, short["id"]


def _python_blocks() -> list[Block]:
    """The python recipes this file runs (those marked ``runby=TEST`` are run by that test)."""
    return [b for b in BLOCKS if b.kind == "python" and not b.run_by]


def _run_python(block: Block, root: Path, given: dict | None = None) -> tuple[dict, str]:
    scope: dict = dict(given or {})
    printed = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(printed):
        exec(compile(block.body, str(block), "exec"), scope)
    return scope, printed.getvalue()


def _table(value) -> pa.Table:
    return value if isinstance(value, pa.Table) else pa.table(value)


def test_python_recipes_read_only_the_tables_rows_with_the_models_dimension(workspace_a, monkeypatch):
    root, failed_id = workspace_a
    monkeypatch.setenv("HOME", str(root))  # DuckDB installs its Delta extension under ~/.duckdb
    table = pa.concat_tables(pq.read_table(p) for p in (root / "out/example").glob("part-*.parquet"))
    rows = table.num_rows
    assert rows == ROWS - 1 and failed_id not in table.column("id").to_pylist()  # one row failed
    with_vectors = table.filter(table.column("embedding").is_valid()).column("id").to_pylist()
    checked = 0
    for block in _python_blocks():
        if "optimize.compact" in block.body:  # maintenance by others: on a copy, the recipes after read this one
            copy = root / "maintained"
            shutil.copytree(root / "out/example", copy / "out/example", dirs_exist_ok=True)
            scope, _ = _run_python(block, copy, {"out": "out/example"})  # the recipe's ``out``: the table
            from deltalake import DeltaTable

            assert scope["dt"].history()[0]["operation"] == "OPTIMIZE"  # (vacuum: nothing a week old to delete)
            assert DeltaTable(str(copy / "out/example")).to_pyarrow_table().num_rows == rows
            checked += 1
            continue
        scope, printed = _run_python(block, root)
        if "df = pl.read_parquet" in block.body and "head(3)" in block.body:
            assert scope["df"].height == rows and str(scope["df"].schema["embedding"]) == "Array(Float32, shape=(384,))"
            assert "shape: (3, 3)" in printed
        elif "pd.read_parquet" in block.body:
            assert printed.split() == [str(rows), str(rows), "384"]
        elif "duckdb.sql(" in block.body and "read_parquet" in block.body:
            assert printed.split() == [str(rows), "384"]
        elif "vectors @ query" in block.body:
            best = scope["df"][scope["best"]]
            assert best["id"][0] == scope["df"]["id"][0] and "shape: (5, 3)" in printed
            assert float(scope["scores"][scope["best"][0]]) == pytest.approx(1.0, abs=1e-5)
        elif "array_cosine_similarity" in block.body:
            nearest = scope["nearest"]
            assert len(nearest) == 5 and nearest[0][2] == pytest.approx(1.0, abs=1e-5) and scope["dim"] == 384
            assert nearest[0][0] == min(with_vectors) and "[(" in printed
        elif "to_pyarrow_table()" in block.body and "history" not in block.body:
            assert _table(scope["table"]).num_rows == rows
        elif "read_delta" in block.body:
            assert scope["df"].height == rows
            assert str(scope["lazy"].collect_schema()["embedding"]) == "Array(Float32, shape=(384,))"
        elif "delta_scan" in block.body:
            assert scope["dim"] == 384 and _table(scope["rows"]).num_rows == rows
            assert _table(scope["rows"]).schema.field("embedding").type == pa.list_(pa.float32(), 384)
        elif "history()" in block.body:
            assert scope["history"][0]["userMetadata"] == "batchembed publish 1"
            assert _table(scope["old"]).num_rows == rows
        else:
            raise AssertionError(f"{block}: the README test has no check for this recipe")
        checked += 1
    assert checked == len(_python_blocks())


def test_a_glob_of_every_parquet_file_is_what_the_readme_warns_of(workspace_a):
    """The recipes' ``part-*`` glob is what makes them work: ``*.parquet`` meets the cut and failed rows."""
    import polars as pl

    root, _ = workspace_a
    with pytest.raises(pl.exceptions.PolarsError):
        pl.read_parquet(root / "out/example/*.parquet")
    block = next(b for b in _python_blocks() if "df = pl.read_parquet" in b.body and "head(3)" in b.body)
    broken = Block(block.line, block.kind, block.marks, block.body.replace("part-*.parquet", "*.parquet"))
    with pytest.raises(pl.exceptions.PolarsError):
        _run_python(broken, root)


# --------------------------------------------------------------------------- sh: a fresh clone after make demo

DEMO_ROWS = 30


def _shim(bin_dir: Path) -> None:
    """``.venv/bin/python`` and ``.venv/bin/batchembed`` of the workspace: this interpreter and this checkout."""
    bin_dir.mkdir(parents=True)
    for name, command in (("python", ""), ("batchembed", " -m batchembed.cli")):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
        path.chmod(0o755)


@pytest.fixture(scope="module")
def workspace_b(tmp_path_factory):
    """A directory like a fresh clone after ``make demo`` (run for real, with fewer rows): ``jobs/``,
    ``data/sample``, ``out/example`` made by the local model; ``.venv/bin`` runs this checkout."""
    root = tmp_path_factory.mktemp("readme-b")
    shutil.copytree(ROOT / "jobs", root / "jobs")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    _shim(root / ".venv" / "bin")
    (root / ".venv" / ".installed").touch()  # `make setup` has run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(root), "PATH": f"{root}/.venv/bin:{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    demo = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "demo", f"DEMO_ROWS={DEMO_ROWS}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    docs = root / "path" / "to"
    docs.mkdir(parents=True)
    texts = [f"Section {i}: how to {verb} a {thing} without losing data." for i, (verb, thing) in enumerate(
        (v, t) for v in ("copy", "move", "check", "sort", "merge") for t in ("file", "table", "folder", "backup")
    )]  # fmt: skip
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "body": texts}), docs / "docs.parquet")
    return root, env, demo.stdout


def _bash(script: str, root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.timeout(1800)  # its fixture runs `make demo` with the local model
def test_make_demo_ends_with_recipes_that_work(workspace_b):
    root, env, printed = workspace_b
    assert f"wrote {DEMO_ROWS} rows" in printed
    look = next(line for line in printed.splitlines() if line.startswith("Look at it:")).split(":", 1)[1]
    shown = _bash(look, root, env)
    assert shown.returncode == 0, shown.stderr
    assert f"shape: ({DEMO_ROWS}, 5)" in shown.stdout and "embedding" in shown.stdout
    search = next(line for line in printed.splitlines() if line.startswith("Search it:")).split(":", 1)[1]
    found = _bash(search, root, env)
    assert found.returncode == 0 and found.stdout.startswith("rank"), found.stderr


def _hits(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines()[1:] if line.strip()]


def _check_search(result, root: Path) -> None:
    hits = _hits(result.stdout)
    assert result.stdout.split()[:5] == ["rank", "score", "id", "title", "category"]
    assert len(hits) == 5 and "refund" in hits[0] and "support" in hits[0], result.stdout
    scores = [float(h.split()[1]) for h in hits]
    assert scores == sorted(scores, reverse=True)


def _check_own_data(result, root: Path) -> None:
    assert "wrote jobs/docs.toml for path/to/docs.parquet" in result.stdout
    assert "'body'" in result.stdout and "'doc_id'" in result.stdout
    assert re.search(r"rows\s+20\n", result.stdout) and "ETA              about" in result.stdout
    assert "done: 20 rows embedded" in result.stderr
    assert len(list((root / "out/docs").glob("part-*.parquet"))) == 1


def _check_override(result, root: Path) -> None:
    assert "done: 20 rows embedded" in result.stderr
    table = pq.read_table(next((root / "out/docs-256").glob("part-*.parquet")))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 256)


def _check_nightly(result, root: Path) -> None:
    assert "job already complete and up to date with its 1 input file (20 rows)" in result.stderr
    assert "OK: every input row is in the output exactly once" in result.stdout


def _check_batch(result, root: Path) -> None:
    assert "batch tier       " in result.stdout and "<- this job" in result.stdout
    assert re.search(r"batch tier: 1 batch planned for [\d,]+ inputs", result.stderr), result.stderr
    assert "completed:" in result.stderr and "through the batch tier" in result.stderr
    assert re.search(r"p00000 attempt \d: done \(batch \S+, completed\)", result.stdout), result.stdout


#: What each shell recipe (found by a piece of its text) must print; every recipe run needs one.
SH_CHECKS = {
    "batchembed search jobs/example.toml": _check_search,
    "batchembed init path/to/docs.parquet": _check_own_data,
    "--set model.dimensions=256 --set output.path=out/docs-256": _check_override,
    "batchembed verify jobs/docs.toml": _check_nightly,
    "--batch-api openai": _check_batch,
}


def _runnable(block: Block) -> str | None:
    """The commands of a block the test runs (a make recipe: its commands), None for one it only parses."""
    if block.kind == "make":
        return "\n".join(line.split("#")[0].strip() for line in block.body.splitlines() if line.startswith("\t"))
    if block.kind == "sh" and not block.needs and "shape" not in block.marks:
        return block.body
    return None


@pytest.mark.timeout(1800)  # a dozen real processes and the local model: minutes on a loaded 2-core machine
def test_shell_recipes_run_as_written_in_a_fresh_clone(workspace_b):
    root, env, _ = workspace_b
    ran = 0
    try:
        for block in BLOCKS:
            script = _runnable(block)
            if script is None:
                continue
            check = next((f for needle, f in SH_CHECKS.items() if needle in block.body), None)
            assert check is not None, f"{block}: the README test has no check for this recipe"
            result = _bash(script, root, env)
            assert result.returncode == 0, f"{block}:\n{result.stdout}\n{result.stderr}"
            check(result, root)
            ran += 1
    finally:  # the batch try-out's fake server, if its recipe stopped before its `kill`
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((root / "fake.pid").read_text()), signal.SIGTERM)
    assert ran == len(SH_CHECKS)


def test_the_first_block_is_make_demo_run_above_and_make_test_this_suite():
    """``make demo`` is run for real by ``workspace_b`` (fewer rows); ``make test`` is this suite: the block
    is marked ``shape`` (parsed and dry-run above, not run here)."""
    block = next(b for b in BLOCKS if "make demo" in b.body and "make test" in b.body)
    assert "shape" in block.marks
