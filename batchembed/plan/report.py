"""What ``batchembed plan`` reports: the figures of a plan, and their human-readable form."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchembed.human import duration


@dataclass
class PlanReport:
    """Everything ``plan`` prints. Rerank jobs fill the pair fields and leave the embed-only ones 0."""

    provider: str
    model: str
    preset: str | None  # the catalogue entry used, if any
    dimensions: int | None
    prefix: str
    task: str = "embed"  # "embed" | "rerank"
    files: list[dict] = field(default_factory=list)  # name, format, rows
    rows: int = 0
    blank_rows: int = 0  # null or whitespace-only text: kept with a null vector, never sent
    too_long_rows: int = 0  # rows whose text counts more than input_tokens
    skipped_rows: int = 0  # blank + too long under on_too_long = "skip" (rerank: rows with no pair sent)
    rows_to_embed: int = 0
    input_tokens: int = 0  # effective limit per input
    on_too_long: str = "truncate"
    unique_texts: int = 0  # exact job-wide (up to 64-bit digest collisions)
    tokens: int = 0  # every embedded row counted, no dedup at all
    tokens_to_send: int = 0  # what the run sends: each distinct text once (rerank: every pair)
    tokens_saved_by_dedup: int = 0
    unique_tokens: int = 0  # if every distinct text were sent exactly once job-wide
    queries: int = 0  # rerank: groups of documents scored against one query
    pairs: int = 0  # rerank: (query, document) pairs
    blank_pairs: int = 0  # rerank: blank query or document: kept with a null score, never sent
    too_long_pairs: int = 0  # rerank: query + document over input_tokens
    pairs_to_score: int = 0  # rerank: pairs sent
    requests: int = 0
    batch_inputs: int = 0
    batch_tokens: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    price_per_million_tokens: float | None = None
    price_source: str | None = None  # "argument" | "catalog" | None (unknown)
    estimated_cost_usd: float | None = None
    tier: str = "online"  # model.tier
    batch_price_share: float | None = None  # the provider's batch price as a share of the online one (None: none)
    estimated_batch_cost_usd: float | None = None  # the same tokens through the provider's batch API
    batches: int = 0  # batches the batch tier would create (inputs per batch at most the provider's cap)
    batch_window: str | None = None  # the provider's completion window
    eta_seconds: float = 0.0  # local model: measured estimate; remote: lower bound from the paced limits
    eta_bound: str = "requests"  # what sets the pace: "requests" | "tokens" (remote) | "cpu" (local model)
    eta_basis: str = "configured"  # "measured" (local) | "server" (limits a previous run learned) | "configured"
    eta_detail: str = ""  # how the ETA was obtained, in one human line
    warnings: list[str] = field(default_factory=list)
    #: What a run would refuse before buying anything (another job's settings, the removal guard, an output
    #: it cannot resume, the table's state, the output's column types), in ``run``'s own words; ``plan``
    #: then exits 1.
    refused: list[str] = field(default_factory=list)
    #: Against an existing output: files added/changed/removed/unchanged (names), rows removed and
    #: rows reused from the output; the other figures then count only what the refresh reads and sends.
    refresh: dict = field(default_factory=dict)


def format_report(r: PlanReport) -> str:
    """The human-readable plan."""
    model = f"{r.model} ({r.provider}" + (f", {r.dimensions} dims)" if r.dimensions else ")")
    known = f"catalogue: {r.preset}" if r.preset else "not in the catalogue: no model checks"
    pct = f" ({r.tokens_saved_by_dedup / r.tokens:.1%})" if r.tokens else ""
    policy = {"truncate": "truncated", "skip": "skipped", "fail": "the run would stop"}[r.on_too_long]
    if r.provider == "local":
        cost = "nothing to pay: the local model runs on this machine"
    elif r.estimated_cost_usd is not None:
        cost = f"${r.estimated_cost_usd:,.2f} at ${r.price_per_million_tokens:g} per 1M tokens ({r.price_source})"
    else:
        cost = "unknown (no price known for this model; pass one with --price USD_PER_1M_TOKENS)"
    if r.task == "rerank":
        lines = [
            f"rerank plan for {model} -- {known}; nothing is sent",
            f"  files            {len(r.files):,}",
            f"  rows             {r.rows:,}",
            f"  queries          {r.queries:,} (each scored against its documents)",
            f"  pairs            {r.pairs:,}",
            f"  blank pairs      {r.blank_pairs:,} (kept with a null score, not sent)",
            f"  too long         {r.too_long_pairs:,} pairs over {r.input_tokens:,} tokens ({policy})",
            f"  pairs to score   {r.pairs_to_score:,}",
            f"  tokens to send   {r.tokens_to_send:,} (the query counted once per document, as sent)",
            f"  requests         {r.requests:,} (one query each; at most {r.batch_inputs:,} documents / "
            f"{r.batch_tokens:,} tokens)",
        ]
    else:
        lines = [
            f"plan for {model} -- {known}; nothing is sent",
            f"  files            {len(r.files):,}",
            f"  rows             {r.rows:,}",
            f"  blank rows       {r.blank_rows:,} (kept with a null vector, not sent)",
            f"  too long         {r.too_long_rows:,} rows over {r.input_tokens:,} tokens ({policy})",
            f"  rows to embed    {r.rows_to_embed:,}",
            f"  unique texts     {r.unique_texts:,} job-wide ({r.unique_tokens:,} tokens)",
            f"  tokens           {r.tokens:,} (every row)",
            f"  tokens to send   {r.tokens_to_send:,} (each distinct text once: dedup saves "
            f"{r.tokens_saved_by_dedup:,}{pct})",
            f"  requests         {r.requests:,} (at most {r.batch_inputs:,} inputs / {r.batch_tokens:,} tokens each)",
        ]
    lines += [f"  estimated cost   {cost}" + (" (online tier)" if r.batch_price_share is not None else "")]
    if r.batch_price_share is not None:
        batch_cost = "unknown" if r.estimated_batch_cost_usd is None else f"${r.estimated_batch_cost_usd:,.2f}"
        chosen = " <- this job" if r.tier == "batch" else ' (set model.tier = "batch")'
        lines.append(
            f"  batch tier       {batch_cost} ({r.batch_price_share:.0%} of online) in {r.batches:,} batches, "
            f"answered within the provider's {r.batch_window} window{chosen}"
        )
    elif r.provider == "fireworks":
        lines.append("  batch tier       none: Fireworks has no batch API for embeddings or rerank")
    if r.tier == "batch":  # the provider answers within its window, not at the paced rate
        lines.append(
            f"  ETA              within the provider's {r.batch_window} window (a batch may take all of it; "
            f"online, at least {duration(r.eta_seconds)})"
        )
    else:
        lines.append(
            f"  ETA              {'about' if r.eta_basis == 'measured' else 'at least'} {duration(r.eta_seconds)} "
            f"({r.eta_detail})"
        )
    if r.prefix:
        lines.insert(1, f"  prefix           {r.prefix!r}")
    if r.refresh:
        lines[1:1] = refresh_lines(r.refresh)
    lines += [f"warning: {w}" for w in r.warnings]
    lines += [f"refused: a run would stop before buying anything: {why}" for why in r.refused]
    return "\n".join(lines)


#: Names a human plan lists per kind of file before it says how many more there are (``--json``: all).
NAMES_SHOWN = 20


def refresh_lines(refresh: dict) -> list[str]:
    """What a rerun over an existing output changes: files by state, rows removed and reused."""
    reread = refresh.get("touched_reread", [])  # changed files proven to hold what the output holds (plan/touched)
    settled = [n for n in refresh.get("touched", []) if n not in reread]  # bytes proven the same: unchanged
    grown_whole = refresh.get("grown_reread", [])
    lists = {
        **refresh,
        "changed": [n for n in refresh["changed"] if n not in reread],
        "touched_reread": reread,
        "touched": settled,
        "grown": [n for n in refresh.get("grown", []) if n not in grown_whole],
        "grown_reread": grown_whole,
    }

    def names(key: str) -> str:
        found = lists[key]
        if not found or key == "unchanged":
            return f"{len(found):,}"
        more = len(found) - NAMES_SHOWN
        shown = ", ".join(found[:NAMES_SHOWN]) + (
            f" and {more:,} more (plan --json lists them all)" if more > 0 else ""
        )
        return f"{len(found):,}: {shown}"

    if not (refresh["added"] or refresh["changed"] or refresh["removed"]) and refresh["up_to_date"]:
        return ["  output           up to date with the inputs: a run sends nothing"]
    again = refresh.get("read_again_packed", [])
    unchanged = len(refresh["unchanged"]) - len(again)
    lines = [
        "  refresh of the existing output (the figures below count only what it reads and sends):",
        f"    files added      {names('added')}",
        f"    files changed    {names('changed')}",
    ]
    if reread:
        lines.append(
            f"    files touched    {names('touched_reread')} (touched, content unchanged: read again, nothing bought)"
        )
    if lists["grown"]:
        lines.append(f"    files grown      {names('grown')} (only their new rows are read)")
    if grown_whole:
        lines.append(
            f"    files grown      {names('grown_reread')} (read again whole: a shard holding them holds a changed "
            "file too)"
        )
    lines += [
        f"    files removed    {names('removed')}",
        f"    files unchanged  {unchanged:,} (not read)",
    ]
    if settled:
        lines.append(
            f"    files touched    {names('touched')} (touched, content unchanged: its bytes read once to prove it)"
        )
    if refresh.get("reshaped"):
        lines.append(
            f"    kept columns     changed ({', '.join(refresh['reshaped'])}): every shard is rewritten from the "
            "vectors it holds"
        )
    if again:
        lines.append(
            f"    read again       {names('read_again_packed')} (unchanged, but they share a packed shard with a "
            "changed file; their texts are not bought again)"
        )
    rows = refresh.get("rows")
    if rows:
        lines.append(
            f"    rows by id       {rows['added']:,} added, {rows['updated']:,} updated (their text changed), "
            f"{rows['removed']:,} removed"
        )
    lines.append(f"    rows reused      {refresh['rows_reused']:,} (their texts' vectors are already in the output)")
    return lines
