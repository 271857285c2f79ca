"""Engine benchmark of issue #3: InfiniteVL-4B beside a Transformer of the Qwen2.5-VL-3B shape.

    python -m benchmarks.bench_engine [--out DIR] [--budget-s 480] [--frames 1000]
    python -m benchmarks.bench_engine --tiny --device cpu      # the same flow on a tiny config
    python -m benchmarks.bench_engine --skip decode,transformer \
        --stream-ab INFINITEVL_CHUNK_KERNEL=0   # streaming with a switch set, unset, set, unset

Random weights at the published config (tests/reference/infinitevl-4b.config.json), bf16,
batch 1, one process, every number measured in this run (CUDA events, or wall clock on CPU).
Tables, most important first, each appended to ``DIR/RESULTS.md`` as soon as it is measured so
a run cut short still leaves what it finished: decode and prefill per context with memory,
the decode roofline, streaming 448x448 frames, then the Transformer until it runs out of memory
or of the time budget. Contexts past the largest prefilled one are reached by setting the
state's counters after that prefill (a full window and a full Gated DeltaNet state are all the
next token reads; only the RoPE position and the ring's slot index change).
"""

import argparse
import gc
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import sdpa_kernel

from engine.config import ModelConfig, tiny_config
from engine.cuda_graph import DecodeGraph, FrameGraph, reserve_full_attention
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.state import GDNState, ModelState, SWAState
from kernels.sdpa import SDPA_BACKENDS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_4B = ROOT / "tests/reference/infinitevl-4b.config.json"
CONFIG_3B = ROOT / "tests/engine/qwen2.5-vl-3b.config.json"
GiB = 2**30


@dataclass
class Setup:
    """What one run measures: configs, contexts, frames, budget."""

    device: torch.device
    dtype: torch.dtype
    hybrid: ModelConfig
    transformer: ModelConfig
    contexts: list[int]
    far_contexts: list[int]
    frame_grid: tuple[int, int, int]
    frames: int
    decode_steps: int
    eager_steps: int
    deadline: float
    transformer_piece: int
    hybrid_name: str = "InfiniteVL-4B shape"
    transformer_name: str = "Qwen2.5-VL-3B shape"


@dataclass
class Report:
    """Markdown tables appended to ``path`` as they complete (and printed)."""

    path: Path
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines += lines
        print("\n".join(lines), flush=True)  # noqa: T201 (CLI output)
        self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")

    def progress(self, text: str) -> None:
        """One measured row, written at once (a run cut short keeps it)."""
        print(text, flush=True)  # noqa: T201 (CLI output)
        with (self.path.parent / "progress.log").open("a", encoding="utf-8") as f:
            f.write(text + "\n")

    def table(self, title: str, header: list[str], rows: list[list[str]], notes: str = "") -> None:
        out = ["", f"## {title}", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(r) + " |" for r in rows]
        if notes:
            out += ["", notes]
        self.add(*out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``fn`` with the device drained before and after (ms)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def gpu_gib(device: torch.device) -> tuple[float, float]:
    """(allocated now, peak since the last reset) in GiB; zeros on CPU."""
    if device.type != "cuda":
        return 0.0, 0.0
    return torch.cuda.memory_allocated(device) / GiB, torch.cuda.max_memory_allocated(device) / GiB


def reset_peak(device: torch.device) -> None:
    # graphs hold their pools through reference cycles (runner -> bound step -> owner)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    n = (1 * GiB) if device.type == "cuda" else (64 * 2**20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps = 20
    ms = elapsed_ms(lambda: [dst.copy_(src) for _ in range(reps)], device)
    return 2 * n * reps / (ms * 1e-3)


def build(
    config: ModelConfig, device: torch.device, dtype: torch.dtype
) -> InfiniteVLForConditionalGeneration:
    """Random weights (torch's default init, seed 0) made on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = InfiniteVLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def weight_bytes(model: InfiniteVLForConditionalGeneration) -> int:
    """Bytes of weights one decode token reads: the decoder and the head (a tied table once)."""
    lm = model.model.language_model
    seen: set[int] = set()
    total = 0
    for name, p in [*lm.named_parameters(), ("lm_head.weight", model.lm_head.weight)]:
        # the embedding lookup reads one row; the table counts only as the (tied) head
        if name == "embed_tokens.weight" or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.nbytes
    return total


def state_bytes(state: ModelState, context: int) -> int:
    """State bytes one decode token moves at ``context``: S read and written, ring slots read."""
    total = 0
    for st in state.layers:
        if isinstance(st, GDNState):
            total += sum(2 * t.nbytes for t in st.tensors().values())
        else:
            B, Hkv, cap, D = st.k.shape
            valid = min(context + 1, cap) if isinstance(st, SWAState) else context + 1
            total += 2 * B * Hkv * valid * D * st.k.element_size()
    return total


def random_ids(n: int, vocab: int, device: torch.device, seed: int) -> torch.Tensor:
    """[1, n] ids below the special tokens (random weights: any ordinary id will do)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab - 16, 150_000), (1, n), generator=gen).to(device)


def left(setup: Setup) -> float:
    return setup.deadline - time.monotonic()


# the Transformer's prefill past one causal call: pieces whose [piece, context] masks fit
LONG_PIECE = 8192


def prefill(
    model: InfiniteVLForConditionalGeneration, state: ModelState, ids: torch.Tensor, piece: int
) -> torch.Tensor:
    """Feed ``ids`` in pieces of at most ``piece`` tokens; returns the last logits [1, vocab]."""
    logits = None
    with torch.no_grad():
        for start in range(0, ids.shape[1], piece):
            logits = model(ids[:, start : start + piece], state, logits_to_keep=1)
    assert logits is not None
    return logits[:, -1]


def timed_prefill(
    model: InfiniteVLForConditionalGeneration, state: ModelState, ids: torch.Tensor, piece: int
) -> tuple[float, torch.Tensor]:
    """(ms, last logits [1, vocab]) of :func:`prefill` with the device drained around it."""
    box: list[torch.Tensor] = []
    ms = elapsed_ms(lambda: box.append(prefill(model, state, ids, piece)), model.device)
    return ms, box[0]


def capped(steps: int, ms_each: float, cap_ms: float = 3000.0) -> int:
    """At most ``steps``, at least 5, and no more than ``cap_ms`` of work at ``ms_each``."""
    return max(5, min(steps, int(cap_ms / max(ms_each, 1e-3))))


def time_graph_decode(graph: DecodeGraph, first: int, steps: int, device: torch.device) -> float:
    """ms/token of back-to-back replays (each feeds the token the previous one chose)."""
    graph.step(first)  # warm-up steps and the capture happen here
    graph.step()
    graph.step()
    est = elapsed_ms(graph.step, device)
    steps = capped(steps, est)
    return elapsed_ms(lambda: [graph.advance() for _ in range(steps)], device) / steps


def time_graph_readback(graph: DecodeGraph, steps: int, device: torch.device) -> float:
    """ms/token when every token is read back to the host (what a streaming reply pays)."""
    return elapsed_ms(lambda: [graph.step() for _ in range(steps)], device) / steps


def time_eager_decode(
    model: InfiniteVLForConditionalGeneration, state: ModelState, first: int, steps: int
) -> float:
    """ms/token of the model's own forward per token, argmax and ``.item()`` (Session.generate)."""
    device = model.device
    ids = torch.tensor([[first]], device=device)

    def run() -> None:
        nonlocal ids
        with torch.no_grad():
            for _ in range(steps):
                nxt = model(ids, state, logits_to_keep=1)[:, -1].argmax(-1)
                int(nxt.item())
                ids = nxt.view(1, 1)

    with torch.no_grad():
        model(ids, state, logits_to_keep=1)  # warm-up
        est = elapsed_ms(lambda: model(ids, state, logits_to_keep=1), device)
    steps = capped(steps, est)
    return elapsed_ms(run, device) / steps


# view ops launch no kernel
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "slice", "select",
    "unsqueeze", "squeeze", "expand", "detach", "alias", "split", "split_with_sizes", "unbind",
    "chunk", "as_strided",
})  # fmt: skip


def count_step_ops(model: InfiniteVLForConditionalGeneration) -> int:
    """ATen ops (views excluded) one static decode step dispatches; Triton launches not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func.overloadpacket.__name__ not in VIEW_OPS:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    state = model.new_state()
    graph = DecodeGraph(model, state, use_graph=False)
    graph.advance(1)
    with Count():
        graph.advance()
    return Count.n


def set_context(state: ModelState, context: int) -> None:
    """Move the counters as if ``context`` tokens had been fed (the tensors keep their content)."""
    delta = context - state.tokens_seen
    for st in state.layers:
        if isinstance(st, SWAState):
            st.seen += delta
    state.tokens_seen += delta
    state.position += delta


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def bench_hybrid(
    setup: Setup, report: Report, bandwidth: float
) -> InfiniteVLForConditionalGeneration:
    """Prefill, graph/eager decode and memory per context; then the roofline table."""
    dev = setup.device
    model = build(setup.hybrid, setup.device, setup.dtype)
    wbytes = weight_bytes(model)
    vocab = setup.hybrid.text.vocab_size
    reset_peak(dev)
    base_gib = gpu_gib(dev)[0]
    # the first call of each kernel compiles (Triton, fla's autotuning): not timed
    warm = min([1024, *setup.contexts])
    prefill(model, model.new_state(), random_ids(warm, vocab, dev, 0), warm)
    num_ops = count_step_ops(model)
    report.progress(f"hybrid model built and warm, {fmt(left(setup), 0)} s left")
    rows: list[list[str]] = []
    roof: list[list[str]] = []
    decode_ms: list[float] = []
    state: ModelState | None = None
    graph: DecodeGraph | None = None
    first = 0
    for i, ctx in enumerate(setup.contexts + setup.far_contexts):
        far = ctx not in setup.contexts
        if left(setup) < 60 + ctx / 50_000 or (far and graph is None):
            rows.append([f"{ctx:,}", "skipped: time budget or no prefilled state"] + [""] * 6)
            continue
        try:
            if not far:
                graph = state = None
                reset_peak(dev)
                ids = random_ids(ctx, vocab, dev, i + 1)
                # the first call at a new length may autotune (fla's L2 norm is tuned per length)
                for _ in range(2):
                    state = model.new_state()
                    reset_peak(dev)
                    pre_ms, logits = timed_prefill(model, state, ids, ctx)
                peak = gpu_gib(dev)[1]
                first = int(logits.argmax())
                how = "prefilled"
                graph = DecodeGraph(model, state)
            else:
                assert state is not None and graph is not None
                set_context(state, ctx)
                pre_ms, peak, how = float("nan"), float("nan"), "counters set"
            ms = time_graph_decode(graph, first, setup.decode_steps, dev)
            ms_read = time_graph_readback(graph, max(10, setup.decode_steps // 4), dev)
            mem = gpu_gib(dev)[0]
            eager = time_eager_decode(model, state, first, setup.eager_steps)
            first = graph.step()
        except Exception as exc:  # bench boundary: keep the row's error, go on with the next
            log.exception("context %d failed", ctx)
            rows.append([f"{ctx:,}", f"failed: {type(exc).__name__}: {str(exc)[:120]}"] + [""] * 6)
            report.progress(rows[-1][1])
            continue
        decode_ms.append(ms)
        rows.append([
            f"{ctx:,} ({how})", fmt(pre_ms, 0), fmt(ms, 3), fmt(ms_read, 3), fmt(1e3 / ms, 0),
            fmt(eager, 2), fmt(peak), fmt(mem),
        ])  # fmt: skip
        report.progress(" | ".join(rows[-1]))
        sbytes = state_bytes(state, ctx)
        floor = (wbytes + sbytes) / bandwidth * 1e3
        roof.append([
            f"{ctx:,}", fmt(wbytes / 1e9, 3), fmt(sbytes / 1e9, 3), fmt(floor, 3), fmt(ms, 3),
            f"{100 * floor / ms:.0f}%",
        ])  # fmt: skip
    spread = ""
    if decode_ms:
        ratio = max(decode_ms) / min(decode_ms) - 1
        spread = f" Graph decode max/min over contexts: +{fmt(100 * ratio, 1)}%."
    if not rows:  # --skip decode
        return model
    report.table(
        f"{setup.hybrid_name}: prefill and decode per context ({setup.dtype}, batch 1)",
        [
            "context", "prefill ms", "decode ms/token (graph)", "graph + token read ms/token",
            "tokens/s (graph)", "eager ms/token", "prefill peak GiB", "GiB while decoding",
        ],
        rows,
        f"Prefill: one forward over the whole context (second of two runs; a warm-up "
        f"prefill compiled the kernels first); 'counters set': the largest prefilled state with "
        f"its "
        f"token counters (RoPE position, ring index) moved to that context. Weights alone: "
        f"{fmt(base_gib)} GiB. Graph: up to {setup.decode_steps} back-to-back replays (each feeds "
        f"the token the last one chose, greedy, no host sync); 'token read' adds the copy of "
        f"each token to the host; eager: the model's forward + argmax + .item() per token "
        f"(Session.generate's loop).{spread} One decode step dispatches {num_ops:,} ATen ops "
        f"(views excluded; on {dev.type}, the Triton recurrence kernels not counted): each is "
        f"at least one kernel inside the graph.",
    )  # fmt: skip
    report.table(
        "Decode roofline: (weight + state bytes per token) / measured copy bandwidth",
        ["context", "weights GB", "state GB", "floor ms/token", "graph ms/token", "of floor"],
        roof,
        f"Copy bandwidth {fmt(bandwidth / 1e12, 2)} TB/s (bytes read + written, device-to-device "
        f"copies of 1 GiB). Weights: the decoder and the tied head (the embedding lookup reads one "
        f"row). State: Gated DeltaNet S and conv tails read and written, ring slots in use read.",
    )  # fmt: skip
    del graph, state
    return model


def frame_pool(setup: Setup, model: InfiniteVLForConditionalGeneration) -> list[torch.Tensor]:
    """A few random frames' patches (normalised pixels), already on the device."""
    t, h, w = setup.frame_grid
    gen = torch.Generator().manual_seed(0)
    dim = model.model.visual.patch_dim
    return [torch.randn(t * h * w, dim, generator=gen).to(setup.device) for _ in range(4)]


def bench_streaming(
    setup: Setup, report: Report, model: InfiniteVLForConditionalGeneration
) -> None:
    """Frames through FrameGraph: eager until the rings are full, then the captured step."""
    dev = setup.device
    reset_peak(dev)
    state = model.new_state()
    grid = torch.tensor([setup.frame_grid])
    stream = FrameGraph(model, state, grid)
    pool = frame_pool(setup, model)
    t, h, w = setup.frame_grid
    title = (
        f"Streaming {h * 14}x{w * 14} frames ({stream.num_tokens} tokens each): vision + decoder"
    )
    fill = 0

    def fill_rings() -> None:
        nonlocal fill
        while not stream.is_static:
            stream.feed(pool[fill % 4])
            fill += 1

    fill_ms = elapsed_ms(fill_rings, dev)
    rows: list[list[str]] = []
    notes = (
        f"Before the capture, {fill} frames went through the eager forward "
        f"({fmt(fill_ms / max(fill, 1), 1)} ms/frame, the first one compiling) until every "
        f"sliding-window ring was full. Frames are random patches already on the GPU (image "
        f"decoding and resizing excluded); the frame step feeds the image's pad tokens only "
        f"(no logits), the eager row runs the model's forward with logits for the last token."
    )
    try:
        stream.feed(pool[0])  # warm-up frame
        stream.feed(pool[1])  # capture
        done, marks = 0, {}
        sync(dev)
        t0 = time.perf_counter()
        while done < setup.frames and (done < 100 or left(setup) > 40):
            stream.feed(pool[done % 4])
            done += 1
            if done % 100 == 0 or done == setup.frames:
                sync(dev)
                marks[done] = (time.perf_counter() - t0, gpu_gib(dev)[0])
        sync(dev)
        total_s = time.perf_counter() - t0
        at100 = marks.get(100, (float("nan"), float("nan")))
        last = marks.get(done, (total_s, gpu_gib(dev)[0]))
        path = "CUDA graph" if stream.graph is not None else "static step (no graph on this device)"
        rows.append([
            path, str(done), fmt(1e3 * total_s / done, 2), fmt(done / total_s, 1),
            fmt(at100[1], 3), fmt(last[1], 3),
        ])  # fmt: skip
        report.progress(" | ".join(rows[-1]))
        notes = (
            f"Graph: ms/frame over frames 1-100 {fmt(1e3 * at100[0] / 100, 2)}, over frames "
            f"101-{done} {fmt(1e3 * (last[0] - at100[0]) / max(1, done - 100), 2)}. " + notes
        )
    except Exception as exc:  # bench boundary: report the graph's failure, still time eager
        log.exception("frame graph failed")
        rows.append([f"graph failed: {type(exc).__name__}: {str(exc)[:150]}"] + [""] * 5)
    eager_state = state.clone()
    ids = stream.input_ids
    grid_dev = grid.to(dev)

    def eager(k: int) -> None:
        with torch.no_grad():
            for j in range(k):
                model(ids, eager_state, pixel_values=pool[j % 4], image_grid_thw=grid_dev,
                      logits_to_keep=1)  # fmt: skip

    eager(1)
    n_eager = min(30, setup.frames)
    eager_ms = elapsed_ms(lambda: eager(n_eager), dev) / n_eager
    rows.append(["eager (model forward per frame)", str(n_eager), fmt(eager_ms, 2),
                 fmt(1e3 / eager_ms, 1), "", ""])  # fmt: skip
    report.table(
        title,
        ["path", "frames", "ms/frame", "FPS", "GiB after 100 frames", "GiB after the last frame"],
        rows,
        notes,
    )


def stream_ab(
    setup: Setup, report: Report, model: InfiniteVLForConditionalGeneration, setting: str
) -> None:
    """``bench_streaming`` four times on one model: with ``setting`` (NAME=VALUE), without, with,
    without; each round captures its own frame graph, so the setting applies where it is read."""
    name, value = setting.split("=", 1)
    before = os.environ.get(name)
    try:
        for label in (setting, f"{name} unset", setting, f"{name} unset"):
            if left(setup) < 45:
                report.add("", f"Streaming rounds stopped before `{label}`: no time left.")
                break
            if label == setting:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
            report.add("", f"### Streaming round: `{label}`")
            bench_streaming(setup, report, model)
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def bench_transformer(setup: Setup, report: Report) -> None:
    """The engine as a Transformer (all layers full attention) until memory or time runs out."""
    dev = setup.device
    model = build(setup.transformer, setup.device, setup.dtype)
    vocab = setup.transformer.text.vocab_size
    rows: list[list[str]] = []
    last_ms, last_ctx = 0.0, 1
    with sdpa_kernel(SDPA_BACKENDS):
        prefill(model, model.new_state(), random_ids(256, vocab, dev, 0), 256)
        for i, ctx in enumerate(setup.contexts + setup.far_contexts):
            # attention grows with the square of the context: stop when the next would not fit
            need_s = 40 + 1.3 * last_ms / 1e3 * (ctx / last_ctx) ** 2
            if left(setup) < need_s:
                rows.append(
                    [f"{ctx:,}", f"skipped: time budget (~{fmt(need_s, 0)} s needed)"] + [""] * 5
                )
                break
            state: ModelState | None = None
            try:
                reset_peak(dev)
                state = model.new_state()
                reserve_full_attention(state, ctx + 8 * setup.decode_steps + 64)
                ids = random_ids(ctx, vocab, dev, i + 1)
                # one causal call up to transformer_piece; beyond, pieces whose explicit masks fit
                piece = setup.transformer_piece if ctx <= setup.transformer_piece else LONG_PIECE
                last_ms, logits = timed_prefill(model, state, ids, piece)
                last_ctx = ctx
                peak = gpu_gib(dev)[1]
                first = int(logits.argmax())
                cells = []
                for kernel in ("sdpa", "split_k"):
                    graph = DecodeGraph(model, state, full_kernel=kernel)
                    cells.append(time_graph_decode(graph, first, setup.decode_steps, dev))
                    del graph
                mem = gpu_gib(dev)[0]
                eager = time_eager_decode(model, state, first, setup.eager_steps)
                rows.append([
                    f"{ctx:,}", fmt(last_ms, 0), fmt(cells[0], 3), fmt(cells[1], 3),
                    fmt(eager, 2), fmt(peak), fmt(mem),
                ])  # fmt: skip
                report.progress(" | ".join(rows[-1]))
            except torch.OutOfMemoryError:
                rows.append([f"{ctx:,}", "out of memory"] + [""] * 5)
                break
            except Exception as exc:  # bench boundary: keep the error, stop this table
                log.exception("transformer context %d failed", ctx)
                rows.append(
                    [f"{ctx:,}", f"failed: {type(exc).__name__}: {str(exc)[:120]}"] + [""] * 5
                )
                break
    report.table(
        f"Transformer ({setup.transformer_name}: every layer full attention), same engine and run",
        [
            "context", "prefill ms", "decode ms/token (graph, SDPA)",
            "decode ms/token (graph, split-K kernel)", "eager ms/token", "prefill peak GiB",
            "GiB while decoding",
        ],
        rows,
        f"Prefill through the engine's full-attention path (cuDNN backend excluded): up to "
        f"{setup.transformer_piece:,} tokens one causal SDPA call (its flash kernel), as the "
        f"InfiniteVL rows' one forward; longer contexts in pieces of {LONG_PIECE:,}, each after "
        f"the first attending to the cache with an explicit causal mask; the "
        f"cache is reserved for the context first (it grows by the context, 36 KiB a token at "
        f"the 3B shape in bf16). Graph decode over that fixed-capacity cache: SDPA with a validity "
        f"mask over the capacity, or the project's split-K ring kernel with the capacity as its "
        f"window (flash decoding).",
    )  # fmt: skip


def make_setup(args: argparse.Namespace) -> Setup:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    deadline = time.monotonic() + args.budget_s
    if args.tiny:
        return Setup(
            device=device,
            dtype=torch.float32 if device.type == "cpu" else torch.bfloat16,
            # the 4B layer pattern (36 layers) at tiny widths
            hybrid=tiny_config(
                (("sliding_attention",) + ("linear_attention",) * 3) * 9, sliding_window=64
            ),
            transformer=tiny_config(("full_attention",) * 4),
            contexts=[64, 256, 1024],
            far_contexts=[4096],
            frame_grid=(1, 8, 8),
            frames=min(args.frames, 120),
            decode_steps=20,
            eager_steps=5,
            deadline=deadline,
            transformer_piece=256,
            hybrid_name="tiny hybrid",
            transformer_name="tiny",
        )
    return Setup(
        device=device,
        dtype=torch.bfloat16,
        hybrid=ModelConfig.from_file(CONFIG_4B),
        transformer=ModelConfig.from_file(CONFIG_3B),
        contexts=[1024, 8192, 32768, 131072],
        far_contexts=[524_288, 1_048_576],
        frame_grid=(1, 32, 32),
        frames=args.frames,
        decode_steps=200,
        eager_steps=20,
        deadline=deadline,
        # one causal forward up to 128K (SDPA's flash kernel), as the InfiniteVL rows' prefill
        transformer_piece=131072,
    )


def commit_id(given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny config: checks the flow on CPU")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks", help="folder of RESULTS.md"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="stop starting work after this"
    )
    parser.add_argument("--frames", type=int, default=1000, help="streamed frames (graph path)")
    parser.add_argument("--commit", default=None, help="commit measured (default: git HEAD)")
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: decode (the contexts and the roofline: the model is "
        "still built for the streaming rows), stream, transformer",
    )
    parser.add_argument(
        "--stream-ab",
        metavar="NAME=VALUE",
        default=None,
        help="time the streaming rows four times on one model, alternately with the environment "
        "variable NAME set to VALUE and unset (e.g. INFINITEVL_CHUNK_KERNEL=0): a change's effect "
        "measured in one process",
    )
    args = parser.parse_args()
    if args.stream_ab is not None and "=" not in args.stream_ab:
        parser.error(f"--stream-ab: expected NAME=VALUE, got {args.stream_ab!r}")
    skip = set(args.skip.split(",")) - {""}
    unknown = skip - {"decode", "stream", "transformer"}
    if unknown:
        parser.error(f"--skip: unknown sections {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.WARNING)
    setup = make_setup(args)
    if "decode" in skip:
        setup.contexts, setup.far_contexts = [], []
    dev = setup.device
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out / "RESULTS.md")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    bandwidth = copy_bandwidth(dev)
    report.add(
        "# Engine benchmark (issue #3)",
        "",
        f"`python -m benchmarks.bench_engine{' --tiny' if args.tiny else ''}` at commit "
        f"`{commit_id(args.commit)}` on {name}, torch {torch.__version__}, "
        f"{'tiny config' if args.tiny else 'InfiniteVL-4B config'}, {setup.dtype}, batch 1, "
        f"random weights; one run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    )  # fmt: skip
    model = bench_hybrid(setup, report, bandwidth)
    if "stream" not in skip and args.stream_ab:
        stream_ab(setup, report, model, args.stream_ab)
    elif "stream" not in skip:
        bench_streaming(setup, report, model)
    del model
    reset_peak(dev)
    if "transformer" not in skip:
        bench_transformer(setup, report)
    report.add("", f"Finished with {fmt(max(0.0, left(setup)), 0)} s of the time budget left.")


if __name__ == "__main__":
    main()
