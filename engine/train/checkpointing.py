"""What a run leaves behind: the trainer state (resume) and the exported engine checkpoint.

`out_dir/trainer_state.pt`: step, loss history, the trainable tensors and the optimiser, as full
(unsharded) tensors so a run may resume on another number of processes.
`out_dir/checkpoint/`: the model in the format `engine.loader.load_model` reads (LoRA merged),
with the tokenizer and preprocessor files copied from the initial checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from engine.train.distributed import DistContext, barrier, broadcast_object

if TYPE_CHECKING:
    from engine.model.infinitevl import InfiniteVLForConditionalGeneration

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
             "chat_template.json", "generation_config.json")  # fmt: skip


def save_trainer_state(
    ctx: DistContext, out_dir: Path, model: nn.Module, optim: torch.optim.Optimizer,
    step: int, history: list[dict[str, float]],
) -> None:  # fmt: skip
    """Write the trainer state atomically (rank 0); every rank must call it."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(model, optim, options=opts)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f"{STATE_FILE}.tmp"
        torch.save({"step": step, "history": history, "model": model_sd, "optim": optim_sd}, tmp)
        tmp.replace(out_dir / STATE_FILE)
        log.info("trainer state at step %d saved to %s", step, out_dir)
    barrier(ctx)


def load_trainer_state(
    ctx: DistContext, out_dir: Path, model: nn.Module, optim: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """Restore the trainable tensors and optimiser; (0, []) when there is nothing to resume.

    Read with ``weights_only=True``: tensors, numbers and containers, never pickled code.
    """
    path = out_dir / STATE_FILE
    exists = bool(broadcast_object(ctx, path.is_file()))
    if not exists:
        return 0, []
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_state_dict(
        model, optim, model_state_dict=blob["model"], optim_state_dict=blob["optim"], options=opts
    )
    log.info("resumed from %s at step %d", path, blob["step"])
    return int(blob["step"]), list(blob["history"])


def full_model_state(ctx: DistContext, model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model, unsharded, on CPU (complete on rank 0)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # a full state dict offloaded to the CPU holds plain tensors only
    return cast("dict[str, torch.Tensor]", get_model_state_dict(model, options=opts))


def export_checkpoint(
    model: InfiniteVLForConditionalGeneration, out_dir: Path, source_dir: str | Path,
    max_shard_bytes: int, dtype: torch.dtype = torch.bfloat16, name: str = "checkpoint",
) -> Path:  # fmt: skip
    """Save `model` (a plain, unsharded model on rank 0) as an engine checkpoint.

    Args:
        source_dir: checkpoint whose tokenizer/preprocessor files travel with the weights.
        dtype: storage dtype (A_log stays float32).
        name: the folder inside `out_dir` ("latest" for the exports made during a run).
    Returns:
        The checkpoint directory, `out_dir / name`, replaced whole (never half-written).
    """
    from engine.loader import save_checkpoint

    dest = out_dir / name
    tmp = out_dir / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    copy.tie_weights()
    copy.to_dtype(dtype)
    save_checkpoint(copy, tmp, max_shard_bytes=max_shard_bytes)
    src = Path(source_dir)
    src = src if src.is_dir() else src.parent
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    log.info("checkpoint exported to %s", dest)
    return dest
