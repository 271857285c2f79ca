"""Tokenizer on the tiny checkpoint's files: ids, round trips, streaming, and the chat template
rendered exactly as transformers renders Qwen2-VL's jinja source."""

import json
import shutil
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import tiny_config
from engine.errors import CheckpointError, InputError
from engine.tokenizer import QWEN2_VL_CHAT_TEMPLATE, Tokenizer, chat_prompt

TEXTS = [
    "Hello, world! The table is next to the window.",
    "naïve café — 12345 ½ €",
    "你好，世界。日本語のテキスト",
    "مرحبا بالعالم",
    "emoji 🦙🔥👩‍👩‍👧 and flags 🇫🇷",
    "  leading spaces\n\nnew lines\ttabs  ",
    "",
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def hf_tok(tiny_tokenizer_dir: Path):  # noqa: ANN201
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < 248 for i in ids)
    assert tok.decode(ids) == text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=40))
def test_encode_decode_round_trip_any_text(tok: Tokenizer, text: str) -> None:
    text = unicodedata.normalize("NFC", text)  # the tokenizer normalises to NFC, as Qwen2's does
    assert tok.decode(tok.encode(text)) == text


def test_encode_matches_transformers(tok: Tokenizer, hf_tok) -> None:  # noqa: ANN001
    for text in [*TEXTS, "<|im_start|>user\nhi<|im_end|>\n<|vision_start|><|image_pad|>"]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)


def test_special_token_ids_match_tiny_config(tok: Tokenizer) -> None:
    config = tiny_config()
    s = tok.special
    assert s.end_of_text == config.bos_token_id == 248
    assert s.im_end == s.eos == config.eos_token_id[0] == 249
    assert s.im_start == 250
    assert (s.vision_start, s.vision_end) == (
        config.vision_start_token_id,
        config.vision_end_token_id,
    )
    assert (s.image_pad, s.video_pad) == (config.image_token_id, config.video_token_id)
    assert s.pad == s.end_of_text
    assert tok.vocab_size == config.text.vocab_size


def test_special_tokens_in_text_are_recognised(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><|vision_start|><|image_pad|><|vision_end|>")
    s = tok.special
    assert ids[0] == s.im_start
    assert ids[-4:] == [s.im_end, s.vision_start, s.image_pad, s.vision_end]
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_decode_rejects_ids_outside_vocab(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match="256"):
        tok.decode([1, 256])


def test_from_dir_without_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_names_missing_special_token(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|video_pad|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"<\|video_pad\|>"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_rejects_conflicting_config_ids(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_tokenizer_dir / "tokenizer.json", tmp_path)
    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["200"] = config["added_tokens_decoder"].pop("249")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"<\|im_end\|>: 249 in tokenizer.json, 200"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_garbage_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


IMAGE = {"type": "image", "image": "file:///a.png"}
CONVERSATIONS = {
    "text_only": [{"role": "user", "content": "What is 2+2?"}],
    "text_parts": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    "own_system": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello"},
    ],
    "image_then_text": [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "Describe."}]}
    ],
    "multi_turn_images_video": [
        {"role": "user", "content": [IMAGE, IMAGE, {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The first is red."}]},
        {
            "role": "user",
            "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "And?"}],
        },
    ],
    "image_url_and_untyped": [
        {"role": "system", "content": [{"type": "text", "text": "You read screens."}]},
        {
            "role": "user",
            "content": [{"image_url": "x.png"}, {"text": "What app?"}, {"image": "y"}],
        },
    ],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("add_vision_id", [False, True])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_prompt_matches_transformers(
    hf_tok,
    name: str,
    add_generation_prompt: bool,
    add_vision_id: bool,  # noqa: ANN001
) -> None:
    messages = CONVERSATIONS[name]
    expected = hf_tok.apply_chat_template(
        messages,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        add_vision_id=add_vision_id,
    )
    got = chat_prompt(
        messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id
    )
    assert got == expected


def test_chat_prompt_default_system_and_image_block() -> None:
    text = chat_prompt(CONVERSATIONS["image_then_text"])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_prompt_rejects_malformed_messages() -> None:
    with pytest.raises(InputError, match="role"):
        chat_prompt([{"content": "hi"}])
    with pytest.raises(InputError, match="content"):
        chat_prompt([{"role": "user", "content": 3}])


def test_expand_vision_tokens(tok: Tokenizer) -> None:
    messages = CONVERSATIONS["multi_turn_images_video"]
    ids = tok.encode(chat_prompt(messages))
    s = tok.special
    out = tok.expand_vision_tokens(ids, [4, 6], [8])
    assert out.count(s.image_pad) == 10 and out.count(s.video_pad) == 8
    assert len(out) == len(ids) + 3 + 5 + 7
    # each run of pads sits between its vision_start and vision_end
    starts = [i for i, t in enumerate(out) if t == s.vision_start]
    runs = [(out[i + 1], out.index(s.vision_end, i) - i - 1) for i in starts]
    assert runs == [(s.image_pad, 4), (s.image_pad, 6), (s.video_pad, 8)]


def test_expand_vision_tokens_count_mismatch(tok: Tokenizer) -> None:
    ids = tok.encode(chat_prompt(CONVERSATIONS["image_then_text"]))
    with pytest.raises(InputError, match="1 image placeholders but 2"):
        tok.expand_vision_tokens(ids, [4, 4])
    with pytest.raises(InputError, match="positive"):
        tok.expand_vision_tokens(ids, [0])


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_never_splits_a_character(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text
    # multi-byte characters span several byte-level tokens: some pushes must hold back
    if any(ord(c) > 127 for c in text):
        assert "" in pieces[:-1]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 255), max_size=30), st.booleans())
def test_stream_decoder_concatenates_to_decode(tok: Tokenizer, ids: list[int], skip: bool) -> None:
    decoder = tok.stream_decoder(skip_special_tokens=skip)
    streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert streamed == tok.decode(ids, skip_special_tokens=skip)
