"""Rows of sessions whose prompts differ in length or image geometry, decoded as one batch.

A beam search over several prompts (OCR's pieces of a screen region) feeds every row one token a
step. ``ModelState.stack`` joins rows only at one RoPE position and one ring fill; ``stack_rows``
aligns the others to the furthest row instead, exactly up to float rounding:

- RoPE: attention depends only on the difference of the query's and a key's positions, and a
  text token moves its three M-RoPE axes alike. Row ``r``, whose next position is ``p_r``, is
  moved to ``P = max p``: its cached keys are rotated by ``P - p_r``.
- Sliding-window rings: row ``r`` wrote ``s_r`` tokens and the batch writes at one slot, so its
  tokens are renumbered from ``d_r = S - s_r`` (``S = max s``): the ring is rolled by ``d_r``
  slots and its first ``d_r`` token indices are padding (``SWAState.pads``) that the
  sliding-window step leaves out (``kernels.swa.step``).
- Gated DeltaNet layers (recurrent matrix, convolution tails) hold no position: rows as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from engine.config import TextConfig
from engine.errors import StateError
from engine.model.rope import mrope_cos_sin
from engine.state import GDNState, LayerState, ModelState, SWAState
from kernels.rope.reference import rotate_half


def stack_rows(states: Sequence[ModelState], config: TextConfig) -> ModelState:
    """One state whose rows are the rows of ``states`` in order (copies), aligned to one RoPE
    position and one ring fill when they differ (see the module's docstring): feeding the same
    token to a row gives what feeding it to its own state would, up to float rounding.

    Raises:
        StateError: no states, states of other layers, a full-attention cache (it grows per
            sequence), or, where the rows differ, a row already aligned with padding.
    """
    if not states:
        raise StateError("stack_rows: no states given")
    first = states[0]
    if any(s.layer_types != first.layer_types for s in states):
        raise StateError("stack_rows: the states belong to models of other layers")
    if all(_geometry(s) == _geometry(first) for s in states):
        return ModelState.stack(states)  # the refusals below are stack's too
    if any(not isinstance(st, GDNState | SWAState) for st in first.layers):
        raise StateError("stack_rows: a full-attention cache grows per sequence; it cannot stack")
    if any(s.has_pads() for s in states):
        raise StateError("stack_rows: states of aligned rows (with padding) do not stack again")
    fills = [max(getattr(s.layers[i], "seen", 0) for s in states) for i in range(len(first.layers))]
    position = max(s.position for s in states)
    tokens_seen = max(s.tokens_seen for s in states)
    return ModelState.stack([_aligned(s, fills, position, tokens_seen, config) for s in states])


def _geometry(state: ModelState) -> tuple[int, ...]:
    seen = [getattr(st, "seen", -1) for st in state.layers]
    return (state.position, state.tokens_seen, *seen)


def _aligned(
    state: ModelState, fills: list[int], position: int, tokens_seen: int, config: TextConfig
) -> ModelState:
    """``state`` moved to ``position`` and each ring to the fill ``fills[i]``: its rings rolled,
    keys rotated and leading slots marked padding; its Gated DeltaNet layers shared, not copied
    (``ModelState.stack`` copies them)."""
    layers: list[LayerState] = []
    for st, fill in zip(state.layers, fills, strict=True):
        if isinstance(st, GDNState):
            layers.append(st)
            continue
        ring = cast(SWAState, st)  # stack_rows refuses full attention
        pad, W = fill - ring.seen, ring.k.shape[2]
        k = _rotated(torch.roll(ring.k, pad % W, dims=2), position - state.position, config)
        pads = torch.full((ring.k.shape[0],), pad, dtype=torch.long, device=ring.k.device)
        layers.append(SWAState(k, torch.roll(ring.v, pad % W, dims=2), fill, pads))
    return ModelState(layers, state.layer_types, position, tokens_seen)


def _rotated(keys: torch.Tensor, shift: int, config: TextConfig) -> torch.Tensor:
    """``keys`` [B, H_kv, W, D] (RoPE applied at their positions) as if each position were
    ``shift`` later: every axis of a position moves by ``shift``."""
    if shift == 0:
        return keys
    positions = torch.full((3, 1, 1), shift, dtype=torch.long, device=keys.device)
    cos, sin = mrope_cos_sin(positions, config, torch.float32)  # [1, 1, D]
    k = keys.float()
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)
