"""What a finished run says about the rows beyond the summary line: a refresh's figures (files by state,
rows by id), the texts bought and reused and the tokens billed, what an interrupted run's journal gave
back, the rows cut to fit (pure: lines from the run's ``Stats``)."""

from __future__ import annotations

from batchembed.human import plural
from batchembed.output.figures import describe as describe_figures
from batchembed.stats import Stats


def ending_lines(s: Stats, truncated_at: str) -> list[str]:
    """The lines after the summary: a refresh's figures, texts and tokens, an interrupted run's recovery,
    the rows cut to fit (listed in ``truncated_at``)."""
    lines = []
    if s.refresh.get("generation"):
        lines.append(f"refresh (generation {s.refresh['generation']}): {describe_figures(s.refresh)}")
    if s.refresh.get("generation") or s.texts_reused:
        current = "" if s.tokens_current is None else f", {s.tokens_current:,} for the table's current rows"
        lines.append(
            f"texts: {s.texts_bought:,} bought, {s.texts_reused:,} reused from the output; "
            f"tokens: {s.tokens:,} billed this run{current}"
        )
    if s.rows_recovered or s.rows_resent:
        lines.append(
            f"after the interrupted run: {plural(s.rows_recovered, 'row')} recovered from its journal, "
            f"{plural(s.rows_resent, 'row')} sent again (their answers were still in flight when it stopped)"
        )
    if s.rows_truncated:
        lines.append(f"{plural(s.rows_truncated, 'row')} cut to fit, listed in {truncated_at}")
    return lines
