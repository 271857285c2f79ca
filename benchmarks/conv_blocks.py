"""The prompt convolution's block shapes, timed: Gated DeltaNet's three short convolutions of one
InfiniteVL-4B layer (q, k: 2,048 channels, v: 4,096; 4 taps) through ``short_conv.prefill3`` at a
frame's 256 tokens and at longer prompts, each block shape replayed from a CUDA graph.

    python -m benchmarks.conv_blocks [--tokens 256,8192]

``kernels.short_conv.prefill_triton.block_tokens`` picks the default's tokens per block from
these timings. Needs CUDA.
"""

import argparse

import torch

from kernels.graph_timing import graph_us

# (tokens per block, channels per block, warps)
SHAPES = [
    (64, 128, 8), (32, 128, 4), (16, 128, 4), (16, 256, 4), (32, 256, 8), (8, 256, 4), (64, 64, 4)
]  # fmt: skip
CHANNELS = (2048, 2048, 4096)
REPLAYS = 20


def time_shape(T: int, shape: tuple[int, int, int]) -> float:
    """Microseconds of one ``prefill3`` (its two launches) at T tokens with ``shape``."""
    from kernels.short_conv import prefill_triton

    dev, dtype = torch.device("cuda"), torch.bfloat16
    xs = tuple(torch.randn(1, T, c, device=dev, dtype=dtype) for c in CHANNELS)
    tails = tuple(torch.randn(1, c, 3, device=dev, dtype=dtype) for c in CHANNELS)
    weights = tuple(torch.randn(c, 4, device=dev, dtype=dtype) for c in CHANNELS)
    saved = prefill_triton.block_tokens, prefill_triton.BC, prefill_triton.WARPS
    prefill_triton.block_tokens = lambda _T: shape[0]
    prefill_triton.BC, prefill_triton.WARPS = shape[1], shape[2]
    try:
        return graph_us(lambda _: prefill_triton.prefill3(xs, tails, weights), calls=REPLAYS)
    finally:
        prefill_triton.block_tokens, prefill_triton.BC, prefill_triton.WARPS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="256,8192", help="comma list of prompt lengths")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    from kernels.short_conv import prefill_triton

    lengths = [int(t) for t in args.tokens.split(",")]
    print(f"# short_conv.prefill3 block shapes on {torch.cuda.get_device_name()}, bf16, batch 1")
    print()
    print("| tokens | tokens/block | channels/block | warps | us | default |")
    print("|---|---|---|---|---|---|")
    for T in lengths:
        chosen = (prefill_triton.block_tokens(T), prefill_triton.BC, prefill_triton.WARPS)
        for shape in SHAPES:
            us = time_shape(T, shape)
            mark = "yes" if shape == chosen else ""
            print(f"| {T:,} | {shape[0]} | {shape[1]} | {shape[2]} | {us:.1f} | {mark} |")


if __name__ == "__main__":
    main()
