"""SwiGLU product: the Triton kernel == torch's ``F.silu(gate) * up``."""

import pytest
import torch
import torch.nn.functional as F

from kernels import swiglu
from kernels._testing import assert_close


def test_reference_is_silu_times_up_and_names_bad_shapes() -> None:
    gate, up = torch.randn(3, 40), torch.randn(3, 40)
    assert torch.equal(swiglu.silu_mul(gate, up), F.silu(gate) * up)
    with pytest.raises(ValueError, match=r"gate \(3, 40\) and up \(3, 41\) differ"):
        swiglu.silu_mul(gate, torch.randn(3, 41))
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        swiglu.silu_mul(gate, up, use_kernel=True)


@pytest.mark.gpu
@pytest.mark.parametrize(("rows", "N"), [(2, 1), (2, 1000), (2, 11008), (300, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_silu_mul_matches_torch(dtype: torch.dtype, rows: int, N: int) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.swiglu import swiglu_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(N)
    # gate and up as the decode step hands them: the halves of one gate/up product
    both = (torch.randn(rows, 1, 2 * N, generator=gen) * 4).to(dtype).to(device)
    gate, up = both.split(N, dim=-1)
    want = F.silu(gate) * up
    poison_allocator(device)
    got = swiglu_triton.silu_mul(gate, up)
    # bf16: an exp one ulp apart may flip a rounding; the interpreter's casts truncate
    exact = dtype == torch.float32
    assert_close("silu * up", want, got, 1e-6 if exact else 1e-3 if device.type == "cuda" else 1e-2)
