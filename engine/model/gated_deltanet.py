"""The Gated DeltaNet token mixer of InfiniteVL, as published (hustvl/InfiniteVL, fla's layer).

q, k, v = SiLU(causal depthwise conv(W x)); q, k L2-normalised inside the kernel, q scaled by
K^-0.5; beta = sigmoid(b_proj x); g = -exp(A_log) softplus(a_proj x + dt_bias) in float32; the gated
delta rule runs chunked for prompts (``gated_delta.chunk``) and one step for single tokens
(``gated_delta.step``); the output goes through a gated RMSNorm with SiLU(g_proj x), then o_proj.
All memory of the past lives in a ``GDNState``; the module holds only weights.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from engine.config import TextConfig
from engine.errors import ConfigError
from engine.model.fused import FUSED_DECODE_DEFAULT, FusedLinear, decode_linear, rows_linear
from engine.model.norm import GatedRMSNorm
from engine.state import GDNState
from kernels import gated_delta, short_conv

log = logging.getLogger(__name__)


class ShortConvolution(nn.Module):
    """Depthwise causal convolution over time followed by SiLU (fla's ``ShortConvolution``).

    The layer convolves q, k and v together (``short_conv.prefill3`` / ``step3``) with these
    modules' filters; ``forward`` convolves one input alone, through the same kernels.

    Args:
        channels: C, one filter per channel.
        kernel_size: taps; the last ``kernel_size - 1`` inputs are carried in the state.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # [C, 1, kernel]
        bound = 1.0 / math.sqrt(kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve ``x`` [B, T, C] continuing from ``tail`` [B, C, kernel - 1].

        Returns:
            y: [B, T, C] = SiLU(conv(x)) in the dtype of ``x``.
            tail: [B, C, kernel - 1] the last inputs (detached), to carry to the next call.
        """
        # kernels.short_conv: one Triton launch on CUDA without grad, else shifted multiply-adds
        return short_conv.prefill(x, tail, self.weight[:, 0])


# Up to this many tokens a call reads its six input projections as one matrix. The views keep the
# whole product alive until the output gate is read (12,320 values a token at the 4B shape); a
# longer prompt takes the six products, each freed once used, and its GEMMs are long enough.
FUSED_PROJECTION_TOKENS = 8192


class GatedDeltaNet(nn.Module):
    """One Gated DeltaNet layer with the published tensor names.

    Args:
        config: the decoder config (``num_linear_heads`` H, ``linear_head_dim`` K,
            ``linear_value_head_dim`` V, ``conv_size``, ``norm_eps``).
    """

    # single tokens take the fused decode path (``_decode``), calls without grad read the six input
    # projections as one matrix (up to FUSED_PROJECTION_TOKENS); False keeps the separate ops
    fuse_decode: bool = FUSED_DECODE_DEFAULT

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        H, K, V = config.num_linear_heads, config.linear_head_dim, config.linear_value_head_dim
        if config.num_linear_key_value_heads != H:
            raise ConfigError(
                f"Gated DeltaNet needs num_linear_key_value_heads == num_linear_heads, got "
                f"{config.num_linear_key_value_heads} and {H}"
            )
        if not (config.use_short_conv and config.use_gate):
            raise ConfigError(
                f"Gated DeltaNet without short conv or output gate is not supported "
                f"(use_short_conv={config.use_short_conv}, use_gate={config.use_gate})"
            )
        self.num_heads, self.head_k_dim, self.head_v_dim = H, K, V
        self.scale = K**-0.5
        C = config.hidden_size
        # registration order follows the published checkpoint's tensor listing
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))  # [HV], kept in float32
        self.dt_bias = nn.Parameter(torch.empty(H))  # [HV]
        self.q_proj = nn.Linear(C, H * K, bias=False)
        self.k_proj = nn.Linear(C, H * K, bias=False)
        self.v_proj = nn.Linear(C, H * V, bias=False)
        self.a_proj = nn.Linear(C, H, bias=False)
        self.b_proj = nn.Linear(C, H, bias=False)
        self.q_conv1d = ShortConvolution(H * K, config.conv_size)
        self.k_conv1d = ShortConvolution(H * K, config.conv_size)
        self.v_conv1d = ShortConvolution(H * V, config.conv_size)
        self.g_proj = nn.Linear(C, H * V, bias=False)
        self.o_norm = GatedRMSNorm(V, eps=config.norm_eps)
        self.o_proj = nn.Linear(H * V, C, bias=False)
        # decode reads the six input projections as one matrix (their weights become views of it)
        self._in_proj = FusedLinear(("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj"))
        self.reset_decay()

    @torch.no_grad()
    def reset_decay(self) -> None:
        """Random ``A_log`` and ``dt_bias`` as fla initialises them (dt in [1e-3, 0.1])."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
        dt = torch.empty_like(self.dt_bias, dtype=torch.float32).uniform_(0, 1)
        dt = (dt * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).exp().clamp(min=1e-4)
        # inverse of softplus
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, state: GDNState) -> torch.Tensor:
        """Mix the new tokens into ``state`` and read them out.

        Args:
            x: [B, T, hidden] normalised hidden states.
            state: this layer's ``GDNState``, updated in place (S and the three conv tails).
        Returns:
            [B, T, hidden] in the dtype of ``x``.
        """
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        # a frozen input still makes a graph when this layer's own parameters train (stage 1, LoRA)
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if T == 1 and not needs_grad and self.fuse_decode:
            return self._decode(x, state)
        if self.fuse_decode and not needs_grad and T <= FUSED_PROJECTION_TOKENS:
            # the six input projections as one matrix product (views of it): one GEMM a layer
            # for a chat turn or a frame, where six ran
            q, k, v, a, b, gate = self._in_proj(self, x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            a, b, gate = self.a_proj(x), self.b_proj(x), self.g_proj(x)
        # the three convolutions, their tails replaced in the state (two launches on CUDA)
        tails = (state.conv_q, state.conv_k, state.conv_v)
        q, k, v = short_conv.prefill3((q, k, v), tails, self._taps())
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        # g = -exp(A_log) softplus(a + dt_bias) in float32, beta = sigmoid(b): [B, T, HV]
        g, beta = gated_delta.gates(a, b, self.A_log, self.dt_bias)
        if T == 1 and not needs_grad:
            o = gated_delta.step(
                q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state.S,
                scale=self.scale, use_qk_l2norm=True,
            ).unsqueeze(1)  # fmt: skip
        else:
            # autograd may keep the initial state for backward: hand it a copy we never mutate
            S0 = state.S.clone() if needs_grad else state.S
            o, S = gated_delta.chunk(
                q, k, v, g, beta, scale=self.scale, initial_state=S0, use_qk_l2norm=True
            )
            state.S.copy_(S.detach())
        o = self.o_norm(o, gate.view(B, T, H, V))  # [B, T, HV, V]
        return rows_linear(self.o_proj, o.reshape(B, T, H * V))  # kernels.splitk

    def _taps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k, v convolutions' filters, [C, conv_size] each."""
        return (self.q_conv1d.weight[:, 0], self.k_conv1d.weight[:, 0], self.v_conv1d.weight[:, 0])

    def _decode(self, x: torch.Tensor, state: GDNState) -> torch.Tensor:
        """``forward`` for one token without grad, in few kernels (the CUDA graph's hot path).

        One matrix-vector product for the six input projections; the three conv tails stepped by
        ``short_conv.step3`` (one Triton launch on CUDA); the gates, the q/k L2 norms, the scale,
        the decay and the state update inside ``gated_delta.step_gates``; the gated RMSNorm
        through ``F.rms_norm``.
        Same math as the separate ops (tests/engine/test_fused_decode.py).
        """
        B = x.shape[0]
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        q, k, v, a, b, gate = self._in_proj(self, x[:, 0])  # [B, H*K] ... [B, H*V]
        tails = (state.conv_q, state.conv_k, state.conv_v)
        q, k, v = short_conv.step3((q, k, v), tails, self._taps())
        o = gated_delta.step_gates(
            q.view(B, H, K), k.view(B, H, K), v.view(B, H, V), a, b, self.A_log, self.dt_bias,
            state.S, scale=self.scale, use_qk_l2norm=True,
        )  # fmt: skip
        o = self.o_norm(o, gate.view(B, H, V))  # [B, HV, V]
        return decode_linear(self.o_proj, o.reshape(B, 1, H * V))
