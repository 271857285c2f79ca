"""Property-based tests (hypothesis) of the processor and the store against arbitrary input:
every outcome is a result or the documented error, never another exception."""

from __future__ import annotations

import io
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.history.store import HistoryError, HistoryStore
from engine.errors import InputError
from engine.preprocess import ImageParams, load_image, preprocess_images, smart_resize
from engine.tokenizer import Tokenizer
from tests.badinput import corpus

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(st.integers(-5, 5000), st.integers(-5, 5000), st.sampled_from([14, 28]))
def test_smart_resize_sizes_or_input_error(height: int, width: int, factor: int) -> None:
    lo, hi = 56 * 56, 28 * 28 * 1280
    try:
        h, w = smart_resize(height, width, factor, lo, hi)
    except InputError:
        assert min(height, width) <= 0 or max(height, width) / min(height, width) > 200
        return
    assert h % factor == 0 and w % factor == 0 and h >= factor and w >= factor
    assert h * w <= hi or min(h, w) == factor  # only the floor at one factor may exceed it
    assert h * w >= lo or h * w > hi


@FAST
@given(st.binary(max_size=4000))
def test_load_image_of_any_bytes_is_an_image_or_input_error(payload: bytes) -> None:
    try:
        image = load_image(payload)
    except InputError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@FAST
@given(st.integers(0, 7), st.integers(1, 200), st.integers(1, 2000))
def test_load_image_of_damaged_files_is_input_error(kind: int, cut: int, flip: int) -> None:
    # real encodings, then cut short or with a byte flipped: an image or InputError
    fmt = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PNG", "JPEG")[kind]
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(kind).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(
        out, fmt
    )
    payload = bytearray(out.getvalue()[: max(1, len(out.getvalue()) - cut)])
    payload[flip % len(payload)] ^= 0xA5
    try:
        image = load_image(bytes(payload))
    except InputError:
        return
    assert image.dtype == np.uint8 and image.shape[2] == 3


@FAST
@given(
    st.integers(1, 120),
    st.integers(1, 120),
    st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "I;16", "1", "CMYK"]),
)
def test_preprocess_images_patch_count_matches_grid(height: int, width: int, mode: str) -> None:
    assume(max(height, width) / min(height, width) <= 200)
    image = Image.new(mode, (width, height))
    params = ImageParams()
    pixel_values, grid = preprocess_images([image], params)
    t, h, w = grid[0].tolist()
    assert pixel_values.shape == (t * h * w, 3 * params.temporal_patch_size * params.patch_size**2)
    assert h % params.merge_size == 0 and w % params.merge_size == 0
    assert bool(pixel_values.isfinite().all())


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_tokenizer_dir)


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80))
@example("\u2adc")  # composition-excluded: NFC makes it U+2ADD U+0338
def test_tokenizer_round_trips_and_streams_any_text(tokenizer: Tokenizer, text: str) -> None:
    # Qwen2's tokenizer normalises to NFC first, so NFC text is what comes back
    expected = unicodedata.normalize("NFC", text)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == expected
    stream = tokenizer.stream_decoder()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == expected


_TEXT = st.text(max_size=60)  # any Unicode, control characters and lone surrogates included
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("conversation"), _TEXT),
        st.tuples(st.just("message"), _TEXT),
        st.tuples(st.just("rename"), _TEXT),
        st.tuples(st.just("delete_last"), st.just("")),
        st.tuples(st.just("search"), _TEXT),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(_OPS)
def test_store_keeps_what_it_accepted_whatever_the_text(ops: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(Path(tmp))
        model: dict[int, list[str]] = {}
        titles: dict[int, str] = {}
        current = None
        for op, text in ops:
            try:
                if op == "conversation":
                    current = store.create_conversation(text or "untitled").id
                    model[current], titles[current] = [], text or "untitled"
                elif op == "message" and current is not None:
                    store.add_message(current, "user", text)
                    model[current].append(text)
                elif op == "rename" and current is not None:
                    store.rename(current, text)
                    titles[current] = text.strip()
                elif op == "delete_last" and current is not None and model[current]:
                    store.delete_message(store.messages(current)[-1].id)
                    model[current].pop()
                elif op == "search":
                    for hit in store.search(text):
                        assert hit.conversation_id in model
            except HistoryError:
                assert op == "rename" and not text.strip()
            except UnicodeEncodeError:
                # lone surrogates cannot be stored as UTF-8: refused whole, nothing half-written
                assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        store.close()
        # THEN, reopened, the history is exactly what was accepted
        store = HistoryStore(Path(tmp))
        for cid, contents in model.items():
            assert [m.content for m in store.messages(cid)] == contents
            assert store.conversation(cid).title == titles[cid]
        store.close()


def test_png_bomb_header_is_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="pixels"):
        load_image(corpus.png_bomb())
