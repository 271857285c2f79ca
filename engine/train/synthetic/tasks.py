"""Training and evaluation samples: an image (or pages) plus a conversation about it.

Tasks: `ocr` (read everything, reading order: words, lines, unseen text, screens, toolkit dialogs,
pages, code, tables, receipts), `qa` (one fact: a title, a total, a bar's value)
and `longdoc` (many pages, then a question whose answer sits on page 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from engine.ocr import OCR_PROMPT  # the prompt `infinitevl ocr` and the app send
from engine.ocr_lines import text_height  # a piece is enlarged by its whole line's text height
from engine.train.synthetic.canvas import Rendered
from engine.train.synthetic.charts import render_bar_chart
from engine.train.synthetic.dialogs import render_dialog
from engine.train.synthetic.documents import render_code, render_page, render_receipt, render_table
from engine.train.synthetic.glyphs import Glyph
from engine.train.synthetic.lines import (
    as_read,
    line_text,
    one_piece,
    render_line,
    unseen_text,
    word_text,
)
from engine.train.synthetic.screens import render_screen
from engine.train.text_sources import TextSource

IMAGE_TAG = "<image>"
REFERENCE_QUESTION = "What is the reference number on page 1?"


@dataclass(slots=True)
class Message:
    """One turn; in user turns each IMAGE_TAG marks where the next image goes."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(slots=True)
class Sample:
    """Images and the conversation about them (LLaVA/ShareGPT shape)."""

    images: list[Image.Image]
    messages: list[Message]
    kind: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    # per image: its characters' positions (synthetic.glyphs), None where unknown (empty:
    # unknown for every image)
    glyphs: list[tuple[Glyph, ...] | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TaskMix:
    """How often each task is drawn and the sizes of what is rendered.

    Attributes:
        weights: task name -> relative frequency ("ocr_word", "ocr_line", "ocr_unseen",
            "ocr_screen", "ocr_dialog", "ocr_page", "ocr_code", "ocr_table", "ocr_receipt", "qa",
            "longdoc").
        screen_width, screen_height: (low, high) pixels of a screen region.
        page_size: side of a square document page, pixels.
        num_pages: (low, high) pages of a long document.
        size_multiple: if > 1, images are padded to multiples of it (see `pad_to_multiple`).
        line_size: (low, high) font pixels of single words and lines.
        reading_view: show single words and lines as OCR shows them to the model: a line
            wider than a piece cut between words and one of its pieces shown
            (`lines.one_piece`), small text enlarged (`lines.as_read`).
    """

    weights: dict[str, float]
    screen_width: tuple[int, int] = (224, 800)
    screen_height: tuple[int, int] = (56, 224)
    page_size: int = 336
    num_pages: tuple[int, int] = (2, 8)
    size_multiple: int = 0
    line_size: tuple[int, int] = (12, 24)
    reading_view: bool = False


def ocr_sample(rendered: Rendered, kind: str) -> Sample:
    return Sample(
        [rendered.image],
        [Message("user", f"{IMAGE_TAG}{OCR_PROMPT}"), Message("assistant", rendered.text)],
        kind,
        {"text": rendered.text},
        [rendered.glyphs],
    )


def _qa(rendered: Rendered, question: str, answer: str, kind: str) -> Sample:
    return Sample(
        [rendered.image],
        [Message("user", f"{IMAGE_TAG}{question}"), Message("assistant", answer)],
        kind,
        {"answer": answer},
        [rendered.glyphs],
    )


def qa_sample(rng: random.Random, src: TextSource, fonts: list[Path], mix: TaskMix) -> Sample:
    """One question about one fact of a screen, receipt, chart or page."""
    pick = rng.randrange(4)
    if pick == 0:
        r = render_screen(rng, src, fonts, _screen_size(rng, mix))
        return _qa(r, "What is the window title?", r.facts["title"], "qa_screen")
    if pick == 1:
        r = render_receipt(rng, src, fonts, (rng.randint(224, 336), mix.page_size))
        return _qa(r, "What is the total?", r.facts["total"], "qa_receipt")
    if pick == 2:
        r = render_bar_chart(rng, fonts, (rng.randint(280, 448), rng.randint(168, 280)))
        if rng.random() < 0.5:
            return _qa(r, "Which city has the largest value?", r.facts["largest"], "qa_chart")
        label = rng.choice([k.split(":", 1)[1] for k in r.facts if k.startswith("value:")])
        return _qa(r, f"What is the value for {label}?", r.facts[f"value:{label}"], "qa_chart")
    r = render_page(rng, src, fonts, (mix.page_size, mix.page_size))
    return _qa(r, "What is the title of this page?", r.facts["title"], "qa_page")


def longdoc_sample(
    rng: random.Random, src: TextSource, fonts: list[Path], num_pages: int, page_size: int
) -> Sample:
    """`num_pages` pages read in order; page 1 holds "Reference: NNNN"; the question asks it.

    The pages form one user turn of "Page i: <image>" lines, as `Session.feed_document` feeds a
    document, and the question follows as the next user turn.
    """
    reference = str(rng.randint(1000, 9999))
    pages = [
        render_page(
            rng,
            src,
            fonts,
            (page_size, page_size),
            header=f"Page {i + 1}",
            fact=("Reference", reference) if i == 0 else None,
        )  # fmt: skip
        for i in range(num_pages)
    ]
    document = "".join(f"Page {i + 1}: {IMAGE_TAG}\n" for i in range(num_pages))
    return Sample(
        [p.image for p in pages],
        [
            Message("user", document),
            Message("user", REFERENCE_QUESTION),
            Message("assistant", reference),
        ],
        "longdoc",
        {"answer": reference},
        [p.glyphs for p in pages],
    )


def _screen_size(rng: random.Random, mix: TaskMix) -> tuple[int, int]:
    return rng.randint(*mix.screen_width), rng.randint(*mix.screen_height)


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """Extend right and bottom to multiples of `multiple` px with the bottom-right colour.

    The text and its reading order are unchanged; with `multiple` = the vision window (112 px)
    every attention window of the vision tower is full, so a batch has few distinct block
    lengths and the GPU runs a few large attention calls instead of dozens of small ones.
    """
    w, h = image.size
    W, H = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if (w, h) == (W, H):
        return image
    out = Image.new("RGB", (W, H), image.getpixel((w - 1, h - 1)))
    out.paste(image, (0, 0))
    return out


def make_sample(rng: random.Random, src: TextSource, fonts: list[Path], mix: TaskMix) -> Sample:
    """Draw one task by `mix.weights`, render it, and pad its images to `mix.size_multiple`."""
    sample = _make_sample(rng, src, fonts, mix)
    if mix.size_multiple > 1:
        sample.images = [pad_to_multiple(im, mix.size_multiple) for im in sample.images]
    return sample


def _line_sample(
    rng: random.Random, text: str, fonts: list[Path], mix: TaskMix, task: str
) -> Sample:
    rendered = render_line(rng, text, fonts, mix.screen_width[1], mix.line_size)
    if not mix.reading_view:
        return ocr_sample(rendered, task)
    return ocr_sample(as_read(one_piece(rng, rendered), text_height(rendered.image)), task)


def _make_sample(rng: random.Random, src: TextSource, fonts: list[Path], mix: TaskMix) -> Sample:
    names = sorted(mix.weights)
    task = rng.choices(names, weights=[mix.weights[n] for n in names])[0]
    side = mix.page_size
    if task == "ocr_word":
        return _line_sample(rng, word_text(rng, src), fonts, mix, task)
    if task == "ocr_line":
        return _line_sample(rng, line_text(rng, src), fonts, mix, task)
    if task == "ocr_unseen":
        return _line_sample(rng, unseen_text(rng), fonts, mix, task)
    if task == "ocr_screen":
        return ocr_sample(render_screen(rng, src, fonts, _screen_size(rng, mix)), task)
    if task == "ocr_dialog":
        width = rng.randint(max(240, mix.screen_width[0]), max(240, mix.screen_width[1]))
        return ocr_sample(render_dialog(rng, src, fonts, width), task)
    if task == "ocr_page":
        return ocr_sample(render_page(rng, src, fonts, (side, rng.randint(side // 3, side))), task)
    if task == "ocr_code":
        return ocr_sample(
            render_code(rng, src, fonts, (side, rng.randint(side // 4, side // 2))), task
        )
    if task == "ocr_table":
        return ocr_sample(
            render_table(rng, src, fonts, (side, rng.randint(side // 4, side // 2))), task
        )
    if task == "ocr_receipt":
        return ocr_sample(render_receipt(rng, src, fonts, (rng.randint(224, 336), side // 2)), task)
    if task == "qa":
        return qa_sample(rng, src, fonts, mix)
    if task == "longdoc":
        return longdoc_sample(rng, src, fonts, rng.randint(*mix.num_pages), side)
    raise ValueError(
        f"unknown task {task!r}; known: ocr_word, ocr_line, ocr_unseen, ocr_screen, ocr_dialog, "
        "ocr_page, ocr_code, ocr_table, ocr_receipt, qa, longdoc"
    )
