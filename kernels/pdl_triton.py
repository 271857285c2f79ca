"""The device side of ``kernels.pdl``: what a kernel launched with PDL does first."""

import triton
import triton.language as tl


@triton.jit
def begin(PDL: tl.constexpr):
    """With ``PDL``: wait until the kernel before has ended (its writes visible), then let the
    next kernel launch. Called before the first read of another kernel's output and before the
    first write; nothing without ``PDL``."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
