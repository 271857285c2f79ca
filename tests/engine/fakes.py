"""A byte-level tokenizer and a scripted FakeModel, for the session's loop logic without weights.

Ids 0..255 are bytes; 256..263 are the chat/vision special tokens in ``tiny_config(264)``'s order.
The FakeModel's next token is a pure function of everything the state has seen: after the last
``<|im_start|>assistant\\n`` it spells ``reply`` byte by byte, then ``<|im_end|>``. So forks,
saves and cancellations are checkable by what the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from engine.config import ModelConfig, tiny_config
from engine.engine import Engine, ModelInfo
from engine.preprocess import ImageParams
from engine.tokenizer import SpecialTokens, StreamDecoder

VOCAB = 264
SPECIAL = {
    "<|endoftext|>": 256,
    "<|im_end|>": 257,
    "<|im_start|>": 258,
    "<|vision_start|>": 259,
    "<|vision_end|>": 260,
    "<|vision_pad|>": 261,
    "<|image_pad|>": 262,
    "<|video_pad|>": 263,
}
ASSISTANT_OPEN = [SPECIAL["<|im_start|>"], *b"assistant\n"]


class ByteTokenizer:
    """Bytes as ids, special tokens as single ids; the parts of ``engine.tokenizer.Tokenizer``
    the session uses.
    """

    special = SpecialTokens(
        im_start=258,
        im_end=257,
        end_of_text=256,
        vision_start=259,
        vision_end=260,
        image_pad=262,
        video_pad=263,
        eos=257,
        pad=256,
    )
    vocab_size = VOCAB

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            token = next((t for t in SPECIAL if text.startswith(t, i)), None)
            if token is not None:
                ids.append(SPECIAL[token])
                i += len(token)
            else:
                ids.extend(text[i].encode())
                i += 1
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        names = {v: k for k, v in SPECIAL.items()}
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode(errors="replace"))
            run = bytearray()
            if not skip_special_tokens:
                out.append(names[i])
        out.append(run.decode(errors="replace"))
        return "".join(out)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)  # type: ignore[arg-type]


class FakeState:
    """Everything fed, in order; clone/nbytes/save/load like ``ModelState``."""

    def __init__(self, history: list[int] | None = None) -> None:
        self.history = history or []
        self.layers: list = []

    @property
    def tokens_seen(self) -> int:
        return len(self.history)

    def clone(self) -> FakeState:
        return FakeState(list(self.history))

    def nbytes(self) -> int:
        return 1234

    def save(self, path: str | Path, fingerprint: str) -> None:
        Path(path).write_text(f"{fingerprint}\n{self.history}")


class FakeModel(torch.nn.Module):
    """Spells ``reply`` after every ``<|im_start|>assistant\\n``; records each forward's length."""

    def __init__(
        self, reply: bytes | list[int], config: ModelConfig, runner_up: int | None = None
    ) -> None:
        super().__init__()
        self.reply = list(reply)
        self.runner_up = runner_up  # a token with the second-best logit (9 vs 10), if any
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []  # tokens per forward
        self.images_seen = 0

    def new_state(self, batch: int = 1, device: torch.device | str | None = None) -> FakeState:
        return FakeState()

    def forward(
        self,
        input_ids: torch.Tensor,
        state: FakeState,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        assert logits_to_keep == 1
        ids = input_ids[0].tolist()
        pads = sum(1 for i in ids if i == SPECIAL["<|image_pad|>"])
        # an image's placeholders must arrive whole, with its pixels, in one forward
        expected = 0 if image_grid_thw is None else int(image_grid_thw.prod(-1).sum()) // 4
        assert pads == expected, f"{pads} image pads for grids {image_grid_thw}"
        if pixel_values is not None:
            self.images_seen += int(image_grid_thw.shape[0])
        state.history.extend(ids)
        self.calls.append(len(ids))
        logits = torch.zeros(1, 1, VOCAB)
        if self.runner_up is not None:
            logits[0, 0, self.runner_up] = 9.0
        logits[0, 0, self.next_token(state.history)] = 10.0
        return logits

    def next_token(self, history: list[int]) -> int:
        n = len(ASSISTANT_OPEN)
        starts = [
            i + n for i in range(len(history) - n + 1) if history[i : i + n] == ASSISTANT_OPEN
        ]
        k = len(history) - starts[-1] if starts else len(self.reply)
        return self.reply[k] if k < len(self.reply) else SPECIAL["<|im_end|>"]


def fake_engine(
    reply: bytes | list[int] = b"Hello, world!", runner_up: int | None = None
) -> Engine:
    """An Engine around FakeModel and ByteTokenizer (image params: Qwen2-VL's defaults)."""
    config = tiny_config(vocab_size=VOCAB)
    model = FakeModel(reply, config, runner_up)
    info = ModelInfo("fake", "/fake", "cpu", "float32", 1, 1234, False, None)
    params = ImageParams()
    return Engine(model, config, ByteTokenizer(), params, info, "fake-fingerprint")  # type: ignore[arg-type]
