"""With the same random weights, a full-attention model equals transformers' Qwen2.5-VL (float32).

Covers text only, an image and a video in one prompt, feeding in pieces with token-by-token decode
(the growing full-attention cache), and the per-layer hidden states.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig, tiny_config
from engine.errors import InputError
from engine.model.infinitevl import InfiniteVLForConditionalGeneration

transformers = pytest.importorskip("transformers")

CFG = tiny_config(("full_attention",) * 3, tie_word_embeddings=False)
IMG, VID = CFG.image_token_id, CFG.video_token_id
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of a realistic scale (norms near 1, projections ~1/sqrt(fan_in))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)


def _pair(config: ModelConfig = CFG, seed: int = 0):
    hf_config = transformers.Qwen2_5_VLConfig(**config.to_hf())
    hf_config._attn_implementation = "sdpa"
    ref = transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()
    _randomize(ref, seed)
    ours = InfiniteVLForConditionalGeneration(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _multimodal_prompt():
    """text, an image of 1x4x6 patches (6 tokens), text, a video of 2x4x4 (8 tokens), text."""
    gen = torch.Generator().manual_seed(3)
    text = lambda n: torch.randint(0, 200, (n,), generator=gen).tolist()  # noqa: E731
    ids = text(4) + [VS] + [IMG] * 6 + [VE] + text(3) + [VS] + [VID] * 8 + [VE] + text(5)
    patch = CFG.vision.in_channels * CFG.vision.temporal_patch_size * CFG.vision.patch_size**2
    image_grid = torch.tensor([[1, 4, 6]])
    video_grid = torch.tensor([[2, 4, 4]])
    return dict(
        input_ids=torch.tensor([ids]),
        pixel_values=torch.randn(24, patch, generator=gen),
        image_grid_thw=image_grid,
        pixel_values_videos=torch.randn(32, patch, generator=gen),
        video_grid_thw=video_grid,
        second_per_grid_ts=torch.tensor([2.0]),
    )


def test_forward_text_only_matches_transformers():
    ours, ref = _pair()
    ids = torch.randint(0, 200, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        out = ours(ids, ours.new_state(batch=2))
    assert out.dtype == torch.float32
    assert _rel_err(expected, out) < 1e-4


def test_forward_image_and_video_matches_transformers():
    ours, ref = _pair()
    inputs = _multimodal_prompt()
    with torch.no_grad():
        expected = ref(**inputs).logits
        state = ours.new_state()
        out = ours(inputs.pop("input_ids"), state, **inputs)
    assert _rel_err(expected, out) < 1e-4
    # the image's 6 tokens span 3 positions (2x3 grid), the video's 8 span 5 (t index 0, 4)
    assert state.tokens_seen == 30 and state.position == 30 - 6 + 3 - 8 + 5


def test_pieces_and_decode_match_transformers_whole():
    ours, ref = _pair()
    inputs = _multimodal_prompt()
    ids = inputs["input_ids"]
    with torch.no_grad():
        expected = ref(**inputs).logits
        state = ours.new_state()
        # piece 1 holds the image, piece 2 the video, then one token at a time
        pieces = [
            ours(ids[:, :12], state, pixel_values=inputs["pixel_values"],
                 image_grid_thw=inputs["image_grid_thw"]),
            ours(ids[:, 12:25], state, pixel_values_videos=inputs["pixel_values_videos"],
                 video_grid_thw=inputs["video_grid_thw"],
                 second_per_grid_ts=inputs["second_per_grid_ts"]),
        ] + [ours(ids[:, t : t + 1], state) for t in range(25, ids.shape[1])]  # fmt: skip
    out = torch.cat(pieces, dim=1)
    assert _rel_err(expected, out) < 1e-4


def test_hidden_states_and_logits_to_keep_match_transformers():
    ours, ref = _pair()
    ids = torch.randint(0, 200, (1, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(input_ids=ids, output_hidden_states=True)
        logits, hidden = ours(ids, ours.new_state(), logits_to_keep=3, return_hidden=True)
    assert logits.shape == (1, 3, CFG.text.vocab_size)
    assert _rel_err(expected.logits[:, -3:], logits) < 1e-4
    assert len(hidden) == CFG.text.num_hidden_layers + 1
    # transformers' last entry is after the final norm; the others are the same residual stream
    for i in range(CFG.text.num_hidden_layers):
        assert _rel_err(expected.hidden_states[i], hidden[i]) < 1e-4, f"hidden state {i}"


def test_forward_rejects_mismatched_vision_inputs():
    ours, _ = _pair()
    inputs = _multimodal_prompt()
    ids = inputs["input_ids"]
    state = ours.new_state()
    with torch.no_grad():
        with pytest.raises(InputError, match="no image pixel values|no grid_thw"):
            ours(ids[:, :12], state)
        with pytest.raises(InputError, match="needs 4 pad tokens from index 5, found a run of 6"):
            ours(ids[:, :12], state, pixel_values=inputs["pixel_values"][:16],
                 image_grid_thw=torch.tensor([[1, 4, 4]]))  # fmt: skip
        with pytest.raises(InputError, match="pixel_values must be"):
            ours(ids[:, :12], state, pixel_values=inputs["pixel_values"][:16],
                 image_grid_thw=inputs["image_grid_thw"])  # fmt: skip
        with pytest.raises(InputError, match=r"token ids must be in \[0, 256\)"):
            ours(torch.tensor([[5, 256]]), state)
    # a rejected call leaves the state untouched
    assert state.tokens_seen == 0 and state.position == 0


def _gated_deltanet_formula(layer, x: torch.Tensor) -> torch.Tensor:
    """shared/reference/README.md's Gated DeltaNet, token by token in float64, from zero state."""
    from torch.nn.functional import conv1d, silu, softplus

    p = {n: t.detach().double() for n, t in layer.named_parameters()}
    x = x.double()
    B, T, _ = x.shape
    H, K, V = layer.num_heads, layer.head_k_dim, layer.head_v_dim

    def conv(w_proj, w_conv):
        u = (x @ w_proj.T).transpose(1, 2)  # [B, C, T]
        u = torch.nn.functional.pad(u, (w_conv.shape[-1] - 1, 0))
        return silu(conv1d(u, w_conv, groups=w_conv.shape[0])).transpose(1, 2)

    def l2(t):
        return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6)

    q = l2(conv(p["q_proj.weight"], p["q_conv1d.weight"]).view(B, T, H, K)) * K**-0.5
    k = l2(conv(p["k_proj.weight"], p["k_conv1d.weight"]).view(B, T, H, K))
    v = conv(p["v_proj.weight"], p["v_conv1d.weight"]).view(B, T, H, V)
    beta = torch.sigmoid(x @ p["b_proj.weight"].T)
    g = -p["A_log"].exp() * softplus(x @ p["a_proj.weight"].T + p["dt_bias"])
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    o = torch.empty(B, T, H, V, dtype=torch.float64)
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        err = v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * err)
        o[:, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, t])
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps) * p["o_norm.weight"]
    o = o * silu((x @ p["g_proj.weight"].T).view(B, T, H, V))
    return o.reshape(B, T, H * V) @ p["o_proj.weight"].T


@pytest.mark.parametrize("pieces", [(23,), (1, 1, 5, 16)], ids=["one-piece", "pieces-and-steps"])
@pytest.mark.parametrize("expand_v", [2, 1.5])  # InfiniteVL's config types it float
def test_gated_deltanet_matches_published_formula(pieces, expand_v):
    from engine.model.gated_deltanet import GatedDeltaNet
    from engine.state import ModelState

    config = ModelConfig.from_hf(
        {**tiny_config(("linear_attention",)).to_hf(), "expand_v": expand_v}
    )
    assert config.text.linear_value_head_dim == 16 * expand_v
    torch.manual_seed(0)
    layer = GatedDeltaNet(config.text).eval()
    with torch.no_grad():
        layer.o_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, sum(pieces), config.text.hidden_size)
    expected = _gated_deltanet_formula(layer, x)
    state = ModelState.new(config.text, batch=2).layers[0]
    outs, start = [], 0
    with torch.no_grad():
        for n in pieces:
            outs.append(layer(x[:, start : start + n], state))
            start += n
    assert _rel_err(expected, torch.cat(outs, dim=1)) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("T", [40, 200], ids=["recurrent-mode", "chunk-mode"])
def test_gated_deltanet_matches_fla_layer(T):
    """Our layer == flash-linear-attention's GatedDeltaNet (what InfiniteVL runs), same weights.

    fla's Triton kernels multiply in TF32, hence the 2e-3 bound in float32.
    """
    if not torch.cuda.is_available():
        pytest.skip("fla's kernels need CUDA")
    fla_layers = pytest.importorskip("fla.layers.gated_deltanet")
    from engine.model.gated_deltanet import GatedDeltaNet
    from engine.state import ModelState

    raw = tiny_config(("linear_attention",)).to_hf()
    raw.update(
        hidden_size=512, num_linear_heads=4, num_linear_key_value_heads=4, linear_head_dim=128
    )
    raw.update(num_attention_heads=8, rope_scaling={"mrope_section": [8, 12, 12]})
    raw["vision_config"]["out_hidden_size"] = 512
    config = ModelConfig.from_hf(raw).text
    torch.manual_seed(0)
    ref = fla_layers.GatedDeltaNet(
        hidden_size=512, expand_v=2, head_dim=128, num_heads=4, norm_eps=1e-5, layer_idx=0
    )
    with torch.no_grad():
        ref.o_norm.weight.uniform_(0.5, 1.5)
    ours = GatedDeltaNet(config)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref, ours = ref.cuda().eval(), ours.cuda().eval()
    x = torch.randn(2, T, 512, device="cuda")
    with torch.no_grad():
        expected = ref(x)[0]
        state = ModelState.new(config, batch=2, device="cuda").layers[0]
        out = torch.cat(
            [ours(x[:, : T // 2], state)]
            + [ours(x[:, t : t + 1], state) for t in range(T // 2, T)],
            1,
        )
    assert _rel_err(expected, out) < 2e-3
