"""Seconds per optimiser step of one training stage, by global batch size, data excluded.

A step of the small default model is far from the GPU's arithmetic limit: if its time hardly
grows with the batch, the step is bound by kernel launches and host work, and a larger batch
buys samples for free. This prints the table that says which (one batch of held-out samples is
encoded once and reused, so the loader's time is not in it; `train_loader.py` measures that):

    python -m benchmarks.train_step engine/train/configs/default/reading.toml \\
        --init CKPT_OR_CONFIG [--teacher CKPT] [--batch 128,256,512] [--steps 8] [--device cuda]
        [--profile]

Columns: global batch, seconds per step (forward, backward, clipping and AdamW, one micro-batch
of the whole batch), samples and tokens (padding included) per second, peak GPU memory.
`--profile` adds the top operators of one step by device time and the number of kernels launched.
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
from engine.train.data import EncodedStream, collate  # noqa: E402
from engine.train.trainer import autocast_for, optimizer_step, prepare, source_dir  # noqa: E402
from kernels.sdpa import sdpa_context  # noqa: E402

EVAL_SEED = 424_242  # not a training seed (those are 1-7)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: TrainConfig, steps: int, profile: bool) -> dict[str, float | str]:
    """Time `steps` updates of one reused global batch after two warm-up updates."""
    ctx = distributed.setup(cfg.device)
    student, params, optim, objective = prepare(cfg, ctx)
    data = EncodedStream.from_dir(cfg.data, source_dir(cfg))
    pad = data.tokenizer.special.pad
    batch = collate([data[EVAL_SEED + i] for i in range(cfg.batch_size)], pad)
    micro = [batch.to(ctx.device)]
    autocast = autocast_for(cfg, ctx.device)

    def step() -> None:
        optimizer_step(ctx, objective, micro, params, optim, cfg.grad_clip, autocast,
                       lambda: sdpa_context(ctx.device))  # fmt: skip

    student.train()
    for _ in range(2):
        step()
    _sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(ctx.device)
    dt = (time.perf_counter() - t0) / steps
    tokens = batch.input_ids.numel()
    row: dict[str, float | str] = {
        "batch": cfg.batch_size,
        "s/step": dt,
        "samples/s": cfg.batch_size / dt,
        "tokens/s": tokens / dt,
        "peak GiB": torch.cuda.max_memory_allocated(ctx.device) / 2**30
        if ctx.device.type == "cuda"
        else float("nan"),
    }
    if profile:
        row["profile"] = _profile(step, ctx.device)
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
    return f"kernels launched in one step: {kernels}\n\n```\n{table}\n```"


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
    p.add_argument("--profile", action="store_true", help="also profile one step per batch")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # only the distillation stages read `teacher`; the others leave it unused
        base = TrainConfig.from_file(args.config, init=args.init, out_dir=tmp, device=args.device,
                                     teacher=args.teacher or args.init)  # fmt: skip
        rows = []
        for b in (int(x) for x in args.batch.split(",") if x):
            rows.append(measure(base.with_(batch_size=b, micro_batch=b), args.steps, args.profile))
            print(f"batch {b}: {rows[-1]['s/step']:.3f} s/step", file=sys.stderr, flush=True)
    print(f"{base.stage} stage ({Path(args.config).name}), init {args.init}, {args.steps} steps\n")
    print("| batch | s/step | samples/s | tokens/s (padded) | peak GiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['s/step']:.3f} | {r['samples/s']:.0f} | {r['tokens/s']:.0f} "
              f"| {r['peak GiB']:.2f} |")  # fmt: skip
    for r in rows:
        if "profile" in r:
            print(f"\n### batch {r['batch']}\n\n{r['profile']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
