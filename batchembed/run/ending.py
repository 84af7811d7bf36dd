"""What a finished run says about the rows beyond the summary line: a refresh's reuse, what an interrupted
run's journal gave back, the rows cut to fit (pure: lines from the run's ``Stats``)."""

from __future__ import annotations

from batchembed.human import plural
from batchembed.stats import Stats


def ending_lines(s: Stats, truncated_at: str) -> list[str]:
    """The lines after the summary: a refresh's figures, an interrupted run's recovery, the rows cut to fit
    (listed in ``truncated_at``)."""
    lines = []
    if s.refresh.get("generation"):
        r = s.refresh
        lines.append(
            f"refresh: {s.rows_reused:,} rows reused from the output, "
            f"{max(0, s.rows_embedded - s.rows_reused - s.rows_recovered):,} bought, {s.rows_removed:,} removed "
            f"({plural(r['files_added'], 'file')} added, {r['files_changed']:,} changed, "
            + (f"{r['files_grown']:,} grown (only their new rows read), " if r.get("files_grown") else "")
            + f"{r['files_removed']:,} removed, {r['files_unchanged']:,} unchanged and not read)"
        )
    if s.rows_recovered or s.rows_resent:
        lines.append(
            f"after the interrupted run: {plural(s.rows_recovered, 'row')} recovered from its journal, "
            f"{plural(s.rows_resent, 'row')} sent again (their answers were still in flight when it stopped)"
        )
    if s.rows_truncated:
        lines.append(f"{plural(s.rows_truncated, 'row')} cut to fit, listed in {truncated_at}")
    return lines
