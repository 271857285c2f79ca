"""Stage 1's objectives skip the student's repeated work and still compute the same losses and
gradients: the layer-wise stage runs only the Gated DeltaNet layers (each on the teacher's input
of that layer), and the KL stage's student reads the decoder inputs the teacher computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.loader import load_model
from engine.preprocess import ImageParams
from engine.tokenizer import Tokenizer
from engine.train import build
from engine.train.data import Batch, EncodedStream, collate
from engine.train.forward import TrainingForward
from engine.train.losses import distill_kl, layer_mse
from engine.train.objectives import Objective
from engine.train.student import student_from_teacher
from tests.engine.train.conftest import HYBRID, TINY_DATA, stage_config

LINEAR = [i for i, t in enumerate(HYBRID) if t == "linear_attention"]


@pytest.fixture(scope="module")
def batch(teacher_dir: Path) -> Batch:
    tok = Tokenizer.from_dir(teacher_dir)
    ds = EncodedStream(TINY_DATA, tok, ImageParams.from_dir(teacher_dir))
    return collate([ds[20_000 + i] for i in range(3)], tok.special.pad)


def _pair(teacher_dir: Path) -> tuple[nn.Module, nn.Module]:
    """(teacher, stage-1 student converted from it, frozen but for Gated DeltaNet)."""
    teacher, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    teacher.requires_grad_(False)
    torch.manual_seed(0)
    student = student_from_teacher(teacher, HYBRID)
    cfg = stage_config("distill_layerwise", teacher_dir, teacher_dir / "unused")
    build.freeze(student, cfg, student.config)
    return teacher, student


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _layerwise_through_whole_student(
    student: TrainingForward, t_hidden: list[torch.Tensor], batch: Batch
) -> torch.Tensor:
    """The definition: the whole student runs, its converted layers fed the teacher's inputs."""
    layers = student.model.model.language_model.layers
    handles = [
        layers[i].register_forward_pre_hook(
            lambda _m, args, i=i: (t_hidden[i].detach().requires_grad_(True), *args[1:])
        )
        for i in LINEAR
    ]
    try:
        _, s_hidden = student(
            batch.input_ids, batch.pixel_values, batch.image_grid_thw, return_hidden=True
        )
    finally:
        for h in handles:
            h.remove()
    return layer_mse(
        [s_hidden[i + 1] for i in LINEAR], [t_hidden[i + 1] for i in LINEAR], batch.mask
    )


def test_layerwise_loss_and_gradients_match_the_whole_student(
    teacher_dir: Path, batch: Batch
) -> None:
    teacher, model = _pair(teacher_dir)
    t, s = TrainingForward(teacher), TrainingForward(model)
    with torch.no_grad():
        _, t_hidden = t(
            batch.input_ids, batch.pixel_values, batch.image_grid_thw, return_hidden=True
        )
    reference = _layerwise_through_whole_student(s, t_hidden, batch)
    reference.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    objective = Objective("distill_layerwise", s, t, LINEAR, 2.0, mse_factor=1.0)
    loss, value = objective(batch, scale=1.0)
    loss.backward()
    got = _grads(model)

    torch.testing.assert_close(loss.detach(), reference.detach(), rtol=1e-5, atol=1e-7)
    assert value == pytest.approx(float(reference), rel=1e-5)
    assert want.keys() == got.keys() and want, "the Gated DeltaNet layers get gradients"
    assert all(".self_attn." in n and int(n.split(".")[3]) in LINEAR for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_kl_student_reading_the_teachers_inputs_gets_the_same_loss(
    teacher_dir: Path, batch: Batch
) -> None:
    teacher, model = _pair(teacher_dir)
    assert build.shares_inputs(model, teacher)
    t, s = TrainingForward(teacher), TrainingForward(model)
    results = []
    for shared in (False, True):
        objective = Objective("distill_kl", s, t, LINEAR, 2.0, 1.0, shared_inputs=shared)
        loss, _ = objective(batch, scale=1.0)
        loss.backward()
        results.append((loss.detach(), _grads(model)))
        model.zero_grad(set_to_none=True)
    (own, own_grads), (shared, shared_grads) = results
    # and the definition, independent of the objective
    args = (batch.input_ids, batch.pixel_values, batch.image_grid_thw)
    with torch.no_grad():
        total, _ = distill_kl(s(*args)[0], t(*args)[0], batch.mask, 2.0)
    torch.testing.assert_close(own, total, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(shared, own, rtol=1e-5, atol=1e-7)
    assert own_grads.keys() == shared_grads.keys() and own_grads
    for name in own_grads:
        torch.testing.assert_close(shared_grads[name], own_grads[name], rtol=1e-4, atol=1e-6)


def test_inputs_are_shared_only_when_frozen_and_equal(teacher_dir: Path) -> None:
    teacher, student = _pair(teacher_dir)
    assert build.shares_inputs(student, teacher)
    assert not build.shares_inputs(student, None)
    # a vision tower that trains computes its own features
    student.model.visual.merger.requires_grad_(True)
    assert not build.shares_inputs(student, teacher)
    student.model.visual.merger.requires_grad_(False)
    # so does one whose weights are not the teacher's
    with torch.no_grad():
        student.model.visual.patch_embed.proj.weight.add_(1e-3)
    assert not build.shares_inputs(student, teacher)


def test_positions_from_the_data_workers_are_the_forwards_own(
    teacher_dir: Path, batch: Batch
) -> None:
    # the loader's workers compute each row's M-RoPE positions (collate with the model's config)
    # so the training loop's host thread does not; the model must see the same inputs either way
    teacher, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    tok = Tokenizer.from_dir(teacher_dir)
    ds = EncodedStream(TINY_DATA, tok, ImageParams.from_dir(teacher_dir))
    with_positions = collate([ds[20_000 + i] for i in range(3)], tok.special.pad, teacher.config)
    assert batch.position_ids is None and with_positions.position_ids is not None
    assert batch.image_grid_thw is not None  # rows with images: 3-D positions, not a range
    forward = TrainingForward(teacher)
    args = (batch.input_ids, batch.pixel_values, batch.image_grid_thw)
    computed: list = []
    with torch.no_grad():
        expected, _ = forward(*args, inputs_out=computed)
        got, _ = forward(*args, position_ids=with_positions.position_ids)
    assert torch.equal(with_positions.position_ids, computed[0].position_ids)
    assert torch.equal(got, expected)
