"""Gated delta rule: a float64 loop written from the formula == recurrent == chunk == T steps."""

import pytest
import torch

from kernels import gated_delta
from kernels._testing import assert_close
from kernels.gated_delta import chunk_fla, reference

B, H, HV, K, V = 2, 2, 4, 16, 8
SCALE = K**-0.5


def make_inputs(T: int, dtype: torch.dtype, seed: int = 0, with_state: bool = False) -> dict:
    """Random inputs: log decays <= 0, beta in (0, 1), q and k not yet normalised."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen).to(dtype)
    k = torch.randn(B, T, H, K, generator=gen).to(dtype)
    v = torch.randn(B, T, HV, V, generator=gen).to(dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2.0)
    beta = torch.rand(B, T, HV, generator=gen).to(dtype)
    S0 = torch.randn(B, HV, K, V, generator=gen) if with_state else None
    return {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": S0}


def formula_float64(q, k, v, g, beta, initial_state):
    """S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - (exp(g_t) S_{t-1})^T k_t)^T ; o_t = S_t^T q_t."""
    Bq, T, Hq, _ = q.shape
    group = v.shape[2] // Hq
    l2 = lambda x: x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    q, k = l2(q.double()) * SCALE, l2(k.double())
    v, g, beta = v.double(), g.double(), beta.double()
    S = (
        torch.zeros(Bq, v.shape[2], K, V, dtype=torch.float64)
        if initial_state is None
        else initial_state.double()
    )
    o = torch.zeros(v.shape, dtype=torch.float64)
    for b in range(Bq):
        for j in range(v.shape[2]):
            h = j // group
            for t in range(T):
                decayed = torch.exp(g[b, t, j]) * S[b, j]
                S[b, j] = decayed + beta[b, t, j] * torch.outer(
                    k[b, t, h], v[b, t, j] - decayed.T @ k[b, t, h]
                )
                o[b, t, j] = S[b, j].T @ q[b, t, h]
    return o, S


TS = [1, 63, 64, 65, 200]
DTYPES = {"fp32": (torch.float32, 1e-5), "bf16": (torch.bfloat16, 1e-2)}


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("T", TS, ids=[f"T{t}" for t in TS])
def test_chunk_recurrent_step_match_formula(T: int, dtype_name: str, with_state: bool) -> None:
    dtype, out_ratio = DTYPES[dtype_name]
    x = make_inputs(T, dtype, seed=T, with_state=with_state)
    S0_copy = x["initial_state"].clone() if with_state else None
    o_ref, S_ref = formula_float64(**x)
    kw = {"scale": SCALE, "use_qk_l2norm": True}

    o_rec, S_rec = gated_delta.recurrent(**x, **kw)
    o_chk, S_chk = gated_delta.chunk(**x, **kw)
    S_step = x["initial_state"].clone() if with_state else torch.zeros(B, HV, K, V)
    o_step = torch.stack(
        [
            gated_delta.step(
                x["q"][:, t],
                x["k"][:, t],
                x["v"][:, t],
                x["g"][:, t],
                x["beta"][:, t],
                S_step,
                **kw,
            )
            for t in range(T)
        ],
        dim=1,
    )
    for name, o, S in [
        ("recurrent", o_rec, S_rec),
        ("chunk", o_chk, S_chk),
        ("step", o_step, S_step),
    ]:
        assert o.dtype == dtype and S.dtype == torch.float32
        # outputs are rounded to the input dtype; the float32 state is not
        assert_close(f"{name} o", o_ref, o, out_ratio)
        assert_close(f"{name} S", S_ref, S, 1e-5)
    if with_state:
        assert torch.equal(x["initial_state"], S0_copy), (
            "chunk/recurrent must leave initial_state untouched"
        )


@pytest.mark.parametrize("split", [1, 64, 100, 128, 199])
def test_chunk_in_two_calls_matches_one(split: int) -> None:
    x = make_inputs(200, torch.float32, seed=1, with_state=True)
    kw = {"scale": SCALE, "use_qk_l2norm": True}
    o_one, S_one = gated_delta.chunk(**x, **kw)
    first = {n: t[:, :split] for n, t in x.items() if n != "initial_state"}
    second = {n: t[:, split:] for n, t in x.items() if n != "initial_state"}
    o1, S1 = gated_delta.chunk(**first, initial_state=x["initial_state"], **kw)
    o2, S2 = gated_delta.chunk(**second, initial_state=S1, **kw)
    assert_close("two-call o", o_one, torch.cat([o1, o2], dim=1), 1e-5)
    assert_close("two-call S", S_one, S2, 1e-5)


@pytest.mark.parametrize("chunk_size", [1, 16, 37, 256])
def test_chunk_sizes_agree(chunk_size: int) -> None:
    x = make_inputs(100, torch.float32, seed=2, with_state=True)
    o_ref, S_ref = gated_delta.recurrent(**x, scale=SCALE)
    o, S = gated_delta.chunk(**x, scale=SCALE, chunk_size=chunk_size)
    assert_close("o", o_ref, o, 1e-5)
    assert_close("S", S_ref, S, 1e-5)


def test_chunk_strong_decay_stays_finite() -> None:
    # cumulated log decays far below float32's exp range must underflow to zero, not NaN
    x = make_inputs(130, torch.float32, seed=3, with_state=True)
    x["g"] = torch.full_like(x["g"], -30.0)
    o_ref, S_ref = gated_delta.recurrent(**x, scale=SCALE, use_qk_l2norm=True)
    o, S = gated_delta.chunk(**x, scale=SCALE, use_qk_l2norm=True)
    assert_close("o", o_ref, o, 1e-5)
    assert_close("S", S_ref, S, 1e-5)


def test_chunk_and_recurrent_gradients_agree() -> None:
    x = make_inputs(70, torch.float64, seed=4, with_state=True)
    x["initial_state"] = x["initial_state"].float()
    leaves = {
        n: x[n].float().requires_grad_() for n in ("q", "k", "v", "g", "beta", "initial_state")
    }
    grads = {}
    for fn in (gated_delta.recurrent, gated_delta.chunk):
        o, S = fn(**leaves, scale=SCALE, use_qk_l2norm=True)
        loss = (o * torch.linspace(-1, 1, o.shape[-1])).sum() + S.pow(2).sum()
        grads[fn.__name__] = torch.autograd.grad(loss, list(leaves.values()))
    for name, ga, gb in zip(leaves, grads["recurrent"], grads["chunk"], strict=True):
        assert_close(f"grad {name}", ga, gb, 1e-4)


def test_bad_shapes_name_the_values() -> None:
    x = make_inputs(5, torch.float32)
    with pytest.raises(ValueError, match=r"HV=4 must be a multiple of .*H=3"):
        gated_delta.chunk(
            torch.randn(B, 5, 3, K), torch.randn(B, 5, 3, K), x["v"], x["g"], x["beta"], scale=SCALE
        )
    with pytest.raises(ValueError, match=r"g \(2, 5, 3\)"):
        gated_delta.recurrent(x["q"], x["k"], x["v"], x["g"][..., :3], x["beta"], scale=SCALE)
    with pytest.raises(ValueError, match=r"state is \(2, 4, 16, 8\) torch.bfloat16"):
        reference.step(
            x["q"][:, 0],
            x["k"][:, 0],
            x["v"][:, 0],
            x["g"][:, 0],
            x["beta"][:, 0],
            torch.zeros(B, HV, K, V, dtype=torch.bfloat16),
            scale=SCALE,
        )
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        gated_delta.chunk(**x, scale=SCALE, use_kernel=True)


@pytest.mark.parametrize(
    ("triton_version", "capability", "is_safe"),
    [
        ("3.6.0", (9, 0), False),
        ("3.7.1", (9, 0), True),
        ("3.6.0", (8, 0), True),
        ("3.3.1", (9, 0), True),
    ],
    ids=["hopper-triton3.6", "hopper-triton3.7.1", "ampere-triton3.6", "hopper-triton3.3"],
)
def test_fla_backward_safety_rule(
    triton_version: str, capability: tuple[int, int], is_safe: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fla 0.6 raises in its gated backward on Hopper with Triton in [3.4, 3.7.1): the dispatcher
    # must know before the forward, or training crashes at backward
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    chunk_fla.backward_is_safe.cache_clear()
    try:
        assert chunk_fla.backward_is_safe(torch.device("cuda")) is is_safe
    finally:
        chunk_fla.backward_is_safe.cache_clear()
