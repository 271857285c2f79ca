"""The mean of the weights of checkpoints of one architecture (a "model soup").

Two SFT runs where the second continues the first often read differently well: in the
twenty-second session the continuation read unseen text, pages and the Qt dialogs better and
plain lines and screenshots worse (engine/train/README.md has both and their mean). Every
floating-point tensor is averaged in float32, tied ones once, and the result is exported as the
first checkpoint is stored (bf16 but `A_log`, for the embedded model), with its tokenizer and
image preprocessor.

    python -m engine.train.average RUN_A/checkpoint RUN_B/checkpoint --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.errors import ConfigError
from engine.model.infinitevl import InfiniteVLForConditionalGeneration


def average_checkpoints(
    paths: Sequence[str | Path], weights: Sequence[float] | None = None
) -> InfiniteVLForConditionalGeneration:
    """A float32 model whose every floating-point tensor is the (weighted) mean of the
    checkpoints' `paths`.

    Raises:
        ConfigError: fewer than two checkpoints, weights that do not match them or do not sum to
            a positive number, or checkpoints of different architectures.
    """
    from engine.train.build import load_float32

    if len(paths) < 2:
        raise ConfigError(f"averaging needs two checkpoints or more, got {len(paths)}")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights {weights} do not fit {len(paths)} checkpoints")
    cpu = torch.device("cpu")
    model = load_float32(paths[0], cpu)
    # each tensor once: tied ones (the embedding and the head) share one
    total: dict[int, tuple[str, torch.Tensor]] = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            total.setdefault(t.data_ptr(), (name, t))
    with torch.no_grad():
        for _, t in total.values():
            t.mul_(weights[0])
        for path, w in zip(paths[1:], weights[1:], strict=True):
            other = load_float32(path, cpu)
            if other.config != model.config:
                raise ConfigError(f"{path}: another architecture than {paths[0]}")
            theirs = other.state_dict()
            for name, t in total.values():
                t.add_(theirs[name], alpha=w)
        for _, t in total.values():
            t.div_(sum(weights))
    return model


_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}  # safetensors' names


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint stores its weights in (that of its first tensor but `A_log`,
    which every checkpoint keeps in float32)."""
    from safetensors import safe_open

    from engine.loader import weight_files

    for file in weight_files(Path(path)):
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if not name.endswith("A_log"):  # read from the header, not the tensor's bytes
                    stored = f.get_slice(name).get_dtype()
                    if stored not in _DTYPES:
                        raise ConfigError(f"{path}: weights stored as {stored}; cannot average")
                    return _DTYPES[stored]
    raise ConfigError(f"{path}: no weights")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.train.average",
        description="Write the mean of the weights of checkpoints of one architecture as a "
        "checkpoint (stored as the first one is, with its tokenizer and preprocessor).",
    )  # fmt: skip
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (two or more)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced whole)")
    p.add_argument("--weights", help="comma list, one per checkpoint (default: equal)")
    args = p.parse_args(argv)
    from engine.train.checkpointing import export_checkpoint

    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
        model = average_checkpoints(args.checkpoints, weights)
    except (ConfigError, ValueError) as exc:
        p.error(str(exc))
    dtype = stored_dtype(args.checkpoints[0])
    out = export_checkpoint(
        model, args.out.parent, args.checkpoints[0], 2**31, dtype, name=args.out.name
    )
    print(f"{out}: mean of {len(args.checkpoints)} checkpoints, stored as {dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
