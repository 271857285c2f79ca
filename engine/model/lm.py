"""The decoder: embeddings, one pre-norm block per ``config.layer_types`` entry, final norm.

``linear_attention`` layers mix tokens with Gated DeltaNet, ``sliding_attention`` and
``full_attention`` with Qwen2.5 attention. Every block reads and updates its own entry of the
``ModelState``; the decoder computes the M-RoPE tables once per call and shares them.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import TextConfig
from engine.model.attention import Attention
from engine.model.gated_deltanet import GatedDeltaNet
from engine.model.mlp import MLP
from engine.model.norm import RMSNorm
from engine.model.rope import mrope_cos_sin
from engine.state import GDNState, LayerState

log = logging.getLogger(__name__)


class DecoderLayer(nn.Module):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))``; the mixer is chosen by ``layer_type``.

    Args:
        config: the decoder config.
        layer_type: ``"linear_attention"``, ``"sliding_attention"`` or ``"full_attention"``.
    """

    def __init__(self, config: TextConfig, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn: GatedDeltaNet | Attention = (
            GatedDeltaNet(config)
            if layer_type == "linear_attention"
            else Attention(config, layer_type)
        )
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: LayerState
    ) -> torch.Tensor:
        """One block.

        Args:
            x: [B, T, hidden] the residual stream.
            cos, sin: [B, T, D] M-RoPE tables (unused by Gated DeltaNet).
            state: this layer's state, updated in place.
        Returns:
            [B, T, hidden] the residual stream after the block.
        """
        h = self.input_layernorm(x)
        if isinstance(self.self_attn, GatedDeltaNet):
            assert isinstance(state, GDNState), f"{self.layer_type} got {type(state).__name__}"
            h = self.self_attn(h, state)
        else:
            assert not isinstance(state, GDNState), f"{self.layer_type} layer got a GDNState"
            h = self.self_attn(h, cos, sin, state)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class LanguageModel(nn.Module):
    """``embed_tokens``, ``layers``, ``norm``: the text decoder without its head.

    Args:
        config: the decoder config; ``layer_types`` decides each layer.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        states: list[LayerState],
        hidden_states: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run every layer over the new tokens.

        Args:
            inputs_embeds: [B, T, hidden] token (and scattered vision) embeddings.
            position_ids: [3, B, T] M-RoPE positions of the new tokens.
            states: one state per layer, updated in place.
            hidden_states: if a list is given, the input embeddings and then each layer's output
                (before the final norm) are appended: ``num_layers + 1`` tensors [B, T, hidden].
        Returns:
            [B, T, hidden] the normalised last hidden states.
        """
        assert len(states) == len(self.layers), f"{len(states)} states, {len(self.layers)} layers"
        cos, sin = mrope_cos_sin(position_ids, self.config, inputs_embeds.dtype)
        x = inputs_embeds
        if hidden_states is not None:
            hidden_states.append(x)
        for layer, state in zip(self.layers, states, strict=True):
            x = layer(x, cos, sin, state)
            if hidden_states is not None:
                hidden_states.append(x)
        return self.norm(x)
