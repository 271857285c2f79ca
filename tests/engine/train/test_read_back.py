"""What training teaches is what the engine runs: a tiny hybrid model (sliding-window + Gated
DeltaNet layers) trained by the pipeline until it has memorised two OCR samples, exported, then
loaded by the engine, reads both images back through `infinitevl ocr`'s path (image
preprocessing, vision tower, positions, recurrent state, greedy decode, detokenising).

It catches a checkpoint the export writes wrongly or the loader reads wrongly, and training and
inference disagreeing on the image or its tokens. A memorised model keys on the image, so small
prompt or template drift goes unseen here: tests/engine/train/test_conversation.py checks those."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import ModelConfig, tiny_config
from engine.engine import Engine
from engine.ocr import ocr_images
from engine.testing.tiny_checkpoint import write_tiny_checkpoint
from engine.train.data import SampleStream
from engine.train.trainer import train
from tests.engine.train.conftest import HYBRID, TINY_DATA, stage_config

# two screens, 84-112 px wide: a handful of image tokens and a few words each
DATA = replace(TINY_DATA, weights={"ocr_screen": 1.0}, seed=5, screen_width=(84, 112), repeat=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("read_back")
    config = ModelConfig.from_hf(tiny_config(HYBRID).to_hf())
    init = write_tiny_checkpoint(root / "init", config, seed=3)
    cfg = stage_config(
        "teacher", init, root / "out", data=DATA, steps=150, batch_size=2, micro_batch=2,
        lr=3e-3, warmup=5,
    )  # fmt: skip
    out = train(cfg)
    last = json.loads((root / "out" / "losses.jsonl").read_text().splitlines()[-1])["loss"]
    assert last < 0.01, f"not memorised: loss {last}"
    return out


def test_engine_reads_back_what_training_taught(trained: Path) -> None:
    engine = Engine.load(trained, device="cpu")
    stream = SampleStream(DATA)
    samples = [stream.sample(i) for i in range(2)]
    texts = [s.messages[1].content for s in samples]
    assert texts[0] != texts[1]
    assert ocr_images(engine, [s.images[0] for s in samples], max_new_tokens=40) == texts
