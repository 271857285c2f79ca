"""Font files for rendering synthetic text: Debian font packages and pip-installed copies only."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Debian's fonts-dejavu, fonts-liberation and fonts-freefont-ttf; `.train_carry/fonts` is where a
# GPU run without those packages finds copies of the same files
FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts/truetype",
    "/usr/share/fonts/opentype",
    ".train_carry/fonts",
)
# symbol and math fonts render no Latin text
_SKIP = ("Math", "STIX", "cmex", "cmsy", "cmmi", "LastResort", "Symbol")
# what every font must draw: some faces hold other glyphs only (DejaVu's "Display" faces draw
# nothing for it), and a sample drawn in one pairs a blank picture with text to recite
_PROBE = "Hag 19"


def find_fonts(extra_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Every usable .ttf/.otf under the known font folders, sorted so a seed picks the same file.

    Returns:
        Paths, deduplicated by file name. Raises FileNotFoundError when none is found.
    """
    dirs = [Path(d) for d in (*FONT_DIRS, *extra_dirs)]
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        log.debug("matplotlib not installed; its bundled fonts are not used")
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            usable = p.suffix.lower() in (".ttf", ".otf") and not any(s in p.name for s in _SKIP)
            if usable and p.name not in found and draws_latin(p):
                found[p.name] = p
    if not found:
        raise FileNotFoundError(
            f"no fonts under {[str(d) for d in dirs]}; apt-get install fonts-dejavu"
        )
    return [found[k] for k in sorted(found)]


def is_monospace(path: Path) -> bool:
    """True for fixed-width faces (used for code and receipts)."""
    return any(s in path.name for s in ("Mono", "Courier", "Cousine"))


def draws_latin(path: Path) -> bool:
    """Whether the face at `path` has a glyph for each character of `_PROBE` (letters, digits):
    one that draws ink and is not the face's "missing glyph" box."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(str(path), 24)
    except OSError:
        log.debug("%s: not a font PIL can open", path)
        return False

    def drawn(ch: str) -> bytes:
        image = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(image).text((8, 4), ch, font=font, fill=255)
        return image.tobytes() if image.getbbox() is not None else b""

    missing = drawn("\U0010fffd")  # a private-use code point: no face draws it but as missing
    return all(drawn(ch) not in (b"", missing) for ch in _PROBE.replace(" ", ""))
