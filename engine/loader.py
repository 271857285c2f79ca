"""Checkpoint I/O: Hugging Face directories (config.json + safetensors) to a model and back.

Reads both name layouts of the published checkpoints (in-memory ``model.visual.*`` /
``model.language_model.*`` and legacy on-disk ``visual.*`` / ``model.*``), one file or shards with
an index. Safetensors only: pickled weights are never opened. Knows nothing of sessions or Qt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from engine.config import ModelConfig
from engine.errors import CheckpointError, ConfigError
from engine.model.infinitevl import FLOAT32_PARAMS, InfiniteVLForConditionalGeneration
from engine.quant import (
    EAGER_QUANT_ON_CUDA,
    FLOAT32_BUFFERS,
    QuantConfig,
    quantize_,
    to_bitsandbytes_,
)

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
EMBED = "model.language_model.embed_tokens.weight"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# files a checkpoint carries besides config and weights; save_checkpoint copies them over
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "generation_config.json",
)
# bytes read at evenly spaced offsets of each weight file for the fingerprint
_FINGERPRINT_SAMPLES = 32
_FINGERPRINT_SAMPLE_BYTES = 4096


def to_memory_name(name: str) -> str:
    """Map a legacy on-disk tensor name to the in-memory one (in-memory names pass unchanged)."""
    if name.startswith(("model.visual.", "model.language_model.", "lm_head.")):
        return name
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    return name


def to_legacy_name(name: str) -> str:
    """Map an in-memory tensor name to the legacy on-disk layout."""
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quant: str | None = None,
) -> tuple[InfiniteVLForConditionalGeneration, ModelConfig]:
    """Load a checkpoint directory: build on the meta device, then assign the stored tensors.

    Args:
        path: directory with config.json and model.safetensors, or shards listed in
            model.safetensors.index.json.
        device: where the weights go.
        dtype: dtype of every floating tensor but ``A_log`` (always float32); None keeps each
            tensor's stored dtype.
        quant: "int8", "int4" or "nf4" quantizes a float checkpoint's linear layers as it loads
            (``engine.quant``); a checkpoint written quantized (config.json's
            ``quantization_config``) loads as it is stored. On CUDA, NF4/int8 run in bitsandbytes.
    Returns:
        ``(model, config)``, the model in eval mode with a tied ``lm_head`` re-tied.
    Raises:
        CheckpointError: missing directory, config.json or weights; a corrupt or truncated file;
            a shard the index lists but the directory lacks; pickled weights only; missing,
            unexpected or mis-shaped tensors (every one of them named).
        ConfigError: a config.json that does not describe a model.
    """
    path = Path(path)
    config = _read_config(path)
    files = weight_files(path)
    target = torch.device(device)
    with torch.device("meta"):
        model = InfiniteVLForConditionalGeneration(config)
    stored_quant = _stored_quantization(path, config, quant)
    if stored_quant is not None:
        q = stored_quant
        quantize_(model, method=q.method, modules=q.modules, group_size=q.group_size,
                  block_size=q.block_size)  # fmt: skip
    if quant is not None and stored_quant is None and target.type != "cpu":
        # quantize on the host, then move: the float weights never fill the GPU
        device = "cpu"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    stored = _read_headers(files)
    _check_names_and_shapes(path, expected, stored, config.text.tie_word_embeddings)
    state_dict = _read_tensors(stored, torch.device(device), dtype)
    if config.text.tie_word_embeddings:
        state_dict[LM_HEAD] = state_dict[EMBED]
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left_on_meta, f"tensors never loaded: {left_on_meta}"
    if quant is not None and stored_quant is None:
        # on CUDA, NF4/int8 layers go straight to bitsandbytes
        quantize_(model, method=quant, device=target)
    method = quant or (stored_quant and stored_quant.method)
    if method and (slow := slow_quant_warning(method, target.type)):
        log.warning(slow)
    if stored_quant is not None and target.type == "cuda" and stored_quant.method != "int4":
        to_bitsandbytes_(model, target)
    model.to(target)
    log.info("loaded %d tensors from %d file(s) in %s", len(state_dict), len(files), path)
    return model.eval(), config


def _stored_quantization(path: Path, config: ModelConfig, quant: str | None) -> QuantConfig | None:
    raw = config.raw.get("quantization_config")
    if raw is None:
        return None
    try:
        stored = QuantConfig.from_hf(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path}/config.json: {exc}") from exc
    if quant is not None and quant != stored.method:
        raise CheckpointError(
            f"{path} is stored quantized to {stored.method}; it cannot load as {quant} "
            "(quantize the float checkpoint instead)"
        )
    return stored


def _read_config(path: Path) -> ModelConfig:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json")
    return ModelConfig.from_file(path / "config.json")


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, or model.safetensors.

    Raises:
        CheckpointError: an unreadable index, shards it lists but the directory lacks, only
            pickled weights (never opened), or no weights at all.
    """
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_index(index)
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards missing from {path}: {', '.join(missing)}")
        return [path / s for s in shards]
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{path} holds only pickled weights ({', '.join(pickled)}); safetensors are required "
            "(pickle can run code, so it is never opened): convert it to model.safetensors first"
        )
    raise CheckpointError(f"{path}: no weights ({SINGLE_FILE} or {INDEX_FILE})")


def _read_index(index: Path) -> dict[str, str]:
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from exc
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: needs a 'weight_map' of tensor name -> shard file")
    bad = [s for s in set(weight_map.values()) if Path(s).name != s]
    if bad:
        raise CheckpointError(f"{index}: shard names must be plain file names, got {sorted(bad)}")
    return weight_map


def _read_headers(files: list[Path]) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """In-memory name -> (file, stored name, shape), from the headers only."""
    stored: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    duplicates = []
    for file in files:
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    key = to_memory_name(name)
                    if key in stored:
                        duplicates.append(f"{name} ({stored[key][0].name} and {file.name})")
                    stored[key] = (file, name, tuple(f.get_slice(name).get_shape()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from exc
    if duplicates:
        raise CheckpointError(f"tensors stored twice (after name mapping): {', '.join(duplicates)}")
    return stored


def _check_names_and_shapes(
    path: Path,
    expected: dict[str, tuple[int, ...]],
    stored: dict[str, tuple[Path, str, tuple[int, ...]]],
    tied: bool,
) -> None:
    if tied:
        expected = {k: v for k, v in expected.items() if k != LM_HEAD}
        if LM_HEAD in stored:
            # some writers save the tied head anyway; it is the embedding, so it is not read
            if stored[LM_HEAD][2] != stored.get(EMBED, (None, None, None))[2]:
                log.warning("%s: tied lm_head.weight differs in shape from the embedding", path)
            stored = {k: v for k, v in stored.items() if k != LM_HEAD}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(stored[k][1] for k in set(stored) - set(expected))
    misshaped = sorted(
        f"{stored[k][1]}: checkpoint {list(stored[k][2])}, model {list(expected[k])}"
        for k in set(expected) & set(stored)
        if stored[k][2] != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped: {'; '.join(misshaped)}")
    if problems:
        raise CheckpointError(f"{path}: tensors do not match the config: " + " | ".join(problems))


def _read_tensors(
    stored: dict[str, tuple[Path, str, tuple[int, ...]]],
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for key, (file, _, _) in stored.items():
        by_file.setdefault(file, []).append(key)
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for key in keys:
                    out[key] = _cast(key, f.get_tensor(stored[key][1]), dtype).to(device)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from exc
    return out


def _cast(name: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    if name.rsplit(".", 1)[-1] in (*FLOAT32_PARAMS, *FLOAT32_BUFFERS):
        return t.float()
    return t if dtype is None else t.to(dtype)


def save_checkpoint(
    model: InfiniteVLForConditionalGeneration,
    path: str | Path,
    *,
    max_shard_bytes: int = 2**31,
    legacy_names: bool = False,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory that :func:`load_model` reads.

    Args:
        model: the model; its ``config`` becomes config.json.
        path: directory to write (created; earlier weight files in it are replaced).
        max_shard_bytes: above this, weights are split into ``model-0000N-of-0000M.safetensors``
            shards listed in model.safetensors.index.json.
        legacy_names: write ``visual.*`` / ``model.*`` instead of the in-memory names.
        tokenizer_dir: copy tokenizer, chat template and preprocessor files from here.
    Returns:
        ``path`` as a Path.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = {
        (to_legacy_name(k) if legacy_names else k): t.detach().to("cpu").contiguous()
        for k, t in model.state_dict().items()
        # the published checkpoints leave the tied head out: it is the embedding
        if not (k == LM_HEAD and config.text.tie_word_embeddings)
    }
    _remove_old_weights(path)
    shards = _split_shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata=metadata)
    else:
        weight_map = {}
        for n, shard in enumerate(shards, start=1):
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / name, metadata=metadata)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    hf = config.to_hf()
    hf["torch_dtype"] = str(model.model.language_model.embed_tokens.weight.dtype).split(".")[-1]
    hf.pop("quantization_config", None)
    quantization = getattr(model, "quantization", None)
    if quantization is not None:
        hf["quantization_config"] = quantization.to_hf()
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    if tokenizer_dir is not None:
        _copy_processor_files(Path(tokenizer_dir), path)
    log.info("saved %d tensors in %d file(s) to %s", len(tensors), len(shards), path)
    return path


def _split_shards(
    tensors: dict[str, torch.Tensor], max_shard_bytes: int
) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _remove_old_weights(path: Path) -> None:
    """A stale index or single file beside new weights would be read instead of them."""
    old = [path / SINGLE_FILE, path / INDEX_FILE, *path.glob("model-*-of-*.safetensors")]
    for file in old:
        if file.is_file():
            log.info("replacing %s", file)
            file.unlink()


def _copy_processor_files(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise CheckpointError(f"tokenizer directory {src} does not exist")
    if src.resolve() == dst.resolve():
        return
    copied = [name for name in PROCESSOR_FILES if (src / name).is_file()]
    if "tokenizer.json" not in copied:
        raise CheckpointError(f"{src}: no tokenizer.json to copy")
    for name in copied:
        shutil.copyfile(src / name, dst / name)


def weights_fingerprint(source: str | Path | nn.Module, config: ModelConfig | None = None) -> str:
    """A short stable hash of a model's architecture and weights; session states carry it.

    For a checkpoint directory it hashes config.json's fingerprint, the index, each weight file's
    size and safetensors header, and a few KB sampled at fixed offsets of each file (never the
    whole data). For a module it hashes names, shapes, dtypes and a fixed sample of every tensor.
    The two forms give different hashes for the same weights: a caller uses one form throughout.

    Args:
        source: a checkpoint directory, or a loaded model.
        config: the model's config; read from the directory (or ``model.config``) when None.
    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    if isinstance(source, nn.Module):
        config = config or cast(ModelConfig, source.config)
        h.update(b"module")
        for name, t in sorted(source.state_dict().items()):
            h.update(f"{name}:{list(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            idx = torch.linspace(0, max(flat.numel() - 1, 0), 64, device=flat.device).long()
            h.update(flat[idx].float().cpu().numpy().tobytes() if flat.numel() else b"")
    else:
        path = Path(source)
        config = config or _read_config(path)
        h.update(b"files")
        if (path / INDEX_FILE).is_file():
            h.update((path / INDEX_FILE).read_bytes())
        for file in weight_files(path):
            h.update(f"{file.name}:{file.stat().st_size}".encode())
            h.update(_header_and_samples(file))
    h.update(config.fingerprint().encode())
    return h.hexdigest()[:16]


def _header_and_samples(file: Path) -> bytes:
    size = file.stat().st_size
    with file.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{file}: corrupt safetensors header (length {header_len})")
        parts = [raw, f.read(header_len)]
        data_start, data_len = 8 + header_len, size - 8 - header_len
        for i in range(_FINGERPRINT_SAMPLES):
            f.seek(data_start + data_len * i // _FINGERPRINT_SAMPLES)
            parts.append(f.read(_FINGERPRINT_SAMPLE_BYTES))
    return b"".join(parts)


def slow_quant_warning(method: str, device_type: str) -> str | None:
    """A plain sentence when a quantization is slow on a kind of device, saying what to pick."""
    if method == "int4" and device_type == "cuda":
        return "int4 has no CUDA kernel here: each call dequantizes (slow); use nf4 on GPUs"
    if method == "nf4" and device_type == "cpu":
        # benchmarks/cpu_linear.py: ~100x a bfloat16 layer's time per decode step
        return "nf4 has no CPU kernel here: each call dequantizes (slow); use int4 on CPUs"
    if method in EAGER_QUANT_ON_CUDA and device_type == "cuda":
        # docs/quantization.md: 8.9 tok/s against nf4's 230.8 at the 4B config on an H100
        return (
            f"{method} on CUDA runs bitsandbytes' LLM.int8, which cannot decode through a CUDA "
            "graph (~25x slower a token than nf4 at 4B); use nf4 on GPUs"
        )
    return None
