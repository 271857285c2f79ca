"""The embedded default model (resources/default-model) reads what it is shown.

These run the shipped checkpoint itself on the CPU, on held-out words rendered by the training
data's own generator from seeds neither the training configs nor the evaluation use, and through
the `infinitevl ocr` command a user types. Its scores on larger sets, with the measures used
here: benchmarks/eval_default_model.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from benchmarks.eval_default_model import exact, reply_loss
from engine import default_model
from engine.__main__ import main
from engine.engine import Engine
from engine.ocr import ocr_image
from engine.train.fonts import find_fonts
from engine.train.synthetic.lines import render_line, word_text
from engine.train.text_sources import TextSource

TEST_SEED = 123_000  # training configs use seeds 1-7, the evaluation 90_001 and up
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

pytestmark = pytest.mark.skipif(
    default_model.find_default_model(default_model.DEFAULT_MODEL_DIR) is None,
    reason="this checkout holds no embedded default model",
)


@pytest.fixture(scope="module")
def embedded() -> Engine:
    return Engine.load(None, device="cpu")


def test_embedded_model_is_the_default_and_a_hybrid(embedded: Engine) -> None:
    assert embedded.info.is_embedded_default
    layers = embedded.config.text.layer_types
    # InfiniteVL's layout: sliding-window attention in every 4th layer, Gated DeltaNet elsewhere
    assert layers.count("sliding_attention") == len(layers) // 4
    assert set(layers) == {"sliding_attention", "linear_attention"}


def test_embedded_model_reads_held_out_words(embedded: Engine) -> None:
    # a model that only learnt the language of the replies reads none of these exactly, and
    # the true text is as unlikely with the picture as with a blank one (the ninth session's
    # hybrid: 0 of 10 eval words exact); the shipped one reads 9 of these 16
    src, fonts = TextSource.from_stdlib(), find_fonts()
    items = []
    for i in range(16):
        rng = random.Random(TEST_SEED + i)
        r = render_line(rng, word_text(rng, src), fonts, 800)
        items.append((r.image, r.text))
    truths = [t for _, t in items]
    preds = [ocr_image(embedded, image, max_new_tokens=32) for image, _ in items]
    assert exact(preds, truths) >= 6 / 16, list(zip(truths, preds, strict=True))
    with_image, with_blank = reply_loss(embedded, items)
    assert with_image < with_blank / 2


@pytest.mark.skipif(not DEJAVU.is_file(), reason="Debian's fonts-dejavu-core is not installed")
def test_ocr_command_reads_a_word_with_the_embedded_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a word as a screen shows it: black DejaVu Sans on white, drawn here, not by the generator
    font = ImageFont.truetype(str(DEJAVU), 22)
    image = Image.new("RGB", (160, 44), "white")
    ImageDraw.Draw(image).text((12, 9), "Settings", font=font, fill="black")
    path = tmp_path / "word.png"
    image.save(path)
    assert main(["ocr", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "Settings"


@pytest.mark.skipif(not DEJAVU.is_file(), reason="Debian's fonts-dejavu-core is not installed")
def test_embedded_model_reads_a_region_line_by_line(embedded: Engine) -> None:
    # two words in a framed region, a rule between them: read band by band (the embedded
    # model's default; read whole, it gives the first line only), both come, in order
    font = ImageFont.truetype(str(DEJAVU), 22)
    image = Image.new("RGB", (200, 90), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 199, 89), outline=(120, 120, 120))
    draw.text((12, 9), "Settings", font=font, fill="black")
    draw.line((6, 44, 193, 44), fill=(150, 150, 150), width=1)
    draw.text((12, 52), "Help", font=font, fill="black")
    assert ocr_image(embedded, image, max_new_tokens=32) == "Settings\nHelp"
