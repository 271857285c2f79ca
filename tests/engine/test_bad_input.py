"""Bad input through the session API: each is a clear InputError naming what was wrong.

The session is the FakeModel's (tests/engine/fakes.py); what is checked here is the path from the
caller's input to the error, and that the session stays usable afterwards.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.engine import Engine
from engine.errors import InputError
from engine.preprocess import ImageParams
from engine.sampling import SamplingParams
from tests.engine.fakes import fake_engine

REPLY = "ok"


@pytest.fixture
def engine() -> Engine:
    return fake_engine(REPLY.encode())


def _assert_still_usable(engine: Engine, session: object) -> None:
    session.add_user_message("still there?")  # type: ignore[attr-defined]
    assert "".join(d.text for d in session.generate()) == REPLY  # type: ignore[attr-defined]


def _png(path: Path, width: int, height: int) -> Path:
    """A black grayscale PNG written row by row: no image of that size is ever in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(1)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [packer.compress(row * 500) for _ in range(height // 500)]
    parts.append(packer.compress(row * (height % 500)))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )
    return path


def test_unreadable_image_file(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not a picture")
    session = engine.new_session()
    with pytest.raises(InputError, match="photo.png"):
        session.add_user_message("what is this?", [bad])
    assert session.tokens_seen == 0
    _assert_still_usable(engine, session)


def test_missing_image_file(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.jpg"):
        engine.new_session().add_user_message("x", [tmp_path / "nowhere.jpg"])


def test_truncated_png(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        engine.new_session().add_user_message("x", [path])


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (0, 0, 3)])
def test_zero_size_image(engine: Engine, shape: tuple[int, int, int]) -> None:
    session = engine.new_session()
    with pytest.raises(InputError, match="zero|empty|size"):
        session.add_user_message("x", [np.zeros(shape, dtype=np.uint8)])
    _assert_still_usable(engine, session)


def test_zero_size_page_in_document(engine: Engine) -> None:
    session = engine.new_session()
    pages = [np.full((56, 56, 3), 255, np.uint8), np.zeros((0, 5, 3), np.uint8)]
    with pytest.raises(InputError):
        session.feed_document(pages)
    # the page read before the bad one stays, in a closed turn
    assert session._state.history[-2:] == [257, ord("\n")]
    _assert_still_usable(engine, session)


def test_wrong_image_type(engine: Engine) -> None:
    with pytest.raises(InputError, match="image"):
        engine.new_session().add_user_message("x", [12345])  # type: ignore[list-item]


@pytest.mark.parametrize("text", ["", " \t\n"])
def test_empty_prompt(engine: Engine, text: str) -> None:
    with pytest.raises(InputError, match="empty"):
        engine.new_session().add_user_message(text)


def test_image_only_message_is_fine(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("", [np.full((56, 56, 3), 7, np.uint8)])
    assert "".join(d.text for d in session.generate()) == REPLY


def test_prompt_longer_than_the_window(engine: Engine) -> None:
    window = engine.config.text.sliding_window
    session = engine.new_session()
    session.add_user_message("word " * (window * 100))
    assert session.tokens_seen > window * 500
    assert "".join(d.text for d in session.generate()) == REPLY


def test_bad_sampling_params_type(engine: Engine) -> None:
    session = engine.new_session()
    session.add_user_message("x")
    with pytest.raises(InputError, match="SamplingParams"):
        session.generate({"temperature": 1.0})  # type: ignore[arg-type]
    assert "".join(d.text for d in session.generate(SamplingParams())) == REPLY


def test_20000_square_image_file_through_session(engine: Engine, tmp_path: Path) -> None:
    path = _png(tmp_path / "huge.png", 20_000, 20_000)
    params: ImageParams = engine.image_params
    session = engine.new_session()
    session.add_user_message("what is this?", [path])
    pads = sum(1 for i in session._state.history if i == engine.tokenizer.special.image_pad)
    assert 0 < pads * 28 * 28 <= params.max_pixels
    assert "".join(d.text for d in session.generate()) == REPLY
