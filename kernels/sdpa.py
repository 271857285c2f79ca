"""torch's fused SDPA without cuDNN's backend.

cuDNN's SDPA re-plans for every new key length (~44 ms a call on an H100, PERFORMANCE.md): growing
caches, training batches and images of new sizes bring new lengths at every call. Flash, then
memory-efficient, then math attention are taken instead.
"""

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_context(device: torch.device) -> AbstractContextManager[None]:
    """SDPA restricted to ``SDPA_BACKENDS`` on CUDA; nothing changes elsewhere."""
    return sdpa_kernel(SDPA_BACKENDS) if device.type == "cuda" else nullcontext()
