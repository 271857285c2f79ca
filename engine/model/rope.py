"""Multimodal rotary position embedding (M-RoPE) of Qwen2.5-VL, computed one chunk at a time.

Text tokens get one position on all three axes; image/video tokens get (t, h, w) grid positions.
``rope_index`` reproduces transformers' ``get_rope_index`` for a chunk that starts at a given text
position, so a session can be fed in pieces. The module knows nothing of states or layers.
"""

from __future__ import annotations

import logging

import torch

from engine.config import ModelConfig, TextConfig
from engine.errors import InputError
from kernels import rope

log = logging.getLogger(__name__)


def inv_freq(config: TextConfig, device: torch.device | None = None) -> torch.Tensor:
    """Rotary frequencies ``theta ** (-2i / D)``: [D / 2] float32."""
    D = config.head_dim
    exponent = torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D
    return 1.0 / (config.rope_theta**exponent)


def mrope_cos_sin(
    position_ids: torch.Tensor, config: TextConfig, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for 3-D positions, sections already picked per axis.

    Args:
        position_ids: [3, B, T] integer (t, h, w) positions.
        config: supplies ``head_dim``, ``rope_theta`` and ``mrope_section``.
        dtype: dtype of the activations the tables multiply.
    Returns:
        cos, sin: [B, T, D] in ``dtype``; the first ``mrope_section[0]`` frequencies follow t, the
        next ``mrope_section[1]`` h, the rest w (and the same for the second half of D).
    """
    freq = inv_freq(config, position_ids.device)
    # float32 whatever the activations, as transformers forces it
    freqs = position_ids.float()[..., None] * freq  # [3, B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [3, B, T, D]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    sections = list(config.mrope_section) * 2
    cos = torch.cat([c[i % 3] for i, c in enumerate(cos.split(sections, dim=-1))], dim=-1)
    sin = torch.cat([s[i % 3] for i, s in enumerate(sin.split(sections, dim=-1))], dim=-1)
    return cos, sin


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [B, H, T, D] and ``k`` [B, H_kv, T, D] by ``cos``/``sin`` [B, T, D]
    (``kernels.rope``: one Triton launch on CUDA without grad, torch elsewhere)."""
    return rope.rotate_qk(q, k, cos, sin)


def rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | list[float] | None,
    start: int,
    config: ModelConfig,
) -> tuple[torch.Tensor, int]:
    """Qwen2.5-VL's 3-D positions for one chunk of a sequence, starting at text position ``start``.

    Each run of ``image_token_id`` (``video_token_id``) takes the next row of ``image_grid_thw``
    (``video_grid_thw``), in order, and must hold exactly ``t * h * w / merge**2`` tokens. Its
    positions are (t, h, w) grid indices after merging plus the position the first pad token would
    have had as text; the text after it continues at the block's maximum + 1. A video's t index
    is ``t * int(second_per_grid_t) * tokens_per_second`` (transformers casts seconds to int).

    Args:
        input_ids: [T] token ids of this chunk.
        image_grid_thw: [n_images, 3] (t, h, w) in patches for the images of this chunk, or None.
        video_grid_thw: [n_videos, 3] for the videos of this chunk, or None.
        second_per_grid_ts: [n_videos] seconds per temporal grid step (default 1.0 each).
        start: the text position of the chunk's first token (``ModelState.position``).
        config: the model config (token ids, merge size, tokens per second).
    Returns:
        position_ids: [3, T] int64 on the device of ``input_ids``.
        next_start: the position the token after this chunk gets.
    """
    if input_ids.dim() != 1:
        raise InputError(f"rope_index takes one sequence [T], got shape {list(input_ids.shape)}")
    T = input_ids.shape[0]
    device = input_ids.device
    grids = {
        config.image_token_id: _rows(image_grid_thw, "image_grid_thw"),
        config.video_token_id: _rows(video_grid_thw, "video_grid_thw"),
    }
    if not grids[config.image_token_id] and not grids[config.video_token_id]:
        pos = torch.arange(start, start + T, device=device)
        _check_no_pads(input_ids, config)
        return pos.expand(3, T).clone(), start + T
    seconds = _seconds(second_per_grid_ts, len(grids[config.video_token_id]))
    used = {config.image_token_id: 0, config.video_token_id: 0}
    tokens = input_ids.tolist()
    merge = config.vision.spatial_merge_size
    pieces: list[torch.Tensor] = []
    next_pos, i = start, 0
    while i < T:
        tok = tokens[i]
        if tok not in grids:
            j = i
            while j < T and tokens[j] not in grids:
                j += 1
            pieces.append(torch.arange(next_pos, next_pos + j - i).expand(3, j - i))
            next_pos += j - i
            i = j
            continue
        kind = "image" if tok == config.image_token_id else "video"
        n = used[tok]
        if n >= len(grids[tok]):
            raise InputError(
                f"{kind} pad tokens at index {i} but only {len(grids[tok])} {kind} grid(s) given"
            )
        t, h, w = grids[tok][n]
        used[tok] += 1
        gh, gw = h // merge, w // merge
        count = t * gh * gw
        if tokens[i : i + count] != [tok] * count or (i + count < T and tokens[i + count] == tok):
            have = _run_length(tokens, i, tok)
            raise InputError(
                f"{kind} {n} with grid_thw {[t, h, w]} needs {count} pad tokens from index {i}, "
                f"found a run of {have} (an image's pad tokens must all be in one chunk)"
            )
        sec = int(seconds[n]) if tok == config.video_token_id else 0
        t_index = (torch.arange(t) * sec * config.vision.tokens_per_second).long()
        block = torch.stack(
            [
                t_index.view(-1, 1).expand(t, gh * gw).flatten(),
                torch.arange(gh).view(1, -1, 1).expand(t, gh, gw).flatten(),
                torch.arange(gw).view(1, 1, -1).expand(t, gh, gw).flatten(),
            ]
        )
        block = block + next_pos
        pieces.append(block)
        next_pos = int(block.max()) + 1
        i += count
    for tok, rows in grids.items():
        if used[tok] != len(rows):
            kind = "image" if tok == config.image_token_id else "video"
            raise InputError(
                f"{len(rows)} {kind} grid(s) given but the chunk holds {used[tok]} {kind} block(s)"
            )
    return torch.cat(pieces, dim=1).to(device), next_pos


def rope_index_rows(
    input_ids: torch.Tensor, grids: list[torch.Tensor | None], config: ModelConfig
) -> torch.Tensor:
    """``rope_index`` of each row of a right-padded batch, each from position 0 (training rows).

    Args:
        input_ids: [B, T] on the CPU.  grids: each row's image_grid_thw ([n, 3]) or None.
    Returns:
        [3, B, T] int64.
    """
    rows = [rope_index(input_ids[b], grids[b], None, None, 0, config)[0] for b in range(len(grids))]
    return torch.stack(rows, dim=1)


def _rows(grid: torch.Tensor | None, name: str) -> list[tuple[int, int, int]]:
    if grid is None:
        return []
    if grid.dim() != 2 or grid.shape[1] != 3:
        raise InputError(f"{name} must be [n, 3], got shape {list(grid.shape)}")
    rows = [tuple(int(x) for x in r) for r in grid.tolist()]
    bad = [r for r in rows if min(r) <= 0]
    if bad:
        raise InputError(f"{name} has non-positive entries {bad}")
    return rows  # type: ignore[return-value]


def _seconds(second_per_grid_ts: torch.Tensor | list[float] | None, n: int) -> list[float]:
    if second_per_grid_ts is None:
        return [1.0] * n
    seconds = [float(s) for s in (torch.as_tensor(second_per_grid_ts).flatten().tolist())]
    if len(seconds) != n:
        raise InputError(f"{len(seconds)} second_per_grid_ts for {n} video(s)")
    return seconds


def _run_length(tokens: list[int], i: int, tok: int) -> int:
    j = i
    while j < len(tokens) and tokens[j] == tok:
        j += 1
    return j - i


def _check_no_pads(input_ids: torch.Tensor, config: ModelConfig) -> None:
    pads = (input_ids == config.image_token_id) | (input_ids == config.video_token_id)
    if bool(pads.any()):
        first = int(pads.nonzero()[0, 0])
        raise InputError(f"image/video pad token at index {first} but no grid_thw given")
