"""Map a selection in Qt's logical coordinates to pixels of a screenshot; pure, no Qt.

Qt reports each screen as a logical rectangle and a device pixel ratio; mss reports each monitor
as a rectangle of physical pixels. A screen's screenshot is cropped by the ratio of its image size
to its logical size, so HiDPI, fractional scaling and macOS points all map the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InputError


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned rectangle; x, y is the top-left corner."""

    x: float
    y: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def contains(self, px: float, py: float) -> bool:
        return self.x <= px < self.right and self.y <= py < self.bottom


@dataclass(frozen=True, slots=True)
class ScreenGeometry:
    """One Qt screen: its logical geometry and device pixel ratio."""

    logical: Rect
    device_pixel_ratio: float


def selection_rect(x0: float, y0: float, x1: float, y1: float) -> Rect:
    """The rectangle spanned by a drag from (x0, y0) to (x1, y1), in either direction."""
    return Rect(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))


def match_monitors(screens: list[ScreenGeometry], monitors: list[Rect]) -> list[int]:
    """For each Qt screen, the index of the mss monitor that shows it.

    Qt 6 keeps a screen's top-left in native pixels on X11 and Windows, so a monitor whose origin
    and size equal the screen's origin and logical size times its ratio is an exact match. Where
    platforms differ (macOS points, Wayland), screens and monitors pair up in reading order.

    Raises:
        ValueError: the counts differ, so the screenshot does not show these screens.
    """
    if len(screens) != len(monitors):
        raise ValueError(f"{len(screens)} Qt screens but {len(monitors)} captured monitors")
    order: list[int | None] = []
    for screen in screens:
        g, r = screen.logical, screen.device_pixel_ratio
        exact = [
            i
            for i, m in enumerate(monitors)
            if (m.x, m.y) == (g.x, g.y)
            and abs(m.width - g.width * r) < 1
            and abs(m.height - g.height * r) < 1
        ]
        order.append(exact[0] if len(exact) == 1 else None)
    if None not in order and len(set(order)) == len(order):
        return [i for i in order if i is not None]
    by_screen = sorted(
        range(len(screens)), key=lambda i: (screens[i].logical.x, screens[i].logical.y)
    )
    by_monitor = sorted(range(len(monitors)), key=lambda i: (monitors[i].x, monitors[i].y))
    pairs = dict(zip(by_screen, by_monitor, strict=True))
    return [pairs[i] for i in range(len(screens))]


def logical_to_pixels(selection: Rect, screen: Rect, image_size: tuple[int, int]) -> Rect:
    """Map a selection in global logical coordinates to a pixel box of that screen's image.

    Args:
        selection: the dragged rectangle, global logical coordinates (Qt's).
        screen: the logical geometry of the screen the selection was made on.
        image_size: (width, height) in pixels of that screen's screenshot.
    Returns:
        Integer pixel box inside the image, widened outward to whole pixels.
    Raises:
        InputError: the selection has no area on that screen.
    """
    img_w, img_h = image_size
    sx, sy = img_w / screen.width, img_h / screen.height
    left = max(0, math.floor((selection.x - screen.x) * sx + 1e-6))
    top = max(0, math.floor((selection.y - screen.y) * sy + 1e-6))
    right = min(img_w, math.ceil((selection.right - screen.x) * sx - 1e-6))
    bottom = min(img_h, math.ceil((selection.bottom - screen.y) * sy - 1e-6))
    if selection.width <= 0 or selection.height <= 0 or right <= left or bottom <= top:
        raise InputError(
            f"the selected region is empty ({selection.width:g} x {selection.height:g} points); "
            "drag a rectangle around the text"
        )
    return Rect(left, top, right - left, bottom - top)


def split_desktop(image_size: tuple[int, int], screens: list[Rect]) -> list[Rect]:
    """Pixel boxes of each screen inside one image of the whole desktop.

    The screenshot portal returns one image of every screen together; its scale is the image
    size over the bounding box of the screens' logical geometries. One scale for all screens:
    a desktop mixing scale factors is cut where a uniform scale puts the borders.

    Raises:
        ValueError: no screens, or screens without area.
    """
    if not screens:
        raise ValueError("no screens to cut the desktop image into")
    left, top = min(s.x for s in screens), min(s.y for s in screens)
    right, bottom = max(s.right for s in screens), max(s.bottom for s in screens)
    if right <= left or bottom <= top:
        raise ValueError(f"screens {screens} have no area")
    img_w, img_h = image_size
    sx, sy = img_w / (right - left), img_h / (bottom - top)
    boxes = []
    for s in screens:
        x0, y0 = round((s.x - left) * sx), round((s.y - top) * sy)
        x1, y1 = min(img_w, round((s.right - left) * sx)), min(img_h, round((s.bottom - top) * sy))
        boxes.append(Rect(x0, y0, x1 - x0, y1 - y0))
    return boxes
