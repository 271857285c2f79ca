"""Batch-1 GEMV: the Triton kernel == F.linear; the dispatcher's choice never changes the result."""

import pytest
import torch
import torch.nn.functional as F

from kernels import gemv
from kernels._testing import assert_close
from kernels.gemv import reference


def test_bad_shapes_name_the_values() -> None:
    with pytest.raises(ValueError, match=r"x \(1, 5\), weight \(3, 4\), bias None do not fit"):
        reference.linear(torch.randn(1, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        gemv.linear(torch.randn(1, 4), torch.randn(3, 4), use_kernel=True)


def test_cpu_takes_torch_and_makes_no_choice() -> None:
    x, w, b = torch.randn(1, 1, 8), torch.randn(5, 8), torch.randn(5)
    assert torch.equal(gemv.linear(x, w, b), F.linear(x, w, b))
    assert not any(key[3].type == "cpu" for key in gemv.choices())


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1), (37, 70), (300, 2049), (2048, 11008), (4097, 512)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_triton_gemv_matches_reference(
    shape: tuple[int, int], dtype: torch.dtype, with_bias: bool
) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.gemv import gemv_triton

    device = device_for_kernel_tests()
    N, K = shape
    gen = torch.Generator().manual_seed(N * 7 + K)
    x = torch.randn(1, 1, K, generator=gen).to(device, dtype)
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if with_bias else None
    ref = F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
    poison_allocator(device)
    y = gemv_triton.linear(x, w, b)
    assert y.dtype == dtype and y.shape == (1, 1, N)
    assert_close("y", ref, y, 1e-2)


@pytest.mark.gpu
def test_row_block_of_a_fused_matrix() -> None:
    """The decode step hands the kernel row blocks of one fused matrix (FusedLinear's views)."""
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests
    from kernels.gemv import gemv_triton

    device = device_for_kernel_tests()
    fused = torch.randn(96 + 40, 256, device=device, dtype=torch.bfloat16)
    x = torch.randn(1, 256, device=device, dtype=torch.bfloat16)
    block = fused[96:]
    assert_close(
        "block", F.linear(x.float(), block.float()).bfloat16(), gemv_triton.linear(x, block), 1e-2
    )


@pytest.mark.gpu
def test_measured_choice_is_recorded_and_kept_in_a_capture() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    device = torch.device("cuda")
    w = torch.randn(1536, 1024, device=device, dtype=torch.bfloat16) / 32
    x = torch.randn(1, 1, 1024, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        y = gemv.linear(x, w)
    key = (1536, 1024, torch.bfloat16, x.device, False)
    assert key in gemv.choices()
    assert_close("choice", F.linear(x.float(), w.float()).bfloat16(), y, 1e-2)
    # a shape first met inside a capture takes cuBLAS and is decided later, outside
    w2 = torch.randn(640, 1024, device=device, dtype=torch.bfloat16) / 32
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        gemv.linear(x, w)  # warm-up of the known shape on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph), torch.no_grad():
        out = gemv.linear(x, w2)
    graph.replay()
    torch.cuda.synchronize()
    assert (640, 1024, torch.bfloat16, x.device, False) not in gemv.choices()
    assert_close("captured", F.linear(x.float(), w2.float()).bfloat16(), out, 1e-2)


def test_silu_mul_linear_is_the_swiglu_product_then_the_linear() -> None:
    gen = torch.Generator().manual_seed(5)
    gate_up, w, b = torch.randn(1, 1, 2 * 24, generator=gen), torch.randn(7, 24), torch.randn(7)
    gate, up = gate_up.split(24, dim=-1)
    assert torch.equal(gemv.silu_mul_linear(gate_up, w, b), F.linear(F.silu(gate) * up, w, b))
    with pytest.raises(ValueError, match=r"gate_up \(1, 1, 48\) is not \[gate \| up\] for weight"):
        gemv.silu_mul_linear(gate_up, torch.randn(7, 25))
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        gemv.silu_mul_linear(gate_up, w, use_kernel=True)
    assert not gemv.glu_choices()  # nothing timed on the CPU


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1), (37, 70), (300, 2049), (2048, 11008)])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_fused_silu_mul_gemv_matches_the_two_kernels(
    shape: tuple[int, int], with_bias: bool
) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.gemv import gemv_triton

    device, dtype = device_for_kernel_tests(), torch.bfloat16
    N, K = shape
    gen = torch.Generator().manual_seed(N + K)
    gate_up = (torch.randn(1, 1, 2 * K, generator=gen) * 3).to(device, dtype)
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if with_bias else None
    gate, up = gate_up.split(K, dim=-1)
    # the separate path's input, rounded as kernels.swiglu rounds it, then a float32 product
    x = (F.silu(gate) * up).float()
    ref = F.linear(x, w.float(), None if b is None else b.float()).to(dtype)
    poison_allocator(device)
    y = gemv_triton.silu_mul_linear(gate_up, w, b)
    assert y.shape == (1, 1, N) and y.dtype == dtype
    # the interpreter's bf16 casts truncate, twice more here than in a plain GEMV
    assert_close("y", ref, y, 1e-2 if device.type == "cuda" else 3e-2)


@pytest.mark.gpu
def test_fused_silu_mul_gemv_is_opt_in_and_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    device = torch.device("cuda")
    gate_up = torch.randn(1, 1, 2 * 1024, device=device, dtype=torch.bfloat16)
    w = torch.randn(768, 1024, device=device, dtype=torch.bfloat16) / 32
    gate, up = gate_up.split(1024, dim=-1)
    want = F.linear((F.silu(gate) * up).float(), w.float()).bfloat16()
    key = (768, 1024, torch.bfloat16, gate_up.device, False)  # cuda:0, as the table keys it
    with torch.no_grad():
        monkeypatch.delenv("INFINITEVL_GEMV_GLU", raising=False)
        assert_close("off", want, gemv.silu_mul_linear(gate_up, w), 1e-2)
        assert key not in gemv.glu_choices()  # off: nothing timed
        monkeypatch.setenv("INFINITEVL_GEMV_GLU", "1")
        assert_close("on", want, gemv.silu_mul_linear(gate_up, w), 1e-2)
    assert key in gemv.glu_choices()
