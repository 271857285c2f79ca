"""engine.ocr: one text block per image, asked with the prompt the training pipeline uses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.engine import Engine
from engine.ocr import ocr_images, run_cli
from engine.testing.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(write_tiny_checkpoint(tmp_path_factory.mktemp("ocr")), device="cpu")


def test_ocr_images_reads_each_image_in_a_fresh_session(engine: Engine) -> None:
    images = [np.full((56, 84, 3), 255, np.uint8), np.zeros((84, 56, 3), np.uint8)]
    texts = ocr_images(engine, images, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # a fresh session per image: the same image read twice gives the same text
    again = ocr_images(engine, images[:1], max_new_tokens=4)
    assert again == texts[:1]


def test_cli_prints_one_block_per_image(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (60, 40), "white").save(paths[-1])
    model = Path(engine.info.path)
    args = ["--model", str(model), "--device", "cpu", "--max-new-tokens", "4"]
    assert run_cli([str(p) for p in paths] + args) == 0
    out = capsys.readouterr().out
    expected = ocr_images(engine, paths, max_new_tokens=4)
    assert out == "\n".join(expected[:1]) + "\n" + "\n" + expected[1] + "\n"


def test_beams_choice_and_the_cli_flag(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from engine.ocr import EMBEDDED_OCR_BEAMS, ocr_beams

    # auto: beams for the embedded model only; an explicit width wins
    assert ocr_beams(engine.info) == 1
    assert ocr_beams(replace(engine.info, is_embedded_default=True)) == EMBEDDED_OCR_BEAMS
    assert ocr_beams(engine.info, 3) == 3
    # `--beams N` reads each image by beam search; a width below 1 is refused before loading
    path = tmp_path / "w.png"
    Image.new("RGB", (60, 40), "white").save(path)
    args = [str(path), "--model", engine.info.path, "--device", "cpu", "--max-new-tokens", "4"]
    assert run_cli([*args, "--beams", "3"]) == 0
    assert (
        capsys.readouterr().out
        == ocr_images(engine, [path], max_new_tokens=4, num_beams=3)[0] + "\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*args, "--beams", "0"])
    assert exit_info.value.code == 2


def test_the_cli_dtype_flag_reads_in_that_dtype(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from PIL import Image

    import engine.backends as backends

    loaded: list[Engine] = []
    load = backends.load_engine

    def spy(*a: object, **kw: object) -> Engine:
        loaded.append(load(*a, **kw))  # type: ignore[arg-type]
        return loaded[-1]

    monkeypatch.setattr(backends, "load_engine", spy)
    path = tmp_path / "w.png"
    Image.new("RGB", (60, 40), "white").save(path)
    args = [str(path), "--model", engine.info.path, "--device", "cpu", "--max-new-tokens", "4"]
    assert run_cli([*args, "--dtype", "bfloat16"]) == 0
    assert [e.info.dtype for e in loaded] == ["bfloat16"] and engine.info.dtype == "float32"
    assert capsys.readouterr().out == ocr_images(loaded[0], [path], max_new_tokens=4)[0] + "\n"
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*args, "--dtype", "float16"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("at_once", [16, 2])
def test_pieces_are_read_together_as_one_by_one(
    engine: Engine, at_once: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region's pieces are searched as one batch (engine.ocr's `_read_pieces`), lines of
    other lengths aligned to one position, or in batches of `at_once`: the text is what
    reading each on its own gives, in order."""
    from PIL import Image, ImageDraw

    from engine import ocr

    monkeypatch.setattr(ocr, "PIECES_TOGETHER", at_once)

    from engine.ocr import _read
    from engine.ocr_lines import reading_pieces

    image = Image.new("RGB", (300, 150), "white")
    draw = ImageDraw.Draw(image)
    for y, text in ((10, "first line"), (60, "other line"), (110, "short")):
        draw.text((10, y), text, fill="black", font_size=22)
    pieces = reading_pieces(image)
    assert len(pieces) == 3 and len({p.image.size for p in pieces}) > 1  # lengths differ
    alone = [_read(engine, p.image, 5, None, 3) for p in pieces]
    together = ocr_images(engine, [image], max_new_tokens=5, lines=True, num_beams=3)[0]
    assert together == "\n".join(t for t in alone if t)


def test_pieces_together_keeps_the_rows_states_bounded() -> None:
    from engine.ocr import PIECES_TOGETHER, ROWS_STATE_BYTES, pieces_together

    assert pieces_together(1_084_928, 4) == PIECES_TOGETHER  # the embedded model's state
    assert pieces_together(133_447_680, 4) == 1  # the 4B model's: one piece at a time
    for nbytes in (2**20, 5 * 2**20, 9 * 2**20, 30 * 2**20):
        n = pieces_together(nbytes, 4)
        assert 1 <= n <= PIECES_TOGETHER and (n == 1 or 3 * 4 * n * nbytes <= ROWS_STATE_BYTES)
    assert 1 < pieces_together(8 * 2**20, 4) < PIECES_TOGETHER
