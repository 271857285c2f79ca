"""The fused single-token decode path (engine.model.fused and the layers' ``fuse_decode``).

On the CPU: fused projections, the conv-tail step through ``kernels.short_conv``, the gates and L2
norms inside ``gated_delta.step`` and the one-call RMS norms give the same logits and state as the
separate ops, over 130 tokens across the sliding window's wrap; the fused matrices are the
parameters' storage (no copy) and follow ``load_state_dict`` in place or by assignment; saving
and reloading still works. ``Session.generate`` through the graph's static step (the same step as
the CUDA graph, run eagerly) gives the eager loop's replies, greedy and seeded sampling, with stop
strings and cancellation. ``gpu`` tests repeat the comparisons on CUDA with the Triton kernels.
"""

import gc
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import tiny_config
from engine.cuda_graph import DecodeGraph
from engine.engine import CancelToken, Engine
from engine.model.fused import set_fused_decode
from engine.model.gated_deltanet import GatedDeltaNet
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.sampling import SamplingParams
from engine.state import ModelState
from engine.testing import write_tiny_checkpoint

# the 4B model's pattern: one sliding-window layer, then three Gated DeltaNet layers
LAYERS = ("sliding_attention", "linear_attention", "linear_attention", "linear_attention") * 2
WINDOW = 16


def make_model(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(LAYERS, sliding_window=WINDOW)
    model = InfiniteVLForConditionalGeneration(config).to(device).to_dtype(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms and biases not all ones/zeros
            p.add_(torch.randn_like(p) * 0.02)
    return model


def prefill(model: InfiniteVLForConditionalGeneration, n: int) -> ModelState:
    ids = torch.randint(0, 200, (1, n), generator=torch.Generator().manual_seed(1))
    state = model.new_state()
    with torch.no_grad():
        model(ids.to(model.device), state, logits_to_keep=1)
    return state


def decode(
    model: InfiniteVLForConditionalGeneration, state: ModelState, token: int, steps: int
) -> tuple[list[int], torch.Tensor]:
    """Greedy decode through the model's forward; tokens and logits [steps, vocab]."""
    tokens, logits = [], []
    ids = torch.tensor([[token]], device=model.device)
    with torch.no_grad():
        for _ in range(steps):
            out = model(ids, state, logits_to_keep=1)[0, -1].float()
            ids = out.argmax().view(1, 1)
            tokens.append(int(ids))
            logits.append(out)
    return tokens, torch.stack(logits)


def assert_states_close(a: ModelState, b: ModelState, atol: float) -> None:
    assert (a.tokens_seen, a.position) == (b.tokens_seen, b.position)
    for i, (x, y) in enumerate(zip(a.layers, b.layers, strict=True)):
        for name, t in x.tensors().items():
            u = y.tensors()[name]
            diff = (t.float() - u.float()).abs().max()
            assert diff <= atol, f"layer {i} {name}: {diff}"


def test_fused_decode_matches_separate_ops() -> None:
    # GIVEN a tiny hybrid model and a 10-token prompt (window 16: the ring wraps at token 16)
    model = make_model()
    state = prefill(model, 10)
    ref_state = state.clone()
    # WHEN 130 tokens decode through the fused path and through the separate ops
    set_fused_decode(model, True)
    got = decode(model, state, 5, 130)
    set_fused_decode(model, False)
    want = decode(model, ref_state, 5, 130)
    # THEN tokens, logits (fp32 rounding: 1e-4 on logits up to ~50) and the final states agree
    assert got[0] == want[0]
    assert torch.allclose(got[1], want[1], atol=1e-4, rtol=0), (got[1] - want[1]).abs().max()
    assert_states_close(state, ref_state, atol=1e-5)


def test_fused_prompt_projections_match_separate_ops() -> None:
    # GIVEN two copies of a tiny hybrid model, one reading its sibling projections separately
    fused, separate = make_model(), make_model()
    set_fused_decode(separate, False)
    ids = torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(3))
    states = fused.new_state(), separate.new_state()
    # WHEN a prompt goes through both in three pieces (the ring of 16 wraps: turns of a chat)
    with torch.no_grad():
        for piece in ids.split((7, 20, 13), dim=1):
            got = fused(piece, states[0], logits_to_keep=1)
            want = separate(piece, states[1], logits_to_keep=1)
    # THEN the fused matrices were read, and logits and states agree to fp32 rounding
    assert fused.model.language_model.layers[1].self_attn._in_proj.weight is not None
    assert separate.model.language_model.layers[1].self_attn._in_proj.weight is None
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert_states_close(states[0], states[1], atol=1e-5)


def test_static_graph_step_matches_separate_ops() -> None:
    # GIVEN the graph's static step (eager on the CPU) over the fused path
    model = make_model()
    state = prefill(model, 10)
    ref_state = state.clone()
    graph = DecodeGraph(model, state, use_graph=False)
    tokens, logits = [], []
    for i in range(110):
        tokens.append(graph.step(5 if i == 0 else None))
        logits.append(graph.logits[0].clone())
    # THEN it equals the separate ops through the model's forward
    set_fused_decode(model, False)
    want = decode(model, ref_state, 5, 110)
    assert tokens == want[0]
    assert torch.allclose(torch.stack(logits), want[1], atol=1e-4, rtol=0)
    assert_states_close(state, ref_state, atol=1e-5)


def _gdn(model: InfiniteVLForConditionalGeneration) -> GatedDeltaNet:
    mixer = model.model.language_model.layers[1].self_attn
    assert isinstance(mixer, GatedDeltaNet)
    return mixer


def test_fused_matrix_is_the_parameters_storage() -> None:
    # GIVEN a model that decoded one token (the projections are fused then)
    model = make_model()
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    decode(model, prefill(model, 4), 5, 1)
    gdn = _gdn(model)
    fused = gdn._in_proj.weight
    assert fused is not None
    # THEN each projection's weight is a block of it (no second copy), names and shapes unchanged
    offset = 0
    for name in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj"):
        w = getattr(gdn, name).weight
        assert w.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert torch.equal(w, fused[offset : offset + w.shape[0]])
        offset += w.shape[0]
    assert offset == fused.shape[0]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == names


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
def test_projections_follow_load_state_dict(assign: bool) -> None:
    # GIVEN a model whose projections are fused, and the weights of another model
    model = make_model(seed=0)
    decode(model, prefill(model, 4), 5, 1)
    other = make_model(seed=1)
    # WHEN the other weights are loaded (copied in place, or assigned as new parameters)
    model.load_state_dict(other.state_dict(), assign=assign)
    model.tie_weights()
    # THEN the fused decode gives the other model's separate-op results
    set_fused_decode(other, False)
    got = decode(model, prefill(model, 10), 5, 40)
    want = decode(other, prefill(other, 10), 5, 40)
    # a stale matrix would be off by O(1); fp32 rounding here: 1.1e-5 on logits up to 50
    assert got[0] == want[0]
    diff = (got[1] - want[1]).abs().max()
    assert diff < 1e-4, diff
    fused = _gdn(model)._in_proj.weight
    q = _gdn(other).q_proj.weight
    assert fused is not None and torch.equal(fused[: q.shape[0]], q)


def test_swapped_projection_falls_back_to_separate_ops() -> None:
    # GIVEN a fused model whose q_proj is then replaced by another kind of module
    model = make_model()
    decode(model, prefill(model, 4), 5, 1)

    class Doubled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    gdn = _gdn(model)
    old = gdn.q_proj
    gdn.q_proj = Doubled(old.in_features, old.out_features, bias=False)
    gdn.q_proj.weight.data = old.weight.detach().clone()
    # THEN the decode path uses the module (results == the separate ops), not the stale matrix
    state = prefill(model, 10)
    ref_state = state.clone()
    got = decode(model, state, 5, 20)
    set_fused_decode(model, False)
    want = decode(model, ref_state, 5, 20)
    # a stale matrix would be off by O(1); fp32 rounding of the other fused layers stays < 1e-4
    assert torch.allclose(got[1], want[1], atol=1e-4, rtol=0), (got[1] - want[1]).abs().max()
    assert gdn._in_proj.weight is None
    # and nothing of the layer keeps the replaced projection alive
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None


def test_projections_follow_a_dtype_change() -> None:
    # GIVEN a fused float32 model WHEN it is moved to bfloat16 (every .data replaced)
    model = make_model()
    decode(model, prefill(model, 4), 5, 1)
    model.to(torch.bfloat16)
    reference = make_model().to(torch.bfloat16)
    set_fused_decode(reference, False)
    # THEN the fused decode computes in bfloat16 with the moved weights, as the separate ops do
    got = decode(model, prefill(model, 10), 5, 1)[1]
    want = decode(reference, prefill(reference, 10), 5, 1)[1]
    assert _gdn(model)._in_proj.weight.dtype == torch.bfloat16
    # bf16 rounding of one fused vs separate product; a stale float32 matrix would not even run
    assert (got - want).abs().max() < 0.05 * want.abs().max(), (got - want).abs().max()


def test_fused_weights_save_and_reload(tmp_path: Path) -> None:
    # GIVEN a model that decoded (its weights are views of fused matrices)
    model = make_model()
    decode(model, prefill(model, 4), 5, 1)
    # WHEN its state_dict is written with safetensors and read back into a fresh model
    tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, tmp_path / "w.safetensors")
    fresh = make_model(seed=3)
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=False)
    # THEN every tensor is the same
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(LAYERS, sliding_window=WINDOW)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), config, seed=2)


def _run(engine: Engine, params: SamplingParams, cancel_after: int | None = None) -> list:
    session = engine.new_session()
    replies = []
    for text in ("hello there", "and again"):
        session.add_user_message(text)
        cancel = CancelToken()
        ids: list[int] = []
        for delta in session.generate(params, cancel):
            ids += delta.token_ids
            if cancel_after is not None and len(ids) >= cancel_after:
                cancel.cancel()
        assert session.last_stats is not None
        replies.append((tuple(ids), session.last_stats.stop_reason, session.tokens_seen))
    return replies


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=40),
        SamplingParams(max_new_tokens=40, repetition_penalty=1.3),
        SamplingParams(temperature=0.9, top_k=30, top_p=0.9, seed=4, max_new_tokens=40),
        SamplingParams(max_new_tokens=40, stop=("a", "e")),
    ],
    ids=["greedy", "greedy-penalty", "sampled", "stop"],
)
def test_session_generate_through_static_step(checkpoint: Path, params: SamplingParams) -> None:
    # GIVEN one engine decoding eagerly and one through the decode graph's static step
    eager = Engine.load(checkpoint, device="cpu")
    eager.decode_graph = "off"
    static = Engine.load(checkpoint, device="cpu")
    static.decode_graph = "static"
    # THEN two turns give the same replies, stop reasons and token counts
    assert _run(static, params) == _run(eager, params)


def test_session_generate_static_step_cancel(checkpoint: Path) -> None:
    eager = Engine.load(checkpoint, device="cpu")
    eager.decode_graph = "off"
    static = Engine.load(checkpoint, device="cpu")
    static.decode_graph = "static"
    params = SamplingParams(max_new_tokens=40)
    assert _run(static, params, cancel_after=3) == _run(eager, params, cancel_after=3)


def test_failed_capture_falls_back_to_eager(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a decode graph whose capture fails (simulated: the CPU never captures)
    def fail(self: DecodeGraph, token: object = None) -> int:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(DecodeGraph, "captures_next", property(lambda self: True))
    monkeypatch.setattr(DecodeGraph, "step", fail)
    eager = Engine.load(checkpoint, device="cpu")
    eager.decode_graph = "off"
    static = Engine.load(checkpoint, device="cpu")
    static.decode_graph = "static"
    # THEN the reply goes on eagerly, unchanged, and the engine stops trying graphs
    params = SamplingParams(max_new_tokens=20)
    assert _run(static, params) == _run(eager, params)
    assert static.decode_graph == "off"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_decode_matches_separate_ops_cuda(dtype: torch.dtype) -> None:
    # on CUDA the fused path runs the Triton conv-tail and gated-delta steps
    model = make_model("cuda", dtype)
    state = model.new_state()
    ids = torch.randint(0, 200, (1, 10), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        for t in range(10):  # token by token: no fla compile
            model(ids[:, t : t + 1], state, logits_to_keep=1)
    ref_state = state.clone()
    got = decode(model, state, 5, 130)
    set_fused_decode(model, False)
    want = decode(model, ref_state, 5, 130)
    atol = 1e-3 if dtype == torch.float32 else 5e-2
    if dtype == torch.float32:
        assert got[0] == want[0]
    assert torch.allclose(got[1][:20], want[1][:20], atol=atol, rtol=0)
    if dtype == torch.float32:
        assert torch.allclose(got[1], want[1], atol=atol, rtol=0)
        assert_states_close(state, ref_state, atol=atol)


@pytest.mark.gpu
@cuda
def test_session_generate_cuda_graph_matches_eager(checkpoint: Path) -> None:
    # GIVEN one CUDA engine decoding eagerly and one through the captured graph (fp32)
    eager = Engine.load(checkpoint, device="cuda", dtype="float32")
    eager.decode_graph = "off"
    graphed = Engine.load(checkpoint, device="cuda", dtype="float32")
    for engine in (eager, graphed):
        engine.prefill_chunk_tokens = 1  # token by token: fla's chunk kernel would compile
    for params in (
        SamplingParams(max_new_tokens=40),
        SamplingParams(max_new_tokens=40, stop=("a",)),
    ):
        assert _run(graphed, params) == _run(eager, params)
    # THEN the graphed engine kept its graph (captured, not fallen back to eager)
    assert graphed.decode_graph == "cuda"
