"""Evaluate the embedded default model (or any checkpoint) on held-out synthetic data.

Prints a table:
- character error rate (CER) and the share of images read without an error ("exact") of OCR on
  held-out single words, single text lines, lines of unseen text, screenshots and document
  pages, beside Tesseract (Debian's tesseract-ocr, run as a subprocess) on the same images. The
  words and sentences of the other sets come from the same finite source as the training data, so
  a model can recite them from their first letters; unseen text (random letter strings in word
  shapes, numbers, amounts, dates, codes) can only be read;
- answers to "What is the reference number on page 1?" after reading 30 pages: the share
  exact, and their character error rate (a number recalled with a digit misread counts in part);
- latency of OCR of an 800x200 screen region on this machine's CPU (or the GPU: ``--device``);
- whether the model looks at the picture at all: the loss (nats per token) of the true text of
  each held-out OCR image, given the image and given a blank one of the same size. A model that
  reads has a far lower loss with the image; one that only learnt the language of the replies
  has the same loss with both. This moves long before the error rate does.

Held-out images come from seeds the training configs never use (training: 1-7).

    .venv/bin/python benchmarks/eval_default_model.py [--model DIR] [--num 40] [--docs 20]
    python3 benchmarks/eval_default_model.py --device cuda --quant nf4   # GPU task scores
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from engine.engine import Engine
from engine.ocr import LINES_MODES, add_reading_arguments, ocr_beams, ocr_image, reads_by_lines
from engine.quant import METHODS as QUANT_METHODS
from engine.sampling import SamplingParams
from engine.train.conversation import encode_sample
from engine.train.fonts import find_fonts
from engine.train.forward import TrainingForward
from engine.train.losses import next_token_loss
from engine.train.synthetic.canvas import Rendered
from engine.train.synthetic.documents import render_page
from engine.train.synthetic.lines import line_text, render_line, unseen_text, word_text
from engine.train.synthetic.screens import render_screen
from engine.train.synthetic.tasks import REFERENCE_QUESTION, longdoc_sample, ocr_sample
from engine.train.text_sources import TextSource

try:
    from benchmarks import qt_screens
except ImportError:  # run as a script (benchmarks/eval_default_model.py): its folder is on the path
    import qt_screens  # type: ignore[no-redef]

log = logging.getLogger("eval_default_model")

EVAL_SEED = 90_001
QT_SET = "Qt widget dialogs"
DARK_QT_SET = "Qt dialogs, dark theme"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalise(text: str) -> str:
    """Whitespace runs (line breaks included) become one space: layout is not scored."""
    return " ".join(text.split())


def exact(preds: list[str], truths: list[str]) -> float:
    """Share of images read without a single error (after `normalise`)."""
    same = sum(normalise(p) == normalise(t) for p, t in zip(preds, truths, strict=True))
    return same / max(1, len(truths))


def cer(preds: list[str], truths: list[str]) -> float:
    """Total edit distance over total reference length, after `normalise`."""
    dist = sum(
        edit_distance(normalise(p), normalise(t)) for p, t in zip(preds, truths, strict=True)
    )
    return dist / max(1, sum(len(normalise(t)) for t in truths))


def tesseract(image: Image.Image, psm: int) -> str:
    """Tesseract's text for one image (English model, page segmentation mode `psm`)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.png"
        image.save(path)
        out = subprocess.run(
            ["tesseract", str(path), "stdout", "--psm", str(psm), "-l", "eng"],
            capture_output=True,
            text=True,
            check=True,
        )
    return out.stdout


def held_out_sets(num: int) -> dict[str, list[tuple[Image.Image, str]]]:
    """Single words and numbers, single text lines (up to 800 px wide), lines of unseen text (no
    source repeats it: read, never recalled), screenshots (224-800 x 56-224 px), document pages
    (336 px), from eval seeds; and, where PySide6 is installed, dialogs drawn by real Qt widgets
    (`benchmarks/qt_screens.py`: not the training generator's drawing), in the toolkit's default
    theme and the same dialogs in a dark one."""
    src, fonts = TextSource.from_stdlib(), find_fonts()
    sets: dict[str, list[tuple[Image.Image, str]]] = {
        "single words": [],
        "text lines": [],
        "unseen text lines": [],
        "screenshots": [],
        "document pages": [],
    }
    if qt_screens.has_qt():
        sets[QT_SET] = []
        sets[DARK_QT_SET] = []
    for i in range(num):
        rng = random.Random(EVAL_SEED + 70_000 + i)
        r = render_line(rng, word_text(rng, src), fonts, 800)
        sets["single words"].append((r.image, r.text))
        rng = random.Random(EVAL_SEED + 30_000 + i)
        r = render_line(rng, line_text(rng, src), fonts, 800)
        sets["text lines"].append((r.image, r.text))
        rng = random.Random(EVAL_SEED + 90_000 + i)
        r = render_line(rng, unseen_text(rng), fonts, 800)
        sets["unseen text lines"].append((r.image, r.text))
        rng = random.Random(EVAL_SEED + i)
        size = (rng.randint(224, 800), rng.randint(56, 224))
        r = render_screen(rng, src, fonts, size)
        sets["screenshots"].append((r.image, r.text))
        rng = random.Random(EVAL_SEED + 50_000 + i)
        r = render_page(rng, src, fonts, (336, rng.randint(112, 336)))
        sets["document pages"].append((r.image, r.text))
        if QT_SET in sets:
            seed = EVAL_SEED + 110_000 + i  # one dialog, in the default theme and a dark one
            sets[QT_SET].append(qt_screens.widget_screen(random.Random(seed)))
            sets[DARK_QT_SET].append(qt_screens.widget_screen(random.Random(seed), dark=True))
    return sets


def eval_ocr(
    engine: Engine,
    num: int,
    use_tesseract: bool,
    max_new_tokens: int,
    lines: bool | None = None,
    num_beams: int | None = None,
) -> list[tuple[str, float, float, float, float, float, float, float]]:
    """Per set: (name, model CER, model exact, Tesseract psm 3 CER, its exact, psm 6 CER,
    text loss with the image, with a blank one)."""
    rows = []
    for name, items in held_out_sets(num).items():
        looks = reply_loss(engine, items)
        truths = [t for _, t in items]
        preds = [
            ocr_image(engine, im, max_new_tokens=max_new_tokens, lines=lines, num_beams=num_beams)
            for im, _ in items
        ]
        log.info("%s: model sample %r -> %r", name, truths[0][:60], preds[0][:60])
        t3 = x3 = t6 = float("nan")
        if use_tesseract:
            read3 = [tesseract(im, 3) for im, _ in items]
            t3, x3 = cer(read3, truths), exact(read3, truths)
            t6 = cer([tesseract(im, 6) for im, _ in items], truths)
        rows.append((name, cer(preds, truths), exact(preds, truths), t3, x3, t6, *looks))
    return rows


def blank_like(image: Image.Image) -> Image.Image:
    """A picture of the same size in the colour of its top-left pixel (its background)."""
    return Image.new("RGB", image.size, image.convert("RGB").getpixel((0, 0)))


@torch.no_grad()
def reply_loss(engine: Engine, items: list[tuple[Image.Image, str]]) -> tuple[float, float]:
    """Mean loss per token of each true text given its image, and given `blank_like` it."""
    forward = TrainingForward(engine.model)
    out = []
    for blank in (False, True):
        total, count = 0.0, 0
        for image, text in items:
            picture = blank_like(image) if blank else image
            enc = encode_sample(
                ocr_sample(Rendered(picture, text.split("\n")), "ocr"),
                engine.tokenizer,
                engine.image_params,
                max_tokens=1 << 20,
            )
            assert enc.pixel_values is not None and enc.image_grid_thw is not None
            logits, _ = forward(
                enc.input_ids[None].to(engine.device),
                enc.pixel_values.to(engine.device),
                enc.image_grid_thw.to(engine.device),
            )
            loss, n = next_token_loss(logits, enc.labels[None].to(engine.device))
            total, count = total + float(loss), count + n
        out.append(total / max(1, count))
    return out[0], out[1]


def eval_long_document(engine: Engine, docs: int, pages: int) -> tuple[float, float, int]:
    """Answers to "the reference number on page 1?" after `pages` pages: the share answered
    exactly, the character error rate of the answers (a recalled number with a digit misread
    counts in part), and the tokens each document took."""
    src, fonts = TextSource.from_stdlib(), find_fonts()
    replies, truths, tokens = [], [], 0
    for i in range(docs):
        sample = longdoc_sample(random.Random(EVAL_SEED + 80_000 + i), src, fonts, pages, 252)
        session = engine.new_session()
        session.feed_document(sample.images)
        session.add_user_message(REFERENCE_QUESTION)
        reply = "".join(d.text for d in session.generate(SamplingParams(max_new_tokens=12)))
        replies.append(reply.strip())
        truths.append(sample.meta["answer"])
        log.info("document %d: %r (truth %s)", i, reply.strip(), sample.meta["answer"])
        tokens = session.tokens_seen
    return exact(replies, truths), cer(replies, truths), tokens


def eval_latency(
    engine: Engine, repeats: int = 3, lines: bool | None = None, num_beams: int | None = None
) -> tuple[float, int]:
    """Median seconds to OCR an 800x200 screen region; and the characters read."""
    src, fonts = TextSource.from_stdlib(), find_fonts()
    image = render_screen(random.Random(EVAL_SEED - 1), src, fonts, (800, 200)).image
    ocr_image(engine, image, lines=lines, num_beams=num_beams)  # warm-up
    times, text = [], ""
    for _ in range(repeats):
        t = time.perf_counter()
        text = ocr_image(engine, image, lines=lines, num_beams=num_beams)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(text)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="checkpoint directory (default: the embedded model)")
    p.add_argument("--num", type=int, default=40, help="images per OCR set")
    p.add_argument("--docs", type=int, default=20, help="30-page documents (0: no such row)")
    p.add_argument("--pages", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"],
        help="where the model runs (cuda: in its stored dtype, bf16 for the embedded model)",
    )  # fmt: skip
    p.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16"],
        help="the activations' dtype (default: the engine's choice; for the embedded model on a "
        "CPU, float32 or bfloat16, whichever that CPU timed faster: engine/cpu_dtype.py)",
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest OCR reply read")
    add_reading_arguments(p)
    p.add_argument(
        "--quant", default="none", choices=["none", *QUANT_METHODS],
        help="quantize the linear layers as they load (docs/quantization.md): the task scores "
        "of a quantized engine",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.num < 1 or args.docs < 0 or args.pages < 1:
        p.error("--num and --pages must be at least 1, --docs at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA GPU torch can use")
    if args.verbose:
        log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    has_tesseract = shutil.which("tesseract") is not None
    lines = LINES_MODES[args.lines]
    ocr_rows = eval_ocr(engine, args.num, has_tesseract, args.max_new_tokens, lines, args.beams)
    accuracy, answer_cer, tokens = eval_long_document(engine, args.docs, args.pages)
    latency, chars = eval_latency(engine, lines=lines, num_beams=args.beams)
    where = f"CPU, {args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"model: {engine.info.path}"
        f" ({engine.info.num_parameters / 1e6:.1f}M parameters, {engine.info.dtype}, linear "
        f"layers {args.quant}, {where}; OCR by line bands: "
        f"{reads_by_lines(engine.info, lines)}; beams: {ocr_beams(engine.info, args.beams)})"
    )
    print()
    print(
        f"| OCR set ({args.num} held-out images) | model CER | model exact | Tesseract CER "
        "(psm 3) | Tesseract exact (psm 3) | Tesseract CER (psm 6) | text loss, with image "
        "| text loss, blank image |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, mx, t3, x3, t6, seen, blank in ocr_rows:
        print(
            f"| {name} | {m:.3f} | {mx:.0%} | {t3:.3f} | {x3:.0%} | {t6:.3f} | {seen:.3f} "
            f"| {blank:.3f} |"
        )
    print()
    print("| measure | value |")
    print("| --- | --- |")
    if args.docs:
        print(
            f"| page-1 answers after {args.pages} pages ({args.docs} documents, "
            f"{tokens} tokens each) | {accuracy:.0%} exact, CER {answer_cer:.2f} |"
        )
    print(f"| OCR latency, 800x200 region (median of 3, {chars} chars read) | {latency:.2f} s |")
    if not has_tesseract:
        print("\n(tesseract not installed: apt-get install tesseract-ocr)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
