"""Readers for the usual multimodal instruction formats: LLaVA / ShareGPT JSON with image paths.

Accepted records (a JSON list, or JSON Lines):
  {"image": "a.png" | "images": [...], "conversations": [{"from": "human"|"gpt"|"system",
   "value": "<image>\\n..."}]}                                       (LLaVA, ShareGPT)
  {"images": [...], "messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}
Image paths are relative to the JSON file's folder unless absolute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from engine.errors import InputError
from engine.train.synthetic.tasks import IMAGE_TAG, Message, Sample

log = logging.getLogger(__name__)

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}  # fmt: skip


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a .json (list) or .jsonl file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def record_to_sample(
    record: dict[str, Any], root: Path, open_image: Callable[[Path], Image.Image] | None = None
) -> Sample:
    """One record -> Sample; missing <image> tags are put before the first user message."""
    open_image = open_image or (lambda p: Image.open(p).convert("RGB"))
    paths = record.get("images", record.get("image", []))
    if isinstance(paths, str):
        paths = [paths]
    turns = record.get("conversations") or record.get("messages")
    if not turns:
        raise InputError(f"record without conversations/messages: {sorted(record)}")
    messages = []
    for t in turns:
        role = _ROLES.get(t.get("from", t.get("role", "")))
        if role is None:
            raise InputError(f"unknown speaker in {t!r}; known: {sorted(_ROLES)}")
        messages.append(Message(role, str(t.get("value", t.get("content", "")))))
    tags = sum(m.content.count(IMAGE_TAG) for m in messages)
    if tags > len(paths):
        raise InputError(f"{tags} {IMAGE_TAG} tags but {len(paths)} images in {record!r:.200}")
    if tags < len(paths):
        first_user = next(i for i, m in enumerate(messages) if m.role == "user")
        missing = IMAGE_TAG * (len(paths) - tags)
        messages[first_user] = Message("user", missing + messages[first_user].content)
    images = [open_image(Path(p) if Path(p).is_absolute() else root / p) for p in paths]
    return Sample(images, messages, "sharegpt")


class ShareGPTSource:
    """Records of several files, read lazily by index (images open when a sample is drawn)."""

    def __init__(self, files: tuple[str, ...]) -> None:
        self.entries: list[tuple[dict[str, Any], Path]] = []
        for f in files:
            path = Path(f)
            records = read_records(path)
            self.entries += [(r, path.parent) for r in records]
            log.info("%s: %d records", path, len(records))

    def __len__(self) -> int:
        return len(self.entries)

    def sample(self, index: int) -> Sample:
        record, root = self.entries[index % len(self.entries)]
        return record_to_sample(record, root)
