"""The chunked gated delta rule of one InfiniteVL-4B layer (16 heads, K 128, V 256, bf16, batch 1,
an initial state) at prompt lengths from a frame's 256 tokens up: flash-linear-attention's kernel
(``chunk_fla``) beside the project's two Triton launches (``chunk_triton``) in each block shape,
microseconds a call replayed from a CUDA graph (``kernels.graph_timing``), and each one's error
against the float32 reference. The dispatcher's ``SHORT_PROMPT`` and ``chunk_triton``'s defaults
come from this table.

    python -m benchmarks.gdn_chunk [--tokens 256 512 1024 2048 4096]

Needs CUDA (and fla-core for its row).
"""

import argparse
import itertools

import torch

from kernels import gated_delta
from kernels._testing import rel_rms
from kernels.gated_delta import chunk_fla, chunk_triton, reference
from kernels.graph_timing import graph_us

B, H, K, V = 1, 16, 128, 256
VARIANTS = [  # (chunk_size, BV, num_warps); BV None: block_v's pick
    (chunk_triton.CHUNK, None, 4),
    *itertools.product((16, 32), (16, 32, 64), (4, 8)),
    (64, 32, 4),
]


def make_inputs(T: int) -> dict:
    dev, bf = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(T)
    return {
        "q": torch.randn(B, T, H, K, device=dev, generator=gen).to(bf),
        "k": torch.randn(B, T, H, K, device=dev, generator=gen).to(bf),
        "v": torch.randn(B, T, H, V, device=dev, generator=gen).to(bf),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev, generator=gen) + 3.0),
        "beta": torch.rand(B, T, H, device=dev, generator=gen).to(bf),
        "initial_state": torch.randn(B, H, K, V, device=dev, generator=gen) * 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs CUDA")
    kw = {"scale": K**-0.5, "use_qk_l2norm": True}
    rows: dict[str, list[str]] = {}
    errors: dict[str, list[str]] = {}
    for T in args.tokens:
        x = make_inputs(T)
        o_ref, S_ref = reference.chunk(**x, **kw)
        calls: dict[str, object] = {}
        if chunk_fla.is_available():
            calls["fla (chunk_fla)"] = lambda x=x: chunk_fla.chunk(**x, **kw)
        for C, BV, warps in VARIANTS:
            name = f"chunk_triton C={C} BV={BV or 'auto'} warps={warps}"
            if (C, BV, warps) == VARIANTS[0]:
                name += " (default)"
            calls[name] = lambda x=x, C=C, BV=BV, w=warps: chunk_triton.chunk(
                **x, **kw, chunk_size=C, BV=BV, num_warps=w
            )
        for name, call in calls.items():
            o, S = call()
            errors.setdefault(name, []).append(f"{rel_rms(o_ref, o):.1e} / {rel_rms(S_ref, S):.1e}")
            rows.setdefault(name, []).append(f"{graph_us(lambda i, c=call: c(), calls=8):.1f}")
    print(f"# Chunked gated delta rule, one 4B layer, bf16, on {torch.cuda.get_device_name()}")
    print(f"(dispatcher: chunk_triton up to SHORT_PROMPT = {gated_delta.SHORT_PROMPT} tokens)")
    print()
    print("| path | " + " | ".join(f"{T} tok, us" for T in args.tokens) + " |")
    print("|---|" + "---|" * len(args.tokens))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("Relative RMS error against the float32 reference (o / final state):")
    print()
    print("| path | " + " | ".join(f"{T} tok" for T in args.tokens) + " |")
    print("|---|" + "---|" * len(args.tokens))
    for name, cells in errors.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
