"""Freeze the screen: one mss screenshot per monitor, as RGB arrays with their physical rects."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mss
import numpy as np

from app.capture.geometry import Rect

log = logging.getLogger(__name__)

# mss 10.2 renamed the factory to MSS and deprecated mss.mss; 9.x only has mss.mss
_open_mss = getattr(mss, "MSS", None) or mss.mss


@dataclass(frozen=True, slots=True)
class MonitorShot:
    """One monitor's pixels at the moment of capture."""

    rect: Rect  # physical pixels in the virtual desktop, as mss reports them
    image: np.ndarray  # [H, W, 3] uint8 RGB


def grab_monitors(display: str | None = None) -> list[MonitorShot]:
    """Capture every monitor now (display: an X display name; None means the session's).

    Raises:
        RuntimeError: the screen cannot be captured (no display, or the platform refuses), with
            mss's reason in the message.
    """
    kwargs = {} if display is None else {"display": display}
    try:
        with _open_mss(**kwargs) as sct:
            shots = []
            for mon in sct.monitors[1:]:
                raw = sct.grab(mon)
                bgra = np.frombuffer(raw.bgra, dtype=np.uint8).reshape(raw.height, raw.width, 4)
                rgb = np.ascontiguousarray(bgra[..., 2::-1])
                rect = Rect(mon["left"], mon["top"], mon["width"], mon["height"])
                shots.append(MonitorShot(rect, rgb))
    except mss.ScreenShotError as exc:
        raise RuntimeError(f"cannot capture the screen: {exc}") from exc
    log.debug("captured %d monitor(s): %s", len(shots), [s.rect for s in shots])
    return shots
