"""Comparison helper for kernel tests: relative RMS error with max-abs in the message."""

import torch


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Relative RMS error of ``out`` against ``ref`` (computed in float64)."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    denom = ref64.pow(2).mean().sqrt().clamp_min(1e-12)
    return ((out64 - ref64).pow(2).mean().sqrt() / denom).item()


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float) -> None:
    """Fail when ``out`` differs from ``ref`` by more than ``ratio`` relative RMS, or holds NaN."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: output holds NaN"
    err = rel_rms(ref, out)
    max_abs = (out.detach().double() - ref.detach().double()).abs().max().item()
    assert err <= ratio, f"{name}: relative RMS error {err:.3e} > {ratio:.1e} (max abs {max_abs:.3e})"


def device_for_kernel_tests() -> torch.device:
    """CUDA when present, else the CPU under Triton's interpreter (TRITON_INTERPRET=1); skip otherwise."""
    import os

    import pytest

    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 to run the Triton kernels on the CPU")


def poison_allocator(device: torch.device, sizes: tuple[int, ...] = (1 << 12, 1 << 16, 1 << 20, 1 << 24)) -> None:
    """Leave NaN-filled blocks in the CUDA caching allocator (no-op elsewhere).

    A ``torch.empty`` inside a kernel wrapper then returns NaN-filled memory, so an output element
    the kernel forgets to write shows up as NaN in ``assert_close``.
    """
    if device.type != "cuda":
        return
    blocks = [torch.full((n,), float("nan"), device=device) for n in sizes for _ in range(2)]
    del blocks
