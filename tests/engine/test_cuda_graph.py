"""The static decode and frame steps (engine.cuda_graph) against the model's own forward.

Unmarked tests run the static steps eagerly on the CPU (same code as the graph body); ``gpu``
tests capture real CUDA graphs and compare them with eager runs over 200+ tokens across the
sliding window's wrap point, greedy and seeded sampling, and streamed frames.
"""

import pytest
import torch

from engine.config import tiny_config
from engine.cuda_graph import DecodeGraph, FrameGraph, reserve_full_attention
from engine.errors import StateError
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.sampling import Sampler, SamplingParams
from engine.state import ModelState

HYBRID = ("sliding_attention", "linear_attention", "linear_attention", "sliding_attention")
FULL = ("full_attention",) * 3


def make_model(
    layer_types: tuple[str, ...], device: str, dtype: torch.dtype, window: int = 16
) -> InfiniteVLForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_config(layer_types, sliding_window=window)
    model = InfiniteVLForConditionalGeneration(config).to(device).to_dtype(dtype).eval()
    return model


def eager_decode(
    model: InfiniteVLForConditionalGeneration,
    state: ModelState,
    token: int,
    steps: int,
    sampler: Sampler | None = None,
) -> tuple[list[int], list[torch.Tensor]]:
    """The model's own forward, one token at a time (what Session.generate runs)."""
    tokens, logits = [], []
    ids = torch.tensor([[token]], device=model.device)
    with torch.no_grad():
        for _ in range(steps):
            out = model(ids, state, logits_to_keep=1)[:, -1]
            nxt = out.argmax(-1) if sampler is None else sampler(out)
            if sampler is not None:
                sampler.observe(nxt)
            tokens.append(int(nxt))
            logits.append(out[0].clone())
            ids = nxt.view(1, 1)
    return tokens, logits


def prefill(model: InfiniteVLForConditionalGeneration, n: int, seed: int = 1) -> ModelState:
    """A state after ``n`` random tokens; on CUDA fed one by one (fla's chunk would compile)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 200, (1, n), generator=gen).to(model.device)
    state = model.new_state()
    piece = 1 if model.device.type == "cuda" else n
    with torch.no_grad():
        for start in range(0, n, piece):
            model(ids[:, start : start + piece], state, logits_to_keep=1)
    return state


def graph_decode(
    graph: DecodeGraph, token: int, steps: int
) -> tuple[list[int], list[torch.Tensor]]:
    tokens, logits = [], []
    nxt: int | None = token
    for _ in range(steps):
        nxt = graph.step(nxt if not tokens else None)
        tokens.append(nxt)
        logits.append(graph.logits[0].clone())
    return tokens, logits


def assert_same_run(a: tuple[list[int], list[torch.Tensor]], b: tuple, atol: float) -> None:
    assert a[0] == b[0]
    for i, (x, y) in enumerate(zip(a[1], b[1], strict=True)):
        assert torch.allclose(x, y, atol=atol, rtol=0), f"step {i}: max diff {(x - y).abs().max()}"


def assert_states_close(a: ModelState, b: ModelState, atol: float) -> None:
    assert (a.tokens_seen, a.position) == (b.tokens_seen, b.position)
    for i, (x, y) in enumerate(zip(a.layers, b.layers, strict=True)):
        if hasattr(x, "seen"):
            assert x.seen == y.seen, f"layer {i}"
        for name, t in x.tensors().items():
            u = y.tensors()[name]
            assert torch.allclose(t.float(), u.float(), atol=atol), f"layer {i} {name}"


@pytest.mark.parametrize(
    ("layer_types", "full_kernel"),
    [(HYBRID, "sdpa"), (FULL, "sdpa"), (FULL, "split_k")],
    ids=["hybrid", "full-sdpa", "full-split_k"],
)
def test_static_decode_matches_forward(layer_types: tuple[str, ...], full_kernel: str) -> None:
    # GIVEN a tiny model and a 10-token prompt (window 16: the ring wraps at token 16)
    model = make_model(layer_types, "cpu", torch.float32)
    state = prefill(model, 10)
    reserve_full_attention(state, 64)
    ref_state = state.clone()
    # WHEN the static step decodes 40 tokens and the model's forward does the same
    graph = DecodeGraph(model, state, use_graph=False, full_kernel=full_kernel)
    got = graph_decode(graph, 5, 40)
    want = eager_decode(model, ref_state, 5, 40)
    # THEN tokens, logits and the final state agree
    assert_same_run(got, want, atol=1e-4)
    assert_states_close(state, ref_state, atol=1e-4)


def test_static_decode_resyncs_after_eager_feed() -> None:
    # GIVEN a static decoder that already stepped, then an eager piece fed on its state
    model = make_model(HYBRID, "cpu", torch.float32)
    state = prefill(model, 5)
    ref = state.clone()
    graph = DecodeGraph(model, state, use_graph=False)
    first = graph.step(3)
    ids = torch.tensor([[first, 7, 8]])
    with torch.no_grad():
        model(ids, state)
    # WHEN it steps again THEN it continues from the eager piece, like the forward does
    got = graph_decode(graph, 9, 6)
    eager_decode(model, ref, 3, 1)
    with torch.no_grad():
        model(ids, ref)
    assert_same_run(got, eager_decode(model, ref, 9, 6), atol=1e-4)


def test_full_attention_without_room_is_refused() -> None:
    # a first piece of 16 tokens leaves the cache exactly full (capacity 16)
    model = make_model(FULL, "cpu", torch.float32)
    state = prefill(model, 16)
    graph = DecodeGraph(model, state, use_graph=False)
    with pytest.raises(StateError, match="reserve room"):
        graph.step(1)


def frames(n: int, grid: tuple[int, int, int], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t, h, w = grid
    return [torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=gen) for _ in range(n)]


def run_frames(model, state, pixel_list, graph_frames: FrameGraph | None) -> list[bool]:
    grid = torch.tensor([[1, 8, 8]])
    ids = torch.full((1, 16), model.config.image_token_id, device=model.device)
    took = []
    for px in pixel_list:
        px = px.to(model.device)
        if graph_frames is None:
            with torch.no_grad():
                model(ids, state, pixel_values=px, image_grid_thw=grid.to(model.device))
            took.append(False)
        else:
            took.append(graph_frames.feed(px))
    return took


def test_static_frame_step_matches_forward() -> None:
    # GIVEN 112x112 frames (16 tokens each) and a window of 32: the rings are full after 2 frames
    model = make_model(HYBRID, "cpu", torch.float32, window=32)
    state, ref = model.new_state(), model.new_state()
    stream = FrameGraph(model, state, torch.tensor([[1, 8, 8]]), use_graph=False)
    pixel_list = frames(6, (1, 8, 8))
    # WHEN six frames go through the frame step and through the forward
    took = run_frames(model, state, pixel_list, stream)
    run_frames(model, ref, pixel_list, None)
    # THEN the first two were eager, the rest static, and the states and next logits agree
    assert took == [False, False, True, True, True, True]
    assert_states_close(state, ref, atol=1e-4)
    assert_same_run(eager_decode(model, state, 4, 3), eager_decode(model, ref, 4, 3), atol=1e-4)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_graph_decode_matches_eager(dtype: torch.dtype) -> None:
    # GIVEN a tiny hybrid model on CUDA with a 64-slot window and a 20-token prompt
    model = make_model(HYBRID, "cuda", dtype, window=64)
    state = prefill(model, 20)
    ref = state.clone()
    # WHEN 220 tokens come from the graph and from the eager forward (the ring wraps at 64)
    graph = DecodeGraph(model, state)
    got = graph_decode(graph, 5, 220)
    want = eager_decode(model, ref, 5, 220)
    # THEN the graph was captured and replayed, and tokens and logits agree
    assert graph.graph is not None
    atol = 1e-3 if dtype == torch.float32 else 5e-2
    assert_same_run(got, want, atol=atol)
    assert_states_close(state, ref, atol=atol)


@pytest.mark.gpu
@cuda
def test_graph_decode_with_pdl_is_bit_for_bit_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the decode kernels launched with programmatic dependent launch (kernels.pdl)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9 or more")
    model = make_model(HYBRID, "cuda", torch.bfloat16, window=64)
    state = prefill(model, 20)
    ref = state.clone()
    monkeypatch.setenv("INFINITEVL_PDL", "0")
    want = graph_decode(DecodeGraph(model, ref), 5, 220)
    # WHEN the same 220 tokens come from a graph captured with it on (the default)
    monkeypatch.delenv("INFINITEVL_PDL", raising=False)
    got = graph_decode(DecodeGraph(model, state), 5, 220)
    # THEN the same kernels in the same order give the same bits, the ring wrapped three times
    assert_same_run(got, want, atol=0.0)
    assert_states_close(state, ref, atol=0.0)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("full_kernel", ["sdpa", "split_k"])
def test_graph_decode_full_attention_matches_eager(full_kernel: str) -> None:
    model = make_model(FULL, "cuda", torch.float32)
    state = prefill(model, 30)
    reserve_full_attention(state, 300)
    ref = state.clone()
    graph = DecodeGraph(model, state, full_kernel=full_kernel)
    assert_same_run(graph_decode(graph, 5, 210), eager_decode(model, ref, 5, 210), atol=1e-3)


@pytest.mark.gpu
@cuda
def test_graph_decode_sampled_matches_eager() -> None:
    # GIVEN the same seed for the graphed and the eager sampler
    model = make_model(HYBRID, "cuda", torch.float32, window=64)
    state = prefill(model, 20)
    ref = state.clone()
    params = SamplingParams(temperature=1.0, top_k=20, seed=7, repetition_penalty=1.1)
    vocab = model.config.text.vocab_size
    graph = DecodeGraph(model, state, sampler=Sampler(params, vocab, "cuda"))
    # THEN 200 sampled tokens are the same
    got = graph_decode(graph, 5, 200)
    want = eager_decode(model, ref, 5, 200, sampler=Sampler(params, vocab, "cuda"))
    assert_same_run(got, want, atol=1e-3)


@pytest.mark.gpu
@cuda
def test_frame_graph_matches_eager() -> None:
    model = make_model(HYBRID, "cuda", torch.float32, window=32)
    state, ref = model.new_state(), model.new_state()
    stream = FrameGraph(model, state, torch.tensor([[1, 8, 8]]))
    pixel_list = frames(12, (1, 8, 8))
    took = run_frames(model, state, pixel_list, stream)
    run_frames(model, ref, pixel_list, None)
    assert took == [False, False] + [True] * 10 and stream.graph is not None
    assert_states_close(state, ref, atol=1e-3)
    assert_same_run(eager_decode(model, state, 4, 5), eager_decode(model, ref, 4, 5), atol=1e-3)
