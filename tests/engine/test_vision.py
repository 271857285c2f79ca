"""The vision tower against transformers' Qwen2.5-VL tower, with the same random weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.config import VisionConfig, tiny_config
from engine.errors import ConfigError, InputError
from engine.model.vision import (
    MAX_EXACT_GROUPS,
    Segments,
    VisionTransformer,
    block_diagonal_attention,
    vision_layout,
)

transformers_vl = pytest.importorskip("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
Qwen2_5_VLVisionConfig = transformers_vl.Qwen2_5_VLVisionConfig


def _reference(config: VisionConfig) -> torch.nn.Module:
    hf_config = Qwen2_5_VLVisionConfig(
        **{k: v for k, v in config.to_hf().items() if k != "tokens_per_second"}
    )
    hf_config._attn_implementation = "sdpa"
    return transformers_vl.Qwen2_5_VisionTransformerPretrainedModel(hf_config).eval()


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of a realistic scale (norms around 1, not exactly 1) so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)


def _pair(config: VisionConfig, seed: int = 0) -> tuple[VisionTransformer, torch.nn.Module]:
    ref = _reference(config)
    _randomize(ref, seed)
    ours = VisionTransformer(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _inputs(config: VisionConfig, grids: list[tuple[int, int, int]]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, dim, generator=gen), torch.tensor(grids, dtype=torch.long)


def _merged(output: object) -> torch.Tensor:
    """The merger's output: transformers 5 wraps it in a ModelOutput as ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


DEPTH4 = dataclasses.replace(
    tiny_config().vision, depth=4, window_size=112, fullatt_block_indexes=(1, 3)
)


@pytest.mark.parametrize(
    ("config", "grids"),
    [
        # 4x6 and 3x5 merge units with 2x2-unit windows: full and partial windows, two images
        pytest.param(tiny_config().vision, [(1, 8, 12), (1, 6, 10)], id="tiny-two-images"),
        # two temporal patches: full attention stays within each frame
        pytest.param(tiny_config().vision, [(2, 4, 6), (1, 2, 2)], id="tiny-video"),
        # 18x26 units in 4x4-unit windows (5x7 windows, partial at the edges), depth 4
        pytest.param(DEPTH4, [(1, 36, 52), (1, 10, 4)], id="depth4-many-windows"),
    ],
)
def test_forward_matches_transformers(config: VisionConfig, grids: list) -> None:
    ours, ref = _pair(config)
    pixel_values, grid_thw = _inputs(config, grids)
    with torch.no_grad():
        expected = _merged(ref(pixel_values, grid_thw))
        out = ours(pixel_values, grid_thw)
    assert out.shape == (pixel_values.shape[0] // 4, config.out_hidden_size)
    assert _rel_err(expected, out) < 1e-4


def test_images_are_independent() -> None:
    # GIVEN two images encoded in one call WHEN each is encoded alone THEN the rows agree
    config = tiny_config().vision
    ours, _ = _pair(config)
    pixel_values, grid_thw = _inputs(config, [(1, 8, 12), (1, 6, 10)])
    with torch.no_grad():
        both = ours(pixel_values, grid_thw)
        first = ours(pixel_values[: 8 * 12], grid_thw[:1])
        second = ours(pixel_values[8 * 12 :], grid_thw[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-5)


def test_builds_on_meta_device() -> None:
    # the published 4B vision tower: names and shapes without allocating a byte
    config = dataclasses.replace(
        tiny_config().vision,
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        window_size=112,
        fullatt_block_indexes=(7, 15, 23, 31),
        out_hidden_size=2048,
    )
    with torch.device("meta"):
        model = VisionTransformer(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (1280, 3, 2, 14, 14)
    assert shapes["blocks.31.attn.qkv.weight"] == (3840, 1280)
    assert shapes["blocks.0.mlp.down_proj.bias"] == (1280,)
    assert shapes["merger.mlp.0.weight"] == (5120, 5120)
    assert shapes["merger.mlp.2.weight"] == (2048, 5120)
    assert len(shapes) == 1 + 32 * 12 + 5
    # a forward on meta tensors checks the shape plumbing of the real size
    pixel_values = torch.empty(2 * 16 * 20, 3 * 2 * 14 * 14, device="meta")
    out = model(pixel_values, torch.tensor([[2, 16, 20]]))
    assert out.shape == (2 * 16 * 20 // 4, 2048)


def test_bfloat16_runs() -> None:
    config = tiny_config().vision
    ours, _ = _pair(config)
    pixel_values, grid_thw = _inputs(config, [(1, 8, 12), (1, 6, 10)])
    with torch.no_grad():
        expected = ours(pixel_values, grid_thw)
        out = ours.to(torch.bfloat16)(pixel_values, grid_thw)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert _rel_err(expected, out) < 5e-2


def test_backward_reaches_every_weight() -> None:
    config = tiny_config().vision
    ours, _ = _pair(config)
    pixel_values, grid_thw = _inputs(config, [(1, 8, 12), (1, 6, 10)])
    ours(pixel_values, grid_thw).square().mean().backward()
    missing = [n for n, p in ours.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_block_diagonal_attention_matches_masked_attention() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 5, 0, 3, 1, 5]
    N, H, D = sum(lengths), 2, 8
    q, k, v = (torch.randn(N, H, D, generator=gen) for _ in range(3))
    qkv = torch.stack((q, k, v), dim=1)  # [N, 3, H, D]
    out = block_diagonal_attention(qkv, Segments.from_lengths(lengths, q.device))
    block = torch.repeat_interleave(
        torch.arange(len(lengths)), torch.tensor(lengths)
    )  # [N] block id of each row
    mask = block[:, None] == block[None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    torch.testing.assert_close(out, expected.transpose(0, 1).reshape(N, H * D))


def _per_block_attention(qkv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Each block on its own SDPA call: the ground truth of block-diagonal attention."""
    outs, start = [], 0
    for n in (n for n in lengths if n > 0):
        q, k, v = qkv[start : start + n].permute(1, 2, 0, 3).unbind(0)  # [H, n, D] each
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1))
        start += n
    return torch.cat(outs).reshape(qkv.shape[0], -1)


def test_block_diagonal_attention_pads_many_lengths_into_few_calls() -> None:
    # a training batch of images of many sizes: more distinct lengths than MAX_EXACT_GROUPS
    gen = torch.Generator().manual_seed(1)
    lengths = [4, 17, 0, 9, 33, 5, 12, 64, 7, 21, 4, 2, 48, 10, 1, 30]
    assert len(set(lengths) - {0}) > MAX_EXACT_GROUPS
    N, H, D = sum(lengths), 2, 8
    qkv = torch.randn(N, 3, H, D, generator=gen, requires_grad=True)
    segments = Segments.from_lengths(lengths, qkv.device)
    assert len(segments.groups) < len(set(lengths) - {0})
    assert any(k is not None for k in segments.keep)
    out = block_diagonal_attention(qkv, segments)
    (grad,) = torch.autograd.grad(out.square().sum(), qkv)
    ref_qkv = qkv.detach().requires_grad_()
    expected = _per_block_attention(ref_qkv, lengths)
    (ref_grad,) = torch.autograd.grad(expected.square().sum(), ref_qkv)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, ref_grad)


def test_block_diagonal_attention_keeps_exact_groups_for_few_lengths() -> None:
    # one image (a streamed frame): every group is unpadded, so no mask reaches SDPA
    segments = Segments.from_lengths([16, 16, 8, 16, 8, 4], torch.device("cpu"))
    assert [tuple(g.shape) for g in segments.groups] == [(3, 16), (2, 8), (1, 4)]
    assert segments.keep == [None, None, None]


def test_a_frames_windows_are_read_in_place() -> None:
    # a streamed frame: equal windows end to end, so no gather before SDPA nor after it
    gen = torch.Generator().manual_seed(2)
    lengths = [16, 16, 16, 16]
    qkv = torch.randn(64, 3, 2, 8, generator=gen)
    segments = Segments.from_lengths(lengths, qkv.device)
    assert segments.spans == [0] and segments.in_order
    torch.testing.assert_close(
        block_diagonal_attention(qkv, segments), _per_block_attention(qkv, lengths)
    )
    # equal blocks apart from each other (a shorter one between) are gathered, then restored
    mixed = Segments.from_lengths([16, 8, 16], qkv.device)
    assert mixed.spans == [None, 16] and not mixed.in_order
    torch.testing.assert_close(
        block_diagonal_attention(qkv[:40], mixed), _per_block_attention(qkv[:40], [16, 8, 16])
    )


def test_layout_windows_cover_each_image() -> None:
    config = tiny_config().vision
    layout = vision_layout([(1, 6, 10)], config, torch.device("cpu"))
    # 3x5 merge units in 2x2-unit windows: 2x3 windows of 4, 4, 2 / 2, 2, 1 units
    sizes = sorted(n for g in layout.windows.groups for n in [g.shape[1]] * g.shape[0])
    assert sizes == sorted(4 * u for u in [4, 4, 2, 2, 2, 1])
    assert sorted(layout.window_index.tolist()) == list(range(15))


@pytest.mark.parametrize(
    ("pixels", "grid", "match"),
    [
        pytest.param((96, 1176), [[1, 8, 11]], "multiples", id="odd-width"),
        pytest.param((95, 1176), [[1, 8, 12]], "pixel_values must be", id="row-count"),
        pytest.param((96, 1000), [[1, 8, 12]], "pixel_values must be", id="patch-dim"),
        pytest.param((96, 1176), [[8, 12]], "grid_thw must be", id="grid-shape"),
    ],
)
def test_bad_inputs_raise(pixels: tuple[int, int], grid: list, match: str) -> None:
    model = VisionTransformer(tiny_config().vision)
    with pytest.raises(InputError, match=match):
        model(torch.zeros(pixels), torch.tensor(grid))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    # the CPU path is the one checked against transformers; CUDA must agree with it
    ours, _ = _pair(DEPTH4)
    pixel_values, grid_thw = _inputs(DEPTH4, [(1, 36, 52), (2, 8, 12)])
    with torch.no_grad():
        expected = ours(pixel_values, grid_thw)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # the Conv3d patch embedding, exactly
        try:
            cuda = ours.cuda()
            out = cuda(pixel_values.cuda(), grid_thw.cuda())
            out_bf16 = cuda.to(torch.bfloat16)(pixel_values.cuda(), grid_thw)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
    assert out.device.type == "cuda"
    assert _rel_err(expected, out.cpu()) < 1e-4
    assert out_bf16.dtype == torch.bfloat16
    assert _rel_err(expected, out_bf16.float().cpu()) < 5e-2


def test_window_smaller_than_a_merge_unit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="window_size 14"):
        VisionTransformer(dataclasses.replace(tiny_config().vision, window_size=14))


def test_patch_embed_is_the_published_conv3d() -> None:
    from engine.config import ModelConfig
    from engine.model.vision import PatchEmbed

    # GIVEN the 4B vision tower's patch embedding (Conv3d, kernel = stride = one 2x14x14 patch)
    reference = Path(__file__).resolve().parents[1] / "reference"
    config = ModelConfig.from_file(reference / "infinitevl-4b.config.json").vision
    torch.manual_seed(0)
    embed = PatchEmbed(config)
    patches = torch.randn(37, embed.proj.weight[0].numel())
    # WHEN patches are embedded THEN the product equals the convolution of the published weight
    conv = embed.proj(patches.reshape(-1, config.in_channels, *embed.kernel)).reshape(37, -1)
    torch.testing.assert_close(embed(patches), conv, rtol=1e-5, atol=1e-5)
