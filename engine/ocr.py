"""OCR with the loaded model: one text block per image, in reading order.

Each image is asked, in a fresh session, the prompt the embedded model was trained on
(`OCR_PROMPT`); the reply is the text. Any checkpoint works, the embedded one best, since a
general model may answer in its own style. Knows nothing about Qt or files beyond image paths.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engine.engine import CancelToken, Engine, ModelInfo, beam_generate_together
from engine.ocr_lines import join_readings, reading_pieces
from engine.preprocess import open_picture, to_pil, to_rgb
from engine.sampling import SamplingParams

if TYPE_CHECKING:
    from engine.backends.gguf import GGUFEngine

log = logging.getLogger(__name__)

# the one OCR prompt: the training pipeline's OCR samples, `infinitevl ocr` and the app's OCR
OCR_PROMPT = "Read the text in the image."
MAX_OCR_TOKENS = 512
# `--lines` choices: whether to read each band of text lines on its own (None: auto)
LINES_MODES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
# beams the embedded model reads with by default (engine.beam): on its held-out words, lines,
# screens and pages, 4 beams cut the CER by a quarter to two fifths against greedy reading (not
# on unseen text), and batched they cost ~0.25 s more on an 800x200 region; 8 read screens better
# still but take that region to ~1 s (benchmarks/eval_default_model.py --beams, README)
EMBEDDED_OCR_BEAMS = 4
# pieces of a region searched as one batch, at most: a batch holds pieces x beams rows, each
# with its own copy of the state (three copies live during a step), so fewer pieces go together
# where the rows' states would pass ROWS_STATE_BYTES (the embedded model's state is ~1 MB a row,
# the 4B model's ~127 MiB: one piece at a time there)
PIECES_TOGETHER = 16
ROWS_STATE_BYTES = 256 * 2**20

ImageInput = str | Path | np.ndarray | Image.Image


def ocr_image(
    engine: Engine | GGUFEngine, image: ImageInput, *, max_new_tokens: int = MAX_OCR_TOKENS,
    cancel: CancelToken | None = None, lines: bool | None = None, num_beams: int | None = None,
) -> str:  # fmt: skip
    """The text in one image, lines separated by newlines.

    Args:
        image: a path, a PIL image or a uint8 [H, W, 3] RGB array.
        max_new_tokens: the longest reply read (for each piece, when split).
        lines: read each band of text lines on its own, cut where its pieces stand far apart
            and between words into pieces of a few words (`engine.ocr_lines.reading_pieces`:
            small text enlarged), and join the readings;
            None (auto) does so for the embedded default model, which reads a line far better
            than a page, and reads the whole image at once with any other model.
        num_beams: above 1, each read is a beam search of that width (`engine.beam`); None
            (auto): `EMBEDDED_OCR_BEAMS` with the embedded model, 1 (greedy) with any other.
    Raises:
        InputError: an unreadable or empty image.
        Cancelled: `cancel` was set.
    """
    beams = ocr_beams(engine.info, num_beams)
    if not reads_by_lines(engine.info, lines):
        return _read(engine, image, max_new_tokens, cancel, beams)
    pieces = reading_pieces(to_rgb(to_pil(open_picture(image))))
    texts = _read_pieces(engine, [piece.image for piece in pieces], max_new_tokens, cancel, beams)
    return join_readings([piece.line for piece in pieces], texts)


def reads_by_lines(info: ModelInfo, lines: bool | None = None) -> bool:
    """Whether OCR with the model `info` describes reads band by band: `lines`, or for None
    (auto) only with the embedded default model, which reads a line far better than a page."""
    return info.is_embedded_default if lines is None else lines


def ocr_beams(info: ModelInfo, num_beams: int | None = None) -> int:
    """The beams OCR with the model `info` describes reads with: `num_beams`, or for None (auto)
    `EMBEDDED_OCR_BEAMS` with the embedded default model and 1 (greedy) with any other."""
    if num_beams is not None:
        return num_beams
    return EMBEDDED_OCR_BEAMS if info.is_embedded_default else 1


def _read(
    engine: Engine | GGUFEngine, image: ImageInput, max_new_tokens: int,
    cancel: CancelToken | None, num_beams: int = 1,
) -> str:  # fmt: skip
    session = engine.new_session()
    session.add_user_message(OCR_PROMPT, [image], cancel=cancel)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, num_beams=num_beams)
    text = "".join(delta.text for delta in session.generate(params, cancel))
    return text.strip()


def _read_pieces(
    engine: Engine | GGUFEngine, images: list[Image.Image], max_new_tokens: int,
    cancel: CancelToken | None, num_beams: int,
) -> list[str]:  # fmt: skip
    """The readings of a region's pieces. With beams and this project's engine the pieces are
    read together, up to `pieces_together` at a time: each prompt is read on its own, then
    their beam searches step as one batch (`engine.engine.beam_generate_together`, which aligns
    prompts of different lengths), so a region costs about the steps of its longest reading
    instead of the sum of all of them. The sessions are dropped unfed, where `generate` would
    feed each the reply it found. Greedy reading, and GGUF models, read one by one."""
    if num_beams < 2 or not isinstance(engine, Engine):
        return [_read(engine, im, max_new_tokens, cancel, num_beams) for im in images]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, num_beams=num_beams)
    together = pieces_together(engine.info.state_nbytes, num_beams)
    texts: list[str] = []
    for at in range(0, len(images), together):
        sessions = []
        for image in images[at : at + together]:
            sessions.append(engine.new_session())
            sessions[-1].add_user_message(OCR_PROMPT, [image], cancel=cancel)
        texts += [text.strip() for text in beam_generate_together(sessions, params, cancel)]
    return texts


def pieces_together(state_nbytes: int, num_beams: int) -> int:
    """How many pieces OCR searches as one batch with a model whose state takes `state_nbytes`
    a row: `PIECES_TOGETHER`, fewer where their rows' states would pass `ROWS_STATE_BYTES`."""
    fits = ROWS_STATE_BYTES // max(1, 3 * num_beams * state_nbytes)
    return max(1, min(PIECES_TOGETHER, fits))


def ocr_images(
    engine: Engine | GGUFEngine,
    images: Sequence[ImageInput],
    *,
    max_new_tokens: int = MAX_OCR_TOKENS,
    cancel: CancelToken | None = None,
    lines: bool | None = None,
    num_beams: int | None = None,
) -> list[str]:
    """One text block per image, in the images' order (see `ocr_image`)."""
    out = []
    for i, image in enumerate(images):
        out.append(
            ocr_image(
                engine,
                image,
                max_new_tokens=max_new_tokens,
                cancel=cancel,
                lines=lines,
                num_beams=num_beams,
            )  # fmt: skip
        )
        log.debug("ocr: image %d of %d read (%d chars)", i + 1, len(images), len(out[-1]))
    return out


def add_reading_arguments(p: argparse.ArgumentParser) -> None:
    """`--lines` and `--beams`, as every command that reads images takes them (`infinitevl ocr`,
    benchmarks/eval_default_model.py); `LINES_MODES[args.lines]` and `args.beams` are what
    `ocr_image`'s `lines` and `num_beams` take."""
    p.add_argument(
        "--lines", choices=tuple(LINES_MODES), default="auto",
        help="read each band of text lines on its own (cut where its parts stand far apart "
        "and between words into pieces of a few words, "
        "small text enlarged), then join them: "
        "on, off, or auto (on for the embedded model, which reads a line far better than a "
        "page; off for others)",
    )  # fmt: skip
    p.add_argument(
        "--beams", type=_beam_width,
        help=f"read by beam search of this width (1: greedy; default: {EMBEDDED_OCR_BEAMS} for "
        "the embedded model, 1 for others; GGUF models read greedily only)",
    )  # fmt: skip


def _beam_width(text: str) -> int:
    width = int(text)
    if width < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {width}")
    return width


def run_cli(argv: Sequence[str]) -> int:
    """`infinitevl ocr IMAGE...`: print each image's text, one block per image, blank-line apart.

    Returns:
        the exit code (0).
    """
    p = argparse.ArgumentParser(prog="infinitevl ocr", description=run_cli.__doc__)
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument(
        "--model",
        type=Path,
        help="checkpoint directory or GGUF model with its mmproj (default: the embedded model)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None,
        help="default: as stored; on a CPU, for a model of at most 256 MiB of weights, float32 "
        "or bfloat16, whichever this CPU runs it faster (timed on its first load, remembered in "
        "~/.cache/infinitevl/cpu_dtype.json; INFINITEVL_CPU_DTYPE=float32 or bfloat16 pins one)",
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=MAX_OCR_TOKENS)
    add_reading_arguments(p)
    args = p.parse_args(list(argv))
    from engine.backends import load_engine

    engine = load_engine(args.model, device=args.device, dtype=args.dtype)
    texts = ocr_images(
        engine, args.images, max_new_tokens=args.max_new_tokens, lines=LINES_MODES[args.lines],
        num_beams=args.beams,
    )  # fmt: skip
    for i, text in enumerate(texts):
        print(("\n" if i else "") + text)  # noqa: T201 (the command's output)
    return 0
