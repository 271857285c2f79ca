"""A small byte-level BPE tokenizer in Qwen2's format, trained on the synthetic data's text.

The embedded model cannot afford Qwen's 151k-entry vocabulary; this writes a tokenizer.json and
tokenizer_config.json that `engine.tokenizer` reads like Qwen2-VL's, with the same special tokens
and chat template, so only the ids differ.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from engine.tokenizer import QWEN2_VL_CHAT_TEMPLATE
from engine.train.text_sources import CITIES, FIRST_NAMES, LAST_NAMES, TextSource

log = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenizer split: contractions, words, single digits, punctuation runs, spaces
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus(src: TextSource, seed: int = 0, num_code_runs: int = 3000) -> Iterator[str]:
    """Text like what the model reads and writes: prose, code, names, numbers, prompts."""
    rng = random.Random(seed)
    yield from src.sentences
    yield " ".join(src.words)
    for _ in range(num_code_runs):
        yield "\n".join(src.code(rng, 8))
    for f in FIRST_NAMES:
        for last in LAST_NAMES:
            price = f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"
            yield f"{f} {last} {rng.choice(CITIES)} {rng.randint(0, 9999)} {price}"
    # the template and prompt words recur in every sample: weigh them so they merge whole
    for _ in range(200):
        yield "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        yield "<|im_start|>assistant\n"
        yield (
            "Read the text in the image. What is the window title? What is the total? "
            "Which city has the largest value? What is the value for "
            "What is the title of this page? What is the reference number on page 1? "
            "Reference: Page TOTAL You are a helpful assistant."
        )


def build_tokenizer(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Train byte-level BPE with Qwen2's normaliser, split regex and special tokens (ids 0-13)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def write_tokenizer(tok: Tokenizer, out_dir: Path) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json; return the special tokens' ids."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in ids.items()
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [
            t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")
        ],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    log.info("tokenizer: %d entries written to %s", tok.get_vocab_size(), out_dir)
    return ids


def train_tokenizer(out_dir: Path, vocab_size: int = 4096, seed: int = 0) -> dict[str, int]:
    """Harvest text, train, write; returns the special tokens' ids (for config.json)."""
    tok = build_tokenizer(corpus(TextSource.from_stdlib(), seed), vocab_size)
    return write_tokenizer(tok, out_dir)
