"""Split a screen region or a page into its bands of text lines, top to bottom.

A small model reads one line far better than a whole page: the embedded model's error rate on
held-out screenshots falls from 0.51 to 0.20 when each band is read on its own, and on document
pages from 0.75 to 0.48 (`benchmarks/eval_default_model.py --lines on|off`). Six rows of margin
measured best in ad-hoc runs of the same sets with `PAD` changed (3 rows: 0.31 and 0.51; 10
rows, not held to the gap's middle: 0.30 and 0.60). Screens and documents draw
text on flat backgrounds, so a row of pixels without text is (nearly) one colour: a band is a run
of rows that are not, and rows that are (the gaps between lines, a rule, a title bar's padding)
separate bands. Text side by side (table cells, a menu bar) stays in one band, read left to right
(in pieces when far apart, below).

A band whose text is small is enlarged before it is read (`reading_pieces`): the embedded model
learnt from text 12 to 24 px high and misreads a toolkit's 9-point labels (~12 px). Ad-hoc runs of
`eval_default_model.py --num 12 --docs 0` (the twelfth session's model) with bands enlarged until
their text is 14, 16 or 20 rows high, against none: Qt widget dialogs 0.33 / 0.30 / 0.38 against
0.38, screenshots 0.060 / 0.073 / 0.145 against 0.099, text lines 0.12 / 0.11 / 0.16 against 0.23;
so 16 rows. Enlarging every band 1.5 times instead helped the dialogs (0.30) and doubled the error
on screenshots and unseen text, whose text was already large. With 16 rows, on 40 images a set
(`--num 40`), the model then shipped went from CER 0.163 to 0.088 on lines, 0.155 to 0.112 on
screenshots, 0.211 to 0.187 on pages and 0.338 to 0.288 on the Qt dialogs; words and unseen
lines stayed (0.099, 0.32), and the 800x200 region took 0.95 s instead of 0.89 s. On those 40
a set, 14 and 18 rows did worse (mean CER over the six sets 0.189 and 0.215 against 16's 0.182:
18 rows took words to 0.17, screenshots to 0.155 and dialogs to 0.39).

Each piece of a band is enlarged as the whole band is, by the band's text height
(`band_text_heights`), not by its own: a piece of a few letters is too little to measure. In a
menu bar 16 rows high, "File" measured 8 rows alone (its tall stems cleared as a frame's sides,
the rows across its top too few edges to count as text) and was enlarged twice, "View" 1.33 times,
and a piece of letters without ascenders ("on a run") measured its x-height. The training shows
the model the same scale (`engine.train.synthetic.tasks`, `app.widget_dialogs`). With the model
shipped before (`eval_default_model.py --num 40 --docs 0 --max-new-tokens 96 --lines on --beams
4 --dtype float32`), own heights against the band's: Qt widget dialogs 0.079 -> 0.076,
screenshots 0.078 -> 0.082, text lines 0.021 -> 0.026, pages 0.067 -> 0.070; the model then
trained on pieces scaled by their band (twenty-sixth session, engine/train/README.md) reads them
at 0.070, 0.074, 0.026 and 0.057.

A band is read in pieces where its letters stand far apart (`band_pieces`: a blank of at least
`PIECE_GAP` text heights). Read whole, a dialog's row of buttons came back as its first button:
the model learnt lines whose words follow one another. With pieces, the thirteenth session's
model's CER on the 40 Qt widget dialogs went from 0.288 to 0.253, screenshots from 0.112 to
0.118, the other sets unchanged, the 800x200 region 0.90 s (`eval_default_model.py --num 40
--docs 0 --max-new-tokens 96 --threads 2`); the fourteenth's (now shipped) reads the dialogs at
0.266 with pieces, 0.312 without (engine/train/README.md). A first try cut at 1.5 text
heights and took any fragment for a piece: filled buttons on a dark window fell apart into
slivers of their fill, read as invented words (screenshots 0.143 with the fourteenth session's
checkpoint, the region 2.07 s).

A piece wider than `MAX_PIECE` heights of its text is cut between words (`word_cuts`): past 30
or so letters the embedded model loses its place and recites what it learnt ("Temperature: 28
C, light rain" read "Temporarily: 28 C Jight rani"). With the twenty-third session's model, 40
images a set (`eval_default_model.py --num 40 --docs 0 --max-new-tokens 96 --threads 2 --lines
on --beams 4`), whole against cut: the Qt widget dialogs 0.140 -> 0.085, unseen text lines 0.166
-> 0.126, text lines 0.047 -> 0.040, words 0.025 both; the generator's screenshots 0.059 ->
0.080 and pages 0.072 -> 0.077, whose sentences come from the training text, which the model
recites better from a whole line (a cut line reads "Decoding 50643" for "Decoding: 50643": a
piece ending in a colon); the region 0.77 s. Ad hoc, on the dialogs, screenshots and unseen
lines: cuts at 10 heights 0.088 / 0.090 / 0.128, at 15 0.086 / 0.089 / 0.126, at 20 0.109 /
0.073 / 0.157. Cutting at any gap of `WORD_GAP` rather than the widest in reach cut inside words
("unreach hable"), as did gaps measured on the letters' rows alone (an underscore sits below
them). The training shows the model the same pieces (`engine.train.synthetic.lines.one_piece`,
`app.widget_dialogs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

INK_DELTA = 40  # grey levels from a row's most common value that count as ink
MIN_INK = 2  # ink pixels that make a row part of a band, at least (and 1% of the width)
MIN_EDGES = 4  # ink/background changes along a row that make it text, not a rule's edge
RULE_COLUMN = 0.5  # a column inked in more than this share of the rows is a frame or a rule
MIN_GAP = 3  # blank rows that end a band (accents and dots sit 1-2 rows above their letters)
MIN_HEIGHT = 6  # bands lower than this are rules or specks, not text
PAD = 6  # rows kept above and below a band, up to the middle of the gap to the next
LONG_RUN = 24  # ink longer than this along a row is a frame's or a rule's edge, not a letter's
PIECE_GAP = 3.0  # blank columns, in heights of a band's text, that part two pieces of the band
MIN_PIECE = 1.0  # the narrowest piece of letters, in heights of the band's text (else no cut)
MAX_PIECE = 15.0  # the widest piece of letters, in heights of the band's text: wider ones are cut
WORD_GAP = 0.3  # blank columns, in heights of the band's text, that may part two words
CUT_FROM = 0.4  # a cut is sought past this share of `MAX_PIECE` from the piece's start
MIN_TEXT_HEIGHT = 16  # rows of text a band is enlarged to, when its text is lower
MAX_ENLARGE = 2.0  # the most a band is enlarged
PATCH_PAIR = 28  # pixels: the vision tower's 14 px patches, merged 2x2; the resize before it
# makes each side of a picture a multiple of this
NARROW = 224  # pieces narrower than this are widened to a multiple of PATCH_PAIR, not resized


def text_rows(image: Image.Image) -> np.ndarray:
    """[H] bool: the rows of `image` that hold text.

    Ink is a pixel far from its row's most common grey. Columns inked in most rows (a window's
    frame, a table's side) are not text; a row is text when it has enough ink in enough separate
    pieces, so that a horizontal rule (one long run, whatever colour the row takes) is not.
    """
    return _text_rows(_ink(image))


def _tall_columns(ink: np.ndarray) -> np.ndarray:
    """[W] bool: the columns of `ink` [H, W] inked in more than `RULE_COLUMN` of its rows: a
    frame's or a table's sides, or in a band of large text the stems of its letters."""
    return ink.mean(axis=0) > RULE_COLUMN


def _text_rows(ink: np.ndarray) -> np.ndarray:
    """`text_rows` of a picture whose ink (`_ink`) is `ink` [H, W] (left as it is)."""
    ink = ink.copy()
    width = ink.shape[1]
    ink[:, _tall_columns(ink)] = False
    edges = (ink[:, 1:] != ink[:, :-1]).sum(axis=1)
    return (ink.sum(axis=1) >= max(MIN_INK, width // 100)) & (edges >= MIN_EDGES)


def line_bands(image: Image.Image) -> list[tuple[int, int]]:
    """The text bands of `image` as (top, bottom) rows, bottom exclusive, padded by `PAD`."""
    if image.width < 2 or image.height < 1:
        return []
    bands: list[tuple[int, int]] = []
    top = last = -1
    for y, on in enumerate(text_rows(image).tolist()):
        if on:
            if top < 0:
                top = y
            last = y
        elif top >= 0 and y - last >= MIN_GAP:
            bands.append((top, last + 1))
            top = -1
    if top >= 0:
        bands.append((top, last + 1))
    bands = [(t, b) for t, b in bands if b - t >= MIN_HEIGHT]
    if not bands:
        return []
    # padded, but never past the middle of the gap to a neighbour
    tops = [0] + [(b + t) // 2 for (_, b), (t, _) in zip(bands, bands[1:], strict=False)]
    bottoms = tops[1:] + [image.height]
    return [
        (max(lo, t - PAD), min(hi, b + PAD))
        for (t, b), lo, hi in zip(bands, tops, bottoms, strict=True)
    ]


def split_lines(image: Image.Image) -> list[Image.Image]:
    """`image` cut into its text bands, full width, top to bottom; `[image]` when it holds one
    band or none (nothing to split)."""
    bands = line_bands(image)
    if len(bands) <= 1:
        return [image]
    return [image.crop((0, top, image.width, bottom)) for top, bottom in bands]


def text_height(image: Image.Image) -> int:
    """Rows from the first row of text in `image` to the last (0 when it holds none)."""
    rows = np.flatnonzero(text_rows(image))
    return 0 if rows.size == 0 else int(rows[-1] - rows[0] + 1)


def enlarge_small_text(piece: Image.Image, height: int | None = None) -> Image.Image:
    """`piece`, enlarged (bicubic) until text `height` rows high is `MIN_TEXT_HEIGHT` rows high,
    at most `MAX_ENLARGE` times; `piece` itself when its text is that high already, or there is
    none. `height` is the text height of the band `piece` was cut from (`band_text_heights`),
    `text_height(piece)` when not given (a band shown whole)."""
    if height is None:
        height = text_height(piece)
    if height == 0 or height >= MIN_TEXT_HEIGHT:
        return piece
    scale = min(MAX_ENLARGE, MIN_TEXT_HEIGHT / height)
    size = (round(piece.width * scale), round(piece.height * scale))
    return piece.resize(size, Image.Resampling.BICUBIC)


def patch_width(width: int) -> int:
    """The width `widen_to_patches` gives a piece `width` pixels wide."""
    if width >= NARROW:
        return width
    return max(2 * PATCH_PAIR, -(-width // PATCH_PAIR) * PATCH_PAIR)


def widen_to_patches(piece: Image.Image) -> Image.Image:
    """`piece`, when narrower than `NARROW`, centred on a strip of its sides' colour whose width
    is a multiple of `PATCH_PAIR` (`patch_width`); else `piece` itself.

    The resize before the vision tower rounds each side to a multiple of 28 pixels: up to 14
    pixels on a 60-pixel word, a quarter of it squashed or stretched ("trick" read as "nick",
    "inspect" as "intEpcrf"). Widened, a narrow piece keeps its letters' shapes. On the 40
    held-out single words the shipped model's CER went from 0.112 to 0.045 (72% -> 85% exact),
    the other sets unchanged within their noise (eval_default_model.py, `engine/train/README.md`).
    Wide pieces keep the resize: 14 pixels are little there.
    """
    width = patch_width(piece.width)
    if width == piece.width:
        return piece
    out = Image.new(piece.mode, (width, piece.height), _side_colour(piece))
    out.paste(piece, ((width - piece.width) // 2, 0))
    return out


def _side_colour(image: Image.Image) -> tuple[int, ...] | int:
    """The most common colour of the first and last columns of `image` (its background)."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    sides = np.concatenate([pixels[:, 0], pixels[:, -1]])
    colours, counts = np.unique(sides, axis=0, return_counts=True)
    colour = tuple(int(c) for c in colours[counts.argmax()])
    return colour[0] if len(colour) == 1 else colour


@dataclass(frozen=True, slots=True)
class Piece:
    """One picture a model that reads line by line is shown, and the band it is part of."""

    image: Image.Image
    line: int  # index of its band, top to bottom; a band's pieces come left to right


def _ink(image: Image.Image) -> np.ndarray:
    """[H, W] bool: the pixels far from their row's most common grey (`INK_DELTA`)."""
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    height = grey.shape[0]
    rows = np.arange(height)[:, None] * 256
    counts = np.bincount((grey + rows).ravel(), minlength=256 * height).reshape(height, 256)
    return np.abs(grey - counts.argmax(axis=1)[:, None]) > INK_DELTA


def _letter_rows(ink: np.ndarray) -> np.ndarray:
    """[H] bool: the rows of a band's line of text, from its ink [H, W]: of its runs of text
    rows (`text_rows`, runs parted by `MIN_GAP` blank rows), the one with the most ink. Frames
    above and below the letters (a button's top and bottom, with their rounded corners) are
    runs of their own."""
    rows = _text_rows(ink)
    on = np.flatnonzero(rows)
    if on.size == 0:
        return rows
    starts = [0, *(np.flatnonzero(np.diff(on) >= MIN_GAP) + 1).tolist()]
    runs = [on[a:b] for a, b in zip(starts, [*starts[1:], on.size], strict=True)]
    per_row = ink.sum(axis=1)
    best = max(runs, key=lambda run: int(per_row[run[0] : run[-1] + 1].sum()))
    out = np.zeros_like(rows)
    out[best[0] : best[-1] + 1] = True
    return out


def _letter_columns(ink: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[W] bool: the columns of a band, from its ink [H, W] and its line's `rows`, that hold
    letters: ink less what no letter draws, columns inked in most rows (a button's or a
    window's sides) and runs longer than `LONG_RUN` along a row (a button's top and bottom
    edges, a rule)."""
    ink = ink.copy()
    ink[:, _tall_columns(ink)] = False
    return np.asarray(_without_long_runs(ink[rows]).any(axis=0))


def _without_long_runs(ink: np.ndarray) -> np.ndarray:
    """`ink` [H, W] with its runs longer than `LONG_RUN` along a row (edges, rules) cleared, in
    place."""
    for y, x0, x1 in _runs(ink):
        if x1 - x0 > LONG_RUN:
            ink[y, x0:x1] = False
    return ink


def _runs(ink: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first column, end column) of each horizontal run of True in `ink` [H, W]."""
    padded = np.zeros((ink.shape[0], ink.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = ink
    edges = np.diff(padded, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return list(zip(starts[0].tolist(), starts[1].tolist(), ends[1].tolist(), strict=True))


def _with_descenders(rows: np.ndarray, height: int) -> np.ndarray:
    """The line's `rows` [H] and those half its `height` below and a quarter above: where an
    underscore, a descender or an accent draws, too faint a row to count as text on its own."""
    on = np.flatnonzero(rows)
    out = np.zeros_like(rows)
    out[max(0, on[0] - height // 4) : on[-1] + 1 + height // 2] = True
    return out


def band_pieces(band: Image.Image) -> list[tuple[int, int]]:
    """The (left, right) columns of the pieces of `band`: its letters, parted where the blank
    between two is at least `PIECE_GAP` times the height of its text (the buttons of a dialog's
    row, a label and its value far apart); one piece, the whole width, when there is no such gap
    or a piece would be narrower than `MIN_PIECE` text heights (what was found is not letters:
    filled buttons on a dark window leave only fragments of their fill as ink).

    A word's spaces are a third to half of the text's height. Read as one picture, a row of
    buttons came back as its first button only: the model had learnt lines whose words follow
    one another, and stopped at the first wide blank.

    A piece wider than `MAX_PIECE` text heights is then cut between words (`word_cuts`).
    """
    ink = _ink(band)
    rows = _letter_rows(ink)
    columns = np.flatnonzero(_letter_columns(ink, rows))
    height = int(rows.sum())
    if columns.size == 0 or height == 0:
        return [(0, band.width)]
    letters = _letter_columns(ink, _with_descenders(rows, height))
    wide = np.flatnonzero(np.diff(columns) > PIECE_GAP * height)
    if wide.size == 0:
        return word_cuts((0, band.width), letters, height)
    lefts = [int(columns[0]), *(int(columns[i + 1]) for i in wide)]
    rights = [*(int(columns[i]) + 1 for i in wide), int(columns[-1]) + 1]
    if min(r - left for left, r in zip(lefts, rights, strict=True)) < MIN_PIECE * height:
        return [(0, band.width)]
    # each piece keeps a margin of blank columns, at most one text height and never past the
    # middle of the gap to a neighbour or into other ink (a button's side)
    # letters and frames' sides (ink's last use: its long runs are cleared in place)
    tall = _tall_columns(ink)
    inked = np.asarray(_without_long_runs(ink).any(axis=0))
    bounds = [0, *((r + nxt) // 2 for r, nxt in zip(rights, lefts[1:], strict=False)), band.width]
    spans = []
    for left, right, lo, hi in zip(lefts, rights, bounds, bounds[1:], strict=False):
        lo, hi = max(lo, left - height), min(hi, right + height)
        left, right = _with_stems(left, right, lo, hi, tall, inked, round(WORD_GAP * height))
        while left > lo and not inked[left - 1]:
            left -= 1
        while right < hi and not inked[right]:
            right += 1
        spans += word_cuts((left, right), letters, height)
    return spans


def _with_stems(
    left: int, right: int, lo: int, hi: int, tall: np.ndarray, inked: np.ndarray, reach: int
) -> tuple[int, int]:
    """The piece (left, right) of a band widened, within (lo, hi), over the tall columns
    (`_tall_columns`) that stand less than `reach` blank columns from its first or last
    letter: those are the stems of letters such as F, H or l, not a frame's sides (a button's
    padding keeps those farther from its label).

    In a band of large text with little blank above and below (a menu bar), such a stem counts
    as a frame's side, and the piece began or ended past it: "File" was shown as "ile" and read
    "ell", "Total" as "Tota", read "Trea".
    """
    width = tall.size
    # the left side is the right side of the columns read from right to left
    left = width - _past_stems(width - left, width - lo, tall[::-1], inked[::-1], reach)
    return left, _past_stems(right, hi, tall, inked, reach)


def _past_stems(end: int, hi: int, tall: np.ndarray, inked: np.ndarray, reach: int) -> int:
    """`end`, the column after a piece's last letter, moved past each run of `tall` columns
    that starts less than `reach` blank columns after it, up to `hi` (see `_with_stems`)."""
    while True:
        x = end
        while x < hi and x - end < reach and not inked[x]:
            x += 1
        if x >= hi or not tall[x]:
            return end
        while x < hi and tall[x]:
            x += 1
        end = x


def word_cuts(span: tuple[int, int], letters: np.ndarray, height: int) -> list[tuple[int, int]]:
    """The piece `span` (left, right) of a band, cut between words until no piece's letters are
    wider than `MAX_PIECE` text heights; `[span]` when they are not.

    `letters` [W] marks the band's columns that hold letters (descenders and underscores
    included: `_with_descenders`), `height` is its text's height. A gap between words is a run
    of at least `WORD_GAP` heights of blank columns; of those in the latter part of a piece's
    reach (`CUT_FROM` * `MAX_PIECE` to `MAX_PIECE` heights from its start), the widest is cut,
    in its middle: a word's space is wider than the gaps between its letters.

    The embedded model reads a few words far better than a long line: past 30 or so letters
    it loses its place and recites what it has learnt, not what the line says. Lines of the
    held-out Qt dialogs read ~"Temporarily: 28 C Jight rani" for "Temperature: 28 C, light
    rain" whole. What cutting bought and cost is in the module's notes above.
    """
    left, right = span
    columns = np.flatnonzero(letters[left:right]) + left
    limit = MAX_PIECE * height
    if columns.size == 0 or columns[-1] + 1 - columns[0] <= limit:
        return [span]
    blank = np.diff(columns) - 1
    gaps = [(int(columns[i]) + 1, int(columns[i + 1])) for i in np.flatnonzero(
        blank >= WORD_GAP * height)]  # fmt: skip
    cuts: list[int] = []
    start, stop = int(columns[0]), int(columns[-1]) + 1
    while stop - start > limit:
        reach = [g for g in gaps if start < g[0] <= start + limit]
        late = [g for g in reach if g[0] >= start + CUT_FROM * limit]
        ahead = [g for g in gaps if g[0] > start]
        pool = late or reach or ahead[:1]  # a word longer than the limit is cut after it
        if not pool:
            break
        g0, g1 = max(pool, key=lambda g: (g[1] - g[0], g[0]))
        cuts.append((g0 + g1) // 2)
        start = g1
    edges = [left, *cuts, right]
    return list(zip(edges, edges[1:], strict=False))


def piece_boxes(image: Image.Image) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Where in `image` the pieces that `reading_pieces` shows lie, in reading order: each
    piece's band index and its (left, top, right, bottom) box (right and bottom exclusive).
    A picture of one band or none is one piece, the whole picture."""
    bands = line_bands(image)
    if len(bands) <= 1:
        bands = [(0, image.height)]
    boxes = []
    for line, (top, bottom) in enumerate(bands):
        band = image.crop((0, top, image.width, bottom)) if len(bands) > 1 else image
        boxes += [(line, (left, top, right, bottom)) for left, right in band_pieces(band)]
    return boxes


def band_text_heights(
    image: Image.Image, boxes: Sequence[tuple[int, tuple[int, int, int, int]]]
) -> dict[tuple[int, int], int]:
    """The text height (`text_height`) of each band of `image` that `boxes` (`piece_boxes`)
    cut, by its (top, bottom) rows: measured on the whole band, since a piece of a few letters
    is too little to measure (the module's docstring: "File" alone measured half its height)."""
    heights: dict[tuple[int, int], int] = {}
    for _, (_, top, _, bottom) in boxes:
        if (top, bottom) not in heights:
            heights[top, bottom] = text_height(image.crop((0, top, image.width, bottom)))
    return heights


def reading_pieces(image: Image.Image) -> list[Piece]:
    """The pictures a model that reads line by line is shown, in reading order: each band of
    text lines (`split_lines`), cut into its pieces where they stand far apart and between
    words where a piece would be too wide (`band_pieces`), each shown as `as_shown` says (text
    smaller than its band's enlarged, narrow pieces widened)."""
    whole = (0, 0, image.width, image.height)
    boxes = piece_boxes(image)
    heights = band_text_heights(image, boxes)
    return [
        Piece(as_shown(image if box == whole else image.crop(box), heights[box[1], box[3]]), line)
        for line, box in boxes
    ]


def as_shown(piece: Image.Image, height: int | None = None) -> Image.Image:
    """`piece` as the model is shown it: enlarged when its band's text is small (`height` rows,
    `enlarge_small_text`), then, when narrow, widened to whole patches (`widen_to_patches`)."""
    return widen_to_patches(enlarge_small_text(piece, height))


def join_readings(lines: Sequence[int], texts: Sequence[str]) -> str:
    """The readings `texts` of pieces of the bands `lines` (one each, in reading order, as
    `Piece.line`): a band's readings joined by spaces, bands by newlines; empty readings
    dropped."""
    joined: dict[int, list[str]] = {}
    for line, text in zip(lines, texts, strict=True):
        if text.strip():
            joined.setdefault(line, []).append(text.strip())
    return "\n".join(" ".join(parts) for _, parts in sorted(joined.items()))
