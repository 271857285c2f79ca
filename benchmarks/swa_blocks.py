"""The sliding-window prefill's block shapes and splits, timed: one InfiniteVL-4B attention layer
(16 query heads, 2 key/value heads, 128 dims, window 8,192) through ``swa.launch_prefill``, at a
frame's 256 tokens over a full ring read in place (what the streaming graph runs) and at a long
prompt's plain band, each shape replayed from a CUDA graph.

    python -m benchmarks.swa_blocks [--tokens 256,16384]

``kernels.swa.prefill_triton.block_shape`` and ``prefill_splits`` pick the default from these
timings. Needs CUDA.
"""

import argparse

import torch

from kernels import shared_memory
from kernels.graph_timing import graph_us

H, HKV, D, W = 16, 2, 128, 8192
# (query rows per block, keys per block, warps, stages, splits; 0 splits: prefill_splits picks)
Shape = tuple[int, int, int, int, int]
FRAME_TOKENS = 1024  # up to this many tokens: a frame, over a full ring; more: a plain prompt
FRAME_SHAPES: list[Shape] = [
    (128, 64, 8, 3, 0), (128, 64, 8, 3, 4), (128, 64, 8, 3, 16), (64, 64, 4, 3, 0),
    (64, 64, 4, 3, 4), (64, 64, 4, 3, 8), (64, 128, 4, 3, 4), (64, 128, 8, 3, 4),
    (64, 64, 4, 4, 8), (128, 128, 8, 2, 8), (32, 64, 4, 3, 4),
]  # fmt: skip
PROMPT_SHAPES: list[Shape] = [
    (128, 64, 8, 3, 0), (128, 128, 8, 3, 0), (128, 64, 4, 3, 0), (64, 64, 4, 3, 0),
    (128, 32, 4, 3, 0), (128, 64, 8, 4, 0), (64, 128, 4, 3, 0),
]  # fmt: skip
REPLAYS = 10


def time_shape(T: int, shape: Shape) -> float:
    """Microseconds of one ``launch_prefill`` (with its combine launch, when split) at T tokens
    with ``shape`` (its splits given): over a full ring plus T new keys when T is at most
    ``FRAME_TOKENS``, else a plain prompt."""
    from kernels.swa import prefill_triton

    dev, dtype = torch.device("cuda"), torch.bfloat16
    block_m, block_n, warps, stages, splits = shape
    q = torch.randn(1, H, T, D, device=dev, dtype=dtype)
    ring = T <= FRAME_TOKENS
    L = W if ring else T
    keys, values = (torch.randn(1, HKV, L, D, device=dev, dtype=dtype) for _ in range(2))
    new = None
    if ring:
        k, v = (torch.randn(1, HKV, T, D, device=dev, dtype=dtype) for _ in range(2))
        new = (k, v, torch.full((1,), 3 * W + 5, device=dev, dtype=torch.int64))

    def run(_: int) -> None:
        prefill_triton.launch_prefill(
            q, keys, values, W, D**-0.5, block_m, block_n, warps, stages, num_splits=splits, new=new
        )  # fmt: skip

    return graph_us(run, calls=REPLAYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="256,16384", help="comma list of prompt lengths")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    from kernels.swa import prefill_triton

    dev = torch.device("cuda")
    print(f"# swa.launch_prefill block shapes on {torch.cuda.get_device_name()}, bf16, batch 1")
    print()
    print("| tokens | keys | rows/block | keys/block | warps | stages | splits | us | default |")
    print("|---|---|---|---|---|---|---|---|---|")

    def resolved(shape: Shape, T: int) -> Shape:
        """``shape`` with its splits, 0 replaced by what ``prefill_splits`` picks."""
        return (*shape[:4], shape[4] or prefill_triton.prefill_splits(1, H, T, shape[0], dev))

    limit = shared_memory.limit(dev)
    for T in (int(t) for t in args.tokens.split(",")):
        frame = T <= FRAME_TOKENS
        picked = prefill_triton.block_shape(torch.bfloat16, ring=frame, tokens=T, limit=limit)
        default = resolved((*picked, 0), T)
        for shape in FRAME_SHAPES if frame else PROMPT_SHAPES:
            full = resolved(shape, T)
            try:
                us = f"{time_shape(T, full):.1f}"
            except Exception as e:  # a shape over the shared memory: named, the rest still timed
                us = f"failed ({type(e).__name__})"
            keys = "ring + new" if frame else "band"
            mark = "yes" if full == default else ""
            print(f"| {T:,} | {keys} | {' | '.join(str(n) for n in full)} | {us} | {mark} |")


if __name__ == "__main__":
    main()
