"""Training through a Gated DeltaNet layer whose input is frozen (distillation stage 1, LoRA)."""

import torch

from engine.state import ModelState
from engine.testing.tiny_checkpoint import tiny_model


def test_gated_deltanet_trains_on_a_frozen_input() -> None:
    # GIVEN a Gated DeltaNet layer whose parameters train, fed a tensor that needs no grad
    model = tiny_model(seed=0)
    text = model.config.text
    index = text.layer_types.index("linear_attention")
    layer = model.model.language_model.layers[index].self_attn
    state = ModelState.new(text, 1, "cpu", torch.float32).layers[index]
    x = torch.randn(1, 12, text.hidden_size, generator=torch.Generator().manual_seed(0))
    # WHEN two chunks go forward (the second starts from the state the first left) and back
    loss = layer(x[:, :7], state).square().mean() + layer(x[:, 7:], state).square().mean()
    loss.backward()
    # THEN every parameter got a finite gradient and the state holds no graph
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert not state.S.requires_grad
