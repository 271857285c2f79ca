"""Time each CUDA kernel of ``kernels/`` against its torch reference at the published 4B shapes.

    python -m benchmarks.kernels_bench [--quick] [--sweep]

Prints markdown tables (median GPU times, bf16 inputs, batch 1). Decode steps are timed inside a
CUDA graph that runs one step per layer of the 4B model over that layer's own state (27 Gated
DeltaNet states of 2 MiB, 9 rings of 8 MiB: more than the L2 cache), so the numbers are what a
graph-captured decode pays per layer, with achieved bandwidth over the bytes each step must move.
"""

import argparse
import functools
import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# the published InfiniteVL-4B layers (shared/reference/README.md)
GDN = {"H": 16, "HV": 16, "K": 128, "V": 256, "layers": 27}
SWA = {"H": 16, "Hkv": 2, "D": 128, "W": 8192, "layers": 9}


def median_ms(fn: Callable[[], object], rep_ms: int = 200) -> float:
    """Median time of ``fn`` in ms (CUDA events through triton's do_bench); NaN if it fails."""
    import triton.testing

    try:
        return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")
    except Exception:  # CLI boundary: report the row as failed and go on with the table
        log.exception("timing failed")
        return float("nan")


def graph_ms_per_call(calls: list[Callable[[], object]]) -> float:
    """Capture ``calls`` in one CUDA graph; median replay time divided by the number of calls (ms).

    A path that cannot be captured or fails is reported as NaN with its error in the log, so one
    broken row does not hide the others.
    """
    try:
        return _graph_ms_per_call(calls)
    except Exception:  # CLI boundary: report the row as failed and go on with the table
        log.exception("timing failed")
        torch.cuda.synchronize()
        return float("nan")


def _graph_ms_per_call(calls: list[Callable[[], object]]) -> float:
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return median_ms(graph.replay) / len(calls)


def gdn_inputs(
    device: torch.device, dtype: torch.dtype, T: int | None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs of the 4B Gated DeltaNet layer: [1, T, ...], or [1, ...] for a step."""
    gen = torch.Generator(device=device).manual_seed(seed)
    lead = (1,) if T is None else (1, T)
    H, HV, K, V = GDN["H"], GDN["HV"], GDN["K"], GDN["V"]
    return {
        "q": torch.randn(*lead, H, K, device=device, generator=gen).to(dtype),
        "k": torch.randn(*lead, H, K, device=device, generator=gen).to(dtype),
        "v": torch.randn(*lead, HV, V, device=device, generator=gen).to(dtype),
        "g": torch.nn.functional.logsigmoid(
            torch.randn(*lead, HV, device=device, generator=gen) + 3.0
        ),
        "beta": torch.rand(*lead, HV, device=device, generator=gen).to(dtype),
    }


def bench_gdn_step(device: torch.device, sweep: bool) -> list[tuple[str, float, float]]:
    """Rows (name, µs per layer in a graph, GB/s over the state's read + write)."""
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    from kernels.gated_delta import reference, step_triton

    K = GDN["K"]
    layers = [gdn_inputs(device, torch.bfloat16, None, seed=i) for i in range(GDN["layers"])]
    states = [torch.zeros(1, GDN["HV"], K, GDN["V"], device=device) for _ in layers]
    state_bytes = 2 * states[0].numel() * 4
    kw = {"scale": K**-0.5, "use_qk_l2norm": True}

    def row(
        name: str, make_call: Callable[[dict, torch.Tensor], Callable[[], object]]
    ) -> tuple[str, float, float]:
        ms = graph_ms_per_call([make_call(x, S) for x, S in zip(layers, states, strict=True)])
        return name, ms * 1e3, state_bytes / (ms * 1e-3) / 1e9

    def fla_call(x: dict, S: torch.Tensor) -> Callable[[], object]:
        args = [x[n][:, None] for n in ("q", "k", "v", "g", "beta")]
        return lambda: fused_recurrent_gated_delta_rule(
            *args,
            scale=K**-0.5,
            initial_state=S,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )

    rows = [
        row(
            "reference.step (torch ops)", lambda x, S: lambda: reference.step(*x.values(), S, **kw)
        ),
        row("step_triton.step (ours)", lambda x, S: lambda: step_triton.step(*x.values(), S, **kw)),
        row("fla fused_recurrent (T=1)", fla_call),
    ]
    if sweep:
        for BV in (8, 16, 32, 64):
            for warps in (1, 2, 4, 8):
                out = torch.empty(1, GDN["HV"], GDN["V"], dtype=torch.bfloat16, device=device)

                def make(
                    x: dict,
                    S: torch.Tensor,
                    BV: int = BV,
                    warps: int = warps,
                    out: torch.Tensor = out,
                ):
                    return lambda: step_triton.launch_step(
                        *x.values(), S, out, K**-0.5, True, BV, warps
                    )

                rows.append(row(f"  ours BV={BV} warps={warps}", make))
    return rows


def bench_short_conv_step(device: torch.device) -> list[tuple[str, float, float]]:
    """Rows (name, µs per layer in a graph, GB/s): the three conv tails (q, k, v) of one layer."""
    from kernels.short_conv import reference, step_triton

    C = {"q": GDN["H"] * GDN["K"], "k": GDN["H"] * GDN["K"], "v": GDN["HV"] * GDN["V"]}
    gen = torch.Generator(device=device).manual_seed(0)
    layers = [
        [
            (
                torch.randn(1, c, device=device, generator=gen).bfloat16(),
                torch.randn(1, c, 3, device=device, generator=gen).bfloat16(),
                torch.randn(c, 4, device=device, generator=gen).bfloat16(),
            )
            for c in C.values()
        ]
        for _ in range(GDN["layers"])
    ]
    # x read, y written, tail read + written, filter read; all bf16
    layer_bytes = sum(c * 2 * (1 + 1 + 3 + 3 + 4) for c in C.values())

    def row(name: str, fn: Callable) -> tuple[str, float, float]:
        calls = [lambda a=args: fn(*a) for layer in layers for args in layer]
        ms = graph_ms_per_call(calls) * 3
        return name, ms * 1e3, layer_bytes / (ms * 1e-3) / 1e9

    return [
        row("reference.step (torch ops)", reference.step),
        row("step_triton.step (ours)", step_triton.step),
    ]


def bench_swa_step(device: torch.device, seen: int, sweep: bool) -> list[tuple[str, float, float]]:
    """Rows (name, µs per layer in a graph, GB/s over the ring's keys and values read)."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from kernels.sdpa import SDPA_BACKENDS
    from kernels.swa import reference, step_triton

    H, Hkv, D, W = SWA["H"], SWA["Hkv"], SWA["D"], SWA["W"]
    gen = torch.Generator(device=device).manual_seed(0)
    n = min(seen + 1, W)
    layers = []
    for _ in range(SWA["layers"]):
        ring = [
            torch.randn(1, Hkv, W, D, device=device, generator=gen).bfloat16() for _ in range(2)
        ]
        q = torch.randn(1, H, D, device=device, generator=gen).bfloat16()
        k, v = (torch.randn(1, Hkv, D, device=device, generator=gen).bfloat16() for _ in range(2))
        layers.append((q, k, v, ring))
    ring_bytes = 2 * Hkv * n * D * 2
    seen_t = torch.tensor(seen, device=device)

    def sdpa(q: torch.Tensor, ring: list[torch.Tensor]) -> torch.Tensor:
        with sdpa_kernel(SDPA_BACKENDS):
            return F.scaled_dot_product_attention(
                q[:, :, None], ring[0][:, :, :n], ring[1][:, :, :n], scale=D**-0.5, enable_gqa=True
            )

    def row(name: str, make_call: Callable) -> tuple[str, float, float]:
        ms = graph_ms_per_call([make_call(*layer) for layer in layers])
        return name, ms * 1e3, ring_bytes / (ms * 1e-3) / 1e9

    def ours(split: int, block_n: int, warps: int) -> Callable:
        return lambda q, k, v, r: (
            lambda: step_triton.launch_step(q, k, v, *r, seen_t, D**-0.5, split, block_n, warps)
        )

    rows = [
        row(
            "reference.step (torch ops, fp32 math)",
            lambda q, k, v, r: lambda: reference.step(q, k, v, *r, seen, scale=D**-0.5),
        ),
        row(
            "step_triton.step, seen int (ours)",
            lambda q, k, v, r: lambda: step_triton.step(q, k, v, *r, seen, scale=D**-0.5),
        ),
        row(
            "step_triton.step, seen tensor (ours)",
            lambda q, k, v, r: lambda: step_triton.step(q, k, v, *r, seen_t, scale=D**-0.5),
        ),
        row("torch SDPA over the ring (no write)", lambda q, k, v, r: lambda: sdpa(q, r)),
    ]
    if sweep:
        for split, block_n in ((64, 32), (64, 64), (128, 64), (256, 64), (512, 64), (256, 128)):
            for warps in (2, 4, 8):
                rows.append(
                    row(
                        f"  ours split={split} BN={block_n} warps={warps}",
                        ours(split, block_n, warps),
                    )
                )
    return rows


def bench_chunk(
    device: torch.device, lengths: list[int], ref_max: int
) -> list[tuple[str, int, float]]:
    """Rows (name, T, ms) for one 4B Gated DeltaNet layer's prefill."""
    from kernels.gated_delta import chunk_fla, reference

    rows = []
    kw = {"scale": GDN["K"] ** -0.5, "use_qk_l2norm": True}
    for length in lengths:
        x = gdn_inputs(device, torch.bfloat16, length)
        rows.append(
            ("chunk_fla (fla's Triton)", length, median_ms(lambda x=x: chunk_fla.chunk(**x, **kw)))
        )
        if length <= ref_max:
            rows.append(
                (
                    "reference.chunk (fp32 torch)",
                    length,
                    median_ms(lambda x=x: reference.chunk(**x, **kw), rep_ms=500),
                )
            )
        del x
    return rows


def bench_swa_prefill(
    device: torch.device, lengths: list[int], ref_max: int, sweep: bool
) -> list[tuple[str, int, int, float]]:
    """Rows (name, seen, T, ms) for one 4B sliding-window layer's prefill."""
    from kernels.swa import prefill_sdpa, prefill_triton, reference

    H, Hkv, D, W = SWA["H"], SWA["Hkv"], SWA["D"], SWA["W"]
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    ring = [torch.randn(1, Hkv, W, D, device=device, generator=gen).bfloat16() for _ in range(2)]
    for seen, length in [(0, t) for t in lengths] + [(20000, 4096)]:
        q = torch.randn(1, H, length, D, device=device, generator=gen).bfloat16()
        k, v = (
            torch.randn(1, Hkv, length, D, device=device, generator=gen).bfloat16()
            for _ in range(2)
        )
        args = (q, k, v, *ring, seen)
        rows.append(
            (
                "prefill_triton (ours)",
                seen,
                length,
                median_ms(lambda a=args: prefill_triton.prefill(*a, scale=D**-0.5)),
            )
        )
        rows.append(
            (
                "prefill_sdpa",
                seen,
                length,
                median_ms(lambda a=args: prefill_sdpa.prefill(*a, scale=D**-0.5)),
            )
        )
        if sweep and length == 32768:
            keys, values = (x.contiguous() for x in (k, v))
            for bm, bn, warps, stages in (
                (128, 64, 8, 3),
                (128, 128, 8, 2),
                (64, 64, 4, 3),
                (128, 64, 4, 3),
            ):
                launch = functools.partial(
                    prefill_triton.launch_prefill,
                    q,
                    keys,
                    values,
                    W,
                    D**-0.5,
                    bm,
                    bn,
                    warps,
                    stages,
                )
                ms = median_ms(launch)
                rows.append(
                    (f"  ours BM={bm} BN={bn} warps={warps} stages={stages}", seen, length, ms)
                )
        if length <= ref_max:
            rows.append(
                (
                    "reference.prefill (fp32)",
                    seen,
                    length,
                    median_ms(lambda a=args: reference.prefill(*a, scale=D**-0.5)),
                )
            )
    return rows


def main() -> None:
    """Print the kernel tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter prefill lengths")
    parser.add_argument(
        "--sweep", action="store_true", help="also sweep the gated delta step's block shapes"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("kernels_bench needs a CUDA device")
    device = torch.device("cuda")
    started = time.monotonic()
    print(f"# kernels bench on {torch.cuda.get_device_name()} (torch {torch.__version__})\n")

    print(
        "## gated_delta.step, 4B layer (HV=16, K=128, V=256), bf16 in, fp32 state;"
        " graph of 27 layers\n"
    )
    print("| path | µs / layer | GB/s (state read + write) |\n| --- | ---: | ---: |")
    for name, us, gbs in bench_gdn_step(device, args.sweep):
        print(f"| {name} | {us:.2f} | {gbs:.0f} |")

    print("\n## short_conv.step: q, k, v conv tails of one 4B layer (C=2048, 2048, 4096), bf16\n")
    print("| path | µs / layer (3 convs) | GB/s |\n| --- | ---: | ---: |")
    for name, us, gbs in bench_short_conv_step(device):
        print(f"| {name} | {us:.2f} | {gbs:.0f} |")

    for seen in (1023, 8191, 100_000):
        print(
            f"\n## swa.step at seen={seen}, 4B layer (H=16, Hkv=2, D=128, W=8192), bf16;"
            " graph of 9 layers\n"
        )
        print("| path | µs / layer | GB/s (ring K+V read) |\n| --- | ---: | ---: |")
        for name, us, gbs in bench_swa_step(device, seen, args.sweep and seen == 8191):
            print(f"| {name} | {us:.2f} | {gbs:.0f} |")

    lengths = [1024, 8192] if args.quick else [1024, 8192, 32768, 131072]
    print("\n## gated_delta.chunk (prefill), one 4B layer, bf16\n")
    print("| path | T | ms |\n| --- | ---: | ---: |")
    for name, T, ms in bench_chunk(device, lengths, ref_max=32768):
        print(f"| {name} | {T} | {ms:.3f} |")

    print("\n## swa.prefill, one 4B layer, bf16\n")
    print("| path | seen | T | ms |\n| --- | ---: | ---: | ---: |")
    for name, seen, T, ms in bench_swa_prefill(device, lengths, ref_max=32768, sweep=args.sweep):
        print(f"| {name} | {seen} | {T} | {ms:.3f} |")
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
