"""The pure rate-limit header parser: one row per header style and quirk."""

from __future__ import annotations

import pytest

from batchembed.providers.ratelimit_headers import parse_duration, parse_items, parse_rate_headers, parse_reset

NOW = 1_750_000_000.0  # an epoch time, for epoch resets

CASES = [
    # (headers, style, requests/min, tokens/min, wait, over_limit)
    (
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "1000000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-remaining-tokens": "999488",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        "openai",
        5000,
        1_000_000,
        None,
        False,
    ),
    (  # a spent budget waits for its reset (a Go duration)
        {"X-RateLimit-Limit-Tokens": "600000", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"},
        "openai",
        None,
        600_000,
        1.5,
        False,
    ),
    (  # IETF drafts <= 06: a tokens quota per 60 s
        {
            "RateLimit-Limit": "600000",
            "RateLimit-Remaining": "1200",
            "RateLimit-Reset": "6",
            "RateLimit-Policy": "600000;w=60",
        },
        "ietf",
        None,
        600_000,
        None,
        False,
    ),
    (  # a requests quota with several policies: the tightest rate binds (1000/h = 16.7/min)
        {
            "RateLimit-Limit": "10",
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": "1",
            "RateLimit-Policy": "10;w=1, 1000;w=3600",
        },
        "ietf",
        1000 / 60,
        None,
        1.0,
        False,
    ),
    (  # no policy: the window is a minute
        {"ratelimit-limit": "100", "ratelimit-remaining": "50", "ratelimit-reset": "30"},
        "ietf",
        100,
        None,
        None,
        False,
    ),
    (  # IETF -07+: structured fields, quota unit given
        {
            "RateLimit-Policy": '"rpm";q=600;w=60;qu="requests", "tpm";q=600000;w=60',
            "RateLimit": '"rpm";r=0;t=3, "tpm";r=5000;t=30',
        },
        "ietf-structured",
        600,
        600_000,
        3.0,
        False,
    ),
    (  # structured, 100 per 60 s, remaining 50 in 30 s
        {"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"default";r=50;t=30'},
        "ietf-structured",
        100,
        None,
        None,
        False,
    ),
    (  # structured quota per 10 s: 10x per minute
        {"RateLimit-Policy": '"burst";q=100000;w=10;qu="tokens"'},
        "ietf-structured",
        None,
        600_000,
        None,
        False,
    ),
    (  # X-RateLimit with the reset as seconds to wait
        {"X-RateLimit-Limit": "600000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "7"},
        "x-ratelimit",
        None,
        600_000,
        7.0,
        False,
    ),
    (  # ... as an epoch time in seconds
        {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 20)},
        "x-ratelimit",
        60,
        None,
        20.0,
        False,
    ),
    (  # ... as an epoch time in milliseconds
        {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW * 1000) + 2500)},
        "x-ratelimit",
        60,
        None,
        2.5,
        False,
    ),
    (  # Fireworks: the adaptive prompt-token limit in tokens per SECOND, and an over-limit mark
        {"x-ratelimit-limit-tokens-prompt": "15000", "x-ratelimit-over-limit": "yes"},
        "fireworks",
        None,
        900_000,
        None,
        True,
    ),
    (  # Fireworks with a per-minute value (older docs): taken as per minute
        {"x-ratelimit-limit-tokens-prompt": "3600000", "x-ratelimit-over-limit": "no"},
        "fireworks",
        None,
        3_600_000,
        None,
        False,
    ),
    (  # mixed styles: the tightest tokens limit wins
        {"x-ratelimit-limit-tokens": "1000000", "RateLimit-Limit": "600000", "RateLimit-Policy": "600000;w=60"},
        "openai",
        None,
        600_000,
        None,
        False,
    ),
    ({"content-type": "application/json", "retry-after": "3"}, None, None, None, None, False),  # no headers
]


@pytest.mark.parametrize(("headers", "style", "rpm", "tpm", "wait", "over"), CASES)
def test_every_header_style_is_understood(headers, style, rpm, tpm, wait, over):
    found = parse_rate_headers(headers, NOW)
    assert found.style == style
    assert found.requests_per_minute == (pytest.approx(rpm) if rpm is not None else None)
    assert found.tokens_per_minute == (pytest.approx(tpm) if tpm is not None else None)
    assert found.wait == (pytest.approx(wait, abs=0.01) if wait is not None else None)
    assert found.over_limit is over
    assert found.adaptive is (style == "fireworks")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("12ms", 0.012), ("1.5s", 1.5), ("1h2m3s", 3723.0), ("20", 20.0), ("soon", None)],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_resets_as_delta_or_epoch():
    assert parse_reset("30", NOW) == 30.0
    assert parse_reset(str(NOW + 12), NOW) == pytest.approx(12.0)
    assert parse_reset(str((NOW + 3) * 1000), NOW) == pytest.approx(3.0)
    assert parse_reset(str(NOW - 100), NOW) == 0.0  # a reset in the past: no wait


def test_structured_items_keep_names_and_params():
    assert parse_items('"default";q=100;w=60, 10;w=1') == [('"default"', {"q": "100", "w": "60"}), ("10", {"w": "1"})]
