"""Multimodal RoPE: chunked 3-D positions equal transformers' get_rope_index on the whole input."""

from types import SimpleNamespace

import pytest
import torch

try:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLModel,
        Qwen2_5_VLRotaryEmbedding,
        apply_multimodal_rotary_pos_emb,
    )
except ImportError as e:  # transformers 5 moved these; the test extra pins transformers < 5
    pytest.skip(f"the reference RoPE of transformers < 5 is needed: {e}", allow_module_level=True)

from engine.config import tiny_config
from engine.errors import InputError
from engine.model.rope import apply_rotary, mrope_cos_sin, rope_index

CFG = tiny_config()
IMG, VID = CFG.image_token_id, CFG.video_token_id
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id


def _hf_rope_index(ids, image_grid_thw, video_grid_thw, second_per_grid_ts):
    hf_config = SimpleNamespace(
        image_token_id=IMG,
        video_token_id=VID,
        vision_start_token_id=VS,
        vision_config=SimpleNamespace(
            spatial_merge_size=CFG.vision.spatial_merge_size,
            tokens_per_second=CFG.vision.tokens_per_second,
        ),
    )
    pos, _ = Qwen2_5_VLModel.get_rope_index(
        SimpleNamespace(config=hf_config),
        ids[None],
        image_grid_thw,
        video_grid_thw,
        second_per_grid_ts,
    )
    return pos[:, 0]


def _sequence():
    """text + image 1x4x6 (6 tokens) + text + video 3x4x4 (12 tokens) + image 1x2x2 + text."""
    g = torch.Generator().manual_seed(0)

    def text(n):
        return torch.randint(0, 200, (n,), generator=g).tolist()

    ids = (
        text(5)
        + [VS] + [IMG] * 6 + [VE]
        + text(3)
        + [VS] + [VID] * 12 + [VE]
        + text(2)
        + [VS] + [IMG] * 1 + [VE]
        + text(4)
    )  # fmt: skip
    image_grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    video_grid = torch.tensor([[3, 4, 4]])
    return torch.tensor(ids), image_grid, video_grid


@pytest.mark.parametrize("seconds", [None, [2.0], [0.5]], ids=["default", "2s", "half_s"])
@pytest.mark.parametrize("cuts", [(), (3, 6, 12, 14, 17, 29, 33, 36)], ids=["whole", "pieces"])
def test_rope_index_matches_transformers(cuts, seconds):
    ids, image_grid, video_grid = _sequence()
    sec = torch.tensor(seconds) if seconds is not None else None
    expected = _hf_rope_index(ids, image_grid, video_grid, sec)

    # cut only between blocks so that an image's pad tokens stay in one chunk
    bounds = [0, *cuts, len(ids)]
    got, start, used_img, used_vid = [], 0, 0, 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = ids[a:b]
        n_img = int(((chunk == IMG) & (torch.roll(ids, 1)[a:b] != IMG)).sum())
        n_vid = int(((chunk == VID) & (torch.roll(ids, 1)[a:b] != VID)).sum())
        pos, start = rope_index(
            chunk,
            image_grid[used_img : used_img + n_img] if n_img else None,
            video_grid[used_vid : used_vid + n_vid] if n_vid else None,
            sec[used_vid : used_vid + n_vid] if (sec is not None and n_vid) else None,
            start,
            CFG,
        )
        used_img, used_vid = used_img + n_img, used_vid + n_vid
        got.append(pos)
    got = torch.cat(got, dim=1)
    assert torch.equal(got, expected), f"first difference at {(got != expected).nonzero()[:3]}"
    assert start == int(expected.max()) + 1


def test_rope_index_text_only_continues_from_start():
    pos, nxt = rope_index(torch.tensor([1, 2, 3]), None, None, None, 17, CFG)
    assert pos.tolist() == [[17, 18, 19]] * 3
    assert nxt == 20


def test_rope_index_rejects_split_image_and_missing_grids():
    ids, image_grid, video_grid = _sequence()
    with pytest.raises(InputError, match="needs 6 pad tokens"):
        rope_index(ids[:9], image_grid[:1], None, None, 0, CFG)
    with pytest.raises(InputError, match="no grid_thw"):
        rope_index(ids[:12], None, None, None, 0, CFG)
    with pytest.raises(InputError, match="2 image grid"):
        rope_index(ids[:13], image_grid, None, None, 0, CFG)


def test_mrope_matches_transformers_apply():
    hf_text = SimpleNamespace(
        rope_scaling={"mrope_section": list(CFG.text.mrope_section), "rope_type": "default"},
        max_position_embeddings=1024,
        rope_theta=CFG.text.rope_theta,
        head_dim=CFG.text.head_dim,
        hidden_size=CFG.text.hidden_size,
        num_attention_heads=CFG.text.num_attention_heads,
        partial_rotary_factor=1.0,
    )
    rotary = Qwen2_5_VLRotaryEmbedding(hf_text)
    ids, image_grid, video_grid = _sequence()
    pos = _hf_rope_index(ids, image_grid, video_grid, None)[:, None]  # [3, 1, T]
    q = torch.randn(1, 4, ids.shape[0], CFG.text.head_dim)
    k = torch.randn(1, 2, ids.shape[0], CFG.text.head_dim)
    cos, sin = rotary(q, pos)
    q_ref, k_ref = apply_multimodal_rotary_pos_emb(q, k, cos, sin, list(CFG.text.mrope_section))
    q_out, k_out = apply_rotary(q, k, *mrope_cos_sin(pos, CFG.text, q.dtype))
    torch.testing.assert_close(q_out, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_out, k_ref, rtol=1e-6, atol=1e-6)
