"""Quantized engines against their float baseline: memory, prefill time, decode speed and the KL
divergence of next-token distributions over a fixed prompt set.

    python -m benchmarks.quant_bench --device cuda --config 4b          # bf16 / int8 / nf4, GPU
    python -m benchmarks.quant_bench --device cpu --checkpoint DIR      # a real checkpoint on CPU
    python -m benchmarks.quant_bench --device cpu                       # embedded model, else tiny
    python -m benchmarks.quant_bench --device cpu --untrained           # its architecture, random
    python -m benchmarks.quant_bench --device cpu --linear-stack        # Qwen2.5-3B-shaped linears
    python -m benchmarks.quant_bench --device cpu --sensitivity         # one layer kind at a time

Models with random weights (``--config``) are drawn N(0, 0.02) as ``engine.train.build`` does,
written once as a bf16 checkpoint and loaded through ``load_model(..., quant=...)``, the path the
app takes. Prints markdown tables. The KL is KL(baseline || quantized) in nats, averaged over
every position of every prompt.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine import quant
from engine.config import ModelConfig
from engine.loader import load_model, save_checkpoint

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "reference"
CONFIGS = {"4b": REFERENCE / "infinitevl-4b.config.json"}
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "sample.png"
# Qwen2.5-3B's decoder linears (hidden 2048, MLP 11008, 16 heads / 2 kv heads of 128), 36 layers
QWEN25_3B = {"hidden": 2048, "intermediate": 11008, "q": 2048, "kv": 256, "layers": 36}


@dataclass(slots=True)
class Row:
    method: str
    weights_mib: float
    peak_mib: float
    prefill_s: float
    decode_tok_s: float
    graph_tok_s: float  # CUDA-graph decode (Session.generate's path on CUDA); nan where none
    kl: float
    top1: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor the model holds, the CPU kernels' packed weights included."""
    seen: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    packed_int8 = 0
    for m in model.modules():
        if isinstance(m, quant.Int4Linear):
            tensors += [t for t in (m._packed, m._scales_zeros) if t is not None]
        elif isinstance(m, quant.Int8Linear) and m._packed is not None:
            # fbgemm's packed weight is no tensor: one byte per weight
            packed_int8 += m.in_features * m.out_features
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) + packed_int8


def text_ids(vocab: int) -> int:
    """Ids below this are text (Qwen2's specials start at 151643, the tiny vocabulary's at -8)."""
    return min(vocab - 8, 151643)


def text_pool(config: ModelConfig) -> torch.Tensor:
    """The ids a random prompt or a greedy step may hold: text ids without the vision markers (a
    small vocabulary puts them among its first ids, and an image pad token outside an image is
    refused, as the engine's sampler never writes one). For Qwen2's vocabulary: all ids below
    ``text_ids``, in order."""
    allowed = torch.ones(text_ids(config.text.vocab_size), dtype=torch.bool)
    for i in (
        config.image_token_id,
        config.video_token_id,
        config.vision_start_token_id,
        config.vision_end_token_id,
    ):
        if i < allowed.numel():
            allowed[i] = False
    return allowed.nonzero().squeeze(1)


def prompt_set(config: ModelConfig, n: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """Fixed random prompts of text ids (``text_pool``)."""
    pool = text_pool(config)
    g = torch.Generator().manual_seed(seed)
    return [pool[torch.randint(0, pool.numel(), (1, length), generator=g)] for _ in range(n)]


@dataclass(slots=True)
class ImagePrompt:
    """resources/sample.png at 224 x 224 between text: exercises the vision tower too."""

    input_ids: torch.Tensor  # [1, T]
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


def image_prompt(config: ModelConfig, length: int) -> ImagePrompt:
    from PIL import Image

    from engine.preprocess import image_token_count, preprocess_images

    image = Image.open(SAMPLE_IMAGE).convert("RGB").resize((224, 224))
    pixels, grid = preprocess_images([image])
    n = image_token_count(grid[0], config.vision.spatial_merge_size)
    text = prompt_set(config, 1, length, seed=2)[0][0].tolist()
    image_ids = [
        config.vision_start_token_id,
        *[config.image_token_id] * n,
        config.vision_end_token_id,
    ]
    ids = text[: length // 2] + image_ids + text[length // 2 :]
    return ImagePrompt(torch.tensor([ids]), pixels, grid)


@torch.no_grad()
def all_logits(model: nn.Module, prompts: list[torch.Tensor | ImagePrompt]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    out = []
    for p in prompts:
        if isinstance(p, ImagePrompt):
            logits = model(
                p.input_ids.to(device), model.new_state(), pixel_values=p.pixel_values.to(device),
                image_grid_thw=p.grid_thw.to(device),
            )  # fmt: skip
        else:
            logits = model(p.to(device), model.new_state())
        out.append(logits.float().cpu())
    return out


def kl_and_top1(base: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    kls, agree = [], []
    for p, q in zip(base, other, strict=True):
        lp, lq = p.log_softmax(-1), q.log_softmax(-1)
        kls.append((lp.exp() * (lp - lq)).sum(-1).mean().item())
        agree.append((p.argmax(-1) == q.argmax(-1)).float().mean().item())
    return statistics.fmean(kls), statistics.fmean(agree)


@torch.no_grad()
def time_model(
    model: nn.Module, prefill_tokens: int, decode_tokens: int, device: torch.device
) -> tuple[float, float]:
    """(prefill seconds for one prompt, decode tokens per second), warm (second run)."""
    ids = prompt_set(model.config, 1, prefill_tokens, seed=1)[0].to(device)
    prefill = []
    for _ in range(2):
        state = model.new_state()
        _sync(device)
        start = time.perf_counter()
        logits = model(ids, state, logits_to_keep=1)
        _sync(device)
        prefill.append(time.perf_counter() - start)
    pool = text_pool(model.config).to(device)
    if pool.numel() == int(pool[-1]) + 1:  # ids 0..top-1: a slice, no gather in the timed loop
        top = pool.numel()

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return logits[:, -1, :top].argmax(-1, keepdim=True)
    else:

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return pool[logits[:, -1, pool].argmax(-1, keepdim=True)]

    token = pick(logits)
    for _ in range(2):  # warm-up steps
        token = pick(model(token, state, logits_to_keep=1))
    _sync(device)
    start = time.perf_counter()
    for _ in range(decode_tokens):
        token = pick(model(token, state, logits_to_keep=1))
    _sync(device)
    return prefill[-1], decode_tokens / (time.perf_counter() - start)


def time_graph_decode(
    model: nn.Module, prefill_tokens: int, decode_tokens: int, device: torch.device
) -> float:
    """Decode tokens/s through ``DecodeGraph`` (what ``Session.generate`` runs on CUDA).

    nan off CUDA, or where the step cannot be captured (the session then decodes eagerly: the
    eager column is what it gets)."""
    if device.type != "cuda":
        return float("nan")
    from engine.cuda_graph import DecodeGraph

    ids = prompt_set(model.config, 1, prefill_tokens, seed=1)[0].to(device)
    state = model.new_state()
    try:
        with torch.no_grad():
            first = int(model(ids, state, logits_to_keep=1)[0, -1].argmax())
        graph = DecodeGraph(model, state)
        graph.step(first)  # warm-up steps and the capture happen in the first few
        for _ in range(3):
            graph.step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            graph.advance()
        _sync(device)
    except Exception as exc:  # bench boundary: report the row without a graph figure
        print(f"graph decode failed ({type(exc).__name__}: {exc}); eager only", flush=True)
        return float("nan")
    return decode_tokens / (time.perf_counter() - start)


def bench_checkpoint(
    path: Path,
    methods: list[str],
    device: torch.device,
    dtype: torch.dtype,
    prompts: list[torch.Tensor],
    prefill_tokens: int,
    decode_tokens: int,
) -> list[Row]:
    rows, base = [], None
    for method in ["none", *methods]:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        q = None if method == "none" else method
        model, _ = load_model(path, device=device, dtype=dtype, quant=q)
        _sync(device)
        logits = all_logits(model, prompts)
        prefill_s, tok_s = time_model(model, prefill_tokens, decode_tokens, device)
        if device.type == "cuda":
            weights = torch.cuda.memory_allocated(device)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            weights = peak = tensor_bytes(model)
        # after the memory readings: the graph's pool is not the model's
        graph_tok_s = time_graph_decode(model, prefill_tokens, decode_tokens, device)
        if base is None:
            base = logits
        kl, top1 = kl_and_top1(base, logits)
        name = str(dtype).removeprefix("torch.") if method == "none" else method
        rows.append(
            Row(name, weights / 2**20, peak / 2**20, prefill_s, tok_s, graph_tok_s, kl, top1)
        )
        print_rows(rows[-1:], header=len(rows) == 1)
        del model, logits
    return rows


def print_rows(rows: list[Row], *, header: bool = True) -> None:
    if header:
        print(
            "| weights | memory MiB (weights) | peak MiB | prefill s | decode tok/s "
            "| graph decode tok/s | KL vs baseline (nats) | top-1 agreement |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.method} | {r.weights_mib:.1f} | {r.peak_mib:.1f} | {r.prefill_s:.3f} "
            f"| {r.decode_tok_s:.1f} | {r.graph_tok_s:.1f} | {r.kl:.2e} | {r.top1:.3f} |",
            flush=True,
        )


def random_checkpoint(config: Path, out: Path, dtype: torch.dtype) -> Path:
    """A random model of ``config`` (N(0, 0.02), seed 0) written as a checkpoint in ``dtype``."""
    from engine.train.build import fresh_model

    model = fresh_model(config, seed=0, device=torch.device("cpu"))
    model.to_dtype(dtype)
    save_checkpoint(model, out)
    del model
    return out


def linear_stack_bench(
    layers: int, prefill_tokens: int, decode_tokens: int, dtype: torch.dtype, methods: list[str]
) -> None:
    """Decoder linears of Qwen2.5-3B's shape (no attention, no head): float vs quantized."""
    s = QWEN25_3B
    shapes = [
        (s["q"], s["hidden"]), (s["kv"], s["hidden"]), (s["kv"], s["hidden"]),
        (s["hidden"], s["q"]), (s["intermediate"], s["hidden"]),
        (s["intermediate"], s["hidden"]), (s["hidden"], s["intermediate"]),
    ]  # fmt: skip
    print(f"\nQwen2.5-3B-shaped linear stack, {layers} layers, {dtype} activations, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| weights | resident GiB | prefill tok/s | decode tok/s |")
    print("| --- | --- | --- | --- |")
    for method in ["float", *methods]:
        torch.manual_seed(0)
        stack = nn.ModuleList()
        for _ in range(layers):
            for n, k in shapes:
                lin = nn.Linear(k, n, bias=False, dtype=dtype)
                if method != "float":
                    holder = nn.Sequential(lin)
                    quant.quantize_(holder, method=method)
                    lin = holder[0]
                stack.append(lin)
        run = _stack_runner(stack, s)
        x = torch.randn(prefill_tokens, s["hidden"], dtype=dtype)
        run(x[:1])  # packs the weights for this CPU's kernels
        start = time.perf_counter()
        run(x)
        prefill = prefill_tokens / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(decode_tokens):
            run(x[i : i + 1])
        decode = decode_tokens / (time.perf_counter() - start)
        print(f"| {method} | {tensor_bytes(stack) / 2**30:.2f} | {prefill:.1f} | {decode:.2f} |")
        del stack, run
        gc.collect()


def _stack_runner(stack: nn.ModuleList, s: dict[str, int]) -> Callable[[torch.Tensor], None]:
    @torch.no_grad()
    def run(x: torch.Tensor) -> None:
        for i in range(0, len(stack), 7):
            q, k, v, o, gate, up, down = stack[i : i + 7]
            # random weights: an RMS norm per block keeps the stream finite, as in a model
            x = x * x.float().pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt().to(x.dtype)
            q(x), k(x), v(x)
            h = x + o(x[:, : s["q"]])
            x = h + down(torch.nn.functional.silu(gate(h)) * up(h))

    return run


def layer_kind(name: str) -> str:
    """``model.language_model.layers.3.mlp.up_proj`` -> ``language_model mlp.up_proj``."""
    parts = name.split(".")
    tower = "visual" if "visual" in parts else "language_model"
    return f"{tower} {'.'.join(parts[-2:])}"


def sensitivity(
    path: Path, method: str, prompts: list[torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    """KL when only one kind of linear layer is quantized (the measurement behind KEEP_IN_FLOAT)."""
    model, _ = load_model(path, device=device, dtype=dtype)
    base = all_logits(model, prompts)
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    kinds = sorted({layer_kind(n) for n in linears})
    print(f"\nsensitivity of {path.name} ({dtype}) to {method}, one layer kind at a time")
    print("| layer kind | layers | weights | KL vs float (nats) | top-1 agreement |")
    print("| --- | --- | --- | --- | --- |")
    for kind in kinds:
        config = quant.quantize_(
            model, lambda n, m, k=kind: layer_kind(n) == k, method, device=device
        )
        kl, top1 = kl_and_top1(base, all_logits(model, prompts))
        numel = sum(linears[n].weight.numel() for n in config.modules)
        print(f"| {kind} | {len(config.modules)} | {numel:,} | {kl:.2e} | {top1:.3f} |", flush=True)
        for name in config.modules:  # put the float layers back
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linears[name])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: embedded)")
    p.add_argument("--config", choices=sorted(CONFIGS), help="random weights at this config")
    p.add_argument(
        "--untrained",
        action="store_true",
        help="the embedded model's architecture with random weights (speed and memory only)",
    )
    p.add_argument(
        "--methods", help="comma list (default: int8,nf4 on CUDA; int8,int8-dynamic,int4 on CPU)"
    )
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--linear-stack", action="store_true")
    p.add_argument("--layers", type=int, default=QWEN25_3B["layers"])
    p.add_argument("--sensitivity", action="store_true")
    a = p.parse_args()
    device = torch.device(a.device)
    default = "int8,nf4" if device.type == "cuda" else "int8,int8-dynamic,int4"
    methods = (a.methods or default).split(",")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if a.linear_stack:
        linear_stack_bench(a.layers, a.prefill_tokens, a.decode_tokens, dtype, methods)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = _model_path(a, Path(tmp), dtype)
        config = ModelConfig.from_file(path / "config.json")
        prompts: list[torch.Tensor | ImagePrompt] = [
            *prompt_set(config, a.prompts, a.prompt_length),
            image_prompt(config, a.prompt_length),
        ]
        if a.sensitivity:
            sensitivity(path, methods[0], prompts, device, dtype)
            return
        where = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{torch.get_num_threads()} threads"
        )
        print(
            f"\n{path} on {device} ({where}); prefill {a.prefill_tokens} tokens, decode "
            f"{a.decode_tokens}; KL over {a.prompts} text prompts of {a.prompt_length} tokens "
            "and one with an image"
        )
        bench_checkpoint(path, methods, device, dtype, prompts, a.prefill_tokens, a.decode_tokens)


def _model_path(a: argparse.Namespace, tmp: Path, dtype: torch.dtype) -> Path:
    if a.config:
        return random_checkpoint(CONFIGS[a.config], tmp / a.config, dtype)
    if a.untrained:
        from engine.train.recipe import write_untrained

        return write_untrained(tmp / "untrained")
    if a.checkpoint:
        return a.checkpoint
    from engine.default_model import find_default_model

    found = find_default_model()
    if found is not None:
        return found
    from engine.testing import write_tiny_checkpoint

    print("no embedded default model yet: the tiny random test model stands in")
    return write_tiny_checkpoint(tmp / "tiny")


if __name__ == "__main__":
    main()
