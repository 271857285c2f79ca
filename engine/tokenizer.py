"""Text <-> token ids as the checkpoint's tokenizer files say, and the Qwen2-VL chat prompt.

Reads tokenizer.json (the `tokenizers` library) and tokenizer_config.json; renders the Qwen2-VL
chat template in Python (no jinja at runtime). Knows nothing about images beyond placeholder counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from engine.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# SpecialTokens field -> token text; a checkpoint's tokenizer.json must hold all of them
REQUIRED_SPECIAL_TOKENS = {
    "im_start": IM_START,
    "im_end": IM_END,
    "end_of_text": END_OF_TEXT,
    "vision_start": VISION_START,
    "vision_end": VISION_END,
    "image_pad": IMAGE_PAD,
    "video_pad": VIDEO_PAD,
}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# the chat template as Qwen publishes it in Qwen2-VL's and Qwen2.5-VL's chat_template.json;
# chat_prompt() renders the same text, and the tiny checkpoints ship it for transformers
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    """Ids of the tokens the prompt format and generation rely on, as the checkpoint's files say."""

    im_start: int
    im_end: int
    end_of_text: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int
    eos: int  # tokenizer_config.json's eos_token (Qwen2-VL: <|im_end|>)
    pad: int  # tokenizer_config.json's pad_token (Qwen2-VL: <|endoftext|>)


class Tokenizer:
    """A checkpoint's tokenizer: ``encode``/``decode`` plus the special token ids.

    Build with :meth:`from_dir`; ``hf`` is the underlying ``tokenizers.Tokenizer``.
    """

    def __init__(self, hf: HFTokenizer, special: SpecialTokens, *, source: str = "") -> None:
        self.hf = hf
        self.special = special
        self.source = source
        # asked once: the Rust tokenizer counts its vocabulary on every call (~0.4 ms for 4K
        # entries, more for Qwen's 151K), and a streamed token decodes twice
        self._vocab_size = hf.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read ``tokenizer.json`` and (if present) ``tokenizer_config.json`` from a checkpoint dir.

        Raises:
            CheckpointError: tokenizer.json missing or unreadable, a required special token absent,
                or tokenizer_config.json giving a special token another id than tokenizer.json.
        """
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"no tokenizer.json in {path}")
        try:
            hf = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse failure
            raise CheckpointError(f"{tok_file}: not a readable tokenizer ({exc})") from exc
        config = _read_tokenizer_config(path / "tokenizer_config.json")
        ids = _special_ids(hf, config, tok_file)
        eos = _token_text(config.get("eos_token"), IM_END)
        pad = _token_text(config.get("pad_token"), END_OF_TEXT)
        for role, text in (("eos_token", eos), ("pad_token", pad)):
            if hf.token_to_id(text) is None:
                raise CheckpointError(f"{path}: {role} {text!r} is not in tokenizer.json")
        special = SpecialTokens(**ids, eos=hf.token_to_id(eos), pad=hf.token_to_id(pad))
        _warn_on_other_template(path, config)
        return cls(hf, special, source=str(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids."""
        if not isinstance(text, str):
            raise InputError(f"encode expects str, got {type(text).__name__}")
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; an incomplete UTF-8 character at the end decodes to U+FFFD."""
        ids = list(ids)
        vocab_size = self._vocab_size
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise InputError(f"token ids {bad[:10]} outside the vocabulary of {vocab_size}")
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A fresh incremental decoder over this tokenizer."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def expand_vision_tokens(
        self,
        ids: Sequence[int],
        image_token_counts: Sequence[int] = (),
        video_token_counts: Sequence[int] = (),
    ) -> list[int]:
        """Repeat each ``<|image_pad|>``/``<|video_pad|>`` to the number of tokens its media yields.

        Args:
            ids: prompt ids with one pad token per image/video (as :func:`chat_prompt` writes).
            image_token_counts: tokens per image, in prompt order (grid t*h*w / merge^2).
            video_token_counts: tokens per video, in prompt order.
        Returns:
            the ids with every pad expanded.
        Raises:
            InputError: the number of pads differs from the number of counts, or a count is < 1.
        """
        for kind, counts in (("image", image_token_counts), ("video", video_token_counts)):
            bad = [c for c in counts if not isinstance(c, int) or c < 1]
            if bad:
                raise InputError(f"{kind} token counts must be positive integers, got {bad}")
        expand = {
            self.special.image_pad: list(image_token_counts),
            self.special.video_pad: list(video_token_counts),
        }
        found = {pad: sum(1 for i in ids if i == pad) for pad in expand}
        for kind, pad in (("image", self.special.image_pad), ("video", self.special.video_pad)):
            if found[pad] != len(expand[pad]):
                raise InputError(
                    f"prompt has {found[pad]} {kind} placeholders but {len(expand[pad])} "
                    f"{kind} token counts were given"
                )
        out: list[int] = []
        cursor = {pad: 0 for pad in expand}
        for i in ids:
            if i in expand:
                out.extend([i] * expand[i][cursor[i]])
                cursor[i] += 1
            else:
                out.append(i)
        return out


class StreamDecoder:
    """Incremental detokenization: text appears as tokens arrive, never half a UTF-8 character.

    Decodes a window that starts at the last emitted boundary and emits only the part past the
    previously decoded text, holding back while the window ends in U+FFFD (a character cut between
    tokens). ``"".join(push(t) for t in ids) + flush() == tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens up to here have been emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self._ids.append(int(token_id))
        return self._emit(final=False)

    def extend(self, ids: Iterable[int]) -> str:
        """Add several tokens; return the completed text."""
        self._ids.extend(int(i) for i in ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character becomes U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        decode = self.tokenizer.decode
        skip = self.skip_special_tokens
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=skip)
        after = decode(self._ids[self._prefix :], skip_special_tokens=skip)
        if len(after) <= len(before) and not final:
            return ""
        if after.endswith("\ufffd") and not final:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


def chat_prompt(
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    add_vision_id: bool = False,
) -> str:
    """Render ``messages`` with Qwen2-VL's chat template, exactly as its jinja source does.

    Args:
        messages: ``{"role": str, "content": str | list[part]}``; a part is ``{"type": "text",
            "text": ...}``, ``{"type": "image", ...}`` (or any part with an ``image``/``image_url``
            key), ``{"type": "video", ...}`` (or a ``video`` key).
        add_generation_prompt: end with ``<|im_start|>assistant\\n``.
        add_vision_id: prefix each image/video with ``Picture N: `` / ``Video N: ``.
    Returns:
        the prompt text, with one ``<|vision_start|><|image_pad|><|vision_end|>`` per image.
    Raises:
        InputError: a message without a role or with content that is neither str nor a list.
    """
    out: list[str] = []
    counts = {"image": 0, "video": 0}
    for n, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InputError(f"message {n} must have 'role' and 'content', got {message!r}")
        role, content = message["role"], message["content"]
        if n == 0 and role != "system":
            out.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
        out.append(f"{IM_START}{role}\n")
        if isinstance(content, str):
            out.append(f"{content}{IM_END}\n")
            continue
        if not isinstance(content, list | tuple):
            raise InputError(f"message {n} content must be str or a list of parts, got {content!r}")
        for part in content:
            out.append(_render_part(part, counts, add_vision_id))
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def _render_part(part: Any, counts: dict[str, int], add_vision_id: bool) -> str:
    if not isinstance(part, Mapping):
        raise InputError(f"a content part must be a mapping, got {part!r}")
    kind = part.get("type")
    if kind == "image" or "image" in part or "image_url" in part:
        counts["image"] += 1
        label = f"Picture {counts['image']}: " if add_vision_id else ""
        return f"{label}{VISION_START}{IMAGE_PAD}{VISION_END}"
    if kind == "video" or "video" in part:
        counts["video"] += 1
        label = f"Video {counts['video']}: " if add_vision_id else ""
        return f"{label}{VISION_START}{VIDEO_PAD}{VISION_END}"
    if "text" in part:
        return str(part["text"])
    return ""


def _read_tokenizer_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        log.info("no %s; using Qwen2-VL's eos/pad tokens", path.name)
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    return config


def _token_text(value: Any, default: str) -> str:
    """tokenizer_config.json writes a token as a string or as ``{"content": ...}``."""
    if value is None:
        return default
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise CheckpointError(f"tokenizer_config.json: a special token must be text, got {value!r}")
    return value


def _special_ids(hf: HFTokenizer, config: dict[str, Any], tok_file: Path) -> dict[str, int]:
    declared = {
        entry.get("content"): int(i)
        for i, entry in config.get("added_tokens_decoder", {}).items()
        if isinstance(entry, dict)
    }
    ids: dict[str, int] = {}
    missing, conflicting = [], []
    for name, text in REQUIRED_SPECIAL_TOKENS.items():
        token_id = hf.token_to_id(text)
        if token_id is None:
            missing.append(text)
            continue
        if text in declared and declared[text] != token_id:
            conflicting.append(f"{text}: {token_id} in tokenizer.json, {declared[text]} in config")
        ids[name] = token_id
    if missing:
        raise CheckpointError(f"{tok_file}: required special tokens absent: {', '.join(missing)}")
    if conflicting:
        raise CheckpointError(f"{tok_file}: special token ids disagree: {'; '.join(conflicting)}")
    return ids


def _warn_on_other_template(path: Path, config: dict[str, Any]) -> None:
    template = config.get("chat_template")
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    chat_file = path / "chat_template.json"
    if chat_file.is_file():
        try:
            template = json.loads(chat_file.read_text(encoding="utf-8")).get("chat_template")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            log.warning("%s unreadable (%s); using Qwen2-VL's chat template", chat_file, exc)
            return
    if isinstance(template, str) and template.strip() != QWEN2_VL_CHAT_TEMPLATE.strip():
        log.warning("%s ships another chat template; prompts use Qwen2-VL's", path)
