"""The sample stream of a run: sample i is a pure function of (seed, i), so any rank can draw its
share of a global batch, a resumed run continues the same stream, and 1 and N processes see the
same global batches.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from engine.config import ModelConfig
from engine.model.rope import rope_index_rows
from engine.preprocess import ImageParams
from engine.tokenizer import Tokenizer
from engine.train.config import DataConfig
from engine.train.conversation import IGNORE_INDEX, Encoded, encode_sample
from engine.train.fonts import find_fonts
from engine.train.sharegpt import ShareGPTSource
from engine.train.synthetic.tasks import Sample, TaskMix, make_sample
from engine.train.text_sources import TextSource

log = logging.getLogger(__name__)


class SampleStream:
    """Draws sample `index` of the stream configured by `DataConfig`."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.mix = TaskMix(
            dict(cfg.weights),
            cfg.screen_width,
            cfg.screen_height,
            cfg.page_size,
            cfg.num_pages,
            cfg.size_multiple,
            cfg.line_size,
            cfg.reading_view,
        )
        self.fonts = find_fonts() if cfg.weights else []
        self.text = TextSource.from_stdlib() if cfg.weights else None
        self.sharegpt = ShareGPTSource(cfg.sharegpt) if cfg.sharegpt else None
        if not cfg.weights and self.sharegpt is None:
            raise ValueError("data config names neither synthetic task weights nor sharegpt files")

    def sample(self, index: int) -> Sample:
        if self.cfg.repeat:
            index %= self.cfg.repeat
        rng = random.Random(self.cfg.seed * 1_000_003 + index)
        use_sharegpt = self.sharegpt is not None and (
            self.text is None or rng.random() < self.cfg.sharegpt_weight
        )
        if use_sharegpt:
            assert self.sharegpt is not None
            return self.sharegpt.sample(rng.randrange(len(self.sharegpt)))
        assert self.text is not None
        return make_sample(rng, self.text, self.fonts, self.mix)


class EncodedStream(Dataset[Encoded]):
    """Map-style view of the stream: index -> encoded sequence (usable with DataLoader workers)."""

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, image_params: ImageParams) -> None:
        self.stream = SampleStream(cfg)
        self.tokenizer = tokenizer
        self.image_params = image_params
        self.max_tokens = cfg.max_tokens

    @classmethod
    def from_dir(cls, cfg: DataConfig, src: Path) -> EncodedStream:
        """The stream with the tokenizer and image processor saved in `src`, images capped at
        ``cfg.max_pixels``."""
        params = replace(ImageParams.from_dir(src), max_pixels=cfg.max_pixels)
        return cls(cfg, Tokenizer.from_dir(src), params)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> Encoded:
        sample = self.stream.sample(index)
        return encode_sample(sample, self.tokenizer, self.image_params, self.max_tokens)


@dataclass(frozen=True, slots=True)
class Shard:
    """Which samples of each global batch this rank draws."""

    rank: int
    world: int
    batch_size: int  # global, in samples

    def indices(self, step: int) -> list[int]:
        per_rank = self.batch_size // self.world
        start = step * self.batch_size + self.rank * per_rank
        return list(range(start, start + per_rank))


def batch_loader(
    dataset: EncodedStream,
    shard: Shard,
    start_step: int,
    steps: int,
    num_workers: int,
    pad_id: int,
    micro_batch: int,
    pin_memory: bool = False,
    rope: ModelConfig | None = None,
) -> Generator[list[Batch], None, None]:
    """This rank's samples of steps start_step..steps-1: per step, its micro-batches, collated.

    The workers collate (right-padding and one tensor of patches per micro-batch), so the
    training loop receives finished batches; with `pin_memory` a background thread copies them to
    page-locked memory, from which `Batch.to(cuda)` copies without blocking. (Collating in the
    loop cost it ~0.4 s per 64-sample step: the first touch of the workers' shared memory.)
    With `rope` (the model's config) the workers also compute each row's M-RoPE positions.
    """
    if shard.batch_size % shard.world:
        raise ValueError(f"batch_size {shard.batch_size} not divisible by {shard.world} ranks")
    order = [i for s in range(start_step, steps) for i in shard.indices(s)]
    loader = DataLoader(
        dataset,
        batch_size=shard.batch_size // shard.world,
        sampler=order,
        num_workers=num_workers,
        collate_fn=partial(collate_micro, pad_id=pad_id, micro_batch=micro_batch, rope=rope),
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
    batches = iter(loader)
    try:
        yield from batches
    finally:
        _stop_workers(batches)


def _stop_workers(batches: Iterator[list[Batch]]) -> None:
    """End the loader's worker processes now, without waiting for what they still render.

    DataLoader's own shutdown joins each worker with a 5 s timeout, and a worker holding
    prefetched batches nobody reads waits out that timeout: 20 s for 4 workers on this CPU, and
    ~140 s between two stages of the H100 run (14 workers), spent whenever the garbage collector
    got to the last stage's loader. Nothing they make is wanted once the loop stops.
    """
    for worker in getattr(batches, "_workers", []):  # private: absent with num_workers=0
        if worker.is_alive():
            worker.terminate()
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def collate_micro(
    items: list[Encoded], pad_id: int, micro_batch: int, rope: ModelConfig | None = None
) -> list[Batch]:
    """`items` of one step as micro-batches of at most `micro_batch` sequences each."""
    return [
        collate(items[i : i + micro_batch], pad_id, rope) for i in range(0, len(items), micro_batch)
    ]


@dataclass(slots=True)
class Batch:
    """Right-padded model inputs of several sequences.

    Attributes:
        input_ids: [B, T] int64 (pad id past each sequence's end).
        labels: [B, T] int64, IGNORE_INDEX on padding.
        pixel_values: [N, D] patches of all images in order, or None.
        image_grid_thw: [num_images, 3], or None.
        mask: [B, T] bool, True on real tokens (not padding).
        glyph_targets: [image tokens, SLOTS] what each merged image token reads (see
            synthetic.glyphs; IGNORE where unknown), or None without images.
        position_ids: [3, B, T] int64, each row's M-RoPE positions (padding continues the
            text positions), or None for the training forward to compute.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    mask: torch.Tensor
    glyph_targets: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory (DataLoader's pin-memory thread calls this)."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(
            self.input_ids.pin_memory(),
            self.labels.pin_memory(),
            pin(self.pixel_values),
            pin(self.image_grid_thw),
            self.mask.pin_memory(),
            pin(self.glyph_targets),
            pin(self.position_ids),
        )

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            move(self.pixel_values),
            move(self.image_grid_thw),
            self.mask.to(device, non_blocking=True),
            move(self.glyph_targets),
            move(self.position_ids),
        )

    @property
    def num_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate(items: list[Encoded], pad_id: int, rope: ModelConfig | None = None) -> Batch:
    """Pad `items` on the right into one batch; with `rope` (the model's config), with each
    row's M-RoPE positions too, as the training forward would compute them: about ten small CPU
    ops a row, done here by a data worker instead of the training loop's host thread."""
    T = max(e.num_tokens for e in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    labels = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.bool)
    for b, e in enumerate(items):
        ids[b, : e.num_tokens] = e.input_ids
        labels[b, : e.num_tokens] = e.labels
        mask[b, : e.num_tokens] = True
    pixels = [e.pixel_values for e in items if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in items if e.image_grid_thw is not None]
    return Batch(
        ids,
        labels,
        torch.cat(pixels) if pixels else None,
        torch.cat(grids) if grids else None,
        mask,
        _glyph_rows(items),
        None if rope is None else rope_index_rows(ids, [e.image_grid_thw for e in items], rope),
    )


def _glyph_rows(items: list[Encoded]) -> torch.Tensor | None:
    """The glyph targets of the items' images, one after the other (None without images)."""
    rows = [e.glyph_targets for e in items if e.glyph_targets is not None]
    return torch.cat(rows) if rows else None
