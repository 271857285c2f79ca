"""Encoding: Qwen2-VL template, image pads expanded, only replies (and <|im_end|>) labelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from engine.preprocess import ImageParams
from engine.testing.tiny_checkpoint import write_tiny_preprocessor_config, write_tiny_tokenizer
from engine.tokenizer import Tokenizer, chat_prompt
from engine.train.conversation import IGNORE_INDEX, encode_sample
from engine.train.sharegpt import ShareGPTSource
from engine.train.synthetic.tasks import Message, Sample


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(d, 256)
    write_tiny_preprocessor_config(d)
    return d


def test_encode_sample_matches_chat_prompt_and_labels_replies(ckpt: Path) -> None:
    tok, params = Tokenizer.from_dir(ckpt), ImageParams.from_dir(ckpt)
    image = Image.new("RGB", (56, 84), "white")
    sample = Sample([image], [Message("user", "<image>Read it."), Message("assistant", "hello")])
    enc = encode_sample(sample, tok, params, max_tokens=4096)
    prompt = chat_prompt(
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read it."}]},
            {"role": "assistant", "content": "hello"},
        ],
        add_generation_prompt=False,
    )
    n_pad = int(enc.image_grid_thw.prod()) // 4
    expected = tok.expand_vision_tokens(tok.encode(prompt), [n_pad])
    assert enc.input_ids.tolist() == expected
    labelled = enc.labels[enc.labels != IGNORE_INDEX].tolist()
    assert tok.decode(labelled) == "hello<|im_end|>"
    assert int((enc.input_ids == tok.special.image_pad).sum()) == n_pad
    assert enc.pixel_values.shape[0] == int(enc.image_grid_thw.prod())


def test_sharegpt_reader_adds_missing_image_tags(tmp_path: Path, ckpt: Path) -> None:
    Image.new("RGB", (60, 60), "red").save(tmp_path / "a.png")
    records = [
        {
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "What colour?"},
                {"from": "gpt", "value": "Red."},
            ],
        },
        {
            "images": [],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        },
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    src = ShareGPTSource((str(tmp_path / "d.json"),))
    s0, s1 = src.sample(0), src.sample(1)
    assert s0.messages[0].content == "<image>What colour?" and len(s0.images) == 1
    assert s1.images == [] and s1.messages[1].role == "assistant"
    tok, params = Tokenizer.from_dir(ckpt), ImageParams.from_dir(ckpt)
    enc = encode_sample(s1, tok, params, max_tokens=4096)
    assert tok.decode(enc.labels[enc.labels != IGNORE_INDEX].tolist()) == "Hello<|im_end|>"
