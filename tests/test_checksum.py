"""Every shard's checksum in the manifest: taken while the shard is written, named by its algorithm, checked
by ``verify``; outputs written before (a bare sha256) still verify, and catch a changed byte the same way."""

from __future__ import annotations

import hashlib
import json

import xxhash

from tests.conftest import job_for, make_texts, run_here, write_parquet


def _finished_output(tmp_path, fake):
    write_parquet(tmp_path / "in.parquet", make_texts(400, seed=31))
    job = job_for(tmp_path, fake, tmp_path / "in.parquet", output={"shard_rows": 200})
    result = run_here(fake, "run", str(job), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    return job, out, json.loads((out / "_manifest.json").read_text())


def _flip_a_byte_in_the_middle(path) -> None:
    """One byte of the vectors changed: same size, the Parquet footer still readable."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _verify(job):
    return run_here(None, "verify", str(job))


def test_each_shard_records_the_xxh3_of_its_bytes_and_verify_names_a_shard_with_one_byte_changed(tmp_path, fake):
    job, out, manifest = _finished_output(tmp_path, fake)
    shards = manifest["shards"]
    assert len(shards) == 2
    for shard in shards:
        assert shard["checksum"] == "xxh3_128:" + xxhash.xxh3_128((out / shard["name"]).read_bytes()).hexdigest()
    assert _verify(job).returncode == 0

    changed, kept = shards[0]["name"], shards[1]["name"]
    _flip_a_byte_in_the_middle(out / changed)
    verify = _verify(job)

    assert verify.returncode == 1
    assert f"{changed} does not match the checksum in _manifest.json" in verify.stdout + verify.stderr
    assert f"{kept} does not match" not in verify.stdout + verify.stderr


def test_an_output_whose_manifest_records_sha256_still_verifies_and_catches_a_changed_byte(tmp_path, fake):
    job, out, manifest = _finished_output(tmp_path, fake)
    for shard in manifest["shards"]:  # the manifest as batchembed wrote it before checksums named their algorithm
        del shard["checksum"]
        shard["sha256"] = hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest()
    (out / "_manifest.json").write_text(json.dumps(manifest))

    assert _verify(job).returncode == 0
    again = run_here(fake, "run", str(job), "--quiet")  # a rerun reads it and has nothing to do
    assert again.returncode == 0, again.stderr
    assert _verify(job).returncode == 0

    changed = manifest["shards"][1]["name"]
    _flip_a_byte_in_the_middle(out / changed)
    verify = _verify(job)

    assert verify.returncode == 1
    assert f"{changed} does not match the checksum in _manifest.json" in verify.stdout + verify.stderr


def test_a_checksum_of_an_algorithm_this_version_does_not_know_is_named_not_mistaken_for_a_change(tmp_path, fake):
    job, out, manifest = _finished_output(tmp_path, fake)
    name = manifest["shards"][0]["name"]
    manifest["shards"][0]["checksum"] = "blake9:" + "0" * 64
    (out / "_manifest.json").write_text(json.dumps(manifest))

    verify = _verify(job)

    assert verify.returncode == 1
    said = verify.stdout + verify.stderr
    assert f"{name}: checksum algorithm 'blake9' is unknown to this batchembed (it writes xxh3_128)" in said
    assert "does not match" not in said and "Traceback" not in said
