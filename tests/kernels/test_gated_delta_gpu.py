"""Gated delta rule fast paths against the torch reference: the Triton step, the Triton chunk
for short prompts and fla's chunk.

Runs on CUDA (``make test-gpu``); the Triton step and chunk also run on the CPU under
``TRITON_INTERPRET=1 pytest -m gpu tests/kernels``. fla's chunk needs CUDA.
"""

import pytest
import torch

pytest.importorskip("triton")

from kernels import gated_delta  # noqa: E402
from kernels._testing import assert_close, device_for_kernel_tests, poison_allocator  # noqa: E402
from kernels.gated_delta import chunk_fla, chunk_triton, reference, step_triton  # noqa: E402

pytestmark = pytest.mark.gpu

# (B, H, HV, K, V): grouped value heads, a V that is no power of two, and the published 4B layer
SHAPES = {"gva": (2, 2, 4, 16, 40), "4b": (1, 16, 16, 128, 256)}
FLA_SHAPES = {"gva": (2, 2, 4, 32, 64), "4b": SHAPES["4b"]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# bf16 outputs carry bf16 rounding (2^-8 relative); states stay float32
OUT_RATIO = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def device() -> torch.device:
    return device_for_kernel_tests()


def make_inputs(
    shape: tuple[int, ...], T: int, dtype: torch.dtype, device: torch.device, seed: int
) -> dict:
    B, H, HV, K, V = shape
    gen = torch.Generator().manual_seed(seed)
    x = {
        "q": torch.randn(B, T, H, K, generator=gen).to(dtype),
        "k": torch.randn(B, T, H, K, generator=gen).to(dtype),
        "v": torch.randn(B, T, HV, V, generator=gen).to(dtype),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2.0),
        "beta": torch.rand(B, T, HV, generator=gen).to(dtype),
    }
    return {n: t.to(device) for n, t in x.items()}


def run_steps(fn, x: dict, S: torch.Tensor, scale: float) -> torch.Tensor:
    T = x["q"].shape[1]
    outs = [
        fn(
            x["q"][:, t],
            x["k"][:, t],
            x["v"][:, t],
            x["g"][:, t],
            x["beta"][:, t],
            S,
            scale=scale,
            use_qk_l2norm=True,
        )
        for t in range(T)
    ]
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_step_matches_reference(
    shape_name: str, dtype_name: str, with_state: bool, device: torch.device
) -> None:
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    B, _, HV, K, V = shape
    x = make_inputs(shape, 5, dtype, device, seed=7)
    S0 = (
        torch.randn(B, HV, K, V, device=device)
        if with_state
        else torch.zeros(B, HV, K, V, device=device)
    )
    S_ref, S_fast = S0.clone(), S0.clone()
    o_ref = run_steps(reference.step, x, S_ref, K**-0.5)
    poison_allocator(device)
    o_fast = run_steps(step_triton.step, x, S_fast, K**-0.5)
    assert o_fast.dtype == dtype
    assert_close("step o", o_ref, o_fast, OUT_RATIO[dtype])
    assert_close("step S", S_ref, S_fast, 1e-5)


@pytest.mark.parametrize("BV", [16, 32, 64])
def test_step_writes_every_output_element(BV: int, device: torch.device) -> None:
    shape = SHAPES["gva"]
    B, _, HV, K, V = shape
    x = {n: t[:, 0] for n, t in make_inputs(shape, 1, torch.bfloat16, device, seed=8).items()}
    S_ref, S_fast = torch.randn(B, HV, K, V, device=device), None
    S_fast = S_ref.clone()
    o = torch.full((B, HV, V), float("nan"), dtype=torch.bfloat16, device=device)
    step_triton.launch_step(
        x["q"], x["k"], x["v"], x["g"], x["beta"], S_fast, o, 0.3, True, BV, num_warps=2
    )
    o_ref = reference.step(
        x["q"], x["k"], x["v"], x["g"], x["beta"], S_ref, scale=0.3, use_qk_l2norm=True
    )
    assert_close("o", o_ref, o, 1e-2)
    assert_close("S", S_ref, S_fast, 1e-5)


def test_step_without_l2norm_and_strided_inputs(device: torch.device) -> None:
    # the engine hands q[:, t] views of [B, T, H, K]: batch strides are not contiguous
    shape = SHAPES["gva"]
    B, _, HV, K, V = shape
    x = make_inputs(shape, 3, torch.float32, device, seed=9)
    x["k"] = torch.nn.functional.normalize(x["k"], dim=-1)
    S_ref = torch.randn(B, HV, K, V, device=device)
    S_fast = S_ref.clone()
    args = [x[n][:, 1] for n in ("q", "k", "v", "g", "beta")]
    o_ref = reference.step(*args, S_ref, scale=0.5)
    o_fast = gated_delta.step(*args, S_fast, scale=0.5, use_kernel=True)
    assert_close("o", o_ref, o_fast, 1e-5)
    assert_close("S", S_ref, S_fast, 1e-5)


def test_step_decode_drift_1000_steps(device: torch.device) -> None:
    # bf16 inputs and outputs, float32 state: after 1,000 steps the kernel's state stays within
    # 1e-4 relative RMS of the reference's (summation order is the only difference; the update
    # is a contraction for normalised keys, so it must not accumulate)
    shape = (1, 4, 8, 64, 64)
    B, _, HV, K, V = shape
    x = make_inputs(shape, 1000, torch.bfloat16, device, seed=10)
    S_ref = torch.zeros(B, HV, K, V, device=device)
    S_fast = S_ref.clone()
    o_ref = run_steps(reference.step, x, S_ref, K**-0.5)
    o_fast = run_steps(step_triton.step, x, S_fast, K**-0.5)
    assert_close("S after 1000 steps", S_ref, S_fast, 1e-4)
    assert_close("o over 1000 steps", o_ref, o_fast, 1e-2)
    assert_close("o, last 10 steps", o_ref[:, -10:], o_fast[:, -10:], 1e-2)


def test_step_in_cuda_graph(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    shape = SHAPES["4b"]
    B, H, HV, K, V = shape
    x = make_inputs(shape, 6, torch.bfloat16, device, seed=11)
    static = {n: t[:, 0].clone() for n, t in x.items()}
    S = torch.zeros(B, HV, K, V, device=device)
    S_ref = S.clone()
    step_triton.step(
        *static.values(), S.clone(), scale=K**-0.5, use_qk_l2norm=True
    )  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_static = step_triton.step(*static.values(), S, scale=K**-0.5, use_qk_l2norm=True)
    for t in range(6):
        for n in static:
            static[n].copy_(x[n][:, t])
        graph.replay()
        o_ref = reference.step(
            *(x[n][:, t] for n in static), S_ref, scale=K**-0.5, use_qk_l2norm=True
        )
        assert_close(f"graph step {t} o", o_ref, o_static, 1e-2)
    assert_close("graph S", S_ref, S, 1e-5)


needs_fla = pytest.mark.skipif(
    not (torch.cuda.is_available() and chunk_fla.is_available()),
    reason="fla's chunk needs CUDA and fla-core",
)
# fla multiplies in tf32 for float32 inputs and in bf16 for bf16 ones (float32 accumulation)
FLA_RATIO = {torch.float32: 5e-3, torch.bfloat16: 2e-2}
TS = [1, 63, 64, 65, 1000]


@needs_fla
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("T", TS, ids=[f"T{t}" for t in TS])
@pytest.mark.parametrize("shape_name", list(FLA_SHAPES))
def test_chunk_fla_matches_reference(
    shape_name: str, T: int, dtype_name: str, with_state: bool
) -> None:
    _check_chunk(chunk_fla.chunk, FLA_SHAPES[shape_name], T, DTYPES[dtype_name], with_state,
                 torch.device("cuda"))  # fmt: skip


def _check_chunk(
    fn, shape: tuple[int, ...], T: int, dtype: torch.dtype, with_state: bool, device: torch.device
) -> None:
    """``fn`` (a fast chunked rule) against ``reference.chunk``: outputs in ``dtype``, the final
    state, an initial state left untouched, over an allocator poisoned with NaN."""
    B, _, HV, K, V = shape
    x = make_inputs(shape, T, dtype, device, seed=T)
    S0 = torch.randn(B, HV, K, V, device=device) if with_state else None
    S0_copy = S0.clone() if with_state else None
    kw = {"scale": K**-0.5, "initial_state": S0, "use_qk_l2norm": True}
    o_ref, S_ref = reference.chunk(**x, **kw)
    poison_allocator(device)
    o, S = fn(**x, **kw)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert_close(f"{fn.__module__} o", o_ref, o, FLA_RATIO[dtype])
    assert_close(f"{fn.__module__} S", S_ref, S, FLA_RATIO[dtype])
    if with_state:
        assert torch.equal(S0, S0_copy), f"{fn.__module__} must leave initial_state untouched"


@needs_fla
def test_chunk_fla_in_two_calls_matches_one() -> None:
    device, shape = torch.device("cuda"), SHAPES["4b"]
    x = make_inputs(shape, 300, torch.bfloat16, device, seed=12)
    kw = {"scale": shape[3] ** -0.5, "use_qk_l2norm": True}
    o_one, S_one = chunk_fla.chunk(**x, **kw)
    o1, S1 = chunk_fla.chunk(**{n: t[:, :77] for n, t in x.items()}, **kw)
    o2, S2 = chunk_fla.chunk(**{n: t[:, 77:] for n, t in x.items()}, initial_state=S1, **kw)
    assert_close("two-call o", o_one, torch.cat([o1, o2], dim=1), 2e-2)
    assert_close("two-call S", S_one, S2, 2e-2)


def grads_of(fn, x: dict, K: int, V: int) -> tuple[torch.Tensor, ...]:
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    o, S = fn(**leaves, scale=K**-0.5, use_qk_l2norm=True)
    loss = (o * torch.linspace(-1, 1, V, device=o.device)).sum() + S.square().sum()
    return torch.autograd.grad(loss, list(leaves.values()))


@needs_fla
@pytest.mark.parametrize("path", ["dispatcher", "fla"])
def test_chunk_gradients_on_cuda_match_reference(path: str) -> None:
    device, shape = torch.device("cuda"), FLA_SHAPES["gva"]
    if path == "fla" and not chunk_fla.backward_is_safe(device):
        pytest.skip("fla refuses its gated backward on this GPU and Triton (fla issue #640)")
    x = make_inputs(shape, 130, torch.float32, device, seed=13)
    B, _, HV, K, V = shape
    x["initial_state"] = torch.randn(B, HV, K, V, device=device)
    fn = gated_delta.chunk if path == "dispatcher" else chunk_fla.chunk
    for n, ga, gb in zip(x, grads_of(reference.chunk, x, K, V), grads_of(fn, x, K, V), strict=True):
        assert_close(f"grad {n}", ga, gb, 1e-2)


# the Triton chunk: one token, a chunk less one, one chunk, one more, several chunks and a tail
SHORT_TS = [1, 15, 16, 17, 100]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("T", SHORT_TS, ids=[f"T{t}" for t in SHORT_TS])
def test_chunk_triton_matches_reference(
    T: int, dtype_name: str, with_state: bool, device: torch.device
) -> None:
    _check_chunk(chunk_triton.chunk, SHAPES["gva"], T, DTYPES[dtype_name], with_state, device)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_chunk_triton_frame_shape_from_strided_views(dtype_name: str, device: torch.device) -> None:
    """The published layer at a frame's length, q and k read in place from one projection."""
    shape, dtype = SHAPES["4b"], DTYPES[dtype_name]
    B, H, HV, K, V = shape
    T = 256 if device.type == "cuda" else 40  # the interpreter is slow
    x = make_inputs(shape, T, dtype, device, seed=5)
    qk = torch.stack([x["q"], x["k"]], dim=2)  # [B, T, 2, H, K]: q, k strided in T
    x["q"], x["k"] = qk[:, :, 0], qk[:, :, 1]
    S0 = torch.randn(B, HV, K, V, device=device)
    kw = {"scale": K**-0.5, "initial_state": S0, "use_qk_l2norm": True}
    o_ref, S_ref = reference.chunk(**x, **kw)
    poison_allocator(device)
    o, S = gated_delta.chunk(**x, **kw, use_kernel=True)  # the dispatcher's short path
    assert_close("frame o", o_ref, o, FLA_RATIO[dtype])
    assert_close("frame S", S_ref, S, FLA_RATIO[dtype])


def test_chunk_triton_in_two_calls_matches_one(device: torch.device) -> None:
    shape = SHAPES["gva"]
    x = make_inputs(shape, 70, torch.float32, device, seed=12)
    kw = {"scale": shape[3] ** -0.5, "use_qk_l2norm": True}
    o_one, S_one = chunk_triton.chunk(**x, **kw)
    o1, S1 = chunk_triton.chunk(**{n: t[:, :21] for n, t in x.items()}, **kw)
    o2, S2 = chunk_triton.chunk(**{n: t[:, 21:] for n, t in x.items()}, initial_state=S1, **kw)
    assert_close("two-call o", o_one, torch.cat([o1, o2], dim=1), 1e-5)
    assert_close("two-call S", S_one, S2, 1e-5)


def test_chunk_triton_strong_decay_and_no_l2norm_stay_finite(device: torch.device) -> None:
    """A decay of e^-80 a token underflows to 0 without NaN; unnormalised keys as the reference."""
    shape = SHAPES["gva"]
    x = make_inputs(shape, 40, torch.float32, device, seed=3)
    x["g"] = torch.full_like(x["g"], -80.0)
    kw = {"scale": 0.1, "use_qk_l2norm": False}
    x["k"] = x["k"] * 0.2  # keeps (I + A) well conditioned without the norm
    o_ref, S_ref = reference.chunk(**x, **kw)
    o, S = chunk_triton.chunk(**x, **kw)
    assert_close("strong decay o", o_ref, o, 1e-5)
    assert_close("strong decay S", S_ref, S, 1e-5)


def test_chunk_dispatcher_sends_short_prompts_to_chunk_triton(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to SHORT_PROMPT tokens without grad: chunk_triton; not with grad (it has no backward),
    nor with INFINITEVL_CHUNK_KERNEL=0."""
    calls = []
    real = chunk_triton.chunk
    monkeypatch.setattr(chunk_triton, "chunk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = make_inputs(SHAPES["gva"], 20, torch.float32, device, seed=1)
    use = None if device.type == "cuda" else True  # the interpreter needs use_kernel=True
    gated_delta.chunk(**x, scale=0.25, use_kernel=use)
    assert calls == [1]
    if device.type == "cuda":
        monkeypatch.setenv("INFINITEVL_CHUNK_KERNEL", "0")
        gated_delta.chunk(**x, scale=0.25)
        monkeypatch.delenv("INFINITEVL_CHUNK_KERNEL")
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        gated_delta.chunk(**leaves, scale=0.25)
        assert calls == [1], "grad calls and the switch must not reach chunk_triton (no backward)"
