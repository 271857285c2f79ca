"""The shared memory one Triton program may take on a GPU.

A kernel's pipelined copies keep ``num_stages`` buffers of each streamed block in shared memory.
A shape tuned on an H100 (227 KiB a block) can need more than a smaller GPU allows (an A100 163
KiB, an RTX 3090 or 4090 99 KiB, a T4 64 KiB); there Triton refuses the launch
(``OutOfResources``). The launchers of the sliding-window kernels ask ``limit`` and shrink their
shapes to fit with ``fit`` (``python -m kernels.compile_check`` prints what each compiled shape
takes: the same bytes as ``program_bytes``).
"""

import torch


def limit(device: torch.device) -> int | None:
    """Bytes of shared memory a program may take on ``device``: the GPU's opt-in maximum per
    block; None off CUDA (Triton's interpreter has no limit)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))


def program_bytes(rows: int, block_n: int, stages: int, head_dim: int, itemsize: int) -> int:
    """Shared memory one attention program takes: its ``rows`` of queries and ``stages`` buffers
    of a key and a value block of ``block_n`` keys, each row ``head_dim`` wide padded to a power
    of two (``compile_check``: 128 KiB for 128 rows, 64 keys and 3 stages in bf16 at 128 dims)."""
    padded = 1 << (head_dim - 1).bit_length()  # triton.next_power_of_2, without Triton
    return (rows + 2 * stages * block_n) * padded * itemsize


def fit(
    rows: int, block_n: int, stages: int, head_dim: int, itemsize: int, limit: int | None
) -> tuple[int, int]:
    """(keys per block, stages) of a program that fits ``limit`` bytes: stages cut to 2, then keys
    halved down to 16. The caller cuts further (rows, or the pipelining) if that is not enough."""
    while limit is not None and program_bytes(rows, block_n, stages, head_dim, itemsize) > limit:
        if stages > 2:
            stages -= 1
        elif block_n > 16:
            block_n //= 2
        else:
            break
    return block_n, stages
