"""DESIGN.md's session invariants on a tiny hybrid model (2 Gated DeltaNet + 2 SWA, window 8).

1. One piece or many pieces (down to single-token decode) give the same logits.
2. Save -> load -> continue gives the same greedy tokens as never stopping.
3. The state's size after 10x the window equals its size after 1x; a clone is independent.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import tiny_config
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.state import ModelState

CFG = tiny_config()  # sliding, linear, sliding, linear; window 8
W = CFG.text.sliding_window
IMG, VS, VE = CFG.image_token_id, CFG.vision_start_token_id, CFG.vision_end_token_id


def _build(config) -> InfiniteVLForConditionalGeneration:
    torch.manual_seed(0)
    m = InfiniteVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # a realistic scale for the embedding, so logits are O(1..10) and argmax is stable
        m.model.language_model.embed_tokens.weight.mul_(0.3)
    return m


@pytest.fixture(scope="module")
def model() -> InfiniteVLForConditionalGeneration:
    return _build(CFG)


@pytest.fixture(scope="module")
def untied() -> InfiniteVLForConditionalGeneration:
    # a random tied model mostly predicts the token it just read; untied ones wander
    return _build(tiny_config(tie_word_embeddings=False))


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 200, (1, n), generator=torch.Generator().manual_seed(seed))


def _rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param((1, 2, 3), id="first-tokens-one-by-one"),
        pytest.param((5, 13, 14, 30), id="pieces-shorter-and-longer-than-window"),
        pytest.param(tuple(range(20, 47)), id="prefill-then-decode"),
        pytest.param(tuple(range(1, 47)), id="all-decode"),
    ],
)
def test_pieces_equal_one_piece(model, cuts):
    ids = _tokens(47, seed=1)
    with torch.no_grad():
        whole = model(ids, model.new_state())
        state = model.new_state()
        bounds = [0, *cuts, ids.shape[1]]
        parts = [model(ids[:, a:b], state) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert _rel_err(whole, torch.cat(parts, dim=1)) < 1e-5
    assert state.tokens_seen == 47 and state.position == 47


def test_pieces_equal_one_piece_with_image(model):
    # an image of 1x4x6 patches (6 tokens) in the middle of 40+ tokens of text
    text = _tokens(40, seed=2)[0].tolist()
    ids = torch.tensor([text[:20] + [VS] + [IMG] * 6 + [VE] + text[20:]])
    patch = CFG.vision.in_channels * CFG.vision.temporal_patch_size * CFG.vision.patch_size**2
    image = dict(
        pixel_values=torch.randn(24, patch, generator=torch.Generator().manual_seed(3)),
        image_grid_thw=torch.tensor([[1, 4, 6]]),
    )
    with torch.no_grad():
        whole = model(ids, model.new_state(), **image)
        state = model.new_state()
        parts = [model(ids[:, :18], state), model(ids[:, 18:30], state, **image)]
        parts += [model(ids[:, t : t + 1], state) for t in range(30, ids.shape[1])]
    assert _rel_err(whole, torch.cat(parts, dim=1)) < 1e-5
    assert state.position == ids.shape[1] - 3  # 6 pad tokens on a 2x3 grid span 3 positions


def _greedy(
    model, state: ModelState, logits: torch.Tensor, n: int
) -> tuple[list[int], torch.Tensor]:
    """Feed ``n`` greedy tokens; returns them and the logits after the last one."""
    out = []
    for _ in range(n):
        token = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        out.append(int(token))
        logits = model(token, state)
    return out, logits


def test_save_load_continue_equals_uninterrupted(untied, tmp_path):
    model = untied
    prompt = _tokens(3 * W + 5, seed=4)
    fingerprint = CFG.fingerprint()
    with torch.no_grad():
        state = model.new_state()
        expected, _ = _greedy(model, state, model(prompt, state), 24)

        state = model.new_state()
        first, logits = _greedy(model, state, model(prompt, state), 10)
        state.save(tmp_path / "session.safetensors", fingerprint)
        del state
        restored = ModelState.load(tmp_path / "session.safetensors", fingerprint, CFG.text)
        rest, _ = _greedy(model, restored, logits, 14)
    assert len(set(expected)) > 5, f"degenerate reference generation {expected}"
    assert first + rest == expected
    assert restored.tokens_seen == prompt.shape[1] + 24


def test_state_size_is_flat_and_clone_is_independent(model):
    ids = _tokens(10 * W, seed=5)
    with torch.no_grad():
        state = model.new_state()
        empty_bytes = state.nbytes()
        model(ids[:, :W], state)
        after_1x = state.nbytes()
        model(ids[:, W:], state)
        after_10x = state.nbytes()
        assert empty_bytes == after_1x == after_10x

        fork = state.clone()
        saved = [t.clone() for st in state.layers for t in st.tensors().values()]
        model(_tokens(13, seed=6), fork)  # a side question on the fork
        now = [t for st in state.layers for t in st.tensors().values()]
        assert all(torch.equal(a, b) for a, b in zip(saved, now, strict=True))
        assert (state.tokens_seen, state.position) == (10 * W, 10 * W)
        assert fork.tokens_seen == 10 * W + 13
        # the original still continues exactly as an untouched copy would
        twin = state.clone()
        nxt = _tokens(4, seed=7)
        assert torch.equal(model(nxt, state), model(nxt, twin))


def test_prefill_is_differentiable_and_state_holds_no_graph():
    model = _build(CFG).train()
    ids = _tokens(2 * W + 3, seed=8)
    state = model.new_state()
    # two pieces with grad (the second reads what the first left in the state), then one token
    logits = torch.cat(
        [model(ids[:, :W], state), model(ids[:, W:-1], state), model(ids[:, -1:], state)], dim=1
    )
    logits.logsumexp(-1).mean().backward()
    for name, p in model.model.language_model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
    for st in state.layers:
        assert all(not t.requires_grad for t in st.tensors().values())
    # the state keeps working after backward, and matches a no-grad run of the same pieces
    with torch.no_grad():
        after = model(ids[:, :2], state)
        ref_state = model.new_state()
        model(ids, ref_state)
        assert _rel_err(model(ids[:, :2], ref_state), after) < 1e-5


def test_bfloat16_model_runs_in_pieces_and_tracks_float32():
    model = _build(CFG)
    ids = _tokens(3 * W, seed=9)
    with torch.no_grad():
        reference = model(ids, model.new_state())
        model.to_dtype(torch.bfloat16)
        state = model.new_state()
        assert state.layers[0].k.dtype == torch.bfloat16
        assert state.layers[1].S.dtype == torch.float32
        whole = model(ids, model.new_state())
        parts = [model(ids[:, :10], state)]
        parts += [model(ids[:, t : t + 1], state) for t in range(10, 24)]
    assert whole.dtype == torch.float32
    assert _rel_err(whole, torch.cat(parts, dim=1)) < 2e-2
    assert _rel_err(reference, whole) < 5e-2
