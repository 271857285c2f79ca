"""The bad-input corpus, generated (nothing binary is committed): broken images and PDFs,
decompression bombs, enormous pages, bad text, damaged checkpoints and state snapshots.

``write_images(dir)`` and ``write_pdfs(dir)`` return {case name: path}; each case is a file a
user could hand the CLI or the app. ``damaged_checkpoints(good, dir)`` returns {case name:
checkpoint directory}.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import tiny_config
from engine.testing import write_tiny_checkpoint


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG declaring ``width`` x ``height`` RGB pixels, a few KB on disk."""
    row = b"\0" + b"\0" * (3 * width)  # filter byte + one black row
    compressor = zlib.compressobj(9)
    body = compressor.compress(row * 16) + compressor.flush()  # a few rows: the header is the bomb
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def write_images(directory: Path) -> dict[str, Path]:
    """Broken image files: truncated, corrupt, bombs, empty, not an image at all."""
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, bytes] = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")):
        good = _encoded(fmt)
        cases[f"truncated.{ext}"] = good[: len(good) // 2]
        # the signature survives, the body is noise
        cases[f"corrupt.{ext}"] = good[:16] + bytes(
            np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)
        )
    cases["bomb.png"] = png_bomb()
    cases["empty.png"] = b""
    cases["text-named.png"] = "not an image \u00e9\u00e8 \x00\x01".encode("latin-1")
    cases["document.pdf.png"] = minimal_pdf()
    paths = {}
    for name, payload in cases.items():
        path = directory / name
        path.write_bytes(payload)
        paths[name] = path
    return paths


def minimal_pdf(width: float = 612, height: float = 792, pages: int = 1) -> bytes:
    """A small valid PDF with ``pages`` blank pages of ``width`` x ``height`` points."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    for _ in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] >>".encode())
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def write_pdfs(directory: Path) -> dict[str, Path]:
    """Broken PDFs and an enormous page (200 x 200 inches; 14,400 pt is PDF's largest)."""
    directory.mkdir(parents=True, exist_ok=True)
    good = minimal_pdf(pages=3)
    cases = {
        "truncated.pdf": good[: len(good) // 3],
        "corrupt.pdf": b"%PDF-1.7\n"
        + bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8)),
        "empty.pdf": b"",
        "enormous-page.pdf": minimal_pdf(14_400, 14_400),
        "not-a-pdf.pdf": _encoded("PNG")[:100],
    }
    paths = {}
    for name, payload in cases.items():
        path = directory / name
        path.write_bytes(payload)
        paths[name] = path
    return paths


def damaged_checkpoints(directory: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoint directories that must not load: {case: (dir, words the error names)}."""
    cases: dict[str, tuple[Path, str]] = {}
    sharded = write_tiny_checkpoint(directory / "missing-shard", sharded=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (sharded / shard).unlink()
    cases["missing-shard"] = (sharded, shard)
    wrong = write_tiny_checkpoint(directory / "wrong-types")
    config = json.loads((wrong / "config.json").read_text())
    config["hidden_size"] = "sixty-four"
    (wrong / "config.json").write_text(json.dumps(config))
    cases["config-wrong-types"] = (wrong, "hidden_size")
    not_json = write_tiny_checkpoint(directory / "config-not-utf8")
    (not_json / "config.json").write_bytes(b"\xff\xfe{ not json \x00")
    cases["config-not-utf8"] = (not_json, "config.json")
    truncated = write_tiny_checkpoint(directory / "truncated-weights")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    cases["truncated-weights"] = (truncated, "model.safetensors")
    return cases


def other_model_checkpoint(directory: Path) -> Path:
    """A checkpoint of the same shapes with other weights: its states belong to another model."""
    return write_tiny_checkpoint(directory, tiny_config(), seed=1)


def tampered_copy(state: Path, out: Path) -> Path:
    """``state`` with one byte of its tensor data flipped (its checksum no longer matches)."""
    payload = bytearray(state.read_bytes())
    payload[-7] ^= 0x55
    out.write_bytes(bytes(payload))
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
