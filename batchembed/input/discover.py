"""Finding the input files: a file, directory or glob (local, or a bucket URI) expanded into the sorted
``SourceFile`` list a run reads, with Parquet row counts (from the footer, or from the output's manifest for
a file it already holds whole and that has not changed) and, for ``input.identity = "content"``, the digest
of each local file's bytes."""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.errors import InputError
from batchembed.fs.location import INPUT_KINDS, Location, StorageOptions, first_line, input_kind, list_files, locate
from batchembed.fs.paths import shown
from batchembed.input.digest import MEMO
from batchembed.input.files import FileCache, SourceFile
from batchembed.input.identity import known_rows_of, object_etags


def discover(
    spec: str,
    storage: StorageOptions | None = None,
    cache: FileCache | None = None,
    known: dict | None = None,
    field: str = "input.path",
    identity: str = "metadata",
) -> list[SourceFile]:
    """Expand a file, directory or glob (local, or a URI such as ``s3://b/data/*.parquet``) into the
    sorted list of input files it names (see ``location.input_kind``: Parquet, CSV, JSON Lines). With a
    run's ``cache``, small files are read once: the opens that follow (checks, reading) are served from
    memory. ``known`` (name -> (identity, rows)) gives the row counts of files the output already holds
    whole: such a file, unchanged, is listed but not opened. ``field`` names the input in messages (``init``
    takes it as its INPUT argument). ``identity = "content"``: each local file is identified by a digest of
    its bytes (hashed once per version of the file: ``digest.MEMO``)."""
    where = locate(spec, storage, field)
    if not where.is_local:
        return _discover_remote(spec, where, cache, known, field)
    spec = where.key
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        matches = [Path(p) for p in glob.glob(spec, recursive=True)]
        root = Path(_glob_root(spec))
    elif path.is_dir():
        matches = [p for p in path.rglob("*") if p.is_file()]
        root = path
    elif path.is_file():
        matches = [path]
        root = path.parent
    else:
        raise InputError(f"{field} {shown(spec)}: no such file or directory{_relative_hint(spec, field)}")
    files = sorted(p for p in matches if input_kind(p.name) and p.is_file())
    if not files:
        raise InputError(f"{field} {shown(spec)} matches no input file: {INPUT_KINDS}")
    out = []
    for i, p in enumerate(files):
        st = p.stat()
        fmt, codec = input_kind(p.name)
        name = os.path.relpath(p, root) if root != Path("") else str(p)
        src = SourceFile(i, p, name, fmt, st.st_size, st.st_mtime_ns, None, cache=cache, compression=codec)
        if identity == "content":
            key, digest = MEMO.digest(str(p))
            src = dataclasses.replace(src, size=key[2], mtime_ns=key[3], digest=digest, stat_key=key)
        rows = known_rows_of(known, name, src.size, src.mtime_ns, digest=src.digest) if fmt == "parquet" else None
        if rows is not None:
            src = dataclasses.replace(src, rows=rows)
        elif fmt == "parquet":
            try:
                src = dataclasses.replace(src, rows=pq.ParquetFile(src.open()).metadata.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{p}: not a readable Parquet file: {exc}") from None
        out.append(src)
    return out


def _discover_remote(
    spec: str, where: Location, cache: FileCache | None, known: dict | None = None, field: str = "input.path"
) -> list[SourceFile]:
    """``discover`` for an object store: the files ``list_files`` finds, with Parquet row counts."""
    out = []
    listed = list_files(where, input_kind)
    etags = object_etags(where, single=len(listed) == 1 and listed[0].location.key == where.key)
    for i, found in enumerate(listed):
        fmt, codec = input_kind(found.location.key)
        loc = found.location
        etag = etags.get(loc.key)
        src = SourceFile(
            i,
            loc.uri,
            found.name,
            fmt,
            found.size,
            found.mtime_ns,
            None,
            loc,
            cache=cache,
            etag=etag,
            compression=codec,
        )
        rows = known_rows_of(known, found.name, found.size, found.mtime_ns, etag) if fmt == "parquet" else None
        if rows is not None:
            src = dataclasses.replace(src, rows=rows)
        elif fmt == "parquet":
            try:
                rows = pq.ParquetFile(src.open()).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{src.path}: not a readable Parquet file: {first_line(exc)}") from None
            src = dataclasses.replace(src, rows=rows)
        out.append(src)
    if not out:
        raise InputError(f"{field} {spec!r} matches no input file: {INPUT_KINDS}")
    return out


def _relative_hint(spec: str, field: str) -> str:
    """What to do about a path that names nothing: a relative ``input.path`` is read from the directory
    batchembed runs in (cron, ``make -C``), not from the job file's."""
    if field != "input.path":
        return "; give a Parquet, CSV or JSON Lines file (or .gz, .zst, .bz2, .xz), a directory of them or a glob"
    if Path(spec).is_absolute():
        return ""
    return (
        "; a relative input.path is read from the directory batchembed runs in, not the job file's: "
        "run from the directory it is relative to, or make it absolute"
    )


def _glob_root(spec: str) -> str:
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."
