"""Per-stage loss of one micro-batch, normalised so that summing over micro-batches and ranks
(FSDP averages gradients over ranks) gives the loss of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from engine.train.data import Batch
from engine.train.losses import distill_kl, glyph_loss, layer_mse, next_token_loss

if TYPE_CHECKING:
    from engine.train.forward import TrainingForward


@contextmanager
def teacher_inputs(layers: nn.ModuleList, indices: list[int], inputs: list[torch.Tensor]
                   ) -> Iterator[None]:  # fmt: skip
    """While active, layer i (for i in `indices`) runs on `inputs[i]` instead of its own input.

    Stage 1 trains each converted layer to map the teacher's input of that layer to the
    teacher's output, independent of the layers before it.
    """
    handles = []
    for i in indices:

        def hook(module: nn.Module, args: tuple, i: int = i) -> tuple:
            x = inputs[i].detach().to(args[0].dtype).requires_grad_(torch.is_grad_enabled())
            return (x, *args[1:])

        handles.append(layers[i].register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Objective:
    """Computes a stage's loss for one micro-batch.

    Args:
        stage: the TrainConfig stage.
        student: the TrainingForward being trained (maybe FSDP-sharded).
        teacher: the TrainingForward of the frozen teacher, or None.
        linear_layers: indices of the student's linear_attention layers (stage 1).
        temperature, mse_factor, glyph_weight: as TrainConfig.

    Attributes:
        glyph_loss: the glyph term of the micro-batches since the last `take_glyph_loss`.
    """

    def __init__(
        self,
        stage: str,
        student: nn.Module,
        teacher: nn.Module | None,
        linear_layers: list[int],
        temperature: float,
        mse_factor: float,
        glyph_weight: float = 0.0,
    ) -> None:
        self.stage = stage
        self.student = student
        self.teacher = teacher
        self.linear_layers = linear_layers
        self.temperature = temperature
        self.mse_factor = mse_factor
        self.glyph_weight = glyph_weight
        self.glyph_loss = 0.0

    def normaliser(self, batch: Batch) -> float:
        """What this micro-batch adds to the global denominator."""
        if self.stage in ("teacher", "sft", "lora"):
            return float(batch.num_targets)
        if self.stage == "distill_kl":
            return float(batch.mask.sum())
        return 1.0  # distill_layerwise: mean over micro-batches

    def __call__(self, batch: Batch, scale: float) -> tuple[torch.Tensor, float]:
        """(loss to backward, the same as a float) with `scale` = world / global normaliser."""
        args = (batch.input_ids, batch.pixel_values, batch.image_grid_thw)
        if self.stage in ("teacher", "sft", "lora"):
            glyphs: list[torch.Tensor] = []
            read_glyphs = self.glyph_weight > 0 and batch.glyph_targets is not None
            logits, _ = self.student(*args, glyph_logits=glyphs if read_glyphs else None)
            total, _ = next_token_loss(logits, batch.labels)
            loss = total * scale
            if glyphs:
                assert batch.glyph_targets is not None
                term = glyph_loss(glyphs[0], batch.glyph_targets) * (self.glyph_weight * scale)
                self.glyph_loss += float(term.detach())
                loss = loss + term
        elif self.stage == "distill_kl":
            assert self.teacher is not None
            with torch.no_grad():
                t_logits, _ = self.teacher(*args)
            logits, _ = self.student(*args)
            total, _ = distill_kl(logits, t_logits, batch.mask, self.temperature)
            loss = total * scale
        else:
            assert self.teacher is not None
            with torch.no_grad():
                _, t_hidden = self.teacher(*args, return_hidden=True)
            layers = _decoder_layers(self.student)
            with teacher_inputs(layers, self.linear_layers, t_hidden):
                _, s_hidden = self.student(*args, return_hidden=True)
            mse = layer_mse(
                [s_hidden[i + 1] for i in self.linear_layers],
                [t_hidden[i + 1] for i in self.linear_layers],
                batch.mask,
            )
            loss = mse * self.mse_factor * scale
        return loss, float(loss.detach())

    def take_glyph_loss(self) -> float:
        """The glyph term accumulated since the last call (0 without the head), then reset."""
        value, self.glyph_loss = self.glyph_loss, 0.0
        return value


def _decoder_layers(forward: nn.Module) -> nn.ModuleList:
    # `forward` is the student's TrainingForward (maybe FSDP-sharded, which keeps its class)
    return cast("TrainingForward", forward).model.model.language_model.layers
