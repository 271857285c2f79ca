"""Qwen2.5 self-attention with multimodal RoPE, over a sliding-window ring or a full cache.

``sliding_attention`` layers (InfiniteVL) keep the last ``sliding_window`` keys in an ``SWAState``
ring and run ``kernels.swa``; ``full_attention`` layers (the Qwen2.5-VL teacher and Transformer
baseline) keep every key in a growing ``FullAttnState``. Keys enter either cache after RoPE.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import TextConfig
from engine.errors import StateError
from engine.model.fused import FUSED_DECODE_DEFAULT, FusedLinear, rows_linear
from engine.model.rope import apply_rotary
from engine.state import FullAttnState, SWAState
from kernels import swa

log = logging.getLogger(__name__)


class Attention(nn.Module):
    """Grouped-query attention: q/k/v with bias, o without; ``layer_type`` picks the cache.

    Args:
        config: the decoder config (heads, head size, sliding window).
        layer_type: ``"sliding_attention"`` or ``"full_attention"``.
    """

    # calls without grad read q/k/v (and their biases) as one matrix; False keeps them separate
    fuse_decode: bool = FUSED_DECODE_DEFAULT

    def __init__(self, config: TextConfig, layer_type: str) -> None:
        super().__init__()
        assert layer_type in ("sliding_attention", "full_attention"), layer_type
        self.layer_type = layer_type
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        C, D = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(C, self.num_heads * D, bias=True)
        self.k_proj = nn.Linear(C, self.num_key_value_heads * D, bias=True)
        self.v_proj = nn.Linear(C, self.num_key_value_heads * D, bias=True)
        self.o_proj = nn.Linear(self.num_heads * D, C, bias=False)
        self._qkv = FusedLinear(("q_proj", "k_proj", "v_proj"))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, D], k, v [B, Hkv, T, D] before RoPE; one fused product without grad."""
        B, T, _ = x.shape
        D = self.head_dim
        if self.fuse_decode and not torch.is_grad_enabled():
            q, k, v = self._qkv(self, x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return (
            q.view(B, T, -1, D).transpose(1, 2),
            k.view(B, T, -1, D).transpose(1, 2),
            v.view(B, T, -1, D).transpose(1, 2),
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        state: SWAState | FullAttnState,
    ) -> torch.Tensor:
        """Attend from the new tokens to the cached ones and themselves; append them to ``state``.

        Args:
            x: [B, T, hidden] the normalised hidden states of the new tokens.
            cos, sin: [B, T, D] M-RoPE tables for the new tokens (``rope.mrope_cos_sin``).
            state: this layer's cache, updated in place (``seen`` grows by T).
        Returns:
            [B, T, hidden] in the dtype of ``x``.
        """
        B, T, _ = x.shape
        q, k, v = self.project(x)  # [B, H, T, D], [B, H_kv, T, D]
        q, k = apply_rotary(q, k, cos, sin)
        if isinstance(state, SWAState):
            o = self._forward_sliding(q, k, v, state)
        else:
            o = self._forward_full(q, k, v, state)
        return rows_linear(self.o_proj, o.transpose(1, 2).reshape(B, T, -1))  # kernels.splitk

    def _forward_sliding(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: SWAState
    ) -> torch.Tensor:
        T = q.shape[2]
        # the ring must never join an autograd graph: a decode step that needs grad takes the
        # prefill path, which writes detached keys
        if T == 1 and not (torch.is_grad_enabled() and k.requires_grad):
            q1, k1, v1 = q[:, :, 0], k[:, :, 0], v[:, :, 0]
            o = swa.step(
                q1, k1, v1, state.k, state.v, state.seen, scale=self.scale, pads=state.pads
            ).unsqueeze(2)
        elif state.pads is not None:
            raise StateError("rows aligned with padding are fed one token at a time")
        else:
            ring_k, ring_v = state.k, state.v
            if torch.is_grad_enabled() and q.requires_grad:
                # autograd may keep the ring for backward: hand it copies we never mutate
                ring_k, ring_v = ring_k.clone(), ring_v.clone()
            o = swa.prefill(q, k, v, ring_k, ring_v, state.seen, scale=self.scale)
            swa.write(state.k, state.v, k.detach(), v.detach(), state.seen)
        state.seen += T
        return o

    def _forward_full(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: FullAttnState
    ) -> torch.Tensor:
        T, past = q.shape[2], state.seen
        k_past, v_past = state.k[:, :, :past], state.v[:, :, :past]
        state.append(k, v)
        groups = self.num_heads // self.num_key_value_heads
        if past == 0:
            # a first prompt, and every training forward: plain causal attention, with no mask
            # and no copy of the keys to build, which lets SDPA take its fused causal kernels
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        # keep the new keys from the graph (not the cache) so gradients flow through this call
        k_all, v_all = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
        k_all = k_all.repeat_interleave(groups, dim=1)
        v_all = v_all.repeat_interleave(groups, dim=1)
        # query i (absolute past + i) sees keys 0 ... past + i
        S = past + T
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=self.scale)
