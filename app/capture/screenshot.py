"""Freeze the screen: one screenshot per monitor, as RGB arrays with their physical rects.

mss reads the screen directly on X11, Windows and macOS. Wayland lets no client read the
screen, so there the desktop's screenshot portal takes one image that is cut per screen.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mss
import numpy as np
from jeepney.io.threading import open_dbus_router
from PIL import Image, UnidentifiedImageError

from app.capture.geometry import Rect, split_desktop
from app.capture.portal_request import PortalError, portal_request

log = logging.getLogger(__name__)

# mss 10.2 renamed the factory to MSS and deprecated mss.mss; 9.x only has mss.mss
_open_mss = getattr(mss, "MSS", None) or mss.mss
SCREENSHOT = "org.freedesktop.portal.Screenshot"
PORTAL_TIMEOUT = 60.0  # seconds; the desktop may first ask the user to allow screenshots


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


def grab_desktop(screens: list[Rect]) -> list[MonitorShot]:
    """Capture every screen now, by the means this session allows.

    Args:
        screens: the logical geometries of Qt's screens, in Qt's order (used on Wayland).
    Raises:
        RuntimeError: the screen cannot be captured; the message says why.
    """
    if os.environ.get("WAYLAND_DISPLAY"):
        return grab_through_portal(screens)
    return grab_monitors()


def grab_through_portal(screens: list[Rect], bus: str = "SESSION") -> list[MonitorShot]:
    """Capture through xdg-desktop-portal's Screenshot, without its interactive dialog.

    The portal writes the image to a file (often in ~/Pictures); it is read, then deleted,
    since the user asked for a region's text, not for a screenshot file.

    Raises:
        RuntimeError: no portal, the user declined, or an unreadable image.
    """
    options = {"interactive": ("b", False), "modal": ("b", True)}
    try:
        with open_dbus_router(bus) as router:
            call = (SCREENSHOT, "Screenshot", "sa{sv}", ("",))
            results = portal_request(router, call, options, PORTAL_TIMEOUT)
    except (PortalError, TimeoutError, OSError, KeyError, ValueError) as exc:
        raise RuntimeError(f"the desktop's screenshot portal failed: {exc}") from exc
    if "uri" not in results:
        raise RuntimeError("the desktop's screenshot portal returned no image")
    uri = urlparse(str(results["uri"][1]))
    if uri.scheme != "file" or not uri.path:
        raise RuntimeError(f"the screenshot portal answered {uri.geturl()!r}, not a file")
    path = Path(unquote(uri.path))
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise RuntimeError(f"cannot read the portal's screenshot {path}: {exc}") from exc
    finally:
        if path.is_file():
            path.unlink()
    h, w, _ = image.shape
    shots = []
    for box in split_desktop((w, h), screens):
        x, y, bw, bh = int(box.x), int(box.y), int(box.width), int(box.height)
        shots.append(MonitorShot(box, np.ascontiguousarray(image[y : y + bh, x : x + bw])))
    log.debug("portal screenshot %dx%d cut into %d screens", w, h, len(shots))
    return shots
