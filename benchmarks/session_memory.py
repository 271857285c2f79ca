"""Memory of one long session: RSS and state size after 10K, 100K, 1M tokens of text.

Feeds long text through ``Session.add_user_message`` (the engine's chunked prefill, 2048-token
chunks) in turns of ``--turn-tokens`` tokens, each answered with one token, on the embedded
default model or, without it, on the tiny test checkpoint (``--untrained``: the embedded model's
architecture with random weights, engine/train/recipe.py). Prints one row per checkpoint:
tokens seen, process RSS, state bytes, prefill speed. The state is constant in size, so RSS
should stay flat after the first turns.

    .venv/bin/python benchmarks/session_memory.py [--model DIR] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from engine.default_model import find_default_model
from engine.engine import Engine
from engine.sampling import SamplingParams
from engine.testing import write_tiny_checkpoint

TEXT = (
    "The assistant reads the screen and answers questions about what it sees. A user may ask "
    "what a chart says, or what is written on a page of a long document, page after page. "
)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def run(
    model: Path, total: int, turn_tokens: int, marks: list[int]
) -> list[tuple[int, int, int, float]]:
    engine = Engine.load(model, device="cpu")
    session = engine.new_session()
    per_text = len(engine.tokenizer.encode(TEXT))
    turn_text = TEXT * max(1, turn_tokens // per_text)
    greedy = SamplingParams(max_new_tokens=1)
    rows, start, pending = [], time.perf_counter(), list(marks)
    while session.tokens_seen < total:
        session.add_user_message(turn_text)
        for _ in session.generate(greedy):
            pass
        if pending and session.tokens_seen >= pending[0]:
            pending.pop(0)
            speed = session.tokens_seen / (time.perf_counter() - start)
            rows.append((session.tokens_seen, _rss(), session.state_nbytes, speed))
            seen, mib, state = session.tokens_seen, _rss() / 2**20, session.state_nbytes
            print(f"{seen:>12,} {mib:>10.1f} {state:>12,} {speed:>10,.0f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint (default: embedded, else tiny)"
    )
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="the embedded model's architecture, random weights (memory does not depend on them)",
    )
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--turn-tokens", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or find_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        if args.untrained and args.model is None:
            from engine.train.recipe import write_untrained

            model = write_untrained(Path(tmp) / "untrained")
        elif model is None:
            model = write_tiny_checkpoint(Path(tmp) / "tiny")
            print("no embedded default model: using the tiny test checkpoint", file=sys.stderr)
        marks = [
            m for m in (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000) if m <= args.tokens
        ]
        print(f"model {model}; RSS before load {_rss() / 2**20:.1f} MiB")
        print(f"{'tokens seen':>12} {'RSS MiB':>10} {'state bytes':>12} {'tok/s':>10}")
        rows = run(model, args.tokens, args.turn_tokens, marks)
    first, last = rows[0], rows[-1]
    growth = (last[1] - first[1]) / 2**20
    print(f"RSS growth from {first[0]:,} to {last[0]:,} tokens: {growth:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
