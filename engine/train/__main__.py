"""`python -m engine.train CONFIG.toml` (under torchrun for several processes).

Also reachable as `infinitevl train CONFIG.toml`. Flags override the file's top-level keys.
"""

from __future__ import annotations

import argparse
import logging

from engine.train.config import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="infinitevl train", description=__doc__)
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the train command (shared with `infinitevl train`)."""
    p.add_argument("config", help="stage config (TOML), e.g. engine/train/configs/default/sft.toml")
    p.add_argument("--init", help="checkpoint (or config.json) the model starts from")
    p.add_argument("--teacher", help="teacher checkpoint (distillation stages)")
    p.add_argument("--out-dir", help="where checkpoints, trainer state and loss curve go")
    p.add_argument("--steps", type=int, help="number of optimiser steps")
    p.add_argument("--batch-size", type=int, help="global batch, in samples")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--num-workers", type=int, help="DataLoader processes rendering samples")
    p.add_argument("--time-budget", type=float, help="seconds of training, then export")
    p.add_argument(
        "--data-seed", type=int,
        help="the data stream's seed instead of the config's: a further run from a checkpoint "
        "of the same stage sees new samples, not the first run's again",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Train one stage as the config and flags say; print where the checkpoint went."""
    from engine.train.trainer import train

    cfg = TrainConfig.from_file(
        args.config, init=args.init, teacher=args.teacher, out_dir=args.out_dir,
        steps=args.steps, batch_size=args.batch_size, device=args.device,
        num_workers=args.num_workers, time_budget_s=args.time_budget,
        data=None if args.data_seed is None else {"seed": args.data_seed},
    )  # fmt: skip
    dest = train(cfg)
    print(dest)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
