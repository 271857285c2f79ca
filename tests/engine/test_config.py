"""config.json parsing: the published InfiniteVL and Qwen2.5-VL configs, defaults, bad types."""

import json
from pathlib import Path

import pytest

from engine.config import ModelConfig, tiny_config
from engine.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
QWEN = Path(__file__).resolve().parent / "qwen2.5-vl-3b.config.json"


def test_config_infinitevl_4b_defaults_the_published_file_leaves_out() -> None:
    config = ModelConfig.from_file(REFERENCE / "infinitevl-4b.config.json")
    text = config.text
    # one sliding-window layer, then three Gated DeltaNet layers, nine times
    assert text.layer_types == tuple(
        "sliding_attention" if i % 4 == 0 else "linear_attention" for i in range(36)
    )
    assert (text.num_linear_heads, text.linear_head_dim, text.linear_value_head_dim) == (
        16,
        128,
        256,
    )
    assert (text.conv_size, text.norm_eps, text.sliding_window) == (4, 1e-5, 8192)
    assert text.mrope_section == (16, 24, 24) and text.tie_word_embeddings
    assert config.vision.fullatt_block_indexes == (7, 15, 23, 31)


def test_config_qwen25_vl_is_full_attention() -> None:
    config = ModelConfig.from_file(QWEN)
    assert set(config.text.layer_types) == {"full_attention"}
    assert len(config.text.layer_types) == 36


def test_config_nested_text_config_and_round_trip() -> None:
    raw = json.loads((REFERENCE / "infinitevl-4b.config.json").read_text())
    nested = {k: v for k, v in raw.items() if k not in ("hidden_size", "num_hidden_layers")}
    nested["text_config"] = {"hidden_size": 2048, "num_hidden_layers": 36}
    assert ModelConfig.from_hf(nested).text == ModelConfig.from_hf(raw).text
    tiny = tiny_config()
    assert ModelConfig.from_hf(tiny.to_hf()) == tiny
    assert ModelConfig.from_hf(tiny.to_hf()).fingerprint() == tiny.fingerprint()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("hidden_size", "2048", "hidden_size"),
        ("num_hidden_layers", True, "num_hidden_layers"),
        ("layer_types", ["linear_attention", "mamba"], "mamba"),
        ("sliding_window", -1, "sliding_window"),
        ("image_token_id", 10**9, "image_token_id"),
    ],
)
def test_config_bad_values_name_the_field(field: str, value: object, named: str) -> None:
    raw = json.loads((REFERENCE / "infinitevl-4b.config.json").read_text())
    raw[field] = value
    with pytest.raises(ConfigError, match=named):
        ModelConfig.from_hf(raw)


def test_config_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path)


def test_config_window_off_when_use_sliding_window_is_false() -> None:
    # InfiniteVL's config class drops the window unless use_sliding_window is true (its default
    # is false): the sliding_attention layers then see max_position_embeddings tokens
    raw = json.loads((REFERENCE / "infinitevl-4b.config.json").read_text())
    raw.update(use_sliding_window=False, sliding_window=None, max_position_embeddings=32768)
    text = ModelConfig.from_hf(raw).text
    assert text.sliding_window == 32768
    assert text.layer_types[0] == "sliding_attention"
    raw.update(use_sliding_window=True, sliding_window=4096)
    assert ModelConfig.from_hf(raw).text.sliding_window == 4096
    # a full-attention teacher (saved with use_sliding_window false) keeps its window for the
    # hybrid student built from it
    raw.update(use_sliding_window=False, sliding_window=512, layer_types=["full_attention"] * 36)
    teacher = ModelConfig.from_hf(raw)
    student = teacher.with_layer_types(tuple(text.layer_types))
    assert student.text.sliding_window == 512
    assert ModelConfig.from_hf(student.to_hf()).text.sliding_window == 512


def test_config_expand_v_written_as_a_float() -> None:
    raw = json.loads((REFERENCE / "infinitevl-4b.config.json").read_text())
    raw["expand_v"] = 2.0
    assert ModelConfig.from_hf(raw).text.linear_value_head_dim == 256
    raw["expand_v"] = 1.5  # valid for the reference too: value heads of 192
    assert ModelConfig.from_hf(raw).text.linear_value_head_dim == 192
    raw["expand_v"] = 1.3  # 166.4
    with pytest.raises(ConfigError, match="expand_v"):
        ModelConfig.from_hf(raw)


def test_config_as_the_reference_config_class_saves_it() -> None:
    # InfiniteVLConfig(...).save_pretrained() under transformers >= 4.56: decoder fields nested in
    # text_config (with its own model_type and the class defaults written out), "dtype"
    flat = json.loads((REFERENCE / "infinitevl-4b.config.json").read_text())
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                 "rope_scaling", "max_position_embeddings", "tie_word_embeddings")  # fmt: skip
    text = {k: flat[k] for k in text_keys}
    text.update(model_type="infinite_vl_text", head_dim=128, expand_v=2, use_sliding_window=True,
                sliding_window=8192, max_window_layers=80, norm_eps=1e-5, conv_bias=False,
                mode="chunk", layer_types=["sliding_attention", "linear_attention",
                "linear_attention", "linear_attention"] * 9, dtype="bfloat16")  # fmt: skip
    saved = {
        "architectures": flat["architectures"],
        "model_type": "infinite_vl",
        "text_config": text,
        "vision_config": flat["vision_config"],
        **{k: flat[k] for k in flat if k.endswith("token_id")},
        "dtype": "bfloat16",
    }
    assert ModelConfig.from_hf(saved).text == ModelConfig.from_hf(flat).text
    # saved from the class default (use_sliding_window false): no window in the sliding layers
    text.update(use_sliding_window=False, sliding_window=None)
    assert ModelConfig.from_hf(saved).text.sliding_window == flat["max_position_embeddings"]
