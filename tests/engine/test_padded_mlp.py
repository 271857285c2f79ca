"""The vision MLP on padded matrices: the same outputs, the published parameters, safe rebuilds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from engine.config import tiny_config
from engine.model.vision import VisionMLP, VisionTransformer

# 60 wide: padded to 64, like the published 3,420 to 3,424
CONFIG = dataclasses.replace(tiny_config().vision, intermediate_size=60)


def _mlp(seed: int, config=CONFIG) -> VisionMLP:  # noqa: ANN001
    torch.manual_seed(seed)
    mlp = VisionMLP(config)
    for p in mlp.parameters():
        nn.init.normal_(p, std=0.3)
    return mlp.eval()


def _plain(mlp: VisionMLP, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(mlp.act(mlp.gate_proj(x)) * mlp.up_proj(x))


@pytest.mark.parametrize("width", [60, 64])
def test_padded_products_give_the_mlp_output(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = _mlp(0, dataclasses.replace(CONFIG, intermediate_size=width))
    monkeypatch.setattr(VisionMLP, "pad_matmuls", True)
    x = torch.randn(7, CONFIG.hidden_size)
    with torch.no_grad():
        want = _plain(mlp, x)
        got = mlp(x)
    assert mlp._padded.width == 64
    gate_up = mlp._padded.gate_up
    assert gate_up is not None and gate_up.shape == (128, CONFIG.hidden_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_parameters_keep_their_names_shapes_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = _mlp(1)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    monkeypatch.setattr(VisionMLP, "pad_matmuls", True)
    with torch.no_grad():
        mlp(torch.randn(3, CONFIG.hidden_size))
    after = mlp.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k
    # the storage is shared, not copied: the parameters are views of the padded matrices
    assert mlp.gate_proj.weight.data_ptr() == mlp._padded.gate_up.data_ptr()
    assert mlp.down_proj.weight.data_ptr() == mlp._padded.down.data_ptr()


def test_loaded_weights_reach_the_padded_products(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(VisionMLP, "pad_matmuls", True)
    mlp, other = _mlp(2), _mlp(3)
    x = torch.randn(5, CONFIG.hidden_size)
    with torch.no_grad():
        mlp(x)  # padded now
        mlp.load_state_dict(other.state_dict())  # in-place copies into the views
        torch.testing.assert_close(mlp(x), _plain(other, x), rtol=1e-5, atol=1e-5)
        # a projection replaced outright: the matrices are rebuilt from the new one
        mlp.down_proj = nn.Linear(CONFIG.intermediate_size, CONFIG.hidden_size)
        torch.testing.assert_close(mlp(x), _plain(mlp, x), rtol=1e-5, atol=1e-5)


def test_an_adapted_projection_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    monkeypatch.setattr(VisionMLP, "pad_matmuls", True)
    mlp = _mlp(4)
    x = torch.randn(4, CONFIG.hidden_size)
    with torch.no_grad():
        mlp(x)
        scaled = Scaled(CONFIG.hidden_size, CONFIG.intermediate_size)
        scaled.load_state_dict(mlp.up_proj.state_dict())
        mlp.up_proj = scaled
        got = mlp(x)
    assert mlp._padded.gate_up is None  # let go of the old storage
    torch.testing.assert_close(got, _plain(mlp, x))


def test_grad_and_cpu_default_keep_the_published_products() -> None:
    mlp = _mlp(5)
    x = torch.randn(4, CONFIG.hidden_size, requires_grad=True)
    mlp(x).sum().backward()  # training: separate products, gradients as before
    with torch.no_grad():
        mlp(x)  # CPU by default: not padded
    assert mlp._padded.gate_up is None
    assert mlp.gate_proj.weight.grad is not None


def test_the_tower_is_unchanged_by_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(6)
    tower = VisionTransformer(CONFIG).eval()
    grid = torch.tensor([[1, 4, 6]])
    pixels = torch.randn(24, tower.patch_dim)
    with torch.no_grad():
        want = tower(pixels, grid)
        monkeypatch.setattr(VisionMLP, "pad_matmuls", True)
        got = tower(pixels, grid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
