"""Desktop entry, AppStream metainfo, icons and bundle spec agree with each other and the CLI."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from engine.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
APP_ID = "org.infinitevl.Desktop"
DESKTOP = ROOT / "packaging" / "linux" / f"{APP_ID}.desktop"
METAINFO = ROOT / "packaging" / "linux" / f"{APP_ID}.metainfo.xml"
ICONS = ROOT / "resources" / "icons"


def _entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_entry_runs_the_cli_subcommands() -> None:
    entry = _entry()
    assert entry["Type"] == "Application" and entry["Icon"] == APP_ID
    assert entry["Name"] == "InfiniteVL Desktop" and entry["Terminal"] == "false"
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DESKTOP, encoding="utf-8")
    for section in parser.sections():
        argv = parser[section]["Exec"].split()
        assert argv[0] == "infinitevl" and argv[1] in subcommands, section


def test_metainfo_names_the_desktop_entry() -> None:
    root = ET.parse(METAINFO).getroot()
    assert root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == DESKTOP.name
    assert root.findtext("icon") == APP_ID
    assert root.findtext("project_license") == "Apache-2.0"
    assert root.find("releases/release").get("version") in (ROOT / "pyproject.toml").read_text()


def test_icons_are_square_at_their_sizes() -> None:
    assert ET.parse(ICONS / "infinitevl.svg").getroot().get("viewBox") == "0 0 256 256"
    for size in (64, 128, 256):
        with Image.open(ICONS / f"infinitevl-{size}.png") as image:
            assert image.size == (size, size) and image.mode == "RGBA"


def test_bundle_spec_inputs_exist() -> None:
    spec = (ROOT / "packaging" / "pyinstaller" / "infinitevl.spec").read_text()
    compile(spec, "infinitevl.spec", "exec")
    for path in ("packaging/pyinstaller/launcher.py", "app/history/schema.sql", "resources/icons"):
        assert (ROOT / path).exists(), path
        assert Path(path).name in spec


@pytest.mark.parametrize(
    ("tool", "args", "path"),
    [
        ("desktop-file-validate", [], DESKTOP),
        ("appstreamcli", ["validate", "--no-net"], METAINFO),
    ],
)
def test_freedesktop_validators(tool: str, args: list[str], path: Path) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install desktop-file-utils appstream)")
    done = subprocess.run([tool, *args, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
