"""Seconds per optimiser step of one training stage, by global batch size.

A step of the small default model is far from the GPU's arithmetic limit: if its time hardly
grows with the batch, the step is bound by kernel launches and host work, and a larger batch
buys samples for free. This prints the table that says which (held-out batches are encoded
before the clock starts, so the loader's time is not in it; `train_loader.py` measures that):

    python -m benchmarks.train_step engine/train/configs/default/reading.toml \\
        --init CKPT_OR_CONFIG [--teacher CKPT] [--batch 128,256,512] [--steps 8] [--device cuda]
        [--distinct 1] [--workers 0] [--profile]

Columns: global batch, seconds per step (forward, backward, clipping and AdamW, one micro-batch
of the whole batch) and how much of it went to waiting for data, samples and tokens (padding
included) per second, peak GPU memory, and how often the caching allocator had to free its
cache and retry an allocation during the timed steps (each a device-wide sync).
`--distinct K` cycles K different batches instead of reusing one: the training loop never sees
the same sequence and image sizes twice, so a cost that depends on new shapes (re-planning,
re-tuning, re-allocation) shows only with K > 1.
`--workers N` takes each step's batch from the training loop's own loader with N worker
processes (page-locked, copied at the step's start), as `trainer.train` does: the loop's step
with its data, its copies and the CPU its workers take from the step's host work.
`--profile` adds the top operators of one step by device time, the number of kernels launched and
the number of aten operators dispatched (on any device: the step's host work on a GPU).
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

from engine.train import distributed  # noqa: E402
from engine.train.config import TrainConfig  # noqa: E402
from engine.train.data import EncodedStream, Shard, batch_loader, collate  # noqa: E402
from engine.train.trainer import (  # noqa: E402
    allocator_retries,
    autocast_for,
    optimizer_step,
    prepare,
    source_dir,
)
from kernels.sdpa import sdpa_context  # noqa: E402

EVAL_SEED = 424_242  # not a training seed (those are 1-7)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    cfg: TrainConfig, steps: int, profile: bool, distinct: int = 1, workers: int = 0
) -> dict[str, float | str]:
    """Time `steps` updates after two warm-up updates, cycling `distinct` global batches, or
    with `workers`, taking each step's batch from the training loop's own loader."""
    ctx = distributed.setup(cfg.device)
    student, params, optim, objective = prepare(cfg, ctx)
    data = EncodedStream.from_dir(cfg.data, source_dir(cfg))
    pad = data.tokenizer.special.pad
    rope = student.model.config  # positions computed with the batch, as the loop's workers do
    batches = [
        collate(
            [data[EVAL_SEED + k * cfg.batch_size + i] for i in range(cfg.batch_size)], pad, rope
        )
        for k in range(distinct if not workers else 0)
    ]
    micros = [[b.to(ctx.device)] for b in batches]
    loader = None
    if workers:
        pin = ctx.device.type == "cuda"
        loader = batch_loader(data, Shard(0, 1, cfg.batch_size), 0, steps + 3, workers, pad,
                              cfg.micro_batch, pin_memory=pin, rope=rope)  # fmt: skip
    autocast = autocast_for(cfg, ctx.device)
    taken = 0
    waited = 0.0
    tokens = 0

    def step() -> None:
        nonlocal taken, waited, tokens
        if loader is None:
            micro = micros[taken % distinct]
        else:
            t = time.perf_counter()
            fresh = next(loader)
            waited += time.perf_counter() - t
            micro = [b.to(ctx.device) for b in fresh]  # as the training loop does
        tokens += sum(b.input_ids.numel() for b in micro)
        taken += 1
        optimizer_step(ctx, objective, micro, params, optim, cfg.grad_clip, autocast,
                       lambda: sdpa_context(ctx.device))  # fmt: skip

    student.train()
    for _ in range(2):
        step()
    _sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    waited, tokens = 0.0, 0
    retries = allocator_retries(ctx.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(ctx.device)
    dt = (time.perf_counter() - t0) / steps
    row: dict[str, float | str] = {
        "batch": cfg.batch_size,
        "s/step": dt,
        "wait": waited / steps,
        "samples/s": cfg.batch_size / dt,
        "tokens/s": tokens / steps / dt,
        "peak GiB": torch.cuda.max_memory_allocated(ctx.device) / 2**30
        if ctx.device.type == "cuda"
        else float("nan"),
        "retries": allocator_retries(ctx.device) - retries,
    }
    if profile:
        row["profile"] = _profile(step, ctx.device)
    if loader is not None:
        loader.close()
    distributed.teardown(ctx)
    return row


def _profile(step: object, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        step()  # type: ignore[operator]
        _sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    table = events.table(sort_by=key, row_limit=15)
    return (
        f"kernels launched in one step: {kernels}; aten operators dispatched: {_count_ops(step)}"
        f"\n\n```\n{table}\n```"
    )


def _count_ops(step: object) -> int:
    """Operators one step dispatches (leaf aten calls, forward, backward and optimiser): on a
    GPU each is a launch or host work, so this is the step's host cost on any device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()  # type: ignore[operator]
    return Count.n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="stage config (TOML)")
    p.add_argument("--init", required=True, help="checkpoint directory or config.json")
    p.add_argument(
        "--teacher",
        help="the distillation stages' teacher checkpoint (default: --init, which is the "
        "teacher of distill_layerwise)",
    )
    p.add_argument("--batch", default="128,256,512", help="global batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--distinct", type=int, default=1, help="different batches to cycle (new shapes per step)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="take each step's batch from the training loop's loader with this many workers "
        "(0: pre-encoded batches)",
    )
    p.add_argument("--profile", action="store_true", help="also profile one step per batch")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # only the distillation stages read `teacher`; the others leave it unused
        base = TrainConfig.from_file(args.config, init=args.init, out_dir=tmp, device=args.device,
                                     teacher=args.teacher or args.init)  # fmt: skip
        rows = []
        for b in (int(x) for x in args.batch.split(",") if x):
            cfg = base.with_(batch_size=b, micro_batch=b)
            rows.append(measure(cfg, args.steps, args.profile, args.distinct, args.workers))
            print(f"batch {b}: {rows[-1]['s/step']:.3f} s/step", file=sys.stderr, flush=True)
    source = f"loader, {args.workers} workers" if args.workers else f"{args.distinct} distinct"
    print(f"{base.stage} stage ({Path(args.config).name}), init {args.init}, {args.steps} steps, "
          f"batches: {source}\n")  # fmt: skip
    print("| batch | s/step | waiting for data | samples/s | tokens/s (padded) | peak GiB "
          "| allocator retries |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['s/step']:.3f} | {r['wait']:.3f} | {r['samples/s']:.0f} "
              f"| {r['tokens/s']:.0f} | {r['peak GiB']:.2f} | {r['retries']} |")  # fmt: skip
    for r in rows:
        if "profile" in r:
            print(f"\n### batch {r['batch']}\n\n{r['profile']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
