"""Qwen2.5-VL's vision tower: 3-D patch embedding, window/full attention blocks, 2x2 patch merger.

Tensor names are those of the published checkpoints (``model.visual.*``). The tower takes the
flattened patches of ``engine.preprocess`` and knows nothing of image files or of the decoder.
Attention is block-diagonal (one block per window, or per frame in the full-attention blocks) and
runs through torch SDPA on equal-length blocks batched together, so no flash-attn is needed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import VisionConfig
from engine.errors import ConfigError, InputError
from engine.model.fused import rows_linear
from engine.model.norm import RMSNorm
from engine.model.padded_mlp import PaddedGatedMLP
from kernels import rms_norm, splitk, swiglu
from kernels.rope import rotate_vision_qkv

log = logging.getLogger(__name__)

ROPE_THETA = 10000.0


class PatchEmbed(nn.Module):
    """Conv3d over one temporal patch: [N, C*tp*p*p] -> [N, hidden]. No bias, as published."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.in_channels = config.in_channels
        self.kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(
            config.in_channels, config.hidden_size, self.kernel, stride=self.kernel, bias=False
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed ``pixel_values`` [N, C*tp*p*p] (any float dtype) -> [N, hidden], weight dtype.

        A Conv3d whose kernel and stride are the whole patch is one matrix product over the
        flattened patch (same C, t, y, x order as the weight's): computed as such, ~4x faster
        than ``conv3d`` on CPU. The weight stays the published ``patch_embed.proj.weight``.
        """
        weight = self.proj.weight  # [hidden, C, tp, p, p]
        x = pixel_values.reshape(pixel_values.shape[0], -1).to(weight.dtype)
        return F.linear(x, weight.reshape(weight.shape[0], -1))


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


class VisionMLP(nn.Module):
    """SwiGLU-style MLP with biases: ``down(act(gate(x)) * up(x))``.

    Without grad on CUDA, gate and up run as one product and all three on matrices whose
    intermediate width is padded to a multiple of 8 (``engine.model.padded_mlp``): the published
    3,420 otherwise sends cuBLAS to its slow unaligned kernels. ``pad_matmuls``: None pads on
    CUDA only, True on any device (tests), False never (``INFINITEVL_VISION_PAD=0`` at import).
    """

    pad_matmuls: bool | None = None if os.environ.get("INFINITEVL_VISION_PAD") != "0" else False

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ConfigError(
                f"vision hidden_act {config.hidden_act!r} unknown; known: {sorted(_ACTIVATIONS)}"
            )
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act = _ACTIVATIONS[config.hidden_act]
        # aligned matrix products on CUDA without grad (engine.model.padded_mlp)
        self._padded = PaddedGatedMLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = self._padded.matrices(self) if self._pads(x) else None
        if padded is None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        gate_up, bias, down, width = padded
        gu = F.linear(x, gate_up, bias)  # [..., 2 * Ip]
        # padded columns: act(0) * 0 = 0, then zero columns of down; SiLU's product in one
        # launch on CUDA (kernels.swiglu: the halves read in place)
        gate, up = gu[..., :width], gu[..., width:]
        h = swiglu.silu_mul(gate, up) if self.act is F.silu else self.act(gate) * up
        return splitk.linear(h, down, self.down_proj.bias)  # a frame's 1,024 rows: maybe split

    def _pads(self, x: torch.Tensor) -> bool:
        if self.pad_matmuls is False or torch.is_grad_enabled():
            return False
        if self._padded.gate_up is None and x.is_cuda and torch.cuda.is_current_stream_capturing():
            return False  # no allocation inside a CUDA graph capture: padded on an eager call
        return self.pad_matmuls is True or x.is_cuda


# Blocks of more distinct lengths than this (a training batch of images of many sizes) share
# padded SDPA calls: each call costs host time on the GPU whatever its size, and a step of 512
# word and line images had 46 distinct frame lengths, 92 calls a step in the two full-attention
# blocks alone. Lengths within a factor BUCKET_RATIO share one call, padded to the longest.
MAX_EXACT_GROUPS = 8
BUCKET_RATIO = 1.5


@dataclass(slots=True)
class Segments:
    """A split of the sequence into attention blocks, grouped by length for batched SDPA.

    ``groups[i]`` is [n_i, L_i]: the row indices of n_i blocks, each padded to L_i by repeating
    its first row. ``keep[i]`` is None when every block of the group is L_i long, else the pair
    ([n_i, L_i] bool, True on a block's own rows: the keys attended to; [R_i] the positions of
    those rows in the group's flattened output). ``restore`` [N] puts the kept rows of the
    concatenated group outputs back in sequence order. ``spans[i]`` is the first row of group i
    when its blocks are unpadded and end to end (rows ``start .. start + n_i * L_i``: a view of
    the sequence, no gather), else None; ``in_order`` is True when ``restore`` is the identity
    (a frame's windows, or one block: the outputs are already in sequence order).
    """

    groups: list[torch.Tensor]
    keep: list[tuple[torch.Tensor, torch.Tensor] | None]
    restore: torch.Tensor
    spans: list[int | None]
    in_order: bool

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device) -> Segments:
        """Blocks of the given lengths, laid end to end (zero lengths are skipped)."""
        blocks: dict[int, list[tuple[int, int]]] = {}  # group key -> (start, length) of each block
        offset = 0
        exact = len({n for n in lengths if n > 0}) <= MAX_EXACT_GROUPS
        for n in lengths:
            if n > 0:
                key = n if exact else math.floor(math.log(n) / math.log(BUCKET_RATIO))
                blocks.setdefault(key, []).append((offset, n))
            offset += n
        groups: list[torch.Tensor] = []
        keep: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        kept_rows: list[torch.Tensor] = []
        for members in blocks.values():
            size = max(n for _, n in members)
            cols = torch.arange(size, dtype=torch.long)
            starts = torch.tensor([s for s, _ in members], dtype=torch.long)[:, None]
            own = cols < torch.tensor([n for _, n in members], dtype=torch.long)[:, None]
            rows = torch.where(own, starts + cols, starts)  # padding repeats the first row
            groups.append(rows)
            kept_rows.append(rows[own])
            if own.all():
                keep.append(None)
            else:
                keep.append((own, own.flatten().nonzero().squeeze(1)))
        order = torch.cat(kept_rows)
        restore = torch.argsort(order)
        spans = [_span(rows) if k is None else None for rows, k in zip(groups, keep, strict=True)]
        return cls(
            [g.to(device) for g in groups],
            [None if k is None else (k[0].to(device), k[1].to(device)) for k in keep],
            restore.to(device),
            spans,
            bool(torch.equal(order, torch.arange(len(order)))),
        )


def _span(rows: torch.Tensor) -> int | None:
    """The first row when ``rows`` [n, L] are consecutive (``start + arange(n * L)``), else None."""
    start = int(rows[0, 0])
    return start if torch.equal(rows.flatten(), torch.arange(start, start + rows.numel())) else None


def block_diagonal_attention(qkv: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Softmax attention within each block of ``segments``, none across blocks.

    Args:
        qkv: [N, 3, H, D], q, k and v of each row side by side (one gather serves all three).
        segments: the blocks, covering all N rows.
    Returns:
        [N, H*D] in the dtype of ``qkv``, rows in sequence order.
    """
    N, _, H, D = qkv.shape
    outs = []
    for idx, keep, start in zip(segments.groups, segments.keep, segments.spans, strict=True):
        n, L = idx.shape
        # [n, L, 3, H, D] -> three [n, H, L, D]: the blocks of one group form one SDPA batch
        rows = qkv[idx] if start is None else qkv[start : start + n * L].reshape(n, L, 3, H, D)
        qb, kb, vb = rows.permute(2, 0, 3, 1, 4).unbind(0)
        # a padded block's queries see only its own keys; the padding rows' outputs are dropped
        mask = None if keep is None else keep[0][:, None, None, :]
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=D**-0.5)
        o = o.transpose(1, 2).reshape(n * L, H * D)
        outs.append(o if keep is None else o.index_select(0, keep[1]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if segments.in_order else out[segments.restore]


class VisionAttention(nn.Module):
    """Multi-head self-attention with 2-D RoPE on q and k (``qkv`` and ``proj`` with bias)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, config.hidden_size * 3, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], segments: Segments
    ) -> torch.Tensor:
        """Attend within ``segments``.

        Args:
            x: [N, hidden].
            rope: (cos, sin), each [N, D] float32.
            segments: the attention blocks.
        Returns:
            [N, hidden].
        """
        N = x.shape[0]
        qkv = self.qkv(x).reshape(N, 3, self.num_heads, -1)  # [N, 3, H, D]
        # q and k rotated together in float32 (the float32 cos/sin promote them), as the reference
        # does, and written back beside v in the activation dtype (one Triton launch on CUDA)
        rotated = rotate_vision_qkv(qkv, *rope)
        return rows_linear(self.proj, block_diagonal_attention(rotated, segments))  # kernels.splitk


class VisionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (the last
    add left to the next norm: ``forward``)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm2 = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        segments: Segments,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block on ``x + pending`` (the last block's MLP output, not yet added; None for
        none), each residual add made in one launch with the norm after it on CUDA
        (``kernels.rms_norm.add_rms_norm``). Returns (the stream before this block's MLP output
        is added, that output): the block's output is their sum. (Called as a module, so that
        FSDP's hooks gather the block's parameters.)"""
        if pending is None:
            normed = self.norm1(x)
        else:
            x, normed = rms_norm.add_rms_norm(x, pending, self.norm1.weight, self.norm1.eps)
        h = self.attn(normed, rope, segments)
        x, normed = rms_norm.add_rms_norm(x, h, self.norm2.weight, self.norm2.eps)
        return x, self.mlp(normed)


class PatchMerger(nn.Module):
    """Joins each merge_size x merge_size group of patches: ``mlp(ln_q(x).view(-1, 4*hidden))``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_size, self.merged_size),
            nn.GELU(),
            nn.Linear(self.merged_size, config.out_hidden_size),
        )

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden] with each group's patches consecutive -> [N / merge^2, out_hidden].
        ``pending`` [N, hidden], when given, is added to ``x`` first (with ``ln_q``: one launch
        on CUDA)."""
        if pending is None:
            normed = self.ln_q(x)
        else:
            _, normed = rms_norm.add_rms_norm(x, pending, self.ln_q.weight, self.ln_q.eps)
        fc1, act, fc2 = self.mlp  # the published names: mlp.0, mlp.2
        # kernels.splitk: a frame's 256 merged rows against K = 5,120, split where that is faster
        return rows_linear(fc2, act(rows_linear(fc1, normed.reshape(-1, self.merged_size))))


@dataclass(slots=True)
class VisionLayout:
    """Where each patch goes for one call: window order, attention blocks and 2-D positions.

    ``window_index`` [N / merge^2] lists merge units in window order (the order the blocks see),
    ``unit_restore`` [N / merge^2] is its inverse; ``positions`` [N, 2] is each patch's
    (row, column) in window order.
    """

    window_index: torch.Tensor
    unit_restore: torch.Tensor
    windows: Segments
    frames: Segments
    positions: torch.Tensor


def vision_layout(
    grid: list[tuple[int, int, int]], config: VisionConfig, device: torch.device
) -> VisionLayout:
    """Window order, window/frame blocks and patch positions for images of ``grid`` (t, h, w).

    Windows are ``window_size`` pixels square (``window_size // merge // patch`` merge units);
    the full-attention blocks are one per frame, as in the reference (frames never attend to
    each other). Units are ordered frame, window row, window column, then row-major within.
    """
    m = config.spatial_merge_size
    unit = m * m
    side = config.window_size // m // config.patch_size
    index, window_lens, frame_lens, parts = [], [], [], []
    offset = 0
    for t, h, w in grid:
        gh, gw = h // m, w // m
        units = torch.arange(t * gh * gw).reshape(t, gh, gw)
        nh, nw = math.ceil(gh / side), math.ceil(gw / side)
        padded = F.pad(units, (0, nw * side - gw, 0, nh * side - gh), value=-1)
        padded = (
            padded.reshape(t, nh, side, nw, side).permute(0, 1, 3, 2, 4).reshape(-1, side * side)
        )
        valid = padded >= 0
        index.append(padded[valid] + offset)
        window_lens += (valid.sum(1) * unit).tolist()
        frame_lens += [h * w] * t
        # (row, column) of each patch in input order: frame, unit row, unit column, m x m inside
        rows = torch.arange(h).reshape(gh, m, 1, 1).expand(gh, m, gw, m).permute(0, 2, 1, 3)
        cols = torch.arange(w).reshape(1, 1, gw, m).expand(gh, m, gw, m).permute(0, 2, 1, 3)
        pos = torch.stack([rows.reshape(-1, unit), cols.reshape(-1, unit)], dim=-1)
        parts.append(pos.repeat(t, 1, 1))  # [t*gh*gw, unit, 2]
        offset += t * gh * gw
    window_index = torch.cat(index)
    positions = torch.cat(parts)[window_index].reshape(-1, 2)
    return VisionLayout(
        window_index=window_index.to(device),
        unit_restore=torch.argsort(window_index).to(device),
        windows=Segments.from_lengths(window_lens, device),
        frames=Segments.from_lengths(frame_lens, device),
        positions=positions,
    )


def vision_rope(
    positions: torch.Tensor, head_dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D rotary tables: half of each head's frequencies follow the row, half the column.

    Args:
        positions: [N, 2] (row, column), long, on CPU.
        head_dim: D.
    Returns:
        (cos, sin), each [N, D] float32 on ``device``.
    """
    dim = head_dim // 2
    # computed on CPU in float32 so every device sees the reference's exact frequencies
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = (positions.to(torch.float32)[:, :, None] * inv_freq).reshape(positions.shape[0], -1)
    emb = torch.cat((freqs, freqs), dim=-1).to(device)
    return emb.cos(), emb.sin()


@functools.lru_cache(maxsize=16)
def _cached_layout(
    grid: tuple[tuple[int, int, int], ...], config: VisionConfig, device: torch.device
) -> tuple[VisionLayout, tuple[torch.Tensor, torch.Tensor]]:
    """Layout and rotary tables, built once per image size: streamed frames all share one.

    The tensors are read-only; keeping them also keeps host-to-device copies out of the
    per-frame path (and out of a captured CUDA graph).
    """
    layout = vision_layout(list(grid), config, device)
    return layout, vision_rope(layout.positions, config.head_dim, device)


class VisionTransformer(nn.Module):
    """Qwen2.5-VL's vision tower (``model.visual``).

    Args:
        config: the vision part of the model config.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)
        self.full_attention_blocks = frozenset(config.fullatt_block_indexes)
        if config.window_size < config.patch_size * config.spatial_merge_size:
            raise ConfigError(
                f"vision window_size {config.window_size} is smaller than one merge unit "
                f"({config.patch_size * config.spatial_merge_size} px)"
            )

    @property
    def patch_dim(self) -> int:
        c = self.config
        return c.in_channels * c.temporal_patch_size * c.patch_size**2

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Encode the patches of one or more images (or videos).

        Args:
            pixel_values: [N, C*tp*p*p], the images' patches one after the other, each in the
                order of ``engine.preprocess`` (frame, merge unit row, column, m x m inside).
            grid_thw: [n_images, 3] long, (t, h, w) in patches per image; N = sum(t*h*w).
        Returns:
            [N / merge^2, out_hidden_size] in the weights' dtype, in the order of the input patches.
        """
        grid = self._check_inputs(pixel_values, grid_thw)
        device = pixel_values.device
        layout, rope = _cached_layout(tuple(grid), self.config, device)

        x = self.patch_embed(pixel_values)  # [N, hidden]
        N, hidden = x.shape
        unit = self.config.spatial_merge_size**2
        # reorder merge units into window order; the blocks run on windows laid end to end
        x = x.reshape(N // unit, unit, hidden)[layout.window_index].reshape(N, hidden)
        # each block's last residual add is made with the next norm (VisionBlock.forward)
        pending: torch.Tensor | None = None
        for i, block in enumerate(self.blocks):
            segments = layout.frames if i in self.full_attention_blocks else layout.windows
            x, pending = block(x, pending, rope, segments)
        merged = self.merger(x, pending)  # [N / unit, out_hidden], window order
        return merged[layout.unit_restore]

    def _check_inputs(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> list[tuple[int, int, int]]:
        if grid_thw.ndim != 2 or grid_thw.shape[1] != 3 or grid_thw.shape[0] == 0:
            raise InputError(f"grid_thw must be [n_images, 3], got {tuple(grid_thw.shape)}")
        if grid_thw.is_floating_point():
            raise InputError(f"grid_thw must hold integers, got {grid_thw.dtype}")
        grid = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        m = self.config.spatial_merge_size
        for t, h, w in grid:
            if t <= 0 or h <= 0 or w <= 0 or h % m or w % m:
                raise InputError(
                    f"grid_thw row {(t, h, w)}: t, h, w must be positive and h, w multiples of "
                    f"spatial_merge_size {m}"
                )
        expected = sum(t * h * w for t, h, w in grid)
        if pixel_values.ndim != 2 or pixel_values.shape != (expected, self.patch_dim):
            raise InputError(
                f"pixel_values must be [{expected}, {self.patch_dim}] for grid_thw {grid}, "
                f"got {tuple(pixel_values.shape)}"
            )
        return grid  # type: ignore[return-value]
