"""Tiny checkpoints in the published format, for tests of the engine, the app, the CLI and training.

``write_tiny_checkpoint`` writes what a Hugging Face InfiniteVL directory holds: config.json,
safetensors weights (one file or shards with an index), tokenizer.json, tokenizer_config.json and
preprocessor_config.json. Everything is deterministic for a seed.

The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer, normalizer and decoder) trained with the
``tokenizers`` library on a short built-in text to fit ``tiny_config``'s 256 ids:

| ids | tokens |
| --- | --- |
| 0 .. 242 | the 243 bytes valid UTF-8 can hold (not 0xC0, 0xC1, 0xF5..0xFF): any text round-trips |
| 243 .. vocab-9 | BPE merges learned from the built-in text |
| vocab-8 | ``<|endoftext|>`` (config bos_token_id; tokenizer pad_token) |
| vocab-7 | ``<|im_end|>`` (config eos_token_id; tokenizer eos_token) |
| vocab-6 | ``<|im_start|>`` |
| vocab-5, vocab-4 | ``<|vision_start|>``, ``<|vision_end|>`` |
| vocab-3 | ``<|vision_pad|>`` |
| vocab-2, vocab-1 | ``<|image_pad|>``, ``<|video_pad|>`` (config image/video_token_id) |
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from engine.config import ModelConfig, tiny_config
from engine.errors import ConfigError
from engine.tokenizer import (
    END_OF_TEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    QWEN2_VL_CHAT_TEMPLATE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)

if TYPE_CHECKING:
    from engine.model.infinitevl import InfiniteVLForConditionalGeneration

log = logging.getLogger(__name__)

# in id order at the top of the vocabulary: vocab-8 .. vocab-1, matching tiny_config's token ids
SPECIAL_TOKENS = (
    END_OF_TEXT,
    IM_END,
    IM_START,
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    VIDEO_PAD,
)

# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation, spaces)
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# bytes that never occur in valid UTF-8; leaving them out makes room for the special tokens
NON_UTF8_BYTES = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])

TRAINING_TEXT = """\
The assistant reads the screen and answers questions about what it sees.
A user may ask what a picture shows, what a chart says, or what is written on a page.
The model looks at the image, then writes a short and helpful answer in plain English.
This is a small test of the tokenizer. It has only a few merges, so most words are bytes.
Numbers like 12, 345 and 6789 are split into single digits, as in the original tokenizer.
What is in the image? There is a cat on the table, and the table is next to the window.
"""

# Qwen2.5-VL's preprocessor_config.json with small pixel bounds so tests stay fast
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112 * 4


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer(vocab_size: int = 256) -> HFTokenizer:
    """Train the tiny byte-level BPE; its ids are laid out as the module docstring says.

    Raises:
        ConfigError: ``vocab_size`` too small for the UTF-8 bytes plus the special tokens.
    """
    alphabet = [c for b, c in bytes_to_unicode().items() if b not in NON_UTF8_BYTES]
    num_regular = vocab_size - len(SPECIAL_TOKENS)
    if num_regular < len(alphabet):
        raise ConfigError(
            f"tiny tokenizer needs vocab_size >= {len(alphabet) + len(SPECIAL_TOKENS)} "
            f"({len(alphabet)} bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_regular, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True), trainer=trainer)
    if tok.get_vocab_size() != num_regular:
        raise ConfigError(
            f"tiny tokenizer trained to {tok.get_vocab_size()} tokens, expected {num_regular}"
        )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def write_tiny_tokenizer(path: str | Path, vocab_size: int = 256) -> Path:
    """Write tokenizer.json and tokenizer_config.json (with the Qwen2-VL chat template) to ``path``.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(vocab_size)
    tok.save(str(path / "tokenizer.json"))
    first = vocab_size - len(SPECIAL_TOKENS)
    added = {
        str(first + i): {
            "content": text,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, text in enumerate(SPECIAL_TOKENS)
    }
    config: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != END_OF_TEXT],
        "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": END_OF_TEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    _write_json(path / "tokenizer_config.json", config)
    return path


def write_tiny_preprocessor_config(path: str | Path) -> Path:
    """Write Qwen2.5-VL's preprocessor_config.json with pixel bounds small enough for tests."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "max_pixels": TINY_MAX_PIXELS,
        "merge_size": 2,
        "min_pixels": TINY_MIN_PIXELS,
        "patch_size": 14,
        "processor_class": "Qwen2_5_VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "temporal_patch_size": 2,
    }
    _write_json(path / "preprocessor_config.json", config)
    return path


def tiny_model(
    config: ModelConfig | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> InfiniteVLForConditionalGeneration:
    """A tiny model with deterministic random weights (A_log stays float32).

    Every tensor gets a seeded perturbation on top of the model's own init, so norms and biases are
    not all ones/zeros and a mixed-up name cannot go unnoticed in logits.
    """
    # imported here: the tokenizer part of this module must work without the model
    from engine.model.infinitevl import InfiniteVLForConditionalGeneration

    config = config or tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InfiniteVLForConditionalGeneration(config)
        with torch.no_grad():
            for _, p in sorted(model.named_parameters()):
                p.add_(torch.randn_like(p) * 0.02)
    for name, p in model.named_parameters():
        if not name.endswith("A_log"):
            p.data = p.data.to(dtype)
    return model.eval()


def write_tiny_checkpoint(
    path: str | Path,
    config: ModelConfig | None = None,
    *,
    seed: int = 0,
    legacy_names: bool = False,
    sharded: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete tiny checkpoint directory, loadable by ``engine.loader.load_model``.

    Args:
        path: directory to create (may exist).
        config: the architecture; ``tiny_config()`` (hybrid, vocab 256) when None.
        seed: weights are a function of the seed.
        legacy_names: write the older on-disk names (``visual.``, ``model.``).
        sharded: split the weights over 3 or more shards with model.safetensors.index.json.
        dtype: dtype of every tensor but ``A_log`` (float32).
    Returns:
        ``path`` as a Path.
    """
    from engine.loader import save_checkpoint

    path = Path(path)
    config = config or tiny_config()
    model = tiny_model(config, seed=seed, dtype=dtype)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    max_shard_bytes = total // 3 if sharded else 2**31
    save_checkpoint(model, path, max_shard_bytes=max_shard_bytes, legacy_names=legacy_names)
    write_tiny_tokenizer(path, config.text.vocab_size)
    write_tiny_preprocessor_config(path)
    log.debug("tiny checkpoint at %s (seed %d, %s)", path, seed, dtype)
    return path


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
