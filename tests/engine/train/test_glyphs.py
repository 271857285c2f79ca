"""The glyph targets: what each image token of a rendered line reads, and the training-only head
that learns them (synthetic.glyphs, forward.GlyphHead)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.loader import load_model
from engine.preprocess import ImageParams, preprocess_images
from engine.tokenizer import Tokenizer
from engine.train.config import ConfigError, DataConfig
from engine.train.conversation import encode_sample
from engine.train.data import collate
from engine.train.fonts import find_fonts
from engine.train.forward import GLYPH_HEAD_FILE
from engine.train.synthetic.canvas import Rendered
from engine.train.synthetic.charts import render_bar_chart
from engine.train.synthetic.documents import render_code, render_page, render_receipt, render_table
from engine.train.synthetic.glyphs import (
    END,
    IGNORE,
    OTHER,
    SLOTS,
    Glyph,
    glyph_class,
    glyph_targets,
)
from engine.train.synthetic.lines import line_text, render_line
from engine.train.synthetic.screens import render_screen
from engine.train.synthetic.tasks import ocr_sample
from engine.train.text_sources import TextSource
from engine.train.trainer import train
from tests.engine.train.conftest import stage_config

PARAMS = ImageParams(max_pixels=1024 * 28 * 28)
# single words, the same four samples every step: a few steps must lower the glyph loss
WORDS = DataConfig(
    weights={"ocr_word": 1.0}, seed=5, max_tokens=128, max_pixels=1024 * 28 * 28,
    screen_width=(56, 160), repeat=4,
)  # fmt: skip


def _read_back(targets: torch.Tensor) -> str:
    """The characters the targets name, token after token (ASCII classes only)."""
    return "".join(chr(k + 32) for row in targets.tolist() for k in row if k not in (END, IGNORE))


def _targets(r: Rendered) -> torch.Tensor:
    assert r.glyphs is not None
    _, grid = preprocess_images([r.image], PARAMS)
    _, h, w = grid[0].tolist()
    return glyph_targets(r.glyphs, r.image.size, (h, w), PARAMS.patch_size, PARAMS.merge_size)


def test_classes_of_characters() -> None:
    assert glyph_class("!") == 1 and glyph_class("A") == ord("A") - 32 and glyph_class("~") == 94
    assert glyph_class("é") == glyph_class("€") == OTHER


@pytest.mark.parametrize("seed", range(12))
def test_the_tokens_of_a_rendered_line_read_its_text_in_order(seed: int) -> None:
    rng = random.Random(seed)
    text = line_text(rng, TextSource.from_stdlib())
    r = render_line(rng, text, find_fonts(), 800)
    targets = _targets(r)
    _, grid = preprocess_images([r.image], PARAMS)
    assert targets.shape == (int(grid.prod()) // 4, SLOTS)
    full = ((targets != END) & (targets != IGNORE)).all(dim=1)
    if not full.any():  # no token holds more characters than it has slots
        assert _read_back(targets) == r.text.replace(" ", "")
    # every token says how many characters it holds: END after them, nothing after END
    for row in targets.tolist():
        if END in row:
            assert all(k == IGNORE for k in row[row.index(END) + 1 :])


RENDERERS = {
    "screen": lambda rng, src, fonts: render_screen(rng, src, fonts, (640, 224)),
    "page": lambda rng, src, fonts: render_page(rng, src, fonts, (336, 336)),
    "code": lambda rng, src, fonts: render_code(rng, src, fonts, (448, 224)),
    "table": lambda rng, src, fonts: render_table(rng, src, fonts, (448, 224)),
    "receipt": lambda rng, src, fonts: render_receipt(rng, src, fonts, (280, 336)),
    "chart": lambda rng, src, fonts: render_bar_chart(rng, fonts, (448, 280)),
}


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_every_renderer_records_each_character_it_draws(kind: str) -> None:
    # a character drawn but not recorded would be taught as background (END) to its token
    src, fonts = TextSource.from_stdlib(), find_fonts()
    for seed in range(4):
        r = RENDERERS[kind](random.Random(seed), src, fonts)
        assert r.glyphs is not None
        drawn = Counter(g.char for g in r.glyphs)
        assert drawn == Counter(c for c in r.text if not c.isspace()), (kind, seed)
        width, height = r.image.size
        assert all(0 <= g.x <= width and 0 <= g.y <= height for g in r.glyphs)


def test_a_crowded_token_keeps_its_first_characters_and_no_end() -> None:
    glyphs = [Glyph(c, 2.0 + 3 * i, 10.0) for i, c in enumerate("abcdefgh")]  # all in token 0
    t = glyph_targets(glyphs, (56, 28), (2, 4), 14, 2)
    assert _read_back(t[:1]) == "abcdef" and END not in t[0].tolist()
    assert t[1].tolist() == [END] + [IGNORE] * (SLOTS - 1)


def test_glyph_positions_follow_the_resize_to_the_patch_grid() -> None:
    # a 280 x 28 picture shown as 10 tokens; drawn at twice that size, the same 10 tokens
    glyphs = [Glyph("x", 30.0, 14.0), Glyph("y", 250.0, 14.0)]
    small = glyph_targets(glyphs, (280, 28), (2, 20), 14, 2)
    big = glyph_targets(
        [Glyph(g.char, 2 * g.x, 2 * g.y) for g in glyphs], (560, 56), (2, 20), 14, 2
    )
    assert torch.equal(small, big)
    assert small[1, 0] == glyph_class("x") and small[8, 0] == glyph_class("y")


def test_encoded_samples_carry_a_target_row_per_image_token(teacher_dir: Path) -> None:
    tok = Tokenizer.from_dir(teacher_dir)
    params = ImageParams.from_dir(teacher_dir)
    rng = random.Random(3)
    line = ocr_sample(render_line(rng, "Hello 42", find_fonts(), 200), "ocr_line")
    e = encode_sample(line, tok, params, 512)
    assert e.glyph_targets is not None
    assert e.glyph_targets.shape[0] == int((e.input_ids == tok.special.image_pad).sum())
    assert _read_back(e.glyph_targets) == "Hello42"
    # a picture without known positions (a screen, a user's image): nothing is supervised
    unknown = replace(line, glyphs=[None])
    u = encode_sample(unknown, tok, params, 512)
    assert u.glyph_targets is not None and bool((u.glyph_targets == IGNORE).all())
    b = collate([e, u], tok.special.pad)
    assert b.glyph_targets is not None
    assert torch.equal(b.glyph_targets, torch.cat([e.glyph_targets, u.glyph_targets]))


def test_reading_stage_with_the_glyph_head_learns_and_exports_the_model_alone(
    teacher_dir: Path, tmp_path: Path
) -> None:
    cfg = stage_config("teacher", teacher_dir, tmp_path, data=WORDS, steps=10, lr=1e-2)
    out = train(cfg.with_(glyph_weight=0.5))
    history = [json.loads(ln) for ln in (tmp_path / "losses.jsonl").read_text().splitlines()]
    glyph = [h["glyph"] for h in history]
    assert all(0 < g < h["loss"] for g, h in zip(glyph, history, strict=True))
    assert sum(glyph[-2:]) < sum(glyph[:2]) / 2, glyph
    names = set()
    for f in out.glob("model*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    assert names and not any("glyph" in n for n in names)
    load_model(out, device="cpu", dtype=torch.float32)  # the published layout, nothing extra
    with safe_open(out / GLYPH_HEAD_FILE, "pt") as st:  # the head only beside it
        assert set(st.keys()) == {"proj.weight", "proj.bias"}


def test_glyph_weight_only_on_the_teacher_stage(teacher_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="glyph_weight"):
        stage_config("sft", teacher_dir, tmp_path, glyph_weight=0.5).validate()
    with pytest.raises(ConfigError, match="glyph_weight"):
        stage_config("teacher", teacher_dir, tmp_path, glyph_weight=-1.0).validate()


def test_a_run_exports_as_it_goes_and_a_further_run_keeps_the_glyph_head(
    teacher_dir: Path, tmp_path: Path
) -> None:
    first = stage_config("teacher", teacher_dir, tmp_path / "a", data=WORDS, steps=6, lr=1e-2)
    train(first.with_(glyph_weight=0.5, export_every_s=1e-6))
    latest = tmp_path / "a" / "latest"
    assert (latest / GLYPH_HEAD_FILE).is_file()  # exported during the run, head beside it
    load_model(latest, device="cpu", dtype=torch.float32)
    ckpt = tmp_path / "a" / "checkpoint"

    def first_glyph_loss(init: Path, out: str) -> float:
        cfg = stage_config("teacher", init, tmp_path / out, data=WORDS, steps=1, lr=1e-2)
        train(cfg.with_(glyph_weight=0.5))
        return json.loads((tmp_path / out / "losses.jsonl").read_text().splitlines()[0])["glyph"]

    kept = first_glyph_loss(ckpt, "b")
    (ckpt / GLYPH_HEAD_FILE).unlink()
    fresh = first_glyph_loss(ckpt, "c")
    assert kept < fresh, (kept, fresh)
