"""Every message names the key, the value and the fix; every number is right and every word English (issue 30).

One test per message a new user met, through the real CLI (in-process against the fake provider, or a real
process where the process matters), asserting the sentence as it now reads."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchembed.faults import describe_fault
from batchembed.input.discover import discover
from batchembed.job.config import load_job
from batchembed.output.manifest import Manifest
from batchembed.run.assemble import build_runner
from batchembed.run.ending import ending_lines
from batchembed.run.progress import Heartbeat, Progress
from batchembed.run.rowcount import RowCount
from batchembed.stats import Stats
from batchembed.testing.batchapi import FakeBatchProvider
from tests.conftest import (
    ROOT,
    cli_env,
    job_for,
    make_texts,
    message_lines,
    read_output,
    run_here,
    write_job,
    write_parquet,
)


def _error(result) -> str:
    lines = [line for line in message_lines(result.stderr) if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _docs(path: Path, rows: int = 20) -> Path:
    pq.write_table(
        pa.table(
            {
                "id": [f"d{i}" for i in range(rows)],
                "module": ["os" if i % 2 else "csv" for i in range(rows)],
                "doc": make_texts(rows),
            }
        ),
        path,
    )
    return path


# ------------------------------------------------------------------------------ columns and keys


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"text": "doc", "keep": ["modul"]}, "input.keep"),
        ({"text": "{modul}: {doc}"}, "input.text's template {modul}"),
        ({"text": "doc", "id": "modul"}, "input.id"),
    ],
)
def test_a_missing_column_names_its_key_and_the_near_match(tmp_path, fake, setting, named):
    src = _docs(tmp_path / "docs.parquet")
    job = job_for(tmp_path, fake, src, input={"id": None, **setting})
    for command in ("plan", "run"):
        result = run_here(fake, command, str(job))
        assert result.returncode == 1
        assert f"no column 'modul', which {named} names; did you mean 'module'? (columns: id, module, doc)" in _error(
            result
        )
    assert not fake.requests  # refused before anything was sent


def test_a_typo_in_set_is_blamed_on_set_with_the_near_key(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))

    result = run_here(fake, "run", str(job), "--set", "limits.concurency=4")

    assert result.returncode == 2
    assert _error(result) == (
        "batchembed: usage error: --set limits.concurency=4: limits.concurency is not a job-file key; "
        "did you mean 'limits.concurrency'?"
    )


def test_a_bad_value_given_with_set_is_the_command_lines_not_the_job_files(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))

    result = run_here(fake, "plan", str(job), "--set", "limits.concurrency=many")

    assert result.returncode == 2
    message = _error(result)
    assert message.startswith("batchembed: usage error: --set limits.concurrency=many: limits.concurrency must be")
    assert str(job) not in message


def test_an_unknown_section_names_the_near_one_and_no_undocumented_key(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))
    job.write_text(job.read_text() + "\n[limit]\nconcurrency = 2\n")

    message = _error(run_here(None, "plan", str(job)))

    assert "unknown section [limit]; did you mean 'limits'? (sections: [cache], [engine], [input]" in message
    assert "kind" not in message


def test_set_false_cannot_unset_a_key_and_unset_can(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))

    refused = run_here(fake, "run", str(job), "--set", "input.id=false")
    assert refused.returncode == 2
    assert "--set input.id=false: input.id must be a string, got bool False" in _error(refused)
    assert "to unset input.id and use its default, give --unset input.id" in _error(refused)

    done = run_here(fake, "run", str(job), "--unset", "input.id", "--quiet")
    assert done.returncode == 0, done.stderr
    assert read_output(tmp_path / "out").column("id").to_pylist()[:2] == ["in.parquet:0", "in.parquet:1"]
    assert run_here(None, "status", str(job), "--unset", "input.id").returncode == 0


def test_unset_of_a_key_no_job_has_is_refused_with_the_near_one(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))

    result = run_here(None, "plan", str(job), "--unset", "input.idd")

    assert (
        result.returncode == 2
        and "--unset input.idd: input.idd is not a job-file key; did you mean 'input.id'?" in (result.stderr)
    )


# ------------------------------------------------------------------------------ paths


def test_a_relative_input_path_run_from_elsewhere_shows_where_it_looked(tmp_path, fake):
    (tmp_path / "project" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "project" / "data" / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, Path("data/in.parquet"))  # relative: right only from project/
    elsewhere = tmp_path / "cron"
    elsewhere.mkdir()

    with contextlib.chdir(elsewhere):
        message = _error(run_here(fake, "run", str(job)))

    assert f"input.path data/in.parquet (= {elsewhere}/data/in.parquet): no such file or directory" in message
    assert "a relative input.path is read from the directory batchembed runs in" in message


def test_init_of_a_missing_input_speaks_of_its_own_argument(tmp_path):
    with contextlib.chdir(tmp_path):
        message = _error(run_here(None, "init", "data/nope.parquet"))

    assert message.startswith(f"batchembed: error: init data/nope.parquet (= {tmp_path}/data/nope.parquet): no such")
    assert "input.path" not in message and "Parquet, CSV or JSON Lines" in message


@pytest.mark.parametrize("command", ["plan", "run", "status"])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path, fake, command):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)))
    (tmp_path / "out").write_text("not a directory")

    message = _error(run_here(fake, command, str(job)))

    assert (
        f"output.path {tmp_path / 'out'} is a regular file, not a directory: batchembed writes a directory" in message
    )
    assert "set output.path to a directory" in message and "Committed shards are kept" not in message
    assert not fake.requests and (tmp_path / "out").read_text() == "not a directory"


def test_an_output_path_under_a_file_is_refused_naming_the_file(tmp_path, fake):
    (tmp_path / "file.txt").write_text("x")
    src = write_parquet(tmp_path / "in.parquet", make_texts(5))
    job = job_for(tmp_path, fake, src, output={"path": str(tmp_path / "file.txt/out")})

    message = _error(run_here(fake, "run", str(job)))

    assert f"output.path {tmp_path}/file.txt/out lies under {tmp_path}/file.txt, which is a regular file" in message


def test_a_plain_file_named_gz_is_not_gzip_data(tmp_path, fake):
    path = tmp_path / "rows.jsonl.gz"
    path.write_text('{"id": 1, "text": "hello"}\n')
    job = job_for(tmp_path, fake, path)

    message = _error(run_here(fake, "run", str(job)))

    assert f"{path}: not gzip data, although its name ends in .gz (it starts like plain text); rename it without" in (
        message
    )
    assert "truncated or corrupt" not in message


def test_a_truncated_gz_is_still_called_truncated(tmp_path, fake):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(b'{"id": %d, "text": "t %d"}\n' % (i, i) for i in range(2000)))[:300])

    message = _error(run_here(fake, "run", str(job_for(tmp_path, fake, path))))

    assert "the gzip data ends early or is damaged" in message and "not gzip data" not in message


def test_a_reader_that_leaves_early_gets_no_traceback_and_a_broken_pipe_says_what_went_away():
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchembed.cli", "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "Broken pipe" not in stderr
    line = describe_fault(BrokenPipeError(errno.EPIPE, "Broken pipe"), resumable=False)
    assert "the other end of a pipe or connection went away (broken pipe)" in line and "resume" not in line


# ------------------------------------------------------------------------------ init and the model's limits


def test_init_writes_the_models_own_input_limit_and_plan_has_nothing_to_warn(tmp_path):
    src = _docs(tmp_path / "docs.parquet")
    with contextlib.chdir(tmp_path):
        assert (
            run_here(None, "init", str(src), "--model", "text-embedding-3-small", "-o", "jobs/d.toml").returncode == 0
        )
        text = (tmp_path / "jobs" / "d.toml").read_text()
        plan = run_here(None, "plan", "jobs/d.toml")
    assert "\ninput_tokens = 8191 " in text
    assert plan.returncode == 0, plan.stderr
    assert "warning" not in plan.stdout


def test_help_lists_every_exit_code_and_init_every_format():
    top = run_here(None, "--help").stdout
    assert "75 batches still running" in top
    init = run_here(None, "init", "--help").stdout
    assert "Parquet, CSV, JSON Lines" in " ".join(init.split()) and "Parquet, CSV or JSON Lines" in init


# ------------------------------------------------------------------------------ numbers and words


def test_one_of_anything_is_singular(tmp_path, fake):
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(3)))

    run = run_here(fake, "run", str(job), "--quiet")
    status = run_here(None, "status", str(job)).stdout
    verify = run_here(None, "verify", str(job)).stdout
    again = run_here(fake, "run", str(job), "--quiet")

    assert "1 request ->" in run.stderr  # one batch of three texts
    assert "checked 1 shard, 3 rows against 1 input file\n" in verify
    assert "up to date with its 1 input files" not in status
    assert "up to date with its 1 input file (3 rows)" in again.stderr


def test_the_progress_bar_shows_rows_per_second_not_tqdms_units():
    screen = _Terminal()
    progress = Progress(Stats(rows_total=None, threads=1), stream=screen, width=160)
    progress.start()
    progress.refresh()
    progress.close()
    assert "0.00row" not in screen.getvalue() and "0 rows/s" in screen.getvalue()
    assert "ETA once the rows are counted" in screen.getvalue()


class _Terminal:
    """A terminal that says so (tqdm writes to it)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def getvalue(self) -> str:
        return "".join(self.parts)


def test_the_plan_lists_every_changed_name_and_shows_a_touch_as_unchanged_content(tmp_path, fake):
    src = tmp_path / "in"
    src.mkdir()
    for f in range(7):
        write_parquet(
            src / f"f{f}.parquet", [f"file {f} row {i}" for i in range(5)], id=pa.array(range(f * 5, f * 5 + 5))
        )
    job = job_for(tmp_path, fake, src)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    for f in range(6):
        write_parquet(
            src / f"f{f}.parquet", [f"file {f} row {i} edited" for i in range(5)], id=pa.array(range(f * 5, f * 5 + 5))
        )
    (src / "f6.parquet").touch()  # same bytes, a new modification time

    text = run_here(None, "plan", str(job)).stdout
    doc = json.loads(run_here(None, "plan", str(job), "--json").stdout)

    assert "files changed    6: f0.parquet, f1.parquet, f2.parquet, f3.parquet, f4.parquet, f5.parquet\n" in text
    assert "files touched    1: f6.parquet (touched, content unchanged: read again, nothing bought)" in text
    assert doc["refresh"]["files_changed"] == 7 and len(doc["refresh"]["changed"]) == 7
    assert doc["refresh"]["touched"] == ["f6.parquet"] and doc["refresh"]["files_touched"] == 1


def test_a_touch_with_a_changed_kept_value_is_not_called_unchanged(tmp_path, fake):
    path = write_parquet(tmp_path / "in.parquet", make_texts(10), tag=pa.array(["x"] * 10))
    job = job_for(tmp_path, fake, path, input={"keep": ["tag"]})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    write_parquet(path, make_texts(10), tag=pa.array(["y"] * 10))  # same texts, same size, another kept value

    text = run_here(None, "plan", str(job)).stdout

    assert "files changed    1: in.parquet" in text and "touched" not in text


def test_a_grown_file_packed_with_a_changed_one_is_not_said_to_be_read_for_its_new_rows_only(tmp_path, fake):
    src = tmp_path / "in"
    src.mkdir()
    write_parquet(src / "a.parquet", [f"parquet row {i}" for i in range(5)], id=pa.array([f"a{i}" for i in range(5)]))
    (src / "b.csv").write_text("id,text\n" + "".join(f"b{i},csv row {i}\n" for i in range(5)))
    job = job_for(tmp_path, fake, src)  # two small files: one shard holds both
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    write_parquet(
        src / "a.parquet", [f"parquet row {i} edited" for i in range(5)], id=pa.array([f"a{i}" for i in range(5)])
    )
    with (src / "b.csv").open("a") as f:
        f.write("b5,csv row 5\n")  # b.csv only grew, but its shard goes with a.parquet's change

    text = run_here(None, "plan", str(job)).stdout

    assert "files changed    1: a.parquet\n" in text
    assert "files grown      1: b.csv (read again whole: a shard holding them holds a changed file too)" in text
    assert "only their new rows are read" not in text


def test_a_refresh_says_how_many_shards_it_replaced_as_the_delta_log_does(tmp_path, fake):
    from deltalake import DeltaTable

    texts = make_texts(300)
    texts[3] = "word " * 400  # cut to fit: the shard has a file of cut rows too
    path = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, path, limits={"input_tokens": 100}, output={"shard_rows": 1000})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    texts[5] = "a new text"
    write_parquet(path, texts)

    result = run_here(fake, "run", str(job), "--quiet")

    assert "published the refreshed table: 1 replaced shard taken out of it; its files stay for" in result.stderr
    removes = [
        json.loads(line)["remove"]
        for line in (tmp_path / "out" / "_delta_log" / "00000000000000000001.json").read_text().splitlines()
        if '"remove"' in line
    ]
    assert len(removes) == 1
    info = DeltaTable(str(tmp_path / "out")).history()[0]
    assert info["batchembed"]["model"] == "fake"


def test_a_refresh_summary_counts_the_files_that_only_grew_and_one_file_is_singular():
    stats = Stats(rows_embedded=5)
    files = {"added": ["n.csv"], "changed": [], "grown": ["g.csv"], "removed": [], "unchanged_not_read": 2}
    stats.refresh = {"generation": 1, "files": files}

    lines = ending_lines(stats, "out/_truncated.parquet")

    assert lines[0] == (
        "refresh (generation 1): 1 file added, 0 changed, 1 grown (only their new rows are read), 0 removed, "
        "2 unchanged and not read"
    )


def test_the_delta_commit_names_the_model_when_the_job_leaves_it_to_the_provider(tmp_path, fake):
    from deltalake import DeltaTable

    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", make_texts(5)), model={"name": None})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    assert DeltaTable(str(tmp_path / "out")).history()[0]["batchembed"]["model"] == "default"


def test_vector_lengths_cover_the_shards_the_output_holds_after_a_refresh(tmp_path, fake):
    texts = make_texts(100)
    path = write_parquet(tmp_path / "in.parquet", texts)
    job = job_for(tmp_path, fake, path, output={"shard_rows": 1000})
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    texts[1] = "changed"
    write_parquet(path, texts)
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0

    doc = json.loads(run_here(None, "status", str(job), "--json").stdout)
    text = run_here(None, "status", str(job)).stdout

    assert doc["vector_norms"]["shards"] == doc["shards_done"] == 1
    assert "(the vectors of" not in text and "unknown length" not in text


def test_a_batch_tier_plan_gives_the_window_and_its_progress_the_batches(tmp_path):
    fake = FakeBatchProvider(dim=16)
    env = cli_env(OPENAI_API_KEY="sk-test")
    src = write_parquet(tmp_path / "in.parquet", make_texts(40))
    job = job_for(tmp_path, fake, src, model={"provider": "openai", "tier": "batch", "batch_poll_seconds": 0})

    plan = run_here(None, "plan", str(job), env=env).stdout
    fake.refuse_creations = 100  # every creation refused: the piece stays planned
    run = run_here(fake, "run", str(job), "--quiet", "--no-wait", env=env)
    status = run_here(None, "status", str(job), env=env).stdout

    assert "ETA              within the provider's 24 h window (a batch may take all of it" in plan
    assert "at least" not in plan.split("ETA", 1)[1].split("(")[0]
    assert "batch tier: 1 batch planned for 40 inputs" in run.stderr
    assert "(not created yet)" in status and "not created yet, planned" not in status


def test_status_of_a_job_whose_model_length_is_unknown_says_it_in_english(tmp_path):
    fake = FakeBatchProvider(dim=16)
    env = cli_env(OPENAI_API_KEY="sk-test")
    src = write_parquet(tmp_path / "in.parquet", make_texts(10))
    job = job_for(
        tmp_path, fake, src, model={"provider": "openai-compatible", "tier": "batch", "batch_poll_seconds": 0}
    )
    assert run_here(fake, "run", str(job), "--quiet", env=env).returncode == 0

    text = run_here(None, "status", str(job), env=env).stdout

    assert "the model's full vectors are of a length not known yet" in text and "unknown length" not in text


def test_the_cut_of_the_local_models_own_limit_is_recorded_as_such_and_its_latency_is_compute(tmp_path):
    texts = ["word " * 400, "a short text", "another short one"]
    path = write_parquet(tmp_path / "in.parquet", texts)
    job = write_job(
        tmp_path / "job.toml",
        {
            "input": {"path": str(path), "id": "id"},
            "model": {"provider": "local", "threads": 1},
            "output": {"path": str(tmp_path / "out")},
        },
    )
    result = run_here(None, "run", str(job))

    assert result.returncode == 0, result.stderr
    cut = pq.read_table(tmp_path / "out" / "_truncated.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in cut] == [(0, "model: 256-token input limit")]
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["latency_seconds"]["measures"].startswith("the local model's compute time per request")
    assert report["latency_seconds"]["p50"] < report["elapsed_seconds"]
    assert result.stderr.count("cut to fit") == 1 and "1 row cut to fit, listed in" in result.stderr


# ------------------------------------------------------------------------------ never silent, totals for every input


class _Log(io.StringIO):
    """A log (not a terminal) that says when it is written to."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = threading.Event()

    def write(self, text: str) -> int:
        done = super().write(text)
        self.wrote.set()
        return done


def test_a_log_hears_from_a_run_from_its_setup_on():
    stats = Stats(rows_total=None, tokens=0)
    log = _Log()
    progress = Progress(stats, quiet=True, interval=0.001, stream=log)
    progress.begin()
    assert log.wrote.wait(30)
    assert "batchembed: preparing the run (" in log.getvalue()
    progress.start()
    stats.rows_total, stats.rows_embedded = 1_000, 10
    log.wrote.clear()
    assert log.wrote.wait(30) and log.wrote.wait(30)
    progress.close()
    last = log.getvalue().strip().splitlines()[-1]
    assert last.startswith("batchembed: rows 10/1,000 (") and "ETA " in last and "tokens/min" in last


def test_plan_says_what_it_is_doing_while_it_reads():
    said = threading.Event()
    log = _Log()

    def text() -> str:
        said.set()
        return "plan: 12 rows read and counted so far"

    with Heartbeat(text, interval=0.001, stream=log):
        assert said.wait(30) and log.wrote.wait(30)
    assert "batchembed: plan: 12 rows read and counted so far" in log.getvalue()


def test_csv_and_json_lines_rows_are_counted_as_the_run_numbers_them(tmp_path, fake):
    csv = tmp_path / "in" / "a.csv"
    csv.parent.mkdir()
    csv.write_text('id,text\n1,"two\nlines"\n\n2,plain\n3,"a ""quoted"" one"\n')  # 3 records on 6 lines
    jsonl = tmp_path / "in" / "b.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"id": 4, "text": "x"}\n\n{"id": 5, "text": "y"}\n'))  # a blank line
    job = job_for(tmp_path, fake, tmp_path / "in")
    runner = build_runner(load_job(job), quiet=True, transport=fake.transport())
    assert runner.run() == 0
    counting = runner.progress.counting  # the run counted its CSV and JSON Lines rows for its total
    assert counting is not None and [s.name for s in counting.sources] == ["a.csv", "b.jsonl.gz"]
    assert RowCount(counting.sources, Manifest(fingerprint={}), counting.column).count() == 5
    sources = discover(str(tmp_path / "in"))
    assert RowCount(sources, Manifest(fingerprint={}), "text").count() == 5
