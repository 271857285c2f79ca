"""Image preprocessing against transformers' Qwen2-VL image processor, and bad input."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from engine.errors import ConfigError, InputError
from engine.preprocess import (
    MAX_IMAGE_PIXELS,
    ImageParams,
    image_token_count,
    load_image,
    preprocess_images,
    preprocess_video,
    smart_resize,
)

qwen2_vl = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")

PARAMS = ImageParams()


def _reference_processor(params: ImageParams) -> object:
    return qwen2_vl.Qwen2VLImageProcessor(
        min_pixels=params.min_pixels,
        max_pixels=params.max_pixels,
        patch_size=params.patch_size,
        temporal_patch_size=params.temporal_patch_size,
        merge_size=params.merge_size,
        image_mean=list(params.image_mean),
        image_std=list(params.image_std),
    )


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: what a bomb's header looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_smart_resize_matches_transformers() -> None:
    rng = np.random.default_rng(0)
    sizes = [(30, 30), (60, 1000), (1500, 2000), (28, 28), (1, 150), (4000, 20), (9000, 9000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        for lo, hi in [(PARAMS.min_pixels, PARAMS.max_pixels), (56 * 56, 28 * 28 * 1280)]:
            assert smart_resize(h, w, 28, lo, hi) == qwen2_vl.smart_resize(h, w, 28, lo, hi), (h, w)


@pytest.mark.parametrize(
    ("sizes", "params"),
    [
        pytest.param([(30, 30)], PARAMS, id="tiny-30x30"),
        pytest.param([(60, 1000)], PARAMS, id="wide-1000x60"),
        pytest.param([(1500, 2000)], PARAMS, id="large-2000x1500"),
        pytest.param([(1500, 2000)], ImageParams(max_pixels=28 * 28 * 256), id="large-downscaled"),
        pytest.param([(333, 97), (97, 333), (64, 64)], PARAMS, id="batch-of-three"),
    ],
)
def test_preprocess_images_matches_transformers(sizes: list, params: ImageParams) -> None:
    images = [_random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    expected = _reference_processor(params)(images=images, return_tensors="np")
    pixel_values, grid_thw = preprocess_images(images, params)
    assert grid_thw.dtype == torch.long
    assert grid_thw.tolist() == expected["image_grid_thw"].tolist()
    assert pixel_values.dtype == torch.float32
    assert pixel_values.shape == expected["pixel_values"].shape
    np.testing.assert_allclose(pixel_values.numpy(), expected["pixel_values"], rtol=0, atol=1e-5)


def test_preprocess_pil_input_matches_array_input() -> None:
    image = _random_image(100, 150)
    from_pil, _ = preprocess_images([Image.fromarray(image)])
    from_array, _ = preprocess_images([image])
    torch.testing.assert_close(from_pil, from_array, rtol=0, atol=0)


@pytest.mark.parametrize("num_frames", [3, 4], ids=["odd-3", "even-4"])
def test_preprocess_video_matches_transformers(num_frames: int) -> None:
    frames = [_random_image(60, 80, seed=i) for i in range(num_frames)]
    expected = _reference_processor(PARAMS).preprocess(
        images=None, videos=[frames], return_tensors="np"
    )
    pixel_values, grid_thw = preprocess_video(frames, PARAMS)
    assert grid_thw.tolist() == expected["video_grid_thw"].tolist()
    assert grid_thw[0, 0] == (num_frames + 1) // 2
    np.testing.assert_allclose(
        pixel_values.numpy(), expected["pixel_values_videos"], rtol=0, atol=1e-5
    )


def test_image_token_count() -> None:
    _, grid = preprocess_images([_random_image(60, 1000)])
    t, h, w = grid[0].tolist()
    assert image_token_count(grid[0]) == t * h * w // 4
    with pytest.raises(InputError, match="merge_size"):
        image_token_count([1, 3, 4])


@pytest.mark.parametrize(
    ("image", "match"),
    [
        pytest.param(np.zeros((10, 3000, 3), np.uint8), "aspect ratio", id="extreme-ratio"),
        pytest.param(np.zeros((0, 10, 3), np.uint8), "zero size", id="zero-height"),
        pytest.param(Image.new("RGB", (0, 5)), "zero size", id="zero-width-pil"),
        pytest.param(np.zeros((10, 10, 3), np.float32), "uint8", id="float-array"),
        pytest.param(np.zeros((10, 10), np.uint8), "uint8", id="gray-array"),
        pytest.param("not an image", "numpy array or PIL", id="string"),
    ],
)
def test_preprocess_images_rejects_bad_input(image: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        preprocess_images([image])  # type: ignore[list-item]


def test_load_image_roundtrip_png() -> None:
    image = _random_image(37, 53)
    np.testing.assert_array_equal(load_image(_png_bytes(image)), image)


def test_load_image_composites_alpha_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half, fully transparent black bottom half
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert (out[:4] == (255, 0, 0)).all()
    assert (out[4:] == 255).all()


def test_load_image_applies_exif_orientation() -> None:
    image = Image.fromarray(_random_image(20, 40))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated by 90 degrees
    data = _png_bytes(image, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.shape == (40, 20, 3)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(out, expected)


def test_load_image_decodes_huge_jpeg_at_reduced_scale() -> None:
    # GIVEN an 8200 x 8200 JPEG (67 Mpx, above REDUCE_MIN_PIXELS), left half dark
    canvas = Image.new("L", (8200, 8200), 200)
    ImageDraw.Draw(canvas).rectangle((0, 0, 4099, 8199), fill=10)
    data = _png_bytes(canvas, "JPEG", quality=90)
    del canvas
    # WHEN it is loaded for max_pixels of 1 Mpx THEN the decoder's 1/4 scale is used
    out = load_image(data, max_pixels=1_000_000)
    assert out.shape == (2050, 2050, 3)
    assert 1_000_000 <= out.shape[0] * out.shape[1] <= 4 * 1_000_000 * 1.1
    assert abs(int(out[5, 5, 0]) - 10) <= 3 and abs(int(out[5, -5, 0]) - 200) <= 3


def test_preprocess_composites_transparent_pil_on_white() -> None:
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[:, :28] = (0, 0, 255, 255)  # opaque blue left half, transparent black right half
    opaque = np.zeros((56, 56, 3), np.uint8)
    opaque[:, :28] = (0, 0, 255)
    opaque[:, 28:] = 255
    from_rgba, _ = preprocess_images([Image.fromarray(rgba, "RGBA")])
    from_rgb, _ = preprocess_images([opaque])
    torch.testing.assert_close(from_rgba, from_rgb, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"definitely not an image", "not an image", id="garbage"),
        pytest.param(b"", "not an image", id="empty"),
        pytest.param(_png_bytes(_random_image(200, 200))[:3000], "decode", id="truncated-png"),
        pytest.param(
            _png_bytes(_random_image(200, 200), "JPEG")[:3000], "decode", id="truncated-jpeg"
        ),
        pytest.param(_png_header_only(30_000, 30_000), "exceeds the limit", id="bomb-header"),
        # PIL refuses a PNG whose header declares zero width
        pytest.param(_png_header_only(0, 100), "not an image", id="zero-width-header"),
    ],
)
def test_load_image_rejects_bad_bytes(data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_image(data)


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image file"):
        load_image(tmp_path / "missing.png")


def test_bomb_limit_is_documented_and_above_20000_squared() -> None:
    assert MAX_IMAGE_PIXELS > 20_000 * 20_000
    assert str(MAX_IMAGE_PIXELS) in _error_of(_png_header_only(25_000, 25_000))


def _error_of(data: bytes) -> str:
    with pytest.raises(InputError) as info:
        load_image(data)
    return str(info.value)


def test_image_params_from_dir(tmp_path: Path) -> None:
    assert ImageParams.from_dir(tmp_path) == ImageParams()
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 3136, "max_pixels": 401408, "image_mean": [0.5, 0.5, 0.5]})
    )
    params = ImageParams.from_dir(tmp_path)
    assert (params.min_pixels, params.max_pixels) == (3136, 401408)
    assert params.image_mean == (0.5, 0.5, 0.5)
    assert params.image_std == ImageParams().image_std
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 1000, "longest_edge": 2000}})
    )
    assert ImageParams.from_dir(tmp_path).max_pixels == 2000


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param('{"max_pixels": "big"}', "max_pixels", id="string-int"),
        pytest.param('{"patch_size": 14.5}', "patch_size", id="float-int"),
        pytest.param('{"merge_size": true}', "merge_size", id="bool-int"),
        pytest.param('{"image_mean": [0.5, 0.5]}', "image_mean", id="two-means"),
        pytest.param('{"image_std": 0.5}', "image_std", id="scalar-std"),
        pytest.param('{"min_pixels": 5000, "max_pixels": 4000}', "min_pixels", id="min-over-max"),
        pytest.param('{"do_normalize": false}', "do_normalize", id="unsupported-flag"),
        pytest.param("{not json", "not valid JSON", id="bad-json"),
    ],
)
def test_image_params_rejects_bad_config(tmp_path: Path, raw: str, match: str) -> None:
    (tmp_path / "preprocessor_config.json").write_text(raw)
    with pytest.raises(ConfigError, match=match):
        ImageParams.from_dir(tmp_path)


_HUGE_SCRIPT = """
import resource, sys
from engine.preprocess import ImageParams, load_image, preprocess_images
params = ImageParams()
image = load_image(sys.argv[1], max_pixels=params.max_pixels)
pixel_values, grid = preprocess_images([image], params)
t, h, w = grid[0].tolist()
print(image.shape[0], image.shape[1], t, h, w, pixel_values.shape[0], int(image[0, 0, 0]),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_20000_square_png_fits_in_memory(tmp_path: Path) -> None:
    # GIVEN a 20000 x 20000 PNG (400 Mpx; as float32 RGB it would take 4.8 GB)
    path = tmp_path / "huge.png"
    canvas = Image.new("L", (20_000, 20_000), 255)
    draw = ImageDraw.Draw(canvas)
    for y in range(0, 20_000, 500):
        draw.line([(0, y), (19_999, y)], fill=0, width=40)
    canvas.save(path, compress_level=1)
    del canvas, draw
    # WHEN a fresh process loads and preprocesses it with the default parameters
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_HUGE_SCRIPT), str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    height, width, t, h, w, rows, corner, max_rss_kib = map(int, result.stdout.split())
    # THEN the grid is within max_pixels, the content survived, and the peak memory stayed low
    assert (height, width) == (6667, 6667)  # box-reduced 3x in uint8 while decoding
    assert t == 1 and h * w * 14 * 14 <= ImageParams().max_pixels
    assert rows == h * w
    assert corner == 0  # the first line is black
    # measured 1.0-1.65 GB by environment (0.23 of it importing torch); decoding at full size in
    # RGB takes 4.5 GB, and the float32 tensor of the reference path another 4.8 GB
    assert max_rss_kib < 2_500_000, f"peak RSS {max_rss_kib / 1e6:.2f} GB"


def test_sample_png_needs_no_resize() -> None:
    # the shipped sample: 896 x 560 = 64 x 40 patches, so its text reaches the tower unresized
    sample = Path(__file__).resolve().parents[2] / "resources" / "sample.png"
    image = load_image(sample)
    assert image.shape == (560, 896, 3)
    _, grid = preprocess_images([image])
    assert grid.tolist() == [[1, 40, 64]]
    assert image_token_count(grid[0]) == 640
