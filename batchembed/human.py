"""Numbers as people read them: ``1.0B tokens/min``, ``600 requests/min``, ``5m 02s``.

Every figure a person sees while a job runs or is planned (the progress bar and log lines, the
summary, ``plan``) goes through here, so the same quantity always looks the same. Machine-readable
output (``_report.json``, ``--json``) keeps exact numbers.
"""

from __future__ import annotations

import math

_SCALES = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3))


def short(value: float) -> str:
    """A count in at most three significant figures: "600", "1.5k", "600k", "1.0M", "1.0B".

    One decimal below 10 of a unit ("1.0B", "2.5M"), none above ("12M", "600k"); a value that would
    round up to 1000 of a unit moves to the next ("999,999" is "1.0M", not "1000k").
    """
    if value < 0:
        return "-" + short(-value)
    for unit, size in _SCALES:
        if value >= size * 0.9995:
            scaled = value / size
            return f"{scaled:.1f}{unit}" if scaled < 9.95 else f"{scaled:.0f}{unit}"
    if value >= 9.95 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def per_minute(value: float, unit: str) -> str:
    """A rate per minute with its unit: ``per_minute(1e9, "tokens")`` is "1.0B tokens/min"."""
    return f"{short(value)} {unit}/min"


def per_second(value: float, unit: str) -> str:
    """A rate per second with its unit, exact below a thousand: "37 rows/s", "1,250 rows/s", "12k rows/s"."""
    if value < 10_000:
        return f"{value:,.0f} {unit}/s" if value >= 9.95 or value == 0 else f"{value:.1f} {unit}/s"
    return f"{short(value)} {unit}/s"


def duration(seconds: float) -> str:
    """A duration as a short text, rounded up: "59s", "5m 02s", "5h 01m", "3d 01h"."""
    seconds = math.ceil(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {m:02d}m"
    days, h = divmod(hours, 24)
    return f"{days}d {h:02d}h"


def plural(count: int, word: str, many: str | None = None) -> str:
    """A count with its noun in the right number: "1 file", "2 files", "1,000 rows", "3 batches".

    ``many`` is the plural where adding "s" (or "es" after s/x/ch/sh, "ies" for a consonant + y) is wrong."""
    if count == 1:
        return f"1 {word}"
    if many is None:
        if word.endswith(("s", "x", "ch", "sh")):
            many = word + "es"
        elif word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
            many = word[:-1] + "ies"
        else:
            many = word + "s"
    return f"{count:,} {many}"
