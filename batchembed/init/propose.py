"""``batchembed init INPUT``: a commented job file for the user's own data, which ``plan`` and ``run`` take as is.

It reads the first rows of the input the way a run reads them (``input.read``: every format a run
reads, so a new input format needs nothing here), proposes the text column (the one named, else the
longest text column on the sample), an id column (the one named, else one unique on the sample), the
model (the local one by default: it runs offline at once) and an output path, and writes every other
key commented out with its default and one line of explanation. It never overwrites a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import UsageError
from batchembed.fs.location import StorageOptions
from batchembed.init.keys import explain
from batchembed.input.discover import discover
from batchembed.input.files import SourceFile
from batchembed.input.read import columns_of, iter_batches
from batchembed.job import catalog
from batchembed.job.config import JobConfig
from batchembed.job.resolved import PROVIDERS
from batchembed.job.templates import text_fields
from batchembed.suggest import did_you_mean

#: Rows read to propose the text and id columns.
SAMPLE_ROWS = 1000
#: The model ``init`` proposes when none is named: shipped in a PyPI package, runs offline on the CPU.
LOCAL = "local"


@dataclass(frozen=True)
class Proposal:
    """What ``init`` writes uncommented, each with why."""

    input_path: str
    text: str
    text_note: str
    cast_text: bool
    id: str | None
    id_note: str
    columns: dict[str, str]  # name -> Arrow type, of the sampled file
    provider: str
    model: str | None  # None: the provider's default
    model_note: str
    output: str
    input_tokens: int | None = None  # the model's own limit, written when the default (8192) is over it


def sample(spec: str) -> tuple[list[SourceFile], pa.Table]:
    """The input's files and the first ``SAMPLE_ROWS`` rows of the first one, read as a run reads them."""
    sources = discover(spec, StorageOptions(), field="init")
    first = sources[0]
    columns = list(dict.fromkeys(columns_of(first)))
    batches, rows = [], 0
    for batch in iter_batches(first, columns, 0, SAMPLE_ROWS):
        batches.append(batch.slice(0, SAMPLE_ROWS - rows))
        rows += batches[-1].num_rows
        if rows >= SAMPLE_ROWS:
            break
    if not batches:
        return sources, pa.table({c: pa.array([], pa.string()) for c in columns})
    return sources, pa.Table.from_batches(batches)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def _has_spaces(column: pa.ChunkedArray) -> float:
    """Share of non-null values with whitespace in them: prose has it, identifiers do not."""
    valid = column.drop_null()
    if not len(valid):
        return 0.0
    return pc.mean(pc.match_substring_regex(valid.cast(pa.string()), r"\s")).as_py()


def _mean_length(column: pa.ChunkedArray) -> float:
    lengths = pc.utf8_length(column.cast(pa.string())).fill_null(0)
    return pc.mean(lengths).as_py() or 0.0


def _listing(table: pa.Table) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in table.schema)


def propose_text(table: pa.Table, named: str | None, where: str) -> tuple[str, str, bool]:
    """(text spec, why, cast_text): the column or template named, else the longest text column on the sample.

    Columns whose values have no whitespace (ids, codes, URLs) are chosen only when nothing else is text.
    """
    rows = f"the first {table.num_rows:,} rows"
    if named is not None:
        missing = [c for c in text_fields(named) if c not in table.column_names]
        if missing:
            near = did_you_mean(missing[0], table.column_names)
            raise UsageError(
                f"--text {named!r}: {where} has no column {missing[0]!r}{near} (columns: {_listing(table)})"
            )
        if "{" in named:
            return named, "the template you named", False
        if _is_text(table.schema.field(named).type):
            return named, "the column you named", False
        return named, f"the column you named ({table.schema.field(named).type}: embedded as text)", True
    candidates = [f.name for f in table.schema if _is_text(f.type)]
    if not candidates:
        raise UsageError(
            f"{where} has no text column (columns: {_listing(table)}); name the one to embed with --text COLUMN"
        )
    scored = {c: (_has_spaces(table.column(c)) >= 0.1, _mean_length(table.column(c))) for c in candidates}
    best = max(candidates, key=lambda c: scored[c])
    others = [c for c in candidates if c != best]
    also = f"; others: {', '.join(others)}" if others else ""
    return best, f"the longest text column on {rows}{also}", False


def _id_rank(table: pa.Table, name: str) -> int | None:
    """How good an id ``name`` makes (lower is better), None if it is not one: unique and never null or
    blank on the sample, integer or text without spaces; a name saying "id" first."""
    column, type_ = table.column(name), table.schema.field(name).type
    if not (pa.types.is_integer(type_) or _is_text(type_)) or column.null_count or not len(column):
        return None
    if pc.count_distinct(column).as_py() != len(column):
        return None
    if _is_text(type_) and (_has_spaces(column) > 0 or pc.min(pc.utf8_length(column)).as_py() == 0):
        return None
    lower = name.lower()
    if lower == "id":
        return 0
    if lower.endswith(("id", "key", "uuid")):
        return 1
    return 2 if pa.types.is_integer(type_) else 3


def propose_id(table: pa.Table, text: str, named: str | None, where: str) -> tuple[str | None, str]:
    """(id column or None, why): the column named (checked on the sample), else the best unique one."""
    rows = f"the first {table.num_rows:,} rows"
    if named is not None:
        if named not in table.column_names:
            near = did_you_mean(named, table.column_names)
            raise UsageError(f"--id {named!r}: {where} has no column {named!r}{near} (columns: {_listing(table)})")
        column = table.column(named)
        if column.null_count or pc.count_distinct(column).as_py() != len(column):
            raise UsageError(f"--id {named!r}: not unique (or null) on {rows} of {where}; ids must be unique")
        return named, f"the column you named; unique on {rows} (plan and run check every row)"
    used = set(text_fields(text))
    ranked = [(r, c) for c in table.column_names if c not in used and (r := _id_rank(table, c)) is not None]
    if not ranked:
        return None, f'no column is unique on {rows}: each row\'s id is "file:row"'
    return min(ranked)[1], f"unique on {rows} (plan and run check every row)"


def choose_model(name: str | None) -> tuple[str, str | None, str]:
    """(provider, model name or None for the provider's default, why) for ``--model NAME``."""
    local = PROVIDERS[LOCAL].model
    if name is None or name in (LOCAL, local):
        return LOCAL, None, f"{local} on this machine's CPU: no API key, no network (384 dims)"
    preset = catalog.lookup(name)
    if preset is not None and preset.kind != "embed":
        raise UsageError(f"--model {name}: a reranker; init writes embedding jobs (README: 'Rerank jobs')")
    if preset is not None and preset.provider != LOCAL:
        key = PROVIDERS[preset.provider].api_key_env
        return preset.provider, preset.id, f"{preset.description}; needs {key} set in the environment"
    if name.startswith("accounts/"):
        return "fireworks", name, "a Fireworks model of your account; needs FIREWORKS_API_KEY set in the environment"
    raise UsageError(
        f"--model {name}: not a known model; `batchembed models` lists them (a Fireworks accounts/... id works too)"
    )


def model_limit(name: str | None) -> int | None:
    """The catalogued model's input limit when the job file's default ``limits.input_tokens`` is over it (so
    the written job never contradicts its own model); None otherwise."""
    preset = catalog.lookup(name) if name else None
    default = JobConfig().limits.input_tokens
    if preset is None or preset.max_input_tokens is None or preset.max_input_tokens >= default:
        return None
    return preset.max_input_tokens


def _stem(spec: str) -> str:
    """A short name for the input: the file's name without suffixes, else its directory's (or the glob root's)."""
    parts = [p for p in spec.rstrip("/").split("/") if p and not any(ch in p for ch in "*?[")]
    name = parts[-1] if parts else "job"
    if "://" in spec and len(parts) == 1:  # a bucket root
        name = parts[0]
    return (name.split(".")[0] or "job").replace(" ", "_")


def free_output(stem: str) -> str:
    """``out/STEM``, or ``out/STEM-2``... when that directory already holds something (another job's output)."""
    n, path = 1, f"out/{stem}"
    while Path(path).exists() and any(Path(path).iterdir()):
        n += 1
        path = f"out/{stem}-{n}"
    return path


def toml_value(value: object) -> str:
    """A Python value as a TOML literal (big integers with ``_`` separators, as people write them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if value >= 10_000 else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _line(key: str, value: object, note: str, commented: bool) -> str:
    text = f"{'# ' if commented else ''}{key} = {toml_value(value)}"
    return f"{text:<36} # {note}" if note else text


def render(p: Proposal, job_path: str) -> str:
    """The job file: the proposal uncommented, every other key commented with its default and one line."""
    chosen = {
        "input.path": (p.input_path, "a file, a directory or a glob; relative to where you run batchembed"),
        "input.text": (p.text, p.text_note),
        "model.provider": (p.provider, p.model_note),
        "output.path": (p.output, "a directory of Parquet shards (or s3://bucket/prefix)"),
    }
    if p.id is not None:
        chosen["input.id"] = (p.id, p.id_note)
    if p.cast_text:
        chosen["input.cast_text"] = (True, "the text column is not a string column: embed its text form")
    if p.model is not None:
        chosen["model.name"] = (p.model, "")
    if p.input_tokens is not None:
        chosen["limits.input_tokens"] = (p.input_tokens, "the model's own limit per input (the default is over it)")
    key_env = PROVIDERS[p.provider].api_key_env
    lines = [
        f"# batchembed job for {p.input_path}, written by `batchembed init`.",
        f"#   batchembed plan {job_path}   # what a run reads, sends, costs and how long it takes; sends nothing",
        f"#   batchembed run {job_path}    # embed; stop any time, run again to resume",
        f"# Relative paths are relative to the directory you run batchembed from ({os.getcwd()}).",
        "# Commented keys show their default; uncomment one to change it. Every key: README.md,",
        '# "A job file, field by field". Rerank jobs (query/document pairs) add a [rerank] table: README.md.',
    ]
    if key_env:
        lines.append(f"# Before `run`: export {key_env}=...  (the key is never written to any file or log)")
    if p.id is None:
        lines.append(f"# Columns of {p.input_path}: {', '.join(p.columns)}")
    for section in dataclasses.fields(JobConfig):
        if section.default_factory is dataclasses.MISSING:
            continue  # `kind` and the optional [rerank] table
        lines += ["", f"[{section.name}]"]
        for field in dataclasses.fields(section.default_factory()):
            key = f"{section.name}.{field.name}"
            if key in chosen:
                value, note = chosen[key]
                lines.append(_line(field.name, value, note, commented=False))
                continue
            default = getattr(section.default_factory(), field.name)
            shown, note = explain(key, default, p.provider, p.columns)
            lines.append(_line(field.name, shown, note, commented=True))
    return "\n".join(lines) + "\n"


def init_command(
    input_path: str, text: str | None, id_column: str | None, model: str | None, job_path: str | None
) -> int:
    """``batchembed init``: propose, write the job file (never over an existing one), say what to run next."""
    sources, table = sample(input_path)
    where = str(sources[0].path)
    text_spec, text_note, cast = propose_text(table, text, where)
    id_col, id_note = propose_id(table, text_spec, id_column, where)
    provider, model_name, model_note = choose_model(model)
    stem = _stem(input_path)
    job_path = job_path or f"jobs/{stem}.toml"
    proposal = Proposal(
        input_path,
        text_spec,
        text_note,
        cast,
        id_col,
        id_note,
        {f.name: str(f.type) for f in table.schema},
        provider,
        model_name,
        model_note,
        free_output(stem),
        model_limit(model_name or PROVIDERS[provider].model),
    )
    content = render(proposal, job_path)
    target = Path(job_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "x", encoding="utf-8") as fh:  # "x": refuses an existing file, atomically
            fh.write(content)
    except FileExistsError:
        raise UsageError(
            f"{job_path} already exists; init never overwrites a job file: pick another name with -o PATH"
        ) from None
    rows = sum(s.rows for s in sources if s.rows is not None)
    counted = f"{rows:,} rows" if all(s.rows is not None for s in sources) else "rows counted while reading"
    files = f"{len(sources)} file{'s' if len(sources) != 1 else ''}"
    print(f"wrote {job_path} for {input_path} ({files}, {counted}):")
    print(f"  text    {text_spec!r:<20} {text_note}")
    print(f"  id      {id_col!r:<20} {id_note}" if id_col else f"  id      {'(none)':<20} {id_note}")
    print(f"  model   {model_name or PROVIDERS[provider].model!r:<20} {model_note}")
    print(f"  output  {proposal.output!r:<20} Parquet shards, the vectors in column 'embedding'")
    print("next:")
    print(f"  batchembed plan {job_path}    # rows, tokens, cost and ETA; sends nothing")
    print(f"  batchembed run {job_path}     # embed; stop any time, run again to resume")
    return 0
