"""The shared memory one Triton program may take on a GPU.

A kernel's pipelined copies keep ``num_stages`` buffers of each streamed block in shared memory.
A shape tuned on an H100 (227 KiB a block) can need more than a smaller GPU allows (an A100 163
KiB, an RTX 3090 or 4090 99 KiB, a T4 64 KiB); there Triton refuses the launch
(``OutOfResources``). The launchers of the sliding-window kernels ask ``limit`` and shrink their
shapes to fit (``python -m kernels.compile_check`` prints what each compiled shape takes).
"""

import torch


def limit(device: torch.device) -> int | None:
    """Bytes of shared memory a program may take on ``device``: the GPU's opt-in maximum per
    block; None off CUDA (Triton's interpreter has no limit)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))
