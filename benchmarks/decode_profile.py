"""Where one decode token's time goes: kernels of the graphed step, and each weight's GEMV speed.

    python -m benchmarks.decode_profile [--context 1024] [--steps 20] [--top 25]
    python -m benchmarks.decode_profile --tiny --device cpu     # the same flow on a tiny config

Random weights at the published InfiniteVL-4B config, bf16, batch 1 (as ``bench_engine``).
After a prefill of ``--context`` tokens it prints, for the fused decode path and the separate
ops:
- ms/token of back-to-back ``DecodeGraph`` replays;
- the kernels of ``--steps`` replays under ``torch.profiler``: per token, each kernel's time and
  launches, the sum of kernel time, and what is left of the replay (gaps between kernels);
- every decoder weight matrix as one batch-1 ``F.linear`` and as ``kernels.gemv``'s Triton
  kernel (the fused shapes too), replayed from a CUDA graph with the weights read from memory:
  microseconds and the bandwidth each reaches against the measured copy bandwidth;
- the kernels of one prefill of ``--prefill`` tokens, and of the captured 448x448 frame step.
With ``--gemv-sweep``, each tile of ``kernels.gemv``'s autotuning list is timed on each weight
shape (weights read from memory), to choose the kernel's tiles per shape.
Each section is printed as soon as it is measured; a failing section prints its error and the
rest go on.
"""

from __future__ import annotations

import argparse
import logging
import os
import traceback
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.bench_engine import (
    CONFIG_4B,
    build,
    copy_bandwidth,
    elapsed_ms,
    fmt,
    prefill,
    random_ids,
    weight_bytes,
)
from engine.config import ModelConfig, tiny_config
from engine.cuda_graph import DecodeGraph, FrameGraph
from engine.model.fused import set_fused_decode
from engine.model.gated_deltanet import GatedDeltaNet
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from kernels.graph_timing import copies_beyond_l2, graph_us

log = logging.getLogger(__name__)


def out(*lines: str) -> None:
    print("\n".join(lines), flush=True)  # noqa: T201 (CLI output)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out(*lines, *["| " + " | ".join(r) + " |" for r in rows])


def kernel_times(run: Callable[[], None], steps: int, device: torch.device) -> dict[str, list]:
    """{kernel name: [total us, launches]} of ``run`` under the profiler, per call of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    per: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if device.type == "cuda":
            if ev.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(ev, "device_time", None)
            if us is None:
                us = ev.cuda_time
        else:
            # CPU: top-level ATen ops stand in for kernels
            if ev.cpu_parent is not None or not ev.name.startswith("aten::"):
                continue
            us = ev.cpu_time_total
        per[ev.name][0] += us / steps
        per[ev.name][1] += 1 / steps
    return dict(per)


def short(name: str, width: int = 90) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def kernel_table(
    heading: Callable[[float, float], str],
    per: dict[str, list],
    top: int,
    per_what: str = "",
    in_ms: bool = False,
) -> None:
    """The ``top`` kernels of ``per`` ({name: [us, launches]}) as a table under
    ``heading(total kernel ms, launches)``; times in us (or ms) ``per_what``."""
    total_us = sum(v[0] for v in per.values())
    launches = sum(v[1] for v in per.values())
    rows = sorted(per.items(), key=lambda kv: -kv[1][0])[:top]
    unit, scale, digits = ("ms", 1e-3, 2) if in_ms else ("us", 1.0, 1)
    table(
        heading(total_us / 1e3, launches),
        ["kernel", f"{unit}{per_what}", f"launches{per_what}", "share"],
        [
            [short(k), fmt(v[0] * scale, digits), fmt(v[1], 0), f"{100 * v[0] / total_us:.1f}%"]
            for k, v in rows
        ],
    )


def profile_decode(
    model: InfiniteVLForConditionalGeneration,
    context: int,
    steps: int,
    top: int,
    paths: tuple[str, ...] = ("fused", "separate"),
) -> None:
    dev = model.device
    vocab = model.config.text.vocab_size
    ids = random_ids(context, vocab, dev, 1)
    for fused in [p == "fused" for p in paths]:
        label = "fused" if fused else "separate ops"
        try:
            set_fused_decode(model, fused)
            state = model.new_state()
            logits = prefill(model, state, ids, context)
            graph = DecodeGraph(model, state)
            graph.step(int(logits[0].argmax()))
            for _ in range(3):
                graph.step()
            n = 100 if dev.type == "cuda" else 3
            ms = elapsed_ms(lambda g=graph, n=n: [g.advance() for _ in range(n)], dev) / n
            per = kernel_times(graph.advance, steps, dev)
            kernel_table(
                lambda k_ms, n_k, ms=ms, label=label: (
                    f"Decode step, {label}, context {context:,}: {fmt(ms, 3)} ms/token replayed; "
                    f"kernels {fmt(k_ms, 3)} ms in {n_k:,.0f} launches, "
                    f"{fmt(ms - k_ms, 3)} ms between them"
                ),
                per,
                top,
                "/token",
            )
            del graph, state
        except Exception:  # profile boundary: print and go on
            out(f"decode profile ({label}) failed:", traceback.format_exc())
    set_fused_decode(model, True)


def profile_prefill(model: InfiniteVLForConditionalGeneration, context: int, top: int) -> None:
    """Kernels of one prefill of ``context`` tokens (after one untimed run that compiles)."""
    dev = model.device
    try:
        ids = random_ids(context, model.config.text.vocab_size, dev, 2)
        prefill(model, model.new_state(), ids, context)
        state = model.new_state()
        ms = elapsed_ms(lambda: prefill(model, state, ids, context), dev)
        per = kernel_times(lambda: prefill(model, model.new_state(), ids, context), 1, dev)
        kernel_table(
            lambda k_ms, _n: (
                f"Prefill of {context:,} tokens: {fmt(ms, 1)} ms; kernels {fmt(k_ms, 1)} ms"
            ),
            per,
            top,
            in_ms=True,
        )
    except Exception:  # profile boundary
        out(f"prefill profile ({context}) failed:", traceback.format_exc())


def profile_prompt_gemms(model: InfiniteVLForConditionalGeneration, tokens: int) -> None:
    """TFLOP/s of each decoder projection over ``tokens`` rows (cuBLAS through F.linear), beside
    the wider products the sibling projections make together: which matrix products of a prompt
    fall short of the GPU's peak."""
    dev, dtype = model.device, model.dtype
    layers = model.model.language_model.layers
    mixers = [layer.self_attn for layer in layers]
    gdn = next(m for m in mixers if isinstance(m, GatedDeltaNet))
    attn = next(m for m in mixers if not isinstance(m, GatedDeltaNet))
    mlp = layers[0].mlp
    shapes = {
        "GDN q (or k)": gdn.q_proj.weight, "GDN v (or g)": gdn.v_proj.weight,
        "GDN a (or b)": gdn.a_proj.weight, "GDN o_proj": gdn.o_proj.weight,
        "attn o_proj": attn.o_proj.weight, "MLP down": mlp.down_proj.weight,
    }  # fmt: skip
    hidden = gdn.q_proj.weight.shape[1]
    six = sum(getattr(gdn, n).out_features for n in gdn._in_proj.names)
    wide = {
        "GDN q+k together": 2 * gdn.q_proj.out_features,
        "GDN all six together": six,
        "MLP gate+up together": 2 * mlp.up_proj.out_features,
    }
    for label, rows in wide.items():
        shapes[label] = torch.randn(rows, hidden, device=dev, dtype=dtype)
    try:
        rows_out = []
        for label, w in shapes.items():
            x = torch.randn(tokens, w.shape[1], device=dev, dtype=dtype)
            F.linear(x, w)
            ms = elapsed_ms(lambda x=x, w=w: F.linear(x, w), dev)
            flop = 2 * tokens * w.shape[0] * w.shape[1]
            rows_out.append([label, f"{w.shape[0]:,} x {w.shape[1]:,}", fmt(ms, 2),
                             fmt(flop / ms / 1e9, 0)])  # fmt: skip
            del x
        table(f"Prompt matrix products over {tokens:,} tokens (F.linear, {dtype})",
              ["projection", "weight", "ms", "TFLOP/s"], rows_out)  # fmt: skip
    except Exception:  # profile boundary
        out(f"prompt GEMM table ({tokens}) failed:", traceback.format_exc())


def profile_frames(model: InfiniteVLForConditionalGeneration, steps: int, top: int) -> None:
    """Kernels of the captured 448x448 frame step (vision tower + decoder over 256 tokens)."""
    dev = model.device
    try:
        grid = (1, 32, 32)
        state = model.new_state()
        stream = FrameGraph(model, state, torch.tensor([grid]))
        gen = torch.Generator().manual_seed(0)
        dim = model.model.visual.patch_dim
        frame = torch.randn(32 * 32, dim, generator=gen).to(dev, model.dtype)
        while not stream.is_static:
            stream.feed(frame)
        for _ in range(3):
            stream.feed(frame)
        n = 50 if dev.type == "cuda" else 2
        ms = elapsed_ms(lambda: [stream.feed(frame) for _ in range(n)], dev) / n
        per = kernel_times(lambda: stream.feed(frame), steps, dev)
        kernel_table(
            lambda k_ms, n_k: (
                f"Frame step (448x448, {stream.num_tokens} tokens): {fmt(ms, 2)} ms/frame; "
                f"kernels {fmt(k_ms, 2)} ms in {n_k:,.0f} launches"
            ),
            per,
            top,
            "/frame",
        )
    except Exception:  # profile boundary
        out("frame profile failed:", traceback.format_exc())


def linear_shapes(model: InfiniteVLForConditionalGeneration) -> dict[str, tuple[int, int, int]]:
    """{name: (out, in, count per token)} of the decoder's weight matrices and fused blocks."""
    t = model.config.text
    C, inter = t.hidden_size, t.intermediate_size
    H, K, V = t.num_linear_heads, t.linear_head_dim, t.linear_value_head_dim
    Ha, Hkv, D = t.num_attention_heads, t.num_key_value_heads, C // t.num_attention_heads
    kinds = [type(layer.self_attn).__name__ for layer in model.model.language_model.layers]
    n_gdn = sum(k == "GatedDeltaNet" for k in kinds)
    n_att = len(kinds) - n_gdn
    L = len(kinds)
    return {
        f"GDN in (q,k,v,a,b,g) x{n_gdn}": (2 * H * K + 2 * H * V + 2 * H, C, n_gdn),
        f"GDN o_proj x{n_gdn}": (C, H * V, n_gdn),
        f"attn qkv x{n_att}": ((Ha + 2 * Hkv) * D, C, n_att),
        f"attn o_proj x{n_att}": (C, Ha * D, n_att),
        f"MLP gate+up x{L}": (2 * inter, C, L),
        f"MLP down x{L}": (C, inter, L),
        "lm_head x1": (t.vocab_size, C, 1),
    }


def triton_gemv_us(x: torch.Tensor, ws: list[torch.Tensor]) -> float:
    """us per call of kernels.gemv's Triton kernel over ``ws`` in turn, replayed from a CUDA graph
    (nan where it can't run)."""
    if not x.is_cuda:
        return float("nan")
    from kernels.gemv import gemv_triton
    from kernels.graph_timing import graph_us

    return graph_us(lambda i: gemv_triton.linear(x, ws[i % len(ws)]))


# tiles outside the autotuning list, timed beside it: (BLOCK_N, BLOCK_K, num_warps, num_stages)
SWEEP_EXTRA = ((1, 1024, 2, 3), (1, 4096, 8, 3), (1, 2048, 4, 1), (1, 2048, 4, 4), (2, 2048, 8, 3))


def gemv_sweep(model: InfiniteVLForConditionalGeneration) -> None:
    """Each tile of ``kernels.gemv``'s autotuning list, and of ``SWEEP_EXTRA``, timed on each
    decoder weight shape with the weights read from memory (not L2): which tile the kernel
    should take per shape."""
    dev, dtype = model.device, model.dtype
    if dev.type != "cuda":
        out("", "GEMV tile sweep: CUDA only")
        return
    from kernels.gemv import gemv_triton

    tiles = [
        (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
        for c in gemv_triton._CONFIGS  # noqa: SLF001 (the list the sweep is about)
    ] + list(SWEEP_EXTRA)
    names = [f"{bn}x{bk}/{nw}w/{ns}s" for bn, bk, nw, ns in tiles]
    rows = []
    for name, (n_out, n_in, _count) in linear_shapes(model).items():
        try:
            w = torch.randn(n_out, n_in, device=dev, dtype=dtype) * 0.02
            x = torch.randn(1, 1, n_in, device=dev, dtype=dtype)
            ws = copies_beyond_l2(w)
            y = torch.empty(1, 1, n_out, device=dev, dtype=dtype)
            cells = [_tile_us(x, ws, y, *tile) for tile in tiles]
            best = min(range(len(cells)), key=cells.__getitem__)
            gbs = w.nbytes / (cells[best] * 1e-6) / 1e9
            rows.append([name, *(fmt(v, 1) for v in cells), f"{names[best]}, {fmt(gbs, 0)} GB/s"])
            del w, ws, x, y
        except Exception:  # profile boundary
            out(f"sweep {name} failed:", traceback.format_exc())
    title = "Triton GEMV tiles per weight shape (us a call, weights from memory)"
    table(title, ["weight", *names, "best"], rows)


def _tile_us(
    x: torch.Tensor, ws: list[torch.Tensor], y: torch.Tensor, bn: int, bk: int, nw: int, ns: int
) -> float:
    """us a call of ``gemv_kernel`` with one tile, cycling through the weights ``ws``, replayed
    from a CUDA graph (the decode step's launches: no host cost per call)."""
    from kernels.gemv import gemv_triton
    from kernels.graph_timing import graph_us

    n_out, n_in = ws[0].shape

    def call(i: int) -> None:
        wi = ws[i % len(ws)]
        gemv_triton.gemv_kernel[(-(-n_out // bn),)](
            x, wi, wi, y, n_out, wi.stride(0), n_in, HAS_BIAS=False,
            BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns,
        )  # fmt: skip

    return graph_us(call)


def profile_linears(model: InfiniteVLForConditionalGeneration, bandwidth: float) -> None:
    dev, dtype = model.device, model.dtype
    rows = []
    token_us = kernel_us = 0.0
    for name, (n_out, n_in, count) in linear_shapes(model).items():
        try:
            w = torch.randn(n_out, n_in, device=dev, dtype=dtype) * 0.02
            x = torch.randn(1, 1, n_in, device=dev, dtype=dtype)
            F.linear(x, w)
            # several weights so each call reads from memory, not from L2 (50 MB on an H100)
            ws = copies_beyond_l2(w) if dev.type == "cuda" else [w]
            if dev.type == "cuda":  # graphed, as the decode step launches it
                us = graph_us(lambda i, x=x, ws=ws: F.linear(x, ws[i % len(ws)]))
            else:
                us = elapsed_ms(lambda x=x, w=w: [F.linear(x, w) for _ in range(3)], dev) * 1e3 / 3
            gbs = w.nbytes / (us * 1e-6) / 1e9
            token_us += us * count
            k_us = triton_gemv_us(x, ws)
            k_gbs = w.nbytes / (k_us * 1e-6) / 1e9 if k_us == k_us else float("nan")
            kernel_us += min(us, k_us if k_us == k_us else us) * count
            rows.append([
                name, f"{n_out:,} x {n_in:,}", fmt(w.nbytes / 1e6, 1), fmt(us, 1),
                fmt(gbs, 0), f"{100 * gbs * 1e9 / bandwidth:.0f}%", fmt(us * count / 1e3, 3),
                fmt(k_us, 1), fmt(k_gbs, 0),
            ])  # fmt: skip
            del w, ws, x
        except Exception:  # profile boundary
            out(f"linear {name} failed:", traceback.format_exc())
    table(
        f"Batch-1 F.linear per weight ({dtype}); all of them: {fmt(token_us / 1e3, 3)} ms a token "
        f"(read floor of the decoder + head: {fmt(weight_bytes(model) / bandwidth * 1e3, 3)} ms); "
        f"the faster of cuBLAS and the Triton GEMV for each: {fmt(kernel_us / 1e3, 3)} ms",
        [
            "weight",
            "shape",
            "MB",
            "cuBLAS us",
            "GB/s read",
            "of copy BW",
            "ms/token (x count)",
            "Triton GEMV us",
            "GB/s read",
        ],  # fmt: skip
        rows,
    )


def switches() -> dict[str, str]:
    """The environment switches of the decode kernels, as this run has them."""
    names = (
        "INFINITEVL_GEMV_KERNEL", "INFINITEVL_GATES_KERNEL", "INFINITEVL_NORM_KERNEL",
        "INFINITEVL_SHORT_CONV_KERNEL", "INFINITEVL_ROPE_KERNEL", "INFINITEVL_GEMV_GLU",
        "INFINITEVL_PDL", "INFINITEVL_FUSED_DECODE",
    )  # fmt: skip
    return {n: os.environ.get(n, "unset") for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny config: checks the flow on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--context", type=int, default=1024, help="prefilled tokens before decoding")
    ap.add_argument("--steps", type=int, default=20, help="profiled decode steps")
    ap.add_argument("--top", type=int, default=25, help="kernels listed per table")
    ap.add_argument("--prefill", type=int, default=32768, help="prefill profiled (0: none)")
    ap.add_argument("--no-frames", action="store_true", help="skip the frame step")
    ap.add_argument("--paths", default="fused,separate", help="decode paths profiled")
    ap.add_argument("--gemv-sweep", action="store_true", help="time each GEMV tile on each shape")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    config = tiny_config() if args.tiny else ModelConfig.from_file(CONFIG_4B)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out(f"# Decode profile on {name}, torch {torch.__version__}, {dtype}, batch 1")
    bandwidth = copy_bandwidth(dev)
    out(f"copy bandwidth {fmt(bandwidth / 1e12, 2)} TB/s (read + written)")
    model = build(config, dev, dtype)
    paths = tuple(p for p in args.paths.split(",") if p)
    if unknown := set(paths) - {"fused", "separate"}:
        ap.error(f"--paths: unknown {sorted(unknown)} (fused, separate)")
    out("kernel switches: " + ", ".join(f"{k}={v}" for k, v in switches().items()))
    profile_decode(model, args.context, args.steps, args.top, paths)
    profile_linears(model, bandwidth)
    if args.gemv_sweep:
        gemv_sweep(model)
    if args.prefill:
        profile_prefill(model, args.prefill, args.top)
        profile_prompt_gemms(model, args.prefill)
    if not args.no_frames:
        profile_frames(model, args.steps, args.top)
    from kernels import gemv

    picks = [f"{n}x{k}: {'Triton' if v else 'cuBLAS'}" for (n, k, *_), v in gemv.choices().items()]
    out("", "kernels.gemv's measured choices: " + ("; ".join(picks) or "none made"))
    glu = [f"{n}x{k}: {'fused' if v else 'apart'}" for (n, k, *_), v in gemv.glu_choices().items()]
    out("kernels.gemv's SwiGLU + GEMV choices: " + ("; ".join(glu) or "none made"))


if __name__ == "__main__":
    main()
