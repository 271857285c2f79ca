"""How fast the training data reaches the training loop, per stage of the default recipe.

The loop is single-threaded: whatever it spends receiving a step's batches is time the GPU
waits. Prints a table per worker count: seconds per step delivered (workers rendering, encoding
and collating; bounded by this machine's cores) and the loop's own milliseconds per step
(taking the step from the loader and reading every patch once, as the copy to the GPU does).

    .venv/bin/python benchmarks/train_loader.py [--stage teacher] [--workers 0,2] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.train.config import TrainConfig  # noqa: E402
from engine.train.data import EncodedStream, Shard, batch_loader  # noqa: E402
from engine.train.pipeline import CONFIGS  # noqa: E402
from engine.train.recipe import write_start  # noqa: E402


def measure(cfg: TrainConfig, start: Path, workers: int, steps: int) -> tuple[float, float]:
    """(seconds per step delivered, loop-side seconds per step), after 2 warm-up steps."""
    dataset = EncodedStream.from_dir(cfg.data, start)
    pad = dataset.tokenizer.special.pad
    loader = batch_loader(
        dataset, Shard(0, 1, cfg.batch_size), 0, steps + 2, workers, pad, cfg.micro_batch
    )
    loop = 0.0
    t0 = time.perf_counter()
    for i, batches in enumerate(loader):
        if i == 2:
            t0, loop = time.perf_counter(), 0.0
        t = time.perf_counter()
        for b in batches:
            if b.pixel_values is not None:
                b.pixel_values.sum()  # every page of the patches touched once
        loop += time.perf_counter() - t
    return (time.perf_counter() - t0) / steps, loop / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="teacher", help="a config of engine/train/configs/default")
    p.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts")
    p.add_argument("--steps", type=int, default=10, help="steps timed per worker count")
    p.add_argument("--start", type=Path, help="tokenizer + preprocessor folder (default: made)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = args.start or write_start(Path(tmp) / "start")
        cfg = TrainConfig.from_file(CONFIGS / f"{args.stage}.toml", init=str(start), out_dir=tmp)
        print(
            f"stage {args.stage}: {cfg.batch_size} samples a step in micro-batches of "
            f"{cfg.micro_batch}, {args.steps} steps timed"
        )
        print("| workers | s per step delivered | loop ms per step |")
        print("| --- | --- | --- |")
        for w in (int(x) for x in args.workers.split(",")):
            delivered, loop = measure(cfg, start, w, args.steps)
            print(f"| {w} | {delivered:.3f} | {loop * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
