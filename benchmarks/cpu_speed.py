"""How fast the embedded model's architecture answers on this machine's CPU.

Prints a table, per dtype: prefill of an 800x200 screen region with the OCR prompt, decode
ms/token, and the time an OCR of 40 and of 80 output tokens would take (prefill + decode).
Without ``--model`` it writes the default model's architecture (engine/train/recipe.py: decoder
8 x 320 hybrid, vision 6 x 256, 4,096-entry tokenizer) with random N(0, 0.02) weights stored in
bfloat16: speed does not depend on what the weights learnt, only on how many tokens come out.

    .venv/bin/python benchmarks/cpu_speed.py [--model DIR] [--threads 2] [--tokens 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cpu_dtype import prefill_and_step  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.train.recipe import write_untrained  # noqa: E402


def measure(engine: Engine, image: np.ndarray, tokens: int, repeats: int) -> tuple[float, float]:
    """(median prefill seconds, median decode seconds per token) over ``repeats`` runs."""
    runs = [prefill_and_step(engine, image, tokens) for _ in range(repeats + 1)]
    # the first run warms up
    return statistics.median(r[0] for r in runs[1:]), statistics.median(r[1] for r in runs[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="checkpoint directory (default: see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=100, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_untrained(Path(tmp))
        image = np.random.default_rng(0).integers(0, 256, (200, 800, 3), dtype=np.uint8)
        rows = []
        for dtype in ("float32", "bfloat16"):
            engine = Engine.load(model, device="cpu", dtype=dtype)
            prefill, per_token = measure(engine, image, args.tokens, args.repeats)
            rows.append((dtype, prefill, per_token))
        default = Engine.load(model, device="cpu").info.dtype
    label = "random weights, default-model architecture" if args.model is None else str(model)
    print(f"CPU speed ({label}; {args.threads} threads, torch {torch.__version__})\n")
    print(
        "| dtype | prefill 800x200 region + prompt | decode ms/token "
        "| OCR of 40 tokens | OCR of 80 tokens |"
    )
    print("|---|---|---|---|---|")
    for dtype, prefill, per_token in rows:
        mark = " (default on CPU)" if dtype == default else ""
        print(
            f"| {dtype}{mark} | {prefill * 1000:.0f} ms | {per_token * 1000:.2f} | "
            f"{prefill + 40 * per_token:.2f} s | {prefill + 80 * per_token:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
