"""Read the rate limits a server announces in its response headers. Pure: headers in, numbers out.

Every style in use is understood (``shared/reference/rate-limit-headers.md`` has the formats), read
case-insensitively; when a response mixes styles the tightest limit per resource wins:

* OpenAI: ``x-ratelimit-limit|remaining|reset-requests|tokens``, resets as Go durations (``6m0s``).
* IETF drafts up to -06: ``RateLimit-Limit|Remaining|Reset`` (reset in seconds) with an optional
  ``RateLimit-Policy: 600000;w=60`` giving the window (several policies: the tightest rate wins).
* IETF -07 and later (structured fields): ``RateLimit-Policy: "default";q=100;w=60`` and
  ``RateLimit: "default";r=50;t=30``.
* ``X-RateLimit-Limit|Remaining|Reset`` (GitHub style): the reset is seconds to wait, or an epoch time
  in seconds (> 1e9) or milliseconds (> 1e12). The window is taken to be a minute.
* Fireworks: ``x-ratelimit-limit-tokens-prompt`` is the account's current *adaptive* prompt-token limit
  in tokens per **second** (a value of 200,000 or more is taken to be per minute, as older docs give
  it); ``x-ratelimit-over-limit: yes`` means this request was over it and served at low priority.

The IETF and X-RateLimit fields do not say what they count. A quota unit (``qu="tokens"``) decides
when given; otherwise a limit of 20,000 or more per minute is taken to count tokens (no embeddings API
grants that many requests per minute to one key, and token limits are far larger), a smaller one
requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Per-minute quotas at or above this count tokens when the server does not say.
TOKENS_IF_AT_LEAST = 20_000
#: A Fireworks prompt-token limit at or above this is per minute, not per second.
FIREWORKS_PER_MINUTE_FROM = 200_000
#: Longest wait taken from a reset header.
MAX_WAIT = 120.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass
class Announced:
    """What one response says about the server's limits (per minute; None where it says nothing)."""

    style: str | None = None  # "openai", "ietf", "ietf-structured", "x-ratelimit", "fireworks"
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    requests_window: float = 60.0  # seconds of the tightest quota (a bucket must fit it, not just a minute)
    tokens_window: float = 60.0
    requests_remaining: float | None = None
    tokens_remaining: float | None = None
    wait: float | None = None  # seconds until a budget that reached 0 refills
    over_limit: bool = False  # Fireworks: this request was over the adaptive limit
    adaptive: bool = False  # the limit grows with sustained use (Fireworks)

    def limit(self, resource: str, value: float | None, window: float = 60.0) -> None:
        """Record a quota of ``value`` per ``window`` seconds for ``resource``, keeping the tightest."""
        if value is None or value <= 0 or window <= 0:
            return
        per_minute = value * 60.0 / window
        attr = f"{resource}_per_minute"
        current = getattr(self, attr)
        if current is None or per_minute < current:
            setattr(self, attr, per_minute)
        if window < getattr(self, f"{resource}_window"):
            setattr(self, f"{resource}_window", window)

    def remaining(self, resource: str, value: float | None, reset: float | None) -> None:
        """Record what is left of ``resource``; a spent budget with a reset time becomes a wait."""
        if value is None:
            return
        attr = f"{resource}_remaining"
        current = getattr(self, attr)
        setattr(self, attr, value if current is None else min(current, value))
        if value <= 0 and reset is not None and reset > 0:
            self.wait = max(self.wait or 0.0, min(reset, MAX_WAIT))

    def style_is(self, name: str) -> None:
        """Name the style (the first one found wins: it is the most specific)."""
        if self.style is None:
            self.style = name


def parse_duration(text: str) -> float | None:
    """OpenAI's durations ("6m0s", "12ms", "1.5s", "1h2m3s", or bare seconds) in seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def parse_reset(text: str, now: float) -> float | None:
    """An X-RateLimit reset: seconds to wait, or an epoch time in s (> 1e9) or ms (> 1e12); in seconds."""
    value = _number(text)
    if value is None:
        return None
    if value > 1e12:
        value = value / 1000.0 - now
    elif value > 1e9:
        value = value - now
    return max(value, 0.0)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip().split(",")[0])
    except ValueError:
        return None


def _unit(per_minute: float | None, declared: str | None) -> str:
    if declared:
        d = declared.strip('"').lower()
        if d.startswith("request"):
            return "requests"
        if "token" in d:
            return "tokens"
    return "tokens" if per_minute is not None and per_minute >= TOKENS_IF_AT_LEAST else "requests"


def parse_items(text: str) -> list[tuple[str, dict[str, str]]]:
    """A structured-field list (RFC 8941, the subset rate limits use): ``[(bare item, {param: value})]``.

    ``'"default";q=100;w=60, 10;w=1'`` -> ``[('"default"', {'q': '100', 'w': '60'}), ('10', {'w': '1'})]``.
    Quoted strings keep their quotes, so a name can be told from a number.
    """
    items = []
    for member in _split_outside_quotes(text, ","):
        parts = _split_outside_quotes(member, ";")
        if not parts or not parts[0].strip():
            continue
        params = {}
        for p in parts[1:]:
            key, _, value = p.strip().partition("=")
            params[key.strip().lower()] = value.strip().strip('"') if value else "1"
        items.append((parts[0].strip(), params))
    return items


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_rate_headers(headers: Mapping[str, str], now: float) -> Announced:
    """Everything ``headers`` announce about rate limits (``now``: the epoch time, for epoch resets)."""
    h = {k.lower(): v for k, v in headers.items()}
    out = Announced()
    _fireworks(h, out)
    _openai(h, out)
    _ietf_structured(h, out)
    _ietf(h, out)
    _x_ratelimit(h, out, now)
    return out


def _fireworks(h: dict[str, str], out: Announced) -> None:
    over = h.get("x-ratelimit-over-limit")
    prompt = _number(h.get("x-ratelimit-limit-tokens-prompt"))
    if prompt is None and over is None:
        return
    out.style_is("fireworks")
    out.adaptive = True
    out.over_limit = (over or "").strip().lower() in ("yes", "true", "1")
    if prompt is not None:  # a rate, not a one-second quota: paced per minute like the others
        out.limit("tokens", prompt if prompt >= FIREWORKS_PER_MINUTE_FROM else prompt * 60.0)


def _openai(h: dict[str, str], out: Announced) -> None:
    found = False
    for resource in ("requests", "tokens"):
        limit = _number(h.get(f"x-ratelimit-limit-{resource}"))
        remaining = _number(h.get(f"x-ratelimit-remaining-{resource}"))
        reset_text = h.get(f"x-ratelimit-reset-{resource}")
        if limit is None and remaining is None:
            continue
        found = True
        out.limit(resource, limit)
        out.remaining(resource, remaining, parse_duration(reset_text) if reset_text else None)
    if found:
        out.style_is("openai")


def _ietf_structured(h: dict[str, str], out: Announced) -> None:
    policies = [(n, p) for n, p in parse_items(h.get("ratelimit-policy", "")) if n.startswith('"')]
    states = [(n, p) for n, p in parse_items(h.get("ratelimit", "")) if n.startswith('"')]
    if not policies and not states:
        return
    out.style_is("ietf-structured")
    units = {}
    for name, params in policies:
        quota, window = _number(params.get("q")), _number(params.get("w")) or 60.0
        if quota is None:
            continue
        unit = _unit(quota * 60.0 / window, params.get("qu"))
        units[name] = unit
        out.limit(unit, quota, window)
    for name, params in states:
        remaining = _number(params.get("r"))
        unit = units.get(name) or ("tokens" if remaining is not None and remaining >= TOKENS_IF_AT_LEAST else None)
        if unit:
            out.remaining(unit, remaining, _number(params.get("t")))


def _ietf(h: dict[str, str], out: Announced) -> None:
    limit = _number(h.get("ratelimit-limit"))
    remaining = _number(h.get("ratelimit-remaining"))
    if limit is None and remaining is None:
        return
    out.style_is("ietf")
    reset = _number(h.get("ratelimit-reset"))
    # RateLimit-Policy "100;w=60, 1000;w=3600": the limit's own policy gives its window; the others
    # are further quotas on the same unit. The tightest rate binds in the long run.
    windows = [(q, _number(p.get("w")) or 60.0, p.get("qu")) for q, p in parse_items(h.get("ratelimit-policy", ""))]
    windows = [(_number(q), w, qu) for q, w, qu in windows if _number(q) is not None]
    own = next((w for q, w, _ in windows if limit is not None and q == limit), 60.0)
    declared = next((qu for _, _, qu in windows if qu), None)
    unit = _unit(limit * 60.0 / own if limit is not None else None, declared)
    out.limit(unit, limit, own)
    for quota, window, _ in windows:
        out.limit(unit, quota, window)
    out.remaining(unit, remaining, reset)


def _x_ratelimit(h: dict[str, str], out: Announced, now: float) -> None:
    limit = _number(h.get("x-ratelimit-limit"))
    remaining = _number(h.get("x-ratelimit-remaining"))
    if limit is None and remaining is None:
        return
    out.style_is("x-ratelimit")
    unit = _unit(limit, None)
    out.limit(unit, limit)
    reset_text = h.get("x-ratelimit-reset")
    out.remaining(unit, remaining, parse_reset(reset_text, now) if reset_text else None)


def is_rate_header(name: str) -> bool:
    """Whether a (lower-cased) response header matters to rate limiting."""
    return name.startswith(("x-ratelimit", "ratelimit")) or name in ("retry-after", "retry-after-ms")
