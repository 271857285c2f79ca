"""A `Sample` (images + conversation) -> token ids, loss labels and vision inputs.

The text is the Qwen2-VL chat template (engine.tokenizer.chat_prompt), so training sees exactly
the prompts inference builds; only assistant replies and their <|im_end|> are labelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.preprocess import ImageParams, preprocess_images
from engine.tokenizer import IM_END, Tokenizer, chat_prompt
from engine.train.synthetic.glyphs import IGNORE, SLOTS, glyph_targets
from engine.train.synthetic.tasks import IMAGE_TAG, Message, Sample

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(slots=True)
class Encoded:
    """One training sequence.

    Attributes:
        input_ids: [T] int64.
        labels: [T] int64, IGNORE_INDEX where no loss is taken; labels[t] is the token at t
            (the loss shifts by one).
        pixel_values: [N, C*temporal*patch*patch] float32 patches of every image, or None.
        image_grid_thw: [num_images, 3] int64, or None.
        glyph_targets: [image tokens, glyphs.SLOTS] int64, what each merged image token reads
            (glyphs.glyph_targets; IGNORE rows for images without glyph positions), or None
            without images.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    glyph_targets: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def message_parts(message: Message) -> str | list[dict[str, str]]:
    """LLaVA-style text with IMAGE_TAG markers -> chat_prompt content parts."""
    if IMAGE_TAG not in message.content:
        return message.content
    parts: list[dict[str, str]] = []
    for i, piece in enumerate(message.content.split(IMAGE_TAG)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def encode_sample(
    sample: Sample, tokenizer: Tokenizer, image_params: ImageParams, max_tokens: int
) -> Encoded:
    """Tokenize, expand image placeholders, preprocess images and mark the labels.

    Args:
        max_tokens: longer sequences are cut at the end (their last reply loses its tail).
    """
    ids: list[int] = []
    labels: list[int] = []
    for n, message in enumerate(sample.messages):
        rendered = [{"role": message.role, "content": message_parts(message)}]
        text = chat_prompt(rendered, add_generation_prompt=False)
        if n > 0 and text.startswith("<|im_start|>system\n") and message.role != "system":
            # chat_prompt adds the default system turn before a first message only
            text = text[text.index(f"{IM_END}\n") + len(IM_END) + 1 :]
        piece = tokenizer.encode(text)
        if message.role == "assistant":
            header = tokenizer.encode("<|im_start|>assistant\n")
            assert piece[: len(header)] == header, "assistant turn must start with its header"
            # the reply and its <|im_end|> are learned; the trailing newline is not
            target = piece[len(header) : -1]
            ids += piece
            labels += [IGNORE_INDEX] * len(header) + target + [IGNORE_INDEX]
        else:
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
    pixel_values = grid = glyph_rows = None
    if sample.images:
        pixel_values, grid = preprocess_images(sample.images, image_params)
        glyph_rows = _glyph_targets(sample, grid, image_params)
        merge = image_params.merge_size**2
        counts = [int(t * h * w) // merge for t, h, w in grid.tolist()]
        expanded_ids = tokenizer.expand_vision_tokens(ids, counts)
        labels = _expand_labels(ids, labels, tokenizer.special.image_pad, counts)
        ids = expanded_ids
    if len(ids) > max_tokens:
        log.debug("sample of %d tokens cut to %d", len(ids), max_tokens)
        ids, labels = _truncate(ids, labels, max_tokens, tokenizer.special.image_pad)
    return Encoded(
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(labels, dtype=torch.long),
        pixel_values,
        grid,
        glyph_rows,
    )


def _glyph_targets(sample: Sample, grid: torch.Tensor, params: ImageParams) -> torch.Tensor:
    """The per-token reading targets of all images of `sample` (IGNORE where unknown)."""
    rows = []
    for i, (image, (_, h, w)) in enumerate(zip(sample.images, grid.tolist(), strict=True)):
        found = sample.glyphs[i] if i < len(sample.glyphs) else None
        if found is None:
            rows.append(torch.full((h * w // params.merge_size**2, SLOTS), IGNORE))
        else:
            rows.append(
                glyph_targets(found, image.size, (h, w), params.patch_size, params.merge_size)
            )
    return torch.cat(rows)


def _expand_labels(ids: list[int], labels: list[int], pad: int, counts: list[int]) -> list[int]:
    out: list[int] = []
    k = 0
    for i, lab in zip(ids, labels, strict=True):
        if i == pad:
            out += [IGNORE_INDEX] * counts[k]
            k += 1
        else:
            out.append(lab)
    return out


def _truncate(ids: list[int], labels: list[int], n: int, pad: int) -> tuple[list[int], list[int]]:
    # an image's placeholders cannot be split from its patches: never cut inside the images
    last_image = max((t for t, i in enumerate(ids) if i == pad), default=-1)
    if last_image >= n:
        raise ValueError(f"images need {last_image + 1} tokens, more than max_tokens={n}")
    return ids[:n], labels[:n]
