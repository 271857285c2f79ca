"""Split-K linear layer: the K-slice products and their sum == ``F.linear``."""

import pytest
import torch
import torch.nn.functional as F

from kernels import splitk
from kernels._testing import assert_close
from kernels.splitk import reference
from kernels.splitk.partials import partials, slice_width


def test_slices_are_equal_and_aligned() -> None:
    assert slice_width(11008, 4) == 2752
    assert slice_width(11008, 8) == 1376
    assert slice_width(4096, 1) is None  # one slice is no split
    assert slice_width(100, 3) is None  # unequal
    assert slice_width(100, 2) is None  # 50 columns: not 16-byte aligned in half precision


@pytest.mark.parametrize("splits", [2, 4, 8])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_split_product_sums_to_the_linear_layer(splits: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(splits)
    x = torch.randn(2, 5, 128, generator=gen)
    w = torch.randn(40, 128, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    parts = partials(x.reshape(-1, 128), w, splits)
    assert parts.shape == (splits, 10, 40) and parts.dtype == torch.float32
    got = splitk.split_linear(x, w, b, splits)
    assert got.shape == (2, 5, 40)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_half_precision_rounds_once_after_a_float32_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 256, generator=gen).bfloat16()
    w = torch.randn(24, 256, generator=gen).bfloat16()
    got = splitk.split_linear(x, w, None, 4)
    assert got.dtype == torch.bfloat16
    exact = F.linear(x.float(), w.float()).bfloat16()
    # the float32 sums of four slices, rounded once: at most one bf16 rounding step from exact
    torch.testing.assert_close(got.float(), exact.float(), rtol=1e-2, atol=1e-2)


def test_rows_with_a_row_stride_are_read_in_place() -> None:
    # the output projection's input is a reshaped attention output: any row stride, unit on K
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(6, 96, generator=gen)
    x = wide[:, :64]
    w = torch.randn(16, 64, generator=gen)
    torch.testing.assert_close(splitk.split_linear(x, w, None, 2), F.linear(x, w))


def test_bad_shapes_name_themselves() -> None:
    x, w = torch.randn(3, 64), torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"x \(3, 63\), weight \(8, 64\), bias None do not fit"):
        splitk.linear(x[:, :63], w)
    with pytest.raises(ValueError, match=r"bias \(7,\) do not fit"):
        splitk.split_linear(x, w, torch.randn(7), 2)
    with pytest.raises(ValueError, match="K=64 does not split into 3 aligned slices"):
        splitk.split_linear(x, w, None, 3)


def test_cpu_and_training_calls_are_the_linear_layer_itself() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 512, generator=gen).bfloat16()
    w = torch.randn(32, 512, generator=gen).bfloat16().requires_grad_()
    y = splitk.linear(x, w)
    assert torch.equal(y, F.linear(x, w))
    y.float().sum().backward()  # the training path keeps autograd
    assert w.grad is not None and w.grad.shape == w.shape


@pytest.mark.gpu
@pytest.mark.parametrize(("S", "M", "N"), [(2, 1, 1), (2, 3, 1000), (4, 256, 2048), (8, 5, 33)])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_reduce_matches_torch(
    S: int, M: int, N: int, bias: bool, dtype: torch.dtype
) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.splitk import reduce_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(S * M + N)
    parts = torch.randn(S, M, N, generator=gen).to(device)
    b = torch.randn(N, generator=gen).to(dtype).to(device) if bias else None
    want = reference.reduce(parts, b, dtype)
    poison_allocator(device)
    got = reduce_triton.reduce(parts, b, dtype)
    assert got.dtype == dtype
    # bf16: one float32 sum rounded once on either side; the interpreter's casts truncate
    tol = 1e-6 if dtype == torch.float32 else 1e-3 if device.type == "cuda" else 1e-2
    assert_close("split-K sum", want, got, tol)


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the timed choice replays CUDA graphs")
    return torch.device("cuda")


@pytest.mark.gpu
def test_frame_shapes_take_the_fastest_split_and_match_cublas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("triton")
    device = _cuda()
    monkeypatch.delenv(splitk.SWITCH, raising=False)
    gen = torch.Generator().manual_seed(3)
    # a frame's 256 rows against the MLP's down projection (4B shape) and the merger's fc2
    for N, K, bias in ((2048, 11008, False), (2048, 5120, True)):
        x = (torch.randn(256, K, generator=gen) / K**0.5).bfloat16().to(device)
        w = torch.randn(N, K, generator=gen).bfloat16().to(device)
        b = torch.randn(N, generator=gen).bfloat16().to(device) if bias else None
        with torch.no_grad(), splitk.preparing_capture():
            got = splitk.linear(x, w, b)
        key = (256, N, K, torch.bfloat16, x.device, bias)
        assert splitk.choices()[key] in (1, *splitk.SPLITS)
        assert_close(
            f"splitk {N}x{K}",
            F.linear(x.float(), w.float(), None if b is None else b.float()),
            got,
            4e-3,
        )
        for s in splitk.SPLITS:  # every candidate, forced, gives the same product
            monkeypatch.setenv(splitk.SWITCH, str(s))
            assert_close(
                f"{s} slices",
                F.linear(x.float(), w.float(), None if b is None else b.float()),
                splitk.linear(x, w, b),
                4e-3,
            )
        monkeypatch.delenv(splitk.SWITCH)


@pytest.mark.gpu
def test_a_shape_is_timed_only_in_a_capture_warm_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = _cuda()
    monkeypatch.delenv(splitk.SWITCH, raising=False)
    x = torch.randn(100, 4096, device=device, dtype=torch.bfloat16)
    w = torch.randn(1024, 4096, device=device, dtype=torch.bfloat16)
    key = (128, 1024, 4096, torch.bfloat16, x.device, False)
    splitk._choice.pop(key, None)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        F.linear(x, w)  # cuBLAS warmed outside the capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad(), torch.cuda.graph(graph):
        y = splitk.linear(x, w)
    graph.replay()
    assert key not in splitk.choices()
    torch.testing.assert_close(y, F.linear(x, w))
    with torch.no_grad():
        splitk.linear(x, w)  # eager, not before a capture: cuBLAS, nothing timed
    assert key not in splitk.choices()
    with torch.no_grad(), splitk.preparing_capture():
        splitk.linear(x, w)
    assert key in splitk.choices()


def test_only_a_capture_warm_up_splits_and_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # the dispatch rule, on the CPU: eligibility and the timed choice stand in for the GPU's
    timed: list[tuple[int, ...]] = []

    def measured(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
        timed.append(tuple(x2.shape))
        return 4

    monkeypatch.delenv(splitk.SWITCH, raising=False)
    monkeypatch.setattr(splitk, "_eligible", lambda x, weight, rows: True)
    monkeypatch.setattr(splitk, "_measured_splits", measured)
    split_calls: list[int] = []
    real_split = splitk.split_linear

    def counting_split(x, weight, bias, splits):  # type: ignore[no-untyped-def]
        split_calls.append(splits)
        return real_split(x, weight, bias, splits)

    monkeypatch.setattr(splitk, "split_linear", counting_split)
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(2, 3, 256, generator=gen), torch.randn(16, 256, generator=gen)
    assert torch.equal(splitk.linear(x, w), F.linear(x, w))  # eager: one launch, nothing timed
    assert timed == [] and split_calls == []
    with splitk.preparing_capture():
        got = splitk.linear(x, w)
    assert timed == [(6, 256)] and split_calls == [4]
    torch.testing.assert_close(got, F.linear(x, w))
    monkeypatch.setenv(splitk.SWITCH, "0")
    with splitk.preparing_capture():
        assert torch.equal(splitk.linear(x, w), F.linear(x, w))
    monkeypatch.setenv(splitk.SWITCH, "2")  # forced: eager calls split too
    splitk.linear(x, w)
    assert split_calls == [4, 2] and len(timed) == 1
