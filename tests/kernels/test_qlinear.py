"""Quantized linear kernels: each fast path == the reference (dequantize + matmul), and each format
stays within a stated bound of the float layer."""

import pytest
import torch

from engine.quant import quantize_int4, quantize_int8, quantize_nf4
from kernels import qlinear
from kernels._testing import assert_close, rel_rms
from kernels.qlinear import cpu, reference

# rows: 1 = a decode step, 5 = a short prompt, 40 = prefill
ROWS = [1, 5, 40]
SHAPES = [(64, 128), (48, 256), (96, 64)]  # (N, K): N % 16 == 0 for torch's int4 kernel


def _weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_int8_linear_matches_reference(shape, rows, dtype) -> None:
    N, K = shape
    q, scale = quantize_int8(_weight(N, K))
    bias = torch.randn(N) * 0.1
    x = torch.randn(2, rows, K).to(dtype)
    ref = reference.int8_linear(x, q, scale, bias)
    out = qlinear.int8_linear(x, q, scale, bias)
    assert out.dtype == dtype and out.shape == (2, rows, N)
    # the kernel computes with bf16 activations (the reference in float32)
    assert_close("int8", ref.float(), out.float(), 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("group", [32, 64], ids=lambda g: f"g{g}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_int4_cpu_matches_reference(shape, group, rows, dtype) -> None:
    N, K = shape
    q, scale, zero = quantize_int4(_weight(N, K), group)
    x = torch.randn(rows, K).to(dtype)
    bias = torch.randn(N) * 0.1
    ref = reference.int4_linear(x, q, scale, zero, bias)
    packed = cpu.pack_int4(q, scale, zero)
    out = cpu.int4_linear(x, packed, cpu.scales_and_zeros(scale, zero), group, bias)
    assert out.dtype == dtype
    # the kernel computes with bf16 activations (the reference in float32)
    assert_close("int4", ref.float(), out.float(), 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_int8_dynamic_near_reference(shape, rows, dtype) -> None:
    N, K = shape
    q, scale = quantize_int8(_weight(N, K))
    packed = cpu.pack_int8_dynamic(q, scale)
    if packed is None:
        pytest.skip("this torch build has no fbgemm dynamic linear")
    # GIVEN fbgemm's packing: it gives back exactly the codes and scales it was given
    q2, scale2 = cpu.unpack_int8_dynamic(packed)
    assert torch.equal(q2, q) and torch.allclose(scale2, scale)
    x = torch.randn(rows, K).to(dtype)
    bias = torch.randn(N) * 0.1
    out = cpu.int8_linear_dynamic(x, packed, bias)
    assert out.dtype == dtype
    # THEN the output is the reference's up to the activations' 7-bit quantization (per call)
    assert_close(
        "int8 dynamic", reference.int8_linear(x, q, scale, bias).float(), out.float(), 3e-2
    )


def test_dequantize_int8_is_exact() -> None:
    # GIVEN codes whose rows reach +-127 (as quantize_int8 writes them) and scales
    q = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
    q[:, 0] = torch.where(torch.arange(16) % 2 == 0, 127, -127).to(torch.int8)
    scale = torch.rand(16) + 0.01
    # THEN dequantize is q * scale, and quantizing that gives the same codes back
    assert torch.equal(reference.dequantize_int8(q, scale), q.float() * scale[:, None])
    q2, scale2 = quantize_int8(reference.dequantize_int8(q, scale))
    assert torch.equal(q2, q)
    assert torch.allclose(scale2, scale, rtol=1e-6)


def test_nibbles_round_trip() -> None:
    codes = torch.randint(0, 16, (7, 10))
    packed = reference.pack_nibbles(codes)
    assert packed.shape == (7, 5) and packed.dtype == torch.uint8
    assert torch.equal(reference.unpack_nibbles(packed), codes.int())


def test_nf4_codes_round_trip_and_odd_sizes() -> None:
    # GIVEN a weight whose size is no multiple of the block (or of two)
    w = _weight(7, 13)
    q, absmax = quantize_nf4(w, 64)
    deq = reference.dequantize_nf4(q, absmax, (7, 13), 64)
    # THEN every value is a code times its block's absmax, and the absmax value is exact
    assert deq.shape == (7, 13)
    assert deq.abs().max() == pytest.approx(w.abs().max().item(), rel=1e-6)
    q2, absmax2 = quantize_nf4(deq, 64)
    assert torch.equal(q2, q) and torch.allclose(absmax2, absmax)


# relative RMS error of y = x W^T against the float layer, for N(0, 1) weights and inputs:
# int8 per row ~ 1/(127 sqrt 3) of a row's absmax; 4-bit formats ~ 1/16 of a group's range
FLOAT_BOUNDS = {"int8": 0.012, "int4": 0.12, "nf4": 0.12}


@pytest.mark.parametrize("method", sorted(FLOAT_BOUNDS))
def test_quantized_linear_near_float(method: str) -> None:
    N, K = 128, 512
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    x = torch.randn(8, K, generator=torch.Generator().manual_seed(2))
    y = x @ w.T
    if method == "int8":
        out = reference.int8_linear(x, *quantize_int8(w))
    elif method == "int4":
        out = reference.int4_linear(x, *quantize_int4(w, 128))
    else:
        q, absmax = quantize_nf4(w, 64)
        out = reference.nf4_linear(x, q, absmax, N, 64)
    err = rel_rms(y, out)
    print(f"{method}: relative RMS error vs float {err:.4f}")
    assert 0 < err <= FLOAT_BOUNDS[method]


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_bitsandbytes_layer_near_reference(method: str) -> None:
    if not torch.cuda.is_available() or not qlinear.has_bitsandbytes():
        pytest.skip("needs CUDA and bitsandbytes (pip install -e '.[quant]')")
    from kernels.qlinear import bnb

    N, K = 256, 512
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1)) * 0.05
    bias = torch.randn(N) * 0.1
    x = torch.randn(3, K, device="cuda", dtype=torch.bfloat16)
    if method == "nf4":
        q, absmax = quantize_nf4(w, bnb.NF4_BLOCK_SIZE)
        deq = reference.dequantize_nf4(q, absmax, (N, K), bnb.NF4_BLOCK_SIZE)
        layer = bnb.linear_nf4(deq, bias, torch.device("cuda"))
    else:
        deq = reference.dequantize_int8(*quantize_int8(w))
        layer = bnb.linear_int8(deq, bias, torch.device("cuda"))
    out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = x.float() @ deq.cuda().T + bias.cuda()
    # nf4: the same codes in bf16 compute; int8: LLM.int8 also quantizes the activations
    assert_close(f"bnb {method}", ref, out.float(), 1e-2 if method == "nf4" else 3e-2)
