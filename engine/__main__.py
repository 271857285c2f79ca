"""The ``infinitevl`` command: ``main()`` parses arguments and calls one typed function each.

Add a subcommand by writing ``_add_<name>(subparsers)`` (it sets ``run`` to a function taking the
parsed namespace and returning an exit code) and listing it in ``SUBCOMMANDS``.
Bad input ends with a one-line message on stderr and exit code 2; anything unexpected with exit
code 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import torch

from engine.config import ModelConfig
from engine.errors import EngineError, InputError
from engine.models import add_models_subcommand
from engine.sampling import SamplingParams
from engine.state import ModelState

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
_SHORT_LAYER_NAMES = {
    "linear_attention": "linear",
    "sliding_attention": "sliding",
    "full_attention": "full",
}


def generate(
    prompt: str,
    *,
    model: Path | None,
    images: Sequence[Path],
    params: SamplingParams,
    device: str = "auto",
    dtype: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    quant: str | None = None,
) -> int:
    """Answer one prompt (with images) and stream the reply to ``out``; the model to ``err``."""
    out, err = out or sys.stdout, err or sys.stderr
    from engine.backends import load_engine

    # a .gguf model runs on llama.cpp (engine/backends/gguf.py), anything else on the torch engine
    engine = load_engine(model, device=device, dtype=dtype, quant=quant)
    info = engine.info
    which = "embedded default model" if info.is_embedded_default else "model"
    print(
        f"{which}: {info.path} ({info.num_parameters:,} parameters, {info.device}, {info.dtype})"
        + (f", {info.quantization} weights" if info.quantization else ""),
        file=err,
    )
    if info.slow_warning:
        print(info.slow_warning, file=err)
    session = engine.new_session()
    session.add_user_message(prompt, images)
    for delta in session.generate(params):
        out.write(delta.text)
        out.flush()
    out.write("\n")
    out.flush()
    stats = session.last_stats
    assert stats is not None
    print(
        f"{stats.prompt_tokens} prompt tokens in {stats.prefill_seconds:.2f} s, "
        f"{stats.generated_tokens} generated in {stats.decode_seconds:.2f} s "
        f"(stopped: {stats.stop_reason})",
        file=err,
    )
    return 0


def quantize(
    src: Path, dst: Path, *, method: str, dtype: str | None = None, out: TextIO | None = None
) -> int:
    """Write ``src``'s checkpoint with quantized linear layers to ``dst`` (engine.quant)."""
    out = out or sys.stdout
    from engine.engine import resolve_dtype
    from engine.loader import load_model, save_checkpoint, weight_files
    from engine.quant import quantize_

    if src.resolve() == dst.resolve():
        raise InputError(f"quantize: output {dst} is the input checkpoint; name a new directory")
    model, _ = load_model(src, dtype=resolve_dtype(dtype))
    qconfig = quantize_(model, method=method)
    save_checkpoint(model, dst, tokenizer_dir=src)
    before = sum(f.stat().st_size for f in weight_files(src))
    after = sum(f.stat().st_size for f in weight_files(dst))
    out.write(
        f"{len(qconfig.modules)} linear layers quantized to {method}; weights "
        f"{before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB in {dst}\n"
    )
    return 0


def describe(config: ModelConfig) -> dict[str, Any]:
    """Facts about a model from its config alone: the model and its state built on ``meta``."""
    from engine.model.infinitevl import InfiniteVLForConditionalGeneration

    with torch.device("meta"):
        model = InfiniteVLForConditionalGeneration(config)
    num_parameters = sum(p.numel() for p in model.parameters())
    num_vision = sum(p.numel() for p in model.model.visual.parameters())
    # transformers >= 4.56 writes "dtype" where older versions wrote "torch_dtype"
    key = "torch_dtype" if "torch_dtype" in config.raw else "dtype"
    state_dtype = str(config.raw.get(key, "float32"))
    dtype = getattr(torch, state_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"config.json: {key} {state_dtype!r} is not a torch dtype")
    state = ModelState.new(config.text, batch=1, device="meta", dtype=dtype)
    text, vision = config.text, config.vision
    return {
        "model_type": config.model_type,
        "num_layers": text.num_hidden_layers,
        "layer_pattern": layer_pattern(text.layer_types),
        "layer_types": list(text.layer_types),
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "head_dim": text.head_dim,
        "num_linear_heads": text.num_linear_heads,
        "linear_key_head_dim": text.linear_head_dim,
        "linear_value_head_dim": text.linear_value_head_dim,
        "sliding_window": text.sliding_window,
        "vocab_size": text.vocab_size,
        "tie_word_embeddings": text.tie_word_embeddings,
        "num_parameters": num_parameters,
        "num_parameters_vision": num_vision,
        "num_parameters_text": num_parameters - num_vision,
        "state_nbytes": state.nbytes(),
        "state_dtype": state_dtype,
        "vision": {
            "depth": vision.depth,
            "hidden_size": vision.hidden_size,
            "num_heads": vision.num_heads,
            "patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "window_size": vision.window_size,
            "fullatt_block_indexes": list(vision.fullatt_block_indexes),
            "out_hidden_size": vision.out_hidden_size,
        },
    }


def layer_pattern(layer_types: Sequence[str]) -> str:
    """The shortest repeating block of layers: ``[sliding, linear, linear, linear] x 9``."""
    names = [_SHORT_LAYER_NAMES.get(t, t) for t in layer_types]
    n = len(names)
    for period in range(1, n + 1):
        if n % period == 0 and names == names[:period] * (n // period):
            return f"[{', '.join(names[:period])}] x {n // period}"
    raise AssertionError("unreachable: the whole list is a period of itself")


def info(path: Path, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print what a checkpoint directory's (or a bare) config.json describes."""
    out = out or sys.stdout
    facts = describe(ModelConfig.from_file(path))
    if as_json:
        out.write(json.dumps(facts, indent=2) + "\n")
        return 0
    v = facts["vision"]
    head = "tied" if facts["tie_word_embeddings"] else "own"
    mib = facts["state_nbytes"] / 2**20
    lines = [
        ("model type", facts["model_type"]),
        ("layers", f"{facts['num_layers']}: {facts['layer_pattern']}"),
        (
            "hidden size",
            f"{facts['hidden_size']} (MLP {facts['intermediate_size']}; attention "
            f"{facts['num_attention_heads']} heads / {facts['num_key_value_heads']} kv heads of "
            f"{facts['head_dim']}; Gated DeltaNet {facts['num_linear_heads']} heads, key "
            f"{facts['linear_key_head_dim']}, value {facts['linear_value_head_dim']})",
        ),
        ("sliding window", f"{facts['sliding_window']} tokens"),
        ("vocabulary", f"{facts['vocab_size']} ({head} lm_head)"),
        (
            "parameters",
            f"{facts['num_parameters']:,} (text {facts['num_parameters_text']:,}, "
            f"vision {facts['num_parameters_vision']:,})",
        ),
        (
            "state",
            f"{facts['state_nbytes']:,} bytes ({mib:.1f} MiB; {facts['state_dtype']} activations, "
            "float32 Gated DeltaNet matrices, full window), the same at any length",
        ),
        (
            "vision",
            f"{v['depth']} blocks of width {v['hidden_size']} ({v['num_heads']} heads), "
            f"{v['patch_size']}-px patches over {v['temporal_patch_size']} frames, "
            f"{v['spatial_merge_size']}x{v['spatial_merge_size']} merge into "
            f"{v['out_hidden_size']}, window {v['window_size']} px, full attention in blocks "
            f"{v['fullatt_block_indexes']}",
        ),
    ]
    for key, value in lines:
        out.write(f"{key:<15} {value}\n")
    return 0


def app(argv: Sequence[str]) -> int:
    """Start the desktop app (``app.main.run``)."""
    if importlib.util.find_spec("PySide6") is None:
        raise EngineError(
            "the desktop app needs PySide6, which is not installed: run `make app`, or "
            "`.venv/bin/pip install -c constraints.txt -e '.[app]'`"
        )
    # the CLI is the one place above the app: importlib keeps the engine package free of app
    # imports (tests/test_layering.py)
    try:
        app_main = importlib.import_module("app.main")
    except ModuleNotFoundError as exc:
        raise EngineError(f"the desktop app cannot start: module {exc.name!r} is missing") from exc
    return int(app_main.run(list(argv)) or 0)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a prompt (and images), streaming to stdout")
    _add_debug_flag(p)
    p.add_argument("prompt", help="the user's message")
    p.add_argument(
        "--model", type=Path, help="checkpoint directory or .gguf (default: the embedded model)"
    )
    p.add_argument("--image", type=Path, action="append", default=[], help="image file, repeatable")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="default: as stored; on a CPU, for a model of at most 256 MiB of weights, float32 or "
        "bfloat16, whichever this CPU runs it faster (timed on its first load, remembered; "
        "INFINITEVL_CPU_DTYPE pins one)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--quant",
        choices=("none", "int8", "int8-dynamic", "int4", "nf4"),
        default="none",
        help="quantize the linear layers as they load: int8, int8-dynamic or int4 on a CPU, "
        "nf4 or int8 on CUDA (docs/quantization.md)",
    )

    def run(a: argparse.Namespace) -> int:
        params = SamplingParams(
            temperature=a.temperature,
            top_p=a.top_p,
            top_k=a.top_k,
            repetition_penalty=a.repetition_penalty,
            max_new_tokens=a.max_new_tokens,
            stop=tuple(a.stop),
            seed=a.seed,
        )
        return generate(
            a.prompt, model=a.model, images=a.image, params=params, device=a.device, dtype=a.dtype,
            quant=a.quant,
        )  # fmt: skip

    p.set_defaults(run=run)


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write a checkpoint with quantized linear layers")
    _add_debug_flag(p)
    p.add_argument("src", type=Path, help="float checkpoint directory")
    p.add_argument("dst", type=Path, help="directory to write (loads with --model as it is)")
    p.add_argument("--quant", choices=("int8", "int8-dynamic", "int4", "nf4"), required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="non-quantized")
    p.set_defaults(run=lambda a: quantize(a.src, a.dst, method=a.quant, dtype=a.dtype))


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model from its config.json (no weights needed)")
    _add_debug_flag(p)
    p.add_argument("path", type=Path, help="checkpoint directory or config.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=lambda a: info(a.path, as_json=a.json))


def _add_app(sub: argparse._SubParsersAction) -> None:
    # every argument after `app` is the app's own (main() hands over what argparse leaves)
    p = sub.add_parser("app", help="start the desktop assistant", add_help=False)
    p.set_defaults(run=lambda a: app(a.app_args), takes_extra_args=True)


def _add_ocr(sub: argparse._SubParsersAction) -> None:
    # `infinitevl ocr --region`: every argument after `ocr` is app/ocr_command.py's own
    p = sub.add_parser("ocr", help="read a screen region into the clipboard", add_help=False)

    def run(a: argparse.Namespace) -> int:
        if "--region" not in a.app_args:  # `infinitevl ocr IMAGE...`: no Qt needed
            return importlib.import_module("engine.ocr").run_cli(a.app_args)
        # above the app, like `app`: importlib keeps the engine package free of app imports
        return int(importlib.import_module("app.ocr_command").main(a.app_args))

    p.set_defaults(run=run, takes_extra_args=True)


def _add_train(sub: argparse._SubParsersAction) -> None:
    # `infinitevl train CONFIG.toml`: one stage of the training pipeline (engine/train/)
    from engine.train.__main__ import add_arguments, run

    p = sub.add_parser("train", help="run a training stage (see engine/train/configs/)")
    _add_debug_flag(p)
    add_arguments(p)
    p.set_defaults(run=run)


def _add_debug_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand without the flag keeps the value parsed before it
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks")


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_generate,
    _add_quantize,
    _add_info,
    _add_app,
    _add_ocr,
    _add_train,
    add_models_subcommand,
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (its usage block is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; ``--debug`` is accepted before or after the subcommand."""
    parser = _Parser(
        prog="infinitevl", description="InfiniteVL Desktop: a local assistant that sees."
    )
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infinitevl`` command; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_extra_args", False):
        args.app_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except EngineError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"infinitevl {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"infinitevl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI boundary: a message, not a traceback, unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"infinitevl {args.command}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
