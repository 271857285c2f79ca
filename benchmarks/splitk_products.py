"""A 448x448 frame's narrow products with and without split-K, timed: each InfiniteVL-4B
product that ``kernels.splitk`` may split (256 decoder rows, 1,024 vision rows), through
``F.linear`` and through each split that divides K, replayed from a CUDA graph over weights read
from memory (``kernels.graph_timing``), beside the floor of its bytes at the copy bandwidth and
what ``kernels.splitk.linear`` picks.

    python -m benchmarks.splitk_products [--bandwidth 3.0e12]

Needs CUDA.
"""

import argparse

import torch
import torch.nn.functional as F

from kernels import splitk
from kernels.graph_timing import copies_beyond_l2, graph_us
from kernels.splitk.partials import slice_width

# (name, rows, N, K, bias): a frame's products with few output tiles (InfiniteVL-4B)
PRODUCTS = [
    ("MLP down", 256, 2048, 11008, False),
    ("Gated DeltaNet o", 256, 2048, 4096, False),
    ("attention o", 256, 2048, 2048, False),
    ("merger fc2", 256, 2048, 5120, True),
    ("merger fc1", 256, 5120, 5120, True),
    ("vision attention proj", 1024, 1280, 1280, True),
    ("vision MLP down (padded)", 1024, 1280, 3424, True),
]


def time_product(M: int, N: int, K: int, bias: bool) -> tuple[list[str], object]:
    """Microseconds of ``F.linear`` and of each split (cells), and ``splitk.linear``'s pick."""
    dev, dtype = torch.device("cuda"), torch.bfloat16
    x = torch.randn(M, K, device=dev, dtype=dtype) / K**0.5
    ws = copies_beyond_l2(torch.randn(N, K, device=dev, dtype=dtype))
    b = torch.randn(N, device=dev, dtype=dtype) if bias else None
    cells = [f"{graph_us(lambda i: F.linear(x, ws[i % len(ws)], b)):.1f}"]
    for s in splitk.SPLITS:
        if slice_width(K, s) is None:
            cells.append("-")
            continue
        us = graph_us(lambda i, s=s: splitk.split_linear(x, ws[i % len(ws)], b, s))
        cells.append(f"{us:.1f}")
    with splitk.preparing_capture():
        splitk.linear(x, ws[0], b)  # the dispatcher's own timed choice, as before a capture
    return cells, splitk.choices().get(splitk.choice_key(x, ws[0], b), "not eligible")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="copy bytes/s, the floor")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    print(f"# split-K products on {torch.cuda.get_device_name()}, bf16, us a call")
    print()
    head = " | ".join(f"{s} slices" for s in splitk.SPLITS)
    print(f"| product | rows | N | K | F.linear | {head} | floor | picked |")
    print("|---|---|---|---|---|" + "---|" * len(splitk.SPLITS) + "---|---|")
    with torch.no_grad():
        for name, M, N, K, bias in PRODUCTS:
            cells, picked = time_product(M, N, K, bias)
            floor = (N * K + M * K + M * N) * 2 / args.bandwidth * 1e6
            print(
                f"| {name} | {M:,} | {N:,} | {K:,} | {' | '.join(cells)} | {floor:.1f} | {picked} |"
            )


if __name__ == "__main__":
    main()
