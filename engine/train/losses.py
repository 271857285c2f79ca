"""The losses of the three stages: next-token cross entropy, logit KL, and layer-wise MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.train.conversation import IGNORE_INDEX


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross entropy of predicting labels[:, t+1] from position t.

    Args:
        logits: [B, T, V] float32.  labels: [B, T] int64 with IGNORE_INDEX where no loss is taken.
    Returns:
        (sum of token losses, number of target tokens); divide by the global count.
    """
    target = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((target != IGNORE_INDEX).sum())


def glyph_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of the glyph head (synthetic.glyphs) over its supervised slots.

    Args:
        logits: [tokens, SLOTS, classes].  targets: [tokens, SLOTS] int64, IGNORE_INDEX where
            a slot says nothing.
    """
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def distill_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, int]:
    """Summed KL(teacher || student) of temperature-softened distributions, times T^2.

    Args:
        student, teacher: [B, T, V] logits.  mask: [B, T] bool, the positions that count
            (real tokens, not padding).
    Returns:
        (sum over counted positions, number of counted positions).
    """
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # [B, T]
    return (kl * mask).sum() * t * t, int(mask.sum())


def layer_mse(
    student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layers of the per-element MSE between outputs, on real tokens only.

    Args:
        student, teacher: one [B, T, hidden] output per distilled layer.
        mask: [B, T] bool.
    Returns:
        scalar.
    """
    m = mask.unsqueeze(-1).float()
    denom = m.sum() * student[0].shape[-1]
    per_layer = [
        ((s.float() - t.float()).pow(2) * m).sum() / denom
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(per_layer).mean()
