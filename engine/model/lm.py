"""The decoder: embeddings, one pre-norm block per ``config.layer_types`` entry, final norm.

``linear_attention`` layers mix tokens with Gated DeltaNet, ``sliding_attention`` and
``full_attention`` with Qwen2.5 attention. Every block reads and updates its own entry of the
``ModelState``; the decoder computes the M-RoPE tables once per call and shares them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from engine.config import TextConfig
from engine.model.attention import Attention
from engine.model.gated_deltanet import GatedDeltaNet
from engine.model.mlp import MLP
from engine.model.norm import RMSNorm
from engine.model.rope import mrope_cos_sin
from engine.state import GDNState, LayerState
from kernels import rms_norm

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
        x = x + self.mixer(cos, sin, state)(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))

    def mixer(
        self, cos: torch.Tensor, sin: torch.Tensor, state: LayerState
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's token mixer over ``state`` as ``mix(normed x)``."""
        if isinstance(self.self_attn, GatedDeltaNet):
            assert isinstance(state, GDNState), f"{self.layer_type} got {type(state).__name__}"
            gdn = self.self_attn
            return lambda h: gdn(h, state)
        assert not isinstance(state, GDNState), f"{self.layer_type} layer got a GDNState"
        attn = self.self_attn
        return lambda h: attn(h, cos, sin, state)


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
        if hidden_states is not None:
            hidden_states.append(inputs_embeds)
        layers = cast("list[DecoderLayer]", list(self.layers))
        if torch.is_grad_enabled() or isinstance(layers[0], FSDPModule):
            # each layer through its own forward: FSDP gathers a sharded layer's weights in its
            # hooks, and training keeps the plain ops autograd differentiates
            x = inputs_embeds
            for layer, st in zip(layers, states, strict=True):
                x = layer(x, cos, sin, st)
                if hidden_states is not None:
                    hidden_states.append(x)
            return self.norm(x)
        mixers = [layer.mixer(cos, sin, st) for layer, st in zip(layers, states, strict=True)]
        normed = self.run_layers(inputs_embeds, mixers, hidden_states=hidden_states)
        assert normed is not None
        return normed

    def run_layers(
        self,
        x: torch.Tensor,
        mixers: list[Callable[[torch.Tensor], torch.Tensor]],
        *,
        logits: bool = True,
        hidden_states: list[torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """Every ``DecoderLayer.forward`` in turn, with the token mixers given as ``mix(normed x)``
        (the eager forward's, or the CUDA graphs' own).

        Each residual add is done together with the norm that follows it (``rms_norm.add_rms_norm``:
        one launch for two on CUDA without grad). Returns the final norm's output; with ``logits``
        False, stops after the last layer's token mixer (the state is written; nothing after it
        is) and returns None. ``hidden_states`` gets each layer's output, as ``forward`` says.
        """
        h: torch.Tensor | None = None
        last = len(mixers) - 1
        for i, (layer, mix) in enumerate(zip(self.layers, mixers, strict=True)):
            assert isinstance(layer, DecoderLayer)
            if h is None:
                normed = layer.input_layernorm(x)
            else:
                x, normed = _add_norm(x, h, layer.input_layernorm)
                if hidden_states is not None:
                    hidden_states.append(x)  # the output of the layer before
            h = mix(normed)
            if i == last and not logits:
                return None
            x, normed = _add_norm(x, h, layer.post_attention_layernorm)
            h = layer.mlp(normed)
        assert h is not None, "a decoder without layers"
        x, normed = _add_norm(x, h, self.norm)
        if hidden_states is not None:
            hidden_states.append(x)
        return normed


def _add_norm(
    x: torch.Tensor, h: torch.Tensor, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + h, norm(x + h)) for one of the decoder's RMSNorm modules."""
    assert isinstance(norm, RMSNorm)
    return rms_norm.add_rms_norm(x, h, norm.weight, norm.eps)
