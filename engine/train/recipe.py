"""The embedded default model's starting point: its architecture, tokenizer and image settings.

`write_start(dir)` writes config.json (the Transformer teacher: full attention everywhere),
tokenizer.json/tokenizer_config.json (a 512-entry BPE trained on the synthetic text) and
preprocessor_config.json. The stage configs in `configs/default/` take it from there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from engine.config import ModelConfig
from engine.train.student import hybrid_layer_types
from engine.train.tokenizer_train import train_tokenizer

log = logging.getLogger(__name__)

# 512 entries: bytes, the chat template and ~240 merges of 2-4 letters. With 4096 most words are
# one token, and a model from scratch must learn each word's picture as a class of its own; with
# pieces a few letters wide it learns letters shared by every word. (A choice by that argument:
# no run has yet compared the two at equal training, see engine/train/README.md.)
VOCAB_SIZE = 512
# images up to 1024 merged tokens: an 800x200 screen region stays at full resolution
MAX_PIXELS = 1024 * 28 * 28
MIN_PIXELS = 4 * 28 * 28


def architecture(
    special: dict[str, int], layer_types: tuple[str, ...] | None = None, num_layers: int = 8
) -> dict[str, Any]:
    """config.json of the small model: decoder 8 x 320 (5 heads of 64), vision 6 x 256.

    Args:
        special: token -> id of the trained tokenizer.
        layer_types: defaults to full attention (the teacher); the student uses
            `hybrid_layer_types(num_layers)`.
    """
    types = layer_types or ("full_attention",) * num_layers
    return {
        "architectures": ["InfiniteVLForConditionalGeneration"],
        "model_type": "infinite_vl",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 320,
        "intermediate_size": 896,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 5,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        # head_dim 64: 32 frequencies split over t, h, w in Qwen's 2:3:3 ratio
        "rope_scaling": {"mrope_section": [8, 12, 12], "rope_type": "default", "type": "default"},
        "layer_types": list(types),
        "sliding_window": 512,
        "num_linear_heads": 5,
        "num_linear_key_value_heads": 5,
        "linear_head_dim": 64,
        "expand_v": 1,
        "conv_size": 4,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]],
        "pad_token_id": special["<|endoftext|>"],
        "image_token_id": special["<|image_pad|>"],
        "video_token_id": special["<|video_pad|>"],
        "vision_start_token_id": special["<|vision_start|>"],
        "vision_end_token_id": special["<|vision_end|>"],
        "vision_config": {
            "depth": 6,
            "hidden_size": 256,
            "intermediate_size": 640,
            "num_heads": 4,
            "in_channels": 3,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [2, 5],
            "out_hidden_size": 320,
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
    }


def preprocessor_config() -> dict[str, Any]:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "resample": 3, "rescale_factor": 1 / 255,
    }  # fmt: skip


def write_start(out_dir: Path, seed: int = 0, layer_types: tuple[str, ...] | None = None) -> Path:
    """Write the teacher's config.json (or, with ``layer_types``, that architecture's), the
    tokenizer and preprocessor_config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    special = train_tokenizer(out_dir, VOCAB_SIZE, seed)
    raw = architecture(special, layer_types)
    ModelConfig.from_hf(raw)  # fail here, not three stages later
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(), indent=2) + "\n", encoding="utf-8"
    )
    log.info("default model start written to %s", out_dir)
    return out_dir


def student_layer_types(num_layers: int = 8) -> tuple[str, ...]:
    return hybrid_layer_types(num_layers)


def write_untrained(out_dir: Path, seed: int = 0) -> Path:
    """The embedded model's architecture (the hybrid student) with random N(0, 0.02) weights,
    stored in bfloat16 as the trained model will be: for speed and memory measurements, which do
    not depend on what the weights learnt. Returns the checkpoint directory."""
    import torch

    from engine.loader import save_checkpoint
    from engine.train.build import fresh_model

    start = write_start(out_dir / "start", seed, student_layer_types())
    model = fresh_model(start / "config.json", seed=seed, device=torch.device("cpu"))
    return save_checkpoint(model.to(torch.bfloat16), out_dir / "model", tokenizer_dir=start)
