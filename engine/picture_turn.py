"""A user turn of pictures (video frames, document pages) fed one picture at a time.

The turn protocol both session backends share (``engine.engine.Session``, the GGUF backend's
``GGUFSession``): the turn opens once, each picture goes in with its label (``Page i: `` for
documents, none for frames), progress is reported before the first picture and after each,
cancellation is checked between pictures (what was fed stays), and a turn with any picture in it
is always closed with ``<|im_end|>\\n``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from engine.errors import InputError
from engine.tokenizer import IM_END

log = logging.getLogger(__name__)

Picture = TypeVar("Picture")
Progress = Callable[[int, int | None], None]


class Cancellable(Protocol):
    @property
    def is_cancelled(self) -> bool: ...


PAGE_LABEL = "Page {}: "


def frames_list(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """``frames`` as a list (one [H, W, 3] array is one frame); none is an InputError."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        return [frames]
    if len(frames) == 0:
        raise InputError("feed_frames needs at least one frame")
    return list(frames)


def pages_total(pages: Iterable[object]) -> int | None:
    """How many pages, None for an iterable without a length; an empty list is an InputError."""
    total = len(pages) if hasattr(pages, "__len__") else None  # type: ignore[arg-type]
    if total == 0:
        raise InputError("feed_document needs at least one page")
    return total


def feed_picture_turn(
    pictures: Iterable[Picture],
    *,
    opening: str,
    label: str | None,
    feed_one: Callable[[str, Picture, str], int],
    close: Callable[[str], int],
    progress: Progress | None = None,
    cancel: Cancellable | None = None,
    total: int | None = None,
) -> int:
    """Feed one user turn of pictures; returns the tokens fed.

    Args:
        pictures: what ``feed_one`` takes, in order (a generator is consumed lazily, so a page is
            prepared only when its turn comes).
        opening: the text that opens the turn (``<|im_start|>user\\n``, after the system block
            on a fresh session).
        label: ``"Page {}: "`` (formatted with the 1-based page number, the picture then ends its
            line) or None (frames follow each other).
        feed_one: ``(text before, picture, text after) -> tokens fed``.
        close: ``(text) -> tokens fed``; called with ``<|im_end|>\\n`` once any picture went in.
        progress: ``(done, total)`` before the first picture and after each.
        cancel: a CancelToken; checked before each picture.
        total: the number of pictures if known (for ``progress``).
    Raises:
        InputError: no picture at all was given (a cancelled turn is not an error).
    """
    fed, done = 0, 0
    if progress is not None:
        progress(0, total)
    try:
        for picture in pictures:
            if cancel is not None and cancel.is_cancelled:
                break
            prefix = opening + (label.format(done + 1) if label else "")
            fed += feed_one(prefix, picture, "\n" if label else "")
            done, opening = done + 1, ""
            if progress is not None:
                progress(done, total)
    finally:
        if done:
            fed += close(f"{IM_END}\n")
    if done == 0 and not (cancel is not None and cancel.is_cancelled):
        raise InputError("no pages or frames to feed")
    log.debug("fed %d pictures (%d tokens)", done, fed)
    return fed
