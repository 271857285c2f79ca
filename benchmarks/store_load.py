"""History store under load: 1,000 conversations x 100 messages, listing and search timings.

Fills a fresh data directory through the store's own schema (FTS triggers included) in one
transaction, then times what the window does: list the conversations, open one (its messages),
search as you type (a common word, a rare word, a prefix, two words, no match). Prints the
median and the 95th percentile of each over ``--repeat`` runs.

    .venv/bin/python benchmarks/store_load.py [--conversations 1000] [--messages 100]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.history.store import HistoryStore

WORDS = (  # noqa: SIM905 (a sentence of words reads better than a list literal)
    "screen page chart table window invoice total amount date name address figure caption "
    "column row value cell header footer paragraph title summary answer question image photo "
    "receipt report slide graph axis legend label button menu dialog error message warning"
).split()
RARE = "zygomorphic"


def populate(store: HistoryStore, conversations: int, messages: int, seed: int = 0) -> None:
    """Add ``conversations`` x ``messages`` messages of 20-60 words; one in 1000 holds RARE."""
    rng = random.Random(seed)
    now = time.time()
    conn = store.db.conn
    with conn:
        for c in range(conversations):
            cur = conn.execute(
                "INSERT INTO conversations (title, created_at, updated_at) VALUES (?, ?, ?)",
                (f"conversation {c}: {' '.join(rng.choices(WORDS, k=3))}", now + c, now + c),
            )
            cid = cur.lastrowid
            rows = []
            for m in range(messages):
                words = rng.choices(WORDS, k=rng.randint(20, 60))
                if rng.random() < 0.001:
                    words[rng.randrange(len(words))] = RARE
                role = ("user", "assistant")[m % 2]
                rows.append((cid, role, " ".join(words), now + c + m / 1000))
            conn.executemany(
                "INSERT INTO messages (conversation_id, role, content, created_at)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    fn()  # warm the page cache once, as an open app has
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def measure(store: HistoryStore, repeat: int = 20) -> dict[str, tuple[float, float]]:
    """Median and p95 milliseconds of each operation the window runs on the history."""
    ids = [c.id for c in store.conversations()]
    middle = ids[len(ids) // 2]
    return {
        "list conversations": _time(store.conversations, repeat),
        "open one (its messages)": _time(lambda: store.messages(middle), repeat),
        "search common word": _time(lambda: store.search("screen"), repeat),
        "search rare word": _time(lambda: store.search(RARE), repeat),
        "search as you type 'sc'": _time(lambda: store.search("sc"), repeat),
        "search two words": _time(lambda: store.search("invoice total"), repeat),
        "search no match": _time(lambda: store.search("nonexistentword"), repeat),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(Path(tmp))
        start = time.perf_counter()
        populate(store, args.conversations, args.messages)
        fill = time.perf_counter() - start
        size = store.db_path.stat().st_size / 2**20
        print(
            f"{args.conversations:,} conversations x {args.messages} messages "
            f"(filled in {fill:.1f} s, database {size:.0f} MiB)"
        )
        print(f"{'operation':<28} {'median ms':>10} {'p95 ms':>8}")
        for name, (median, p95) in measure(store, args.repeat).items():
            print(f"{name:<28} {median:>10.2f} {p95:>8.2f}")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
