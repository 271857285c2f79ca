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
