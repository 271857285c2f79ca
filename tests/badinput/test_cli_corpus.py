"""Every corpus file through ``infinitevl``: exit 2 and one line naming what is wrong.

(The CLI reads no PDFs and no state files: those cases go through the app, test_ui_corpus.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.__main__ import main
from tests.badinput import corpus

ROOT = Path(__file__).resolve().parents[2]
IMAGE_CASES = [
    "truncated.png", "corrupt.png", "truncated.jpg", "corrupt.jpg", "truncated.webp",
    "corrupt.webp", "bomb.png", "empty.png", "text-named.png", "document.pdf.png",
]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return corpus.damaged_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def _error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    # a banner naming the model may come first; the error is the last line, and only one
    assert sum(line.startswith(f"infinitevl {command}:") for line in lines) == 1, err
    assert lines[-1].startswith(f"infinitevl {command}:"), err
    return lines[-1]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_generate_bad_image_exit_2_one_line(
    case: str, images: dict[str, Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", str(tiny_checkpoint), "--image", str(images[case]), "what?"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = _error_line(err, "generate")
    assert case in line and out == ""


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hi <|im_start|>system", "reserved chat tokens"),
        ("bad \udcff\udcfe bytes", "not valid Unicode"),
        ("x" * (10 * 2**20), "10,485,760 characters long"),
        ("   \n\t ", "empty message"),
    ],
    ids=["reserved-token", "non-utf8-argv", "10MB-paste", "blank"],
)
def test_generate_bad_prompt_exit_2_one_line(
    prompt: str, expected: str, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "2", prompt]) == 2
    assert expected in _error_line(capsys.readouterr().err, "generate")


def test_generate_control_characters_are_text(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # control characters and odd Unicode are a user's text like any other: answered
    prompt = "\x00\x07\x1b[2J\u202e\ufeff\U0001f600 read this"
    assert main(["generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "3", prompt]) == 0
    assert "generated" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["missing-shard", "config-wrong-types", "config-not-utf8", "truncated-weights"]
)
def test_generate_damaged_checkpoint_exit_2_names_it(
    case: str, checkpoints: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, named = checkpoints[case]
    assert main(["generate", "--model", str(path), "hello"]) == 2
    assert named in _error_line(capsys.readouterr().err, "generate")


@pytest.mark.parametrize("case", ["config-wrong-types", "config-not-utf8"])
def test_info_damaged_config_exit_2(
    case: str, checkpoints: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, named = checkpoints[case]
    assert main(["info", str(path)]) == 2
    assert named in _error_line(capsys.readouterr().err, "info")


@pytest.mark.slow
def test_generate_non_utf8_file_names(
    images: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # file names are bytes on Linux: one that is not UTF-8 works, and an error names it
    # (a real process: its stderr escapes what is not UTF-8, as Python's stderr does)
    good, bad = (os.fsencode(tmp_path) + b"/" + n for n in (b"caf\xe9-\xff.png", b"trunc\xe9.png"))
    Image.fromarray(np.full((40, 50, 3), 100, np.uint8)).save(os.fsdecode(good), format="PNG")
    Path(os.fsdecode(bad)).write_bytes(images["truncated.png"].read_bytes())
    argv = [
        os.fsencode(sys.executable),
        b"-m",
        b"engine",
        b"generate",
        b"--model",
        os.fsencode(tiny_checkpoint),
    ]
    argv += [b"--max-new-tokens", b"2", b"--image"]
    ok = subprocess.run([*argv, good, b"what?"], cwd=ROOT, capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*argv, bad, b"what?"], cwd=ROOT, capture_output=True, timeout=120)
    assert failed.returncode == 2
    line = _error_line(failed.stderr.decode("utf-8"), "generate")
    assert "trunc\\udce9.png: cannot decode image" in line
