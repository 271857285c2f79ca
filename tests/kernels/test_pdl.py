"""Programmatic dependent launch is on by default, only where the GPU has it (kernels.pdl); the
decode graph with it on is tested bit for bit in tests/engine/test_cuda_graph.py."""

import pytest
import torch

from kernels import pdl


def test_never_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(4)
    monkeypatch.delenv("INFINITEVL_PDL", raising=False)
    assert pdl.launch(x) == {"PDL": False, "launch_pdl": False}
    monkeypatch.setenv("INFINITEVL_PDL", "1")
    assert pdl.launch(x) == {"PDL": False, "launch_pdl": False}


@pytest.mark.gpu
def test_on_for_cuda_tensors_of_hopper_unless_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.zeros(4, device="cuda")
    monkeypatch.delenv("INFINITEVL_PDL", raising=False)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    assert pdl.launch(x) == {"PDL": hopper, "launch_pdl": hopper}
    monkeypatch.setenv("INFINITEVL_PDL", "0")
    assert pdl.launch(x) == {"PDL": False, "launch_pdl": False}
