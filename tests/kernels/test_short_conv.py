"""Conv-tail decode step: reference == the engine's convolution; Triton kernel == reference."""

import pytest
import torch

from engine.model.gated_deltanet import ShortConvolution
from kernels import short_conv
from kernels._testing import assert_close
from kernels.short_conv import reference

B, C, KS = 2, 300, 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_step_matches_engine_convolution_over_many_tokens(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = ShortConvolution(C, KS).to(dtype)
    x = torch.randn(B, 9, C).to(dtype)
    with torch.no_grad():
        y_all, tail_all = conv(x, torch.zeros(B, C, KS - 1, dtype=dtype))
    tail = torch.zeros(B, C, KS - 1, dtype=dtype)
    ys = [short_conv.step(x[:, t], tail, conv.weight[:, 0].detach()) for t in range(9)]
    assert_close("y", y_all, torch.stack(ys, dim=1), 1e-6)
    assert torch.equal(tail, tail_all)


def test_bad_shapes_name_the_values() -> None:
    with pytest.raises(ValueError, match=r"tail \(2, 300, 2\), weight \(300, 4\) do not fit"):
        reference.step(torch.randn(B, C), torch.zeros(B, C, 2), torch.randn(C, KS))
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        short_conv.step(
            torch.randn(B, C), torch.zeros(B, C, 3), torch.randn(C, KS), use_kernel=True
        )


@pytest.mark.gpu
@pytest.mark.parametrize("KS", [2, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_step_matches_reference(dtype: torch.dtype, KS: int) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.short_conv import step_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(KS)
    weight = torch.randn(C, KS, generator=gen).to(dtype).to(device)
    tail_ref = torch.randn(B, C, KS - 1, generator=gen).to(dtype).to(device)
    tail = tail_ref.clone()
    for t in range(KS + 2):
        x = torch.randn(B, C, generator=gen).to(dtype).to(device)
        y_ref = reference.step(x, tail_ref, weight)
        poison_allocator(device)
        y = step_triton.step(x, tail, weight)
        assert_close(f"y at step {t}", y_ref, y, 1e-5 if dtype == torch.float32 else 1e-2)
        assert torch.equal(tail, tail_ref), f"tail at step {t}"


@pytest.mark.parametrize("T", [1, 2, 7])
def test_prefill_reference_is_step_by_step(T: int) -> None:
    """A prompt convolved at once == its tokens one decode step at a time, tail included."""
    gen = torch.Generator().manual_seed(T)
    weight = torch.randn(C, KS, generator=gen)
    tail0 = torch.randn(B, C, KS - 1, generator=gen)
    x = torch.randn(B, T, C, generator=gen)
    y, tail = reference.prefill(x, tail0, weight)
    stepped = tail0.clone()
    ys = torch.stack([reference.step(x[:, t], stepped, weight) for t in range(T)], dim=1)
    assert_close("y", ys, y, 1e-6)
    assert torch.allclose(tail, stepped)
    assert torch.equal(tail0, tail0.clone())  # not modified: the caller copies the new tail


def test_prefill_bad_shapes_name_the_values() -> None:
    want = r"x \(2, 5, 300\), tail \(2, 300, 2\), weight \(300, 4\) do not fit"
    with pytest.raises(ValueError, match=want):
        short_conv.prefill(torch.randn(B, 5, C), torch.zeros(B, C, 2), torch.randn(C, KS))


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 2, 33, 130])
@pytest.mark.parametrize("KS", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_prefill_matches_reference(dtype: torch.dtype, KS: int, T: int) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.short_conv import prefill_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(T * 10 + KS)
    weight = torch.randn(C, KS, generator=gen).to(dtype).to(device)
    tail = torch.randn(B, C, KS - 1, generator=gen).to(dtype).to(device)
    # x as the engine hands it: a column block of a wider projection output
    wide = torch.randn(B, T, C + 40, generator=gen).to(dtype).to(device)
    x = wide[:, :, 17 : 17 + C]
    y_ref, tail_ref = reference.prefill(x, tail, weight)
    poison_allocator(device)
    y, tail_new = prefill_triton.prefill(x, tail, weight)
    assert_close("y", y_ref, y, 1e-5 if dtype == torch.float32 else 1e-2)
    assert torch.equal(tail_new, tail_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_step3_matches_three_reference_steps(dtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.short_conv import step_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(3)
    sizes = (300, 257, 512)  # blocks of 256 channels end mid-way in the first two
    weights = tuple(torch.randn(c, KS, generator=gen).to(dtype).to(device) for c in sizes)
    tails_ref = [torch.randn(B, c, KS - 1, generator=gen).to(dtype).to(device) for c in sizes]
    tails = tuple(t.clone() for t in tails_ref)
    for t in range(KS + 1):
        # q, k, v as the decode step hands them: column blocks of one projection output
        proj = torch.randn(B, sum(sizes) + 9, generator=gen).to(dtype).to(device)
        xs = tuple(proj.split((*sizes, 9), dim=1)[:3])
        want = [reference.step(x, tr, w) for x, tr, w in zip(xs, tails_ref, weights, strict=True)]
        poison_allocator(device)
        got = step_triton.step3(xs, tails, weights)
        ratio = 1e-5 if dtype == torch.float32 else 1e-2
        for i in range(3):
            assert_close(f"y{i} at step {t}", want[i], got[i], ratio)
            assert torch.equal(tails[i], tails_ref[i]), f"tail {i} at step {t}"


def test_prefill3_is_three_prefills_with_the_tails_replaced() -> None:
    gen = torch.Generator().manual_seed(5)
    sizes = (300, 257, 512)
    weights = tuple(torch.randn(c, KS, generator=gen) for c in sizes)
    tails0 = [torch.randn(B, c, KS - 1, generator=gen) for c in sizes]
    xs = tuple(torch.randn(B, 6, c, generator=gen) for c in sizes)
    want = [reference.prefill(x, t, w) for x, t, w in zip(xs, tails0, weights, strict=True)]
    tails = tuple(t.clone() for t in tails0)
    got = short_conv.prefill3(xs, tails, weights)
    for i in range(3):
        assert torch.equal(got[i], want[i][0]), f"y{i}"
        assert torch.equal(tails[i], want[i][1]), f"tail {i}"


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 2, 33, 130, 1100])
@pytest.mark.parametrize("KS", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_prefill3_matches_reference(dtype: torch.dtype, KS: int, T: int) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.short_conv import prefill_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(T * 10 + KS)
    sizes = (300, 257, 512)  # blocks of 128 channels end mid-way in the first two
    weights = tuple(torch.randn(c, KS, generator=gen).to(dtype).to(device) for c in sizes)
    tails_ref = [torch.randn(B, c, KS - 1, generator=gen).to(dtype).to(device) for c in sizes]
    tails = tuple(t.clone() for t in tails_ref)
    # q, k, v as a prompt hands them: column blocks of one projection output
    proj = torch.randn(B, T, sum(sizes) + 9, generator=gen).to(dtype).to(device)
    xs = tuple(proj.split((*sizes, 9), dim=2)[:3])
    want = [reference.prefill(x, t, w) for x, t, w in zip(xs, tails_ref, weights, strict=True)]
    poison_allocator(device)
    got = prefill_triton.prefill3(xs, tails, weights)
    for i in range(3):
        assert_close(f"y{i}", want[i][0], got[i], 1e-5 if dtype == torch.float32 else 1e-2)
        assert torch.equal(tails[i], want[i][1]), f"tail {i}"
