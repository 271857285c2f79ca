"""One causal attention layer at the Transformer's shape (16 heads of 128 dims, bf16, batch 1)
through each of torch's SDPA backends: the first call (cuDNN plans a new length there) and the
fastest of the next two.

    python -m benchmarks.sdpa_backends [--tokens 32768,131072]

The engine's full-attention path leaves cuDNN out (``kernels.sdpa``: it re-plans for every new
key length), so the Transformer rows of ``bench_engine`` run flash; the reference's Transformer
ran torch's default order, cuDNN first on an H100. Needs CUDA.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def timed_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="32768,131072", help="comma list of lengths")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    dev = torch.device("cuda")
    print(f"# causal SDPA, 16 heads x 128, bf16, batch 1, on {torch.cuda.get_device_name()}")
    print()
    print("| tokens | backend | first call ms | next calls ms | TFLOP/s |")
    print("|---|---|---|---|---|")
    for T in (int(t) for t in args.tokens.split(",")):
        q, k, v = (torch.randn(1, 16, T, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flop = 4 * 16 * 128 * T * T / 2  # causal: half the score matrix
        for name, backend in BACKENDS.items():
            try:
                with sdpa_kernel([backend]):
                    first = timed_ms(q, k, v)
                    best = min(timed_ms(q, k, v) for _ in range(2))
            except RuntimeError as e:  # a backend this GPU or shape lacks: named, the rest timed
                print(f"| {T:,} | {name} | failed: {str(e)[:80]} | | |")
                continue
            tflops = flop / best / 1e9
            print(f"| {T:,} | {name} | {first:.1f} | {best:.1f} | {tflops:.0f} |", flush=True)
        del q, k, v


if __name__ == "__main__":
    main()
