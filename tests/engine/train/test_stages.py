"""Each stage trains: its loss falls over a few steps on a tiny model, and stage 1 brings the
student's logits closer to the teacher's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.loader import load_model
from engine.preprocess import ImageParams
from engine.tokenizer import Tokenizer
from engine.train.data import EncodedStream, collate
from engine.train.forward import TrainingForward
from engine.train.losses import distill_kl
from engine.train.student import student_from_teacher
from engine.train.trainer import train
from tests.engine.train.conftest import HYBRID, TINY_DATA, stage_config


def _losses(out_dir: Path) -> list[float]:
    lines = (out_dir / "losses.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines]


def _falls(losses: list[float]) -> bool:
    return sum(losses[-2:]) / 2 < sum(losses[:2]) / 2


@pytest.fixture(scope="module")
def batch(teacher_dir: Path):  # noqa: ANN201
    ds = EncodedStream(
        TINY_DATA, Tokenizer.from_dir(teacher_dir), ImageParams.from_dir(teacher_dir)
    )
    items = [ds[10_000 + i] for i in range(4)]
    return collate(items, Tokenizer.from_dir(teacher_dir).special.pad)


def _kl(student_dir: Path | None, teacher_dir: Path, batch) -> float:  # noqa: ANN001
    teacher, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    if student_dir is None:
        student = student_from_teacher(teacher, HYBRID)
    else:
        student, _ = load_model(student_dir, device="cpu", dtype=torch.float32)
    args = (batch.input_ids, batch.pixel_values, batch.image_grid_thw)
    with torch.no_grad():
        t, _ = TrainingForward(teacher)(*args)
        s, _ = TrainingForward(student)(*args)
    total, n = distill_kl(s, t, batch.mask, 2.0)
    return float(total) / n


def test_teacher_stage_loss_falls(teacher_dir: Path, tmp_path: Path) -> None:
    out = train(stage_config("teacher", teacher_dir, tmp_path, steps=8, lr=1e-2))
    assert _falls(_losses(tmp_path)), _losses(tmp_path)
    assert (out / "config.json").is_file() and (tmp_path / "loss.png").is_file()
    load_model(out, device="cpu", dtype=torch.float32)


def test_distillation_reduces_kl_to_teacher(teacher_dir: Path, tmp_path: Path, batch) -> None:  # noqa: ANN001
    # GIVEN a hybrid student converted from the teacher
    kl_start = _kl(None, teacher_dir, batch)
    # WHEN stage 1 (layer-wise MSE) then stage 1b (logit KL) run
    s1 = train(
        stage_config("distill_layerwise", teacher_dir, tmp_path / "s1", teacher=str(teacher_dir))
    )
    assert _falls(_losses(tmp_path / "s1")), _losses(tmp_path / "s1")
    s2 = train(stage_config("distill_kl", s1, tmp_path / "s2", teacher=str(teacher_dir)))
    assert _falls(_losses(tmp_path / "s2")), _losses(tmp_path / "s2")
    # THEN the student is closer to the teacher than at conversion, on held-out samples
    assert _kl(s2, teacher_dir, batch) < kl_start
    # and only Gated DeltaNet tensors changed
    t, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    s, _ = load_model(s2, device="cpu", dtype=torch.float32)
    t_sd, s_sd = t.state_dict(), s.state_dict()
    assert torch.equal(
        t_sd["model.language_model.layers.0.self_attn.q_proj.weight"],
        s_sd["model.language_model.layers.0.self_attn.q_proj.weight"],
    )
    assert torch.equal(
        t_sd["model.visual.blocks.0.attn.qkv.weight"], s_sd["model.visual.blocks.0.attn.qkv.weight"]
    )


@pytest.fixture
def student_dir(teacher_dir: Path, tmp_path: Path) -> Path:
    """The hybrid student converted from the tiny teacher, saved with the teacher's tokenizer."""
    import shutil

    from engine.loader import save_checkpoint
    from engine.train.checkpointing import AUX_FILES

    teacher, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    init = tmp_path / "student"
    save_checkpoint(student_from_teacher(teacher, HYBRID), init, max_shard_bytes=2**31)
    for name in AUX_FILES:
        if (teacher_dir / name).is_file():
            shutil.copy2(teacher_dir / name, init / name)
    return init


def test_sft_stage_loss_falls(student_dir: Path, tmp_path: Path) -> None:
    trainable = (r"model\.language_model\.", r"merger")
    train(stage_config("sft", student_dir, tmp_path / "sft", steps=8, lr=1e-2, trainable=trainable))
    assert _falls(_losses(tmp_path / "sft")), _losses(tmp_path / "sft")


def test_lora_stage_loss_falls_and_merges(student_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="stage 3 needs the train extra (peft)")
    lora = train(stage_config("lora", student_dir, tmp_path / "lora", steps=8, lr=2e-2))
    assert _falls(_losses(tmp_path / "lora")), _losses(tmp_path / "lora")
    merged, _ = load_model(lora, device="cpu", dtype=torch.float32)
    before, _ = load_model(student_dir, device="cpu", dtype=torch.float32)
    name = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], before.state_dict()[name]), "LoRA merged"
    frozen = "model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(merged.state_dict()[frozen], before.state_dict()[frozen])


def test_non_finite_gradient_skips_the_update(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an objective whose second micro-batch overflows
    import engine.train.trainer as trainer_module

    calls = {"n": 0}

    class Overflowing(trainer_module.Objective):
        def __call__(self, batch, scale):  # noqa: ANN001, ANN204
            loss, value = super().__call__(batch, scale)
            calls["n"] += 1
            return (loss * float("inf"), value) if calls["n"] == 2 else (loss, value)

    monkeypatch.setattr(trainer_module, "Objective", Overflowing)
    # WHEN a 3-step run meets it (one micro-batch per step)
    out = train(stage_config("teacher", teacher_dir, tmp_path, steps=3, micro_batch=4))
    # THEN the weights stay finite and still moved on the other steps
    model, _ = load_model(out, device="cpu", dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    init, _ = load_model(teacher_dir, device="cpu", dtype=torch.float32)
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(model.state_dict()[name], init.state_dict()[name])


def test_attention_context_entered_afresh_each_micro_batch(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the SDPA context as CUDA builds it: a generator context manager, which enters once
    # (the CPU's nullcontext enters any number of times and hid a GPU-only failure)
    import contextlib

    import engine.train.trainer as trainer_module

    entered = {"n": 0}

    @contextlib.contextmanager
    def once_only_context(device: torch.device):  # noqa: ANN202
        entered["n"] += 1
        yield

    monkeypatch.setattr(trainer_module, "sdpa_context", once_only_context)
    # WHEN a run takes 3 steps of 2 micro-batches
    train(stage_config("teacher", teacher_dir, tmp_path, steps=3))
    # THEN every micro-batch ran under its own context
    assert entered["n"] == 6


def test_loader_workers_collate_the_same_micro_batches(teacher_dir: Path) -> None:
    # GIVEN the tiny data and a step of 6 samples in micro-batches of 4
    from engine.train.data import Shard, batch_loader

    tokenizer = Tokenizer.from_dir(teacher_dir)
    dataset = EncodedStream(TINY_DATA, tokenizer, ImageParams.from_dir(teacher_dir))
    pad = tokenizer.special.pad

    def steps(workers: int) -> list:
        return list(batch_loader(dataset, Shard(0, 1, 6), 1, 3, workers, pad, micro_batch=4))

    # WHEN two steps are loaded in the loop's process and by 2 worker processes
    inline, workers = steps(0), steps(2)
    # THEN both give the same 4 + 2 sample micro-batches, padded alike, images included
    assert [[b.input_ids.shape[0] for b in s] for s in workers] == [[4, 2], [4, 2]]
    direct = collate([dataset[i] for i in range(6, 10)], pad)
    for got in (inline[0][0], workers[0][0]):
        for name in ("input_ids", "labels", "mask", "pixel_values", "image_grid_thw"):
            assert torch.equal(getattr(got, name), getattr(direct, name)), name
    for a, b in zip(inline, workers, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(
                x.pixel_values, y.pixel_values
            )


class _SlowAfterFirst(EncodedStream):
    """Sample 0 at once, every later one after a minute (a worker busy rendering)."""

    def __getitem__(self, index: int):  # noqa: ANN204
        if index:
            import time

            time.sleep(60)
        return super().__getitem__(index)


def test_closing_the_loader_does_not_wait_for_busy_workers(teacher_dir: Path) -> None:
    # GIVEN a loader whose 2 workers are busy with samples nobody will read
    import multiprocessing
    import time

    from engine.train.data import Shard, batch_loader

    before = set(multiprocessing.active_children())  # other tests' processes are not ours
    tokenizer = Tokenizer.from_dir(teacher_dir)
    dataset = _SlowAfterFirst(TINY_DATA, tokenizer, ImageParams.from_dir(teacher_dir))
    loader = batch_loader(dataset, Shard(0, 1, 1), 0, 100, 2, tokenizer.special.pad, 1)
    assert next(loader)[0].input_ids.shape[0] == 1
    # WHEN the loop stops
    t = time.monotonic()
    loader.close()
    # THEN close returns at once (DataLoader's own shutdown waits 5 s for each busy worker)
    # and no worker is left
    assert time.monotonic() - t < 4.0
    assert not [p for p in multiprocessing.active_children() if p not in before]
