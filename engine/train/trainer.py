"""One stage's training run: data, model, optimiser, loop, resume, export, loss curve.

The loop reads top to bottom: each step draws this rank's share of the global batch, runs it in
micro-batches, steps AdamW (warmup then cosine), logs, and every `save_every` steps writes a
resumable trainer state. At the end it exports an engine checkpoint and the loss curve.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.train import build, checkpointing, distributed
from engine.train.config import TrainConfig
from engine.train.curves import plot_losses
from engine.train.data import Batch, EncodedStream, Shard, batch_loader
from engine.train.forward import GLYPH_HEAD_FILE, TrainingForward
from engine.train.objectives import Objective
from kernels.sdpa import sdpa_context

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warmup to `cfg.lr`, then cosine decay to 10% of it at the end of the run.

    Args:
        time_fraction: elapsed / time budget; the decay follows the larger of it and the
            fraction of steps done.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), time_fraction)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def source_dir(cfg: TrainConfig) -> Path:
    """Where the tokenizer and preprocessor files of this run live."""
    p = Path(cfg.init)
    return p if p.is_dir() else p.parent


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one stage; return the exported checkpoint directory."""
    ctx = distributed.setup(cfg.device)
    out_dir = Path(cfg.out_dir)
    student, params, optim, objective = prepare(cfg, ctx)
    start, history = checkpointing.load_trainer_state(ctx, out_dir, student, optim)
    src = source_dir(cfg)
    dataset = EncodedStream.from_dir(cfg.data, src)
    shard = Shard(ctx.rank, ctx.world, cfg.batch_size)
    loader = batch_loader(
        dataset,
        shard,
        start,
        cfg.steps,
        cfg.num_workers,
        dataset.tokenizer.special.pad,
        cfg.micro_batch,
        pin_memory=ctx.device.type == "cuda" and cfg.num_workers > 0,
        rope=student.model.config,  # the workers compute the M-RoPE positions
    )
    autocast = autocast_for(cfg, ctx.device)

    # every batch brings new image and sequence lengths: keep SDPA off cuDNN's per-shape plans
    def attention() -> contextlib.AbstractContextManager[None]:
        return sdpa_context(ctx.device)  # a fresh one per step: a generator context enters once

    bar = _progress(ctx, start, cfg)
    student.train()
    t0 = time.monotonic()
    next_export = cfg.export_every_s
    done = start
    waited = 0.0  # seconds spent waiting for data since the last log line
    stepping = 0.0  # seconds in optimizer_step (copy, forward, backward, update) since then
    skipped = 0  # updates skipped for a non-finite gradient
    timed = cfg.time_budget_s > 0 or cfg.export_every_s > 0
    t_wait = time.monotonic()
    for step, batches in zip(range(start, cfg.steps), loader, strict=False):
        waited += time.monotonic() - t_wait
        # one clock reading per step (a broadcast when distributed) serves budget and exports
        elapsed = _elapsed(ctx, t0) if timed else 0.0
        frac = elapsed / cfg.time_budget_s if cfg.time_budget_s > 0 else 0.0
        if frac >= 1.0:
            log.info("time budget of %.0f s spent after %d steps", cfg.time_budget_s, step)
            break
        lr = lr_at(step, cfg, frac)
        for group in optim.param_groups:
            group["lr"] = lr
        t_step = time.monotonic()
        micro = [b.to(ctx.device) for b in batches]
        local, grad_norm = optimizer_step(ctx, objective, micro, params, optim, cfg.grad_clip,
                                          autocast, attention)  # fmt: skip
        stepping += time.monotonic() - t_step  # it ends in a host sync (the gradient norm)
        if not math.isfinite(grad_norm):
            skipped += 1
            log.warning(
                "step %d: gradient norm %s, update skipped (%d so far)",
                step + 1,
                grad_norm,
                skipped,
            )
        step_loss = distributed.all_sum(ctx, local) / ctx.world
        history.append({"step": step + 1, "loss": step_loss, "lr": lr})
        if objective.glyph_weight > 0:  # the glyph head's share of the loss, to see it learn
            history[-1]["glyph"] = distributed.all_sum(ctx, objective.take_glyph_loss()) / ctx.world
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", gnorm=f"{grad_norm:.2f}")
        if ctx.is_main and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            log.info(
                "step %d/%d loss %.4f%s grad_norm %.3f (%.1f s; since the last line %.1f s "
                "waiting for data, %.1f s in steps%s)",
                step + 1,
                cfg.steps,
                step_loss,
                f" (glyphs {history[-1]['glyph']:.4f})" if "glyph" in history[-1] else "",
                grad_norm,
                time.monotonic() - t0,
                waited,
                stepping,
                f"; {allocator_retries(ctx.device)} allocator retries"
                if ctx.device.type == "cuda"
                else "",
            )
            waited = stepping = 0.0
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            checkpointing.save_trainer_state(ctx, out_dir, student, optim, step + 1, history)
        if cfg.export_every_s > 0 and elapsed >= next_export:
            _export(ctx, cfg, student, out_dir, "latest")
            next_export += cfg.export_every_s
        t_wait = time.monotonic()
    loader.close()  # stops the data workers now, not when the garbage collector finds them
    if bar is not None:
        bar.close()
    checkpointing.save_trainer_state(ctx, out_dir, student, optim, done, history)
    dest = _finish(ctx, cfg, student, history, out_dir)
    distributed.teardown(ctx)
    return dest


def prepare(
    cfg: TrainConfig, ctx: distributed.DistContext
) -> tuple[TrainingForward, list[nn.Parameter], torch.optim.Optimizer, Objective]:
    """The stage's models on `ctx.device`, as its config says: (the forward that trains, its
    trainable parameters, their AdamW, the stage's objective with its teacher if any)."""
    torch.manual_seed(cfg.seed)
    model = build.build_student(cfg, ctx.device)
    config = model.config
    build.freeze(model, cfg, config)
    if cfg.stage == "lora":
        # peft injects the adapters into `model` in place; the wrapper itself is not needed
        build.add_lora(model, cfg)
    linear = [i for i, t in enumerate(config.text.layer_types) if t == "linear_attention"]
    student = TrainingForward(model, glyph_head=cfg.glyph_weight > 0)
    _load_glyph_head(student, source_dir(cfg))
    teacher_model = build.build_teacher(cfg, ctx.device)
    shared = build.shares_inputs(model, teacher_model)  # before sharding: whole tensors
    distributed.shard(student, build.shardable_blocks(model), ctx)
    teacher = TrainingForward(teacher_model) if teacher_model is not None else None
    params = [p for p in student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    objective = Objective(cfg.stage, student, teacher, linear, cfg.temperature, cfg.mse_factor,
                          cfg.glyph_weight, shared_inputs=shared)  # fmt: skip
    return student, params, optim, objective


def allocator_retries(device: torch.device) -> int:
    """How often the CUDA caching allocator has freed its cache to retry an allocation (each
    time a device-wide sync): new shapes every step can fragment it until it does so often.
    0 off CUDA."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))


def autocast_for(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when the config asks for it (parameters stay float32)."""
    if cfg.dtype == "bfloat16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer_step(
    ctx: distributed.DistContext,
    objective: Objective,
    micro: list[Batch],
    params: list[nn.Parameter],
    optim: torch.optim.Optimizer,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager[object],
    attention: Callable[[], contextlib.AbstractContextManager[None]],
) -> tuple[float, float]:
    """One update from this rank's micro-batches of a global batch: (its share of the loss,
    the gradient norm before clipping). A non-finite norm skips the update: one overflowing
    batch (bf16) must not turn every weight into NaN."""
    norm = distributed.all_sum(ctx, sum(objective.normaliser(b) for b in micro))
    scale = ctx.world / max(norm, 1.0)
    local = 0.0
    for b in micro:
        with autocast, attention():
            loss, value = objective(b, scale)
        loss.backward()
        local += value
    grad_norm = float(nn.utils.clip_grad_norm_(params, grad_clip))
    if math.isfinite(grad_norm):
        optim.step()
    optim.zero_grad(set_to_none=True)
    return local, grad_norm


def _finish(
    ctx: distributed.DistContext,
    cfg: TrainConfig,
    student: TrainingForward,
    history: list[dict[str, float]],
    out_dir: Path,
) -> Path:
    """Export the final checkpoint, write the loss log and curve."""
    dest = _export(ctx, cfg, student, out_dir, "checkpoint")
    if ctx.is_main:
        with open(out_dir / "losses.jsonl", "w", encoding="utf-8") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        plot_losses(history, out_dir / "loss.png", f"{cfg.stage} ({cfg.steps} steps)")
    distributed.barrier(ctx)
    return dest


def _export(
    ctx: distributed.DistContext,
    cfg: TrainConfig,
    student: TrainingForward,
    out_dir: Path,
    name: str,
) -> Path:
    """Gather the weights on rank 0, merge LoRA, export them to `out_dir / name` (with the glyph
    head's weights beside them when there is one)."""
    full = checkpointing.full_model_state(ctx, student)
    dest = out_dir / name
    if ctx.is_main:
        # the model's weights only: training-only heads (glyph_head) are not the model's
        weights = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        if cfg.stage == "lora":
            weights = build.merge_lora(weights, cfg.lora.alpha / cfg.lora.r)
        model_cls = type(student.model)
        plain = model_cls(student.model.config)
        plain.load_state_dict(weights)
        dest = checkpointing.export_checkpoint(
            plain, out_dir, source_dir(cfg), cfg.max_shard_bytes,
            torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32, name,
        )  # fmt: skip
        head = {
            k.removeprefix("glyph_head."): v.contiguous()
            for k, v in full.items()
            if k.startswith("glyph_head.")
        }
        if head:
            from safetensors.torch import save_file

            save_file(head, str(dest / GLYPH_HEAD_FILE))
    distributed.barrier(ctx)
    return dest


def _load_glyph_head(student: TrainingForward, source: Path) -> None:
    """Continue the glyph head saved beside the checkpoint a run starts from, if any."""
    path = source / GLYPH_HEAD_FILE
    if student.glyph_head is None or not path.is_file():
        return
    from safetensors.torch import load_file

    student.glyph_head.load_state_dict(load_file(str(path)))
    log.info("glyph head continued from %s", path)


def _elapsed(ctx: distributed.DistContext, t0: float) -> float:
    """Seconds since `t0` as rank 0 counts them, so every rank takes the same decisions."""
    elapsed = time.monotonic() - t0
    if ctx.is_distributed:
        elapsed = float(distributed.broadcast_object(ctx, elapsed))
    return elapsed


def _progress(ctx: distributed.DistContext, start: int, cfg: TrainConfig):  # noqa: ANN202
    if not ctx.is_main:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.steps, initial=start, desc=cfg.stage, dynamic_ncols=True)
