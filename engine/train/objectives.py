"""Per-stage loss of one micro-batch, normalised so that summing over micro-batches and ranks
(FSDP averages gradients over ranks) gives the loss of the global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.train.data import Batch
from engine.train.losses import distill_kl, glyph_loss, layer_mse, next_token_loss

if TYPE_CHECKING:
    from engine.train.forward import DecoderInputs


class Objective:
    """Computes a stage's loss for one micro-batch.

    Args:
        stage: the TrainConfig stage.
        student: the TrainingForward being trained (maybe FSDP-sharded).
        teacher: the TrainingForward of the frozen teacher, or None.
        linear_layers: indices of the student's linear_attention layers (stage 1).
        temperature, mse_factor, glyph_weight: as TrainConfig.
        shared_inputs: the student's embedding and vision tower are the teacher's (frozen and
            equal, `build.shares_inputs`): the student reads the decoder inputs the teacher
            computed instead of running its vision tower again.

    Stage 1 (layer-wise) runs only the student's Gated DeltaNet layers, each on the teacher's
    input of that layer, so each learns to map it to the teacher's output independently of the
    layers before it; the rest of the student would only repeat the teacher's work.

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
        shared_inputs: bool = False,
    ) -> None:
        self.stage = stage
        self.student = student
        self.teacher = teacher
        self.linear_layers = linear_layers
        self.temperature = temperature
        self.mse_factor = mse_factor
        self.glyph_weight = glyph_weight
        self.shared_inputs = shared_inputs
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
        pos = batch.position_ids  # None: the forward computes them
        if self.stage in ("teacher", "sft", "lora"):
            glyphs: list[torch.Tensor] = []
            read_glyphs = self.glyph_weight > 0 and batch.glyph_targets is not None
            logits, _ = self.student(
                *args, glyph_logits=glyphs if read_glyphs else None, position_ids=pos
            )
            total, _ = next_token_loss(logits, batch.labels)
            loss = total * scale
            if glyphs:
                assert batch.glyph_targets is not None
                term = glyph_loss(glyphs[0], batch.glyph_targets) * (self.glyph_weight * scale)
                self.glyph_loss += float(term.detach())
                loss = loss + term
        elif self.stage == "distill_kl":
            assert self.teacher is not None
            computed: list[DecoderInputs] = []
            with torch.no_grad():
                t_logits, _ = self.teacher(*args, inputs_out=computed, position_ids=pos)
            inputs = computed[0] if self.shared_inputs else None
            logits, _ = self.student(*args, inputs=inputs, position_ids=pos)
            total, _ = distill_kl(logits, t_logits, batch.mask, self.temperature)
            loss = total * scale
        else:
            assert self.teacher is not None
            with torch.no_grad():
                _, t_hidden = self.teacher(*args, return_hidden=True, position_ids=pos)
            _, s_out = self.student(
                batch.input_ids, layer_inputs={i: t_hidden[i] for i in self.linear_layers}
            )
            mse = layer_mse(s_out, [t_hidden[i + 1] for i in self.linear_layers], batch.mask)
            loss = mse * self.mse_factor * scale
        return loss, float(loss.detach())

    def take_glyph_loss(self) -> float:
        """The glyph term accumulated since the last call (0 without the head), then reset."""
        value, self.glyph_loss = self.glyph_loss, 0.0
        return value
