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
            if p.suffix.lower() in (".ttf", ".otf") and not any(s in p.name for s in _SKIP):
                found.setdefault(p.name, p)
    if not found:
        raise FileNotFoundError(
            f"no fonts under {[str(d) for d in dirs]}; apt-get install fonts-dejavu"
        )
    return [found[k] for k in sorted(found)]


def is_monospace(path: Path) -> bool:
    """True for fixed-width faces (used for code and receipts)."""
    return any(s in path.name for s in ("Mono", "Courier", "Cousine"))
