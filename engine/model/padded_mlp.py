"""A gated MLP's matrices stored with the intermediate width rounded up, for aligned GEMMs.

Qwen2.5-VL's vision MLP is 3,420 wide: not a multiple of 8, so cuBLAS runs its three matrix
products with 2-element-aligned kernels (4.6 of a 448x448 frame's 24.9 ms on an H100, in
``benchmarks/RESULTS_decode_profile.md``). Here gate and up are one matrix of ``2 * Ip`` rows
(``Ip``: the width rounded up to ``ALIGN``), down one of ``Ip`` columns, the padding zero. The
products run on the padded matrices; the padded columns of ``act(gate) * up`` are ``act(b) * 0``
with zero weights and biases there, and meet zero columns of down, so the output is the MLP's.

As in ``engine.model.fused``, the padded matrices are the parameters' storage: gate's and up's
weights (and biases) become row blocks of the fused matrix and down's weight the first ``I``
columns of its padded matrix (a strided view), so names, shapes and ``state_dict`` stay as
published, nothing is duplicated, and in-place loads reach the padded matrices. A projection
replaced outright (a quantized or adapted module, ``.to()``) is noticed and the matrices rebuilt,
or the MLP falls back to its separate products.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from torch import nn

from engine.model.fused import identity_of, restorable

log = logging.getLogger(__name__)

ALIGN = 8  # elements: 16 bytes of bf16, the alignment of cuBLAS's fast kernels


class PaddedGatedMLP:
    """The padded storage of ``gate_proj``, ``up_proj`` and ``down_proj`` of one MLP module."""

    NAMES = ("gate_proj", "up_proj", "down_proj")

    def __init__(self) -> None:
        self.gate_up: torch.Tensor | None = None  # [2 * Ip, C]
        self.gate_up_bias: torch.Tensor | None = None  # [2 * Ip] or None
        self.down: torch.Tensor | None = None  # [C_out, Ip]
        self.width = 0  # Ip
        self._seen: tuple[int, ...] = ()
        self._held: tuple[object, ...] = ()

    def matrices(
        self, owner: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int] | None:
        """(gate_up, its bias, padded down, Ip), rebuilt if the projections were replaced; None
        when they are not plain linear layers of one dtype and device."""
        mods = [getattr(owner, n) for n in self.NAMES]
        if self.gate_up is not None and identity_of(mods) == self._seen:
            assert self.down is not None
            return self.gate_up, self.gate_up_bias, self.down, self.width
        self.gate_up = self.gate_up_bias = self.down = None
        self._seen, self._held = (), ()
        if not _plain(mods):
            return None
        self._build(mods)  # type: ignore[arg-type]
        assert self.gate_up is not None and self.down is not None
        return self.gate_up, self.gate_up_bias, self.down, self.width

    @torch.no_grad()
    def _build(self, mods: list[nn.Linear]) -> None:
        gate, up, down = mods
        inter, hidden = gate.weight.shape
        width = -(-inter // ALIGN) * ALIGN
        w = gate.weight
        gate_up = w.new_zeros(2 * width, hidden)
        gate_up[:inter] = gate.weight
        gate_up[width : width + inter] = up.weight
        gate.weight.data = gate_up[:inter]
        up.weight.data = gate_up[width : width + inter]
        bias = None
        if gate.bias is not None and up.bias is not None:
            bias = w.new_zeros(2 * width)
            bias[:inter] = gate.bias
            bias[width : width + inter] = up.bias
            gate.bias.data = bias[:inter]
            up.bias.data = bias[width : width + inter]
        padded_down = w.new_zeros(down.weight.shape[0], width)
        padded_down[:, :inter] = down.weight
        down.weight.data = padded_down[:, :inter]
        self.gate_up, self.gate_up_bias, self.down, self.width = gate_up, bias, padded_down, width
        self._seen = identity_of(list(mods))
        self._held = tuple(mods) + tuple(p for m in mods for p in m._parameters.values())
        log.debug("padded gated MLP: %d -> %d wide", inter, width)


def _plain(mods: list[nn.Module]) -> bool:
    """``restorable`` projections with gate and up alike in shape and bias, and down reading
    their width."""
    if not restorable(mods):
        return False
    gate, up, down = cast("list[nn.Linear]", mods)
    same_bias = (gate.bias is None) == (up.bias is None)
    return (
        same_bias
        and up.weight.shape == gate.weight.shape
        and down.weight.shape[1] == gate.weight.shape[0]
    )
