"""The rule every Triton dispatcher follows (``kernels.use_fast_path``)."""

import pytest
import torch

from kernels import has_triton, use_fast_path


def test_insisting_without_a_kernel_names_the_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    want = r"short_conv.step: no fast kernel for device 'cpu'; use_kernel=True needs CUDA"
    with pytest.raises(ValueError, match=want):
        use_fast_path(torch.zeros(2), True, "short_conv.step")


def test_cpu_tensors_take_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2)
    assert use_fast_path(x, None, "op") is False
    assert use_fast_path(x, False, "op") is False


def test_the_interpreter_runs_forced_kernels_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TRITON_INTERPRET=1`` lets a test force a kernel onto CPU tensors, and only force it."""
    if not has_triton():
        pytest.skip("Triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2)
    assert use_fast_path(x, True, "op") is True
    assert use_fast_path(x, None, "op") is False  # picking stays CUDA-only


@pytest.mark.gpu
def test_cuda_picks_the_kernel_unless_switched_off_or_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (torch.cuda.is_available() and has_triton()):
        pytest.skip("needs CUDA and Triton")
    x = torch.zeros(2, device="cuda")
    assert use_fast_path(x, None, "op", switch="INFINITEVL_TEST_SWITCH") is True
    monkeypatch.setenv("INFINITEVL_TEST_SWITCH", "0")
    assert use_fast_path(x, None, "op", switch="INFINITEVL_TEST_SWITCH") is False
    w = torch.zeros(2, device="cuda", requires_grad=True)
    assert use_fast_path(x, None, "op", grad_inputs=(x, w)) is False
    with torch.no_grad():
        assert use_fast_path(x, None, "op", grad_inputs=(x, w)) is True
