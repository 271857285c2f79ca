"""Pure reading arithmetic: render scales, page-range selection and progress text. No Qt, no I/O."""

from __future__ import annotations

import math

# pixels per page handed to the model: enough for body text at ~150 dpi on A4, and ~1,300
# vision tokens per page on Qwen2.5-VL's 28-pixel merged patches
READ_MAX_PIXELS = 1024 * 1024
THUMB_MAX_SIDE = 160  # pixels


def render_scale(width: float, height: float, max_pixels: int = READ_MAX_PIXELS) -> float:
    """The scale that renders a width x height page (PDF points or pixels) to <= max_pixels.

    Raises:
        ValueError: a page without area.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"a page of {width} x {height} has no area")
    return math.sqrt(max_pixels / (width * height))


def fit_size(width: int, height: int, max_side: int = THUMB_MAX_SIDE) -> tuple[int, int]:
    """(w, h) scaled to fit a max_side square, aspect kept, each side at least 1."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def parse_page_ranges(text: str, num_pages: int) -> list[int]:
    """Zero-based page indices of a selection like "1-5, 8, 10-" (one-based, inclusive).

    Empty text or "all" selects every page. Order is kept, duplicates dropped.

    Raises:
        ValueError: text that is not a list of pages or ranges, or a page past num_pages.
    """
    stripped = text.strip().lower()
    if stripped in ("", "all"):
        return list(range(num_pages))
    chosen: list[int] = []
    for part in (p.strip() for p in stripped.split(",")):
        first, sep, last = part.partition("-")
        try:
            start = int(first) if first.strip() else 1
            end = (int(last) if last.strip() else num_pages) if sep else start
        except ValueError:
            raise ValueError(f"{part!r} is not a page or a range like 3-7") from None
        if not 1 <= start <= end <= num_pages:
            raise ValueError(f"pages {part!r} are outside 1-{num_pages}")
        chosen.extend(i for i in range(start - 1, end) if i not in chosen)
    if not chosen:
        raise ValueError(f"{text!r} selects no page")
    return chosen


def reading_status(done: int, total: int, cancelling: bool = False) -> str:
    """The line under the progress bar while pages are read into memory."""
    if cancelling:
        return f"Cancelling after page {done} of {total}…"
    if done >= total:
        return f"Read all {total} pages; finishing…"
    return f"Reading page {done + 1} of {total}…"


def finished_status(done: int, total: int, cancelled: bool) -> str:
    """The line after a read: what is in memory now."""
    if cancelled:
        return f"Cancelled: {done} of {total} pages are in memory. Ask about them in the chat."
    return f"Read {total} pages into memory. Ask about the document in the chat."
