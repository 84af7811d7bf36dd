"""Write a small, deterministic sample dataset for ``batchembed`` demos and tests.

    python jobs/make_sample.py --out data/sample --rows 3000

Produces ``part-0.parquet`` and ``part-1.parquet`` under ``--out`` with columns ``id`` (int64, unique),
``title``, ``body`` and ``category`` (strings): synthetic product reviews, support tickets and short
articles built from templates and a seeded ``random.Random``, so every run writes identical rows.
Bodies range from one sentence to a couple of paragraphs; a few are null or empty on purpose, to
exercise the pipeline's handling of missing text. Standard library + pyarrow only.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PRODUCTS = [
    "headphones",
    "coffee grinder",
    "laptop stand",
    "running shoes",
    "desk lamp",
    "blender",
    "backpack",
    "smart watch",
    "electric kettle",
    "office chair",
    "phone case",
    "air purifier",
]
ADJ_GOOD = ["sturdy", "quiet", "comfortable", "well made", "easy to use", "reliable", "stylish", "fast"]
ADJ_BAD = ["flimsy", "noisy", "uncomfortable", "cheaply made", "confusing", "unreliable", "slow"]
ISSUES = [
    "my order arrived damaged",
    "I was charged twice",
    "the app keeps logging me out",
    "the tracking number does not work",
    "my password reset email never arrived",
    "the refund has not shown up yet",
    "the device will not turn on after the update",
]
TOPICS = [
    "remote work",
    "city cycling",
    "home gardening",
    "battery recycling",
    "sleep habits",
    "small business loans",
    "public libraries",
    "electric buses",
    "coffee farming",
]

REVIEW = [
    "I bought the {p} {t} ago and it has been {g} so far.",
    "Honestly the {p} feels {b}, and I expected more for the price.",
    "Delivery was quick and the {p} looks exactly like the photos.",
    "After {t} of daily use the {p} is still {g}, although the manual is {b}.",
    "I would recommend this {p} to anyone who wants something {g}.",
    "Customer service replaced my {p} without any questions, which I appreciated.",
    "The battery life is shorter than advertised, but the {p} is {g} otherwise.",
]
TICKET = [
    "Hello, {i} and I need help as soon as possible.",
    "I contacted you {t} ago about this and nobody has replied.",
    "Order number {n} is affected; please check what went wrong.",
    "I already tried restarting and reinstalling, with no change.",
    "Could you tell me whether this is a known problem and when it will be fixed?",
    "Thanks in advance for looking into it.",
]
ARTICLE = [
    "New figures suggest that interest in {o} has grown steadily over the past {t}.",
    "Experts say the change is driven by cost, convenience and changing habits.",
    "Local groups have started workshops to help newcomers get started with {o}.",
    "Critics argue that the benefits are overstated and that the data is incomplete.",
    "Several cities are now reviewing their budgets to support {o} next year.",
    "For most people, the simplest first step is to talk to someone who has tried it.",
]
TIMES = ["two weeks", "a month", "three months", "half a year", "a year"]


def fill(rng: random.Random, template: str) -> str:
    """Fill one template with random words (unused placeholders are ignored)."""
    return template.format(
        p=rng.choice(PRODUCTS),
        g=rng.choice(ADJ_GOOD),
        b=rng.choice(ADJ_BAD),
        t=rng.choice(TIMES),
        i=rng.choice(ISSUES),
        o=rng.choice(TOPICS),
        n=rng.randrange(100000, 999999),
    )


def paragraph(rng: random.Random, templates: list[str], lo: int, hi: int) -> str:
    """A paragraph of ``lo``..``hi`` sentences drawn without repeats from ``templates``."""
    return " ".join(fill(rng, t) for t in rng.sample(templates, rng.randint(lo, min(hi, len(templates)))))


def make_row(rng: random.Random, i: int) -> dict:
    """One row: a review, a ticket or an article, with lengths from one sentence to two paragraphs."""
    category = rng.choices(["review", "support", "article"], weights=[5, 3, 2])[0]
    if category == "review":
        title, body = f"Review: {rng.choice(PRODUCTS)}", paragraph(rng, REVIEW, 1, 3)
    elif category == "support":
        title = f"Ticket #{10000 + i}: {rng.choice(ISSUES)}"
        body = paragraph(rng, TICKET, 1, 4)
    else:
        title = f"What is changing in {rng.choice(TOPICS)}"
        body = "\n\n".join(paragraph(rng, ARTICLE, 2, 5) for _ in range(rng.randint(1, 2)))
    r = rng.random()
    if r < 0.005:
        body = None
    elif r < 0.01:
        body = ""
    return {"id": i, "title": title, "body": body, "category": category}


def main(argv: list[str] | None = None) -> int:
    """Write ``--rows`` rows as two Parquet files under ``--out``, overwriting earlier output."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/sample", help="output directory (default data/sample)")
    ap.add_argument("--rows", type=int, default=3000, help="number of rows (default 3000)")
    ap.add_argument("--seed", type=int, default=20240601, help="random seed (default fixed)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    rows = [make_row(rng, i) for i in range(args.rows)]
    schema = pa.schema([("id", pa.int64()), ("title", pa.string()), ("body", pa.string()), ("category", pa.string())])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    half = (len(rows) + 1) // 2
    for n, chunk in enumerate([rows[:half], rows[half:]]):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), out / f"part-{n}.parquet")
    print(f"wrote {len(rows)} rows to {out}/part-0.parquet and part-1.parquet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
