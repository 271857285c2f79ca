"""Image and video preprocessing for the vision tower: decode, resize, normalise, cut into patches.

Identical to transformers' ``Qwen2VLImageProcessor`` (slow path: PIL bicubic on uint8, rescale,
normalise, 2-frame temporal patches) for every image of up to 64 Mpx or 4x ``max_pixels``. Larger
ones are first box-reduced in uint8 (``Image.draft``/``Image.reduce``) so a 20000 x 20000 picture
is never held at full size in RGB or float; only those deviate from the reference. Transparent
images are composited on white, as Qwen's own ``qwen_vl_utils`` does. No Qt, no model here.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from PIL import Image

from engine.errors import ConfigError, InputError

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
# Qwen2.5-VL's preprocessor_config.json (transformers' own class default is 28 * 28 * 1280)
DEFAULT_MAX_PIXELS = 12_845_056
MAX_ASPECT_RATIO = 200
# decompression-bomb limit: a decoded image of up to 576 Mpx takes at most ~2.3 GB in uint8 RGBX
MAX_IMAGE_PIXELS = 24_000 * 24_000
# images above both REDUCE_ABOVE * max_pixels and REDUCE_MIN_PIXELS (64 Mpx, 256 MB as RGBX)
# are box-reduced in uint8 to between 1x and 4x max_pixels; all others match the reference
REDUCE_ABOVE = 4
REDUCE_MIN_PIXELS = 8192 * 8192

_EXIF_ORIENTATION = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# PIL's own bomb check is switched off while we open a file (ours replaces it); one at a time
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ImageParams:
    """Image settings of ``preprocessor_config.json``; defaults are Qwen2.5-VL's published ones."""

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"image params: {name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"image params: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(_is_number(v) for v in value):
                raise ConfigError(f"image params: {name} must be 3 numbers, got {value!r}")
        if not all(s > 0 for s in self.image_std):
            raise ConfigError(f"image params: image_std must be positive, got {self.image_std!r}")

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this: patch_size * merge_size (28)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Width of one row of pixel_values: 3 * temporal_patch_size * patch_size^2."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> Self:
        """Parse a ``preprocessor_config.json`` dict; missing fields take Qwen2.5-VL's defaults."""
        if not isinstance(raw, dict):
            raise ConfigError(
                f"preprocessor_config.json must hold an object, got {type(raw).__name__}"
            )
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if raw.get(flag, True) is not True:
                raise ConfigError(
                    f"preprocessor_config.json: {flag}={raw[flag]!r} is not supported"
                )
        if "rescale_factor" in raw and not math.isclose(raw["rescale_factor"], 1 / 255):
            raise ConfigError(
                f"preprocessor_config.json: rescale_factor {raw['rescale_factor']!r} is not 1/255"
            )
        size = raw.get("size") or {}
        if not isinstance(size, dict):
            raise ConfigError(f"preprocessor_config.json: size must be an object, got {size!r}")
        default = cls()
        # transformers lets min_pixels/max_pixels override size.shortest_edge/longest_edge
        fields = {
            "min_pixels": raw.get("min_pixels", size.get("shortest_edge", default.min_pixels)),
            "max_pixels": raw.get("max_pixels", size.get("longest_edge", default.max_pixels)),
            "patch_size": raw.get("patch_size", default.patch_size),
            "temporal_patch_size": raw.get("temporal_patch_size", default.temporal_patch_size),
            "merge_size": raw.get("merge_size", default.merge_size),
        }
        mean = raw.get("image_mean", default.image_mean)
        std = raw.get("image_std", default.image_std)
        for name, value in (("image_mean", mean), ("image_std", std)):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"preprocessor_config.json: {name} must be a list, got {value!r}")
        return cls(**fields, image_mean=tuple(mean), image_std=tuple(std))  # type: ignore[arg-type]

    @classmethod
    def from_dir(cls, directory: str | Path) -> Self:
        """Read ``preprocessor_config.json`` from a checkpoint directory (defaults when absent)."""
        path = Path(directory) / "preprocessor_config.json"
        if not path.is_file():
            log.info("no %s; using Qwen2.5-VL's default image parameters", path)
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_hf(raw)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """The size an image is resized to: sides multiples of ``factor``, area in [min, max] pixels.

    Same arithmetic as transformers' ``qwen2_vl.smart_resize`` (Python's ``round``, then floor
    or ceil on a rescaled size), keeping the aspect ratio as closely as possible.

    Returns:
        (resized_height, resized_width).
    Raises:
        InputError: a side is not positive, or the aspect ratio exceeds ``MAX_ASPECT_RATIO``.
    """
    if height <= 0 or width <= 0:
        raise InputError(f"image has zero size: {width}x{height} pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(
            f"image of {width}x{height} pixels: aspect ratio "
            f"{max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT_RATIO}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into RGB: EXIF orientation applied, transparency composited on white.

    Images above ``REDUCE_MIN_PIXELS`` and ``REDUCE_ABOVE * max_pixels`` are reduced in uint8
    while decoding (JPEG DCT scaling, then a box filter) to between 1x and 4x ``max_pixels``.

    Args:
        source: a path, or the file's bytes.
        max_pixels: the ``max_pixels`` the image will be resized within.
    Returns:
        [H, W, 3] uint8.
    Raises:
        InputError: missing, unreadable, truncated, zero-size, or above ``MAX_IMAGE_PIXELS``.
    """
    name = "image bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise InputError(f"no image file at {source}")
    fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with _open_image(fp, name) as im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise InputError(f"{name}: image has zero size ({width}x{height} pixels)")
            if width * height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{MAX_IMAGE_PIXELS} (a decompression bomb, or too large to decode)"
                )
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            factor = _reduction_factor(width, height, max_pixels)
            if factor > 1:
                # JPEG decodes at 1/2, 1/4 or 1/8 scale directly; other formats ignore draft
                im.draft("RGB", (width // factor, height // factor))
            im.load()
            out = reduce_far_above(im, max_pixels)
            if out is not im:
                im.close()  # free the full-size pixels before the RGB conversion
            if orientation in _ORIENTATION_TRANSPOSE:
                out = out.transpose(_ORIENTATION_TRANSPOSE[orientation])
            return np.asarray(to_rgb(out))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{name}: cannot decode image ({exc})") from exc


def open_picture(
    image: str | Path | np.ndarray | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | Image.Image:
    """An image argument as pixels: a path decoded (``load_image``), an array or PIL image as
    given (``preprocess_images`` checks them).

    Raises:
        InputError: anything else, or a path ``load_image`` refuses.
    """
    if isinstance(image, str | Path):
        return load_image(image, max_pixels=max_pixels)
    if not isinstance(image, np.ndarray | Image.Image):
        raise InputError(f"an image must be a numpy array, PIL image or path, got {image!r}")
    return image


def _open_image(fp: io.BytesIO | Path, name: str) -> Image.Image:
    with _PIL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(fp)
        except Image.UnidentifiedImageError as exc:
            raise InputError(f"{name}: not an image file PIL can read") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _reduction_factor(width: int, height: int, max_pixels: int) -> int:
    """The box-reduction factor that brings a huge image to at most ``REDUCE_ABOVE * max_pixels``.

    1 (no reduction) unless the image has more than ``REDUCE_MIN_PIXELS`` pixels.
    """
    if width * height <= REDUCE_MIN_PIXELS:
        return 1
    return max(1, math.ceil(math.sqrt(width * height / (REDUCE_ABOVE * max_pixels))))


def reduce_far_above(im: Image.Image, max_pixels: int) -> Image.Image:
    """Box-reduce (uint8) an image above ``REDUCE_MIN_PIXELS`` and ``REDUCE_ABOVE * max_pixels``.

    The result keeps at least ``max_pixels`` pixels, so the bicubic resize that follows still
    shrinks it; smaller images are returned unchanged (and so match the reference exactly).
    """
    factor = _reduction_factor(im.width, im.height, max_pixels)
    if factor == 1:
        return im
    if im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        im = im.convert("L" if im.mode == "1" else "RGBA")
    log.info("reducing a %dx%d image %dx in uint8 before resizing", im.width, im.height, factor)
    return im.reduce(factor)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def to_pil(image: np.ndarray | Image.Image, index: int = 0) -> Image.Image:
    """A PIL image of a uint8 [H, W, 3] array or a PIL image, checked (`index` names it)."""
    if isinstance(image, Image.Image):
        if image.width <= 0 or image.height <= 0:
            raise InputError(f"image {index} has zero size: {image.width}x{image.height}")
        return image
    if not isinstance(image, np.ndarray):
        raise InputError(f"image {index}: expected a numpy array or PIL image, got {type(image)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"image {index}: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image {index} has zero size: {image.shape[1]}x{image.shape[0]}")
    return Image.fromarray(image)


def _resize_normalized(im: Image.Image, size: tuple[int, int], params: ImageParams) -> torch.Tensor:
    """Bicubic resize on uint8 to (height, width), rescale 1/255, normalise: [3, H, W] float32."""
    height, width = size
    resized = np.asarray(im.resize((width, height), resample=Image.Resampling.BICUBIC))
    lut = _normalize_table(params)  # [3, 256]
    x = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], resized[..., c], out=x[c])
    return torch.from_numpy(x)


def _normalize_table(params: ImageParams) -> np.ndarray:
    """The normalised float32 value of each uint8 level per channel: [3, 256].

    The reference rescales in float64, casts to float32, then normalises in float32; doing the
    same steps on the 256 levels gives the same bits without a full-size float64 array.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(params.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(params.image_std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


def _patchify(
    frames: torch.Tensor, params: ImageParams
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut frames [T, 3, H, W] into temporal patches; an odd T repeats the last frame.

    Returns:
        ([t*h*w, 3*tp*p*p] float32 in the order of the vision tower, (t, h, w) in patches).
    """
    tp, p, m = params.temporal_patch_size, params.patch_size, params.merge_size
    T, C, H, W = frames.shape
    if T == 1:
        # a still image: a stride-0 view, so the only copy is the final reshape
        frames = frames.expand(tp, C, H, W)
    elif T % tp:
        frames = torch.cat([frames, frames[-1:].expand(tp - T % tp, C, H, W)])
    t, h, w = frames.shape[0] // tp, H // p, W // p
    x = frames.reshape(t, tp, C, h // m, m, p, w // m, m, p)
    # frame, unit row, unit column, row and column inside the unit; then C, tp, p, p per patch
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, C * tp * p * p), (t, h, w)


def preprocess_images(
    images: Sequence[np.ndarray | Image.Image], params: ImageParams | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, normalise and patch each image independently, as Qwen2-VL's image processor.

    Args:
        images: uint8 [H, W, 3] arrays (RGB) or PIL images of any mode.
        params: image parameters (defaults: Qwen2.5-VL's).
    Returns:
        pixel_values: [N, 3*tp*p*p] float32, the images' patches one after the other.
        image_grid_thw: [n_images, 3] int64, (t, h, w) in patches per image (t is 1).
    Raises:
        InputError: no images, a wrong dtype or shape, a zero size or an extreme aspect ratio.
    """
    params = params or ImageParams()
    if len(images) == 0:
        raise InputError("preprocess_images: no images given")
    rows, grids = [], []
    for i, image in enumerate(images):
        im = to_rgb(reduce_far_above(to_pil(image, i), params.max_pixels))
        size = smart_resize(
            im.height, im.width, params.factor, params.min_pixels, params.max_pixels
        )
        x = _resize_normalized(im, size, params)
        del im  # a full-size copy of an array input: free it before the patches are cut
        patches, grid = _patchify(x[None], params)
        rows.append(patches)
        grids.append(grid)
    pixel_values = rows[0] if len(rows) == 1 else torch.cat(rows)
    return pixel_values, torch.tensor(grids, dtype=torch.long)


def preprocess_video(
    frames: Sequence[np.ndarray | Image.Image], params: ImageParams | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch a clip: every frame resized to the first frame's target size, pairs of frames joined.

    Args:
        frames: the clip's frames in order, uint8 [H, W, 3] arrays or PIL images.
        params: image parameters (defaults: Qwen2.5-VL's).
    Returns:
        pixel_values_videos: [t*h*w, 3*tp*p*p] float32.
        video_grid_thw: [1, 3] int64, t = ceil(len(frames) / temporal_patch_size).
    """
    params = params or ImageParams()
    if len(frames) == 0:
        raise InputError("preprocess_video: no frames given")
    pil = [to_rgb(reduce_far_above(to_pil(f, i), params.max_pixels)) for i, f in enumerate(frames)]
    size = smart_resize(
        pil[0].height, pil[0].width, params.factor, params.min_pixels, params.max_pixels
    )
    stacked = torch.stack([_resize_normalized(im, size, params) for im in pil])
    patches, grid = _patchify(stacked, params)
    return patches, torch.tensor([grid], dtype=torch.long)


def image_token_count(grid_thw: torch.Tensor | Sequence[int], merge_size: int = 2) -> int:
    """How many ``<|image_pad|>`` tokens one image (or video) of ``grid_thw`` (t, h, w) takes."""
    t, h, w = (int(v) for v in grid_thw)
    if h % merge_size or w % merge_size:
        raise InputError(f"grid (t, h, w) = {(t, h, w)} not divisible by merge_size {merge_size}")
    return t * h * w // merge_size**2
