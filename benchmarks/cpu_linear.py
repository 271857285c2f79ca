"""One linear layer on the CPU in every weight format the engine offers, beside the other library
that offers them (bitsandbytes' CPU backend, when installed): which is fastest here.

    .venv/bin/python benchmarks/cpu_linear.py                 # Qwen2.5-3B's MLP up_proj, 1 thread
    .venv/bin/python benchmarks/cpu_linear.py --threads 2 --rows 1,16,128

The engine's layers are built by ``engine.quant.quantize_`` (the path ``--quant`` takes), so each
row times what a quantized model runs. Prints a markdown table of the best of ``--repeat`` calls
in ms, and each format's error against the float32 product (||y - y_fp32|| / ||y_fp32||).
bitsandbytes is optional (`pip install -c constraints.txt bitsandbytes`); its rows say when it is
missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.quant import quantize_  # noqa: E402
from kernels import qlinear  # noqa: E402

Layer = Callable[[torch.Tensor], torch.Tensor]


def best_ms(layer: Layer, x: torch.Tensor, repeat: int) -> float:
    layer(x)  # first call: packing, allocation
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        layer(x)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def engine_layers(weight: torch.Tensor) -> dict[str, tuple[Layer, torch.dtype]]:
    """name -> (layer, activation dtype the caller passes)."""
    out: dict[str, tuple[Layer, torch.dtype]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data = weight.to(dtype)
        out[f"float ({str(dtype).split('.')[-1]})"] = (linear, dtype)
    for method in ("int8", "int8-dynamic", "int4", "nf4"):
        model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
        model[0].weight.data = weight.clone()
        quantize_(model, method=method)
        out[f"engine {method}"] = (model, torch.float32)
    return out


def bitsandbytes_layers(weight: torch.Tensor) -> dict[str, tuple[Layer, torch.dtype]] | str:
    """The layers the engine builds for CUDA (kernels/qlinear/bnb.py), here on the CPU."""
    if not qlinear.has_bitsandbytes():
        return "bitsandbytes is not installed"
    from kernels.qlinear import bnb

    cpu = torch.device("cpu")
    return {
        "bitsandbytes LLM.int8": (bnb.linear_int8(weight, None, cpu), torch.bfloat16),
        "bitsandbytes NF4": (bnb.linear_nf4(weight, None, cpu), torch.bfloat16),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-features", type=int, default=11008)
    p.add_argument("--in-features", type=int, default=2048)
    p.add_argument("--rows", default="1,128", help="comma list: 1 is a decode step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    rows = [int(r) for r in a.rows.split(",")]
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(a.out_features, a.in_features, generator=gen) * 0.02
    layers = engine_layers(weight)
    extra = bitsandbytes_layers(weight)
    if isinstance(extra, dict):
        layers.update(extra)
    cpu = os.cpu_count()
    print(
        f"one linear layer {a.out_features} x {a.in_features}, {a.threads} thread(s) of {cpu}, "
        f"torch {torch.__version__}; best of {a.repeat}, ms\n"
    )
    print("| layer | activations | " + " | ".join(f"{r} rows" for r in rows) + " | error |")
    print("| --- | --- | " + " | ".join("---" for _ in rows) + " | --- |")
    x_err = torch.randn(8, a.in_features, generator=gen)
    exact = x_err @ weight.T
    with torch.inference_mode():
        for name, (layer, dtype) in layers.items():
            times = []
            for r in rows:
                x = torch.randn(r, a.in_features, generator=gen).to(dtype)
                times.append(f"{best_ms(layer, x, a.repeat):.1f}")
            y = layer(x_err.to(dtype)).float()
            err = float((y - exact).norm() / exact.norm())
            act = str(dtype).split(".")[-1]
            print(f"| {name} | {act} | " + " | ".join(times) + f" | {err:.4f} |")
    if isinstance(extra, str):
        print(f"\n({extra}: its rows are missing)")


if __name__ == "__main__":
    main()
