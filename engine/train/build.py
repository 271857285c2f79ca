"""The models of a stage: the one that trains (initialised as the stage says) and the teacher.

- teacher: a fresh model from `init` (a config.json, or a checkpoint to continue).
- distill_layerwise: `init` is the Transformer teacher; the student is converted from it.
- distill_kl, sft: `init` is the previous stage's checkpoint.
- lora: `init` as sft; LoRA adapters (peft) are added and become the only trainable tensors.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from engine.config import ModelConfig
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.train.config import TrainConfig, trainable_patterns
from engine.train.student import hybrid_layer_types, student_from_teacher

log = logging.getLogger(__name__)

LORA_SCOPE = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{})"


def load_float32(path: str | Path, device: torch.device) -> InfiniteVLForConditionalGeneration:
    """A checkpoint directory as a float32 model on `device` (training keeps float32 masters)."""
    from engine.loader import load_model

    model, _ = load_model(path, device=device, dtype=torch.float32)
    return model


def fresh_model(
    config_path: str | Path, seed: int, device: torch.device
) -> InfiniteVLForConditionalGeneration:
    """A randomly initialised model of a config.json (file or directory), seeded.

    Linear, convolution and embedding weights are drawn from N(0, 0.02) and biases zeroed, as
    transformers initialises Qwen2.5-VL: the layers' own defaults (N(0, 1) embeddings tied to the
    head) start with a cross entropy in the hundreds.
    """
    config = ModelConfig.from_file(config_path)
    torch.manual_seed(seed)
    model = InfiniteVLForConditionalGeneration(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding | nn.Conv3d):
                module.weight.normal_(0.0, 0.02)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    bias.zero_()
    model.tie_weights()
    return model.to(device)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any(p.glob("*.safetensors"))


def build_student(cfg: TrainConfig, device: torch.device) -> InfiniteVLForConditionalGeneration:
    """The model this stage trains, before freezing and adapters."""
    if cfg.stage == "teacher":
        if is_checkpoint(cfg.init):
            return load_float32(cfg.init, device)
        return fresh_model(cfg.init, cfg.seed, device)
    if cfg.stage == "distill_layerwise":
        teacher = load_float32(cfg.init, device)
        if "linear_attention" in teacher.config.text.layer_types:
            # init is already a student (a resumed or re-run stage 1)
            return teacher
        types = cfg.layer_types or hybrid_layer_types(teacher.config.text.num_hidden_layers)
        torch.manual_seed(cfg.seed)
        return student_from_teacher(teacher, types)
    return load_float32(cfg.init, device)


def build_teacher(
    cfg: TrainConfig, device: torch.device
) -> InfiniteVLForConditionalGeneration | None:
    """The frozen teacher of the distillation stages, in eval mode; None otherwise."""
    if not cfg.stage.startswith("distill"):
        return None
    teacher = load_float32(cfg.teacher, device)
    teacher.requires_grad_(False)
    return teacher.eval()


def shares_inputs(
    student: InfiniteVLForConditionalGeneration, teacher: InfiniteVLForConditionalGeneration | None
) -> bool:
    """Whether the student's decoder inputs are the teacher's: its token embedding and vision
    tower are frozen and hold the teacher's values (as in stage 1, where only Gated DeltaNet
    trains). Then the student may read the inputs the teacher computed for a batch."""
    if teacher is None:
        return False
    mine, theirs = _input_parameters(student), _input_parameters(teacher)
    if mine.keys() != theirs.keys():
        return False
    return all(
        not p.requires_grad
        and p.dtype == theirs[name].dtype
        and torch.equal(p.detach(), theirs[name].detach().to(p.device))
        for name, p in mine.items()
    )


def _input_parameters(model: InfiniteVLForConditionalGeneration) -> dict[str, nn.Parameter]:
    """The parameters that make the decoder's inputs: token embedding and vision tower."""
    lm = model.model.language_model
    parts = {"embed_tokens.": lm.embed_tokens, "visual.": model.model.visual}
    return {prefix + n: p for prefix, part in parts.items() for n, p in part.named_parameters()}


def freeze(model: nn.Module, cfg: TrainConfig, config: ModelConfig) -> list[str]:
    """Train exactly the parameters whose names match `cfg.trainable`; return their names."""
    patterns = trainable_patterns(cfg, config)
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(pat.search(name) for pat in patterns))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"no parameter matches trainable={list(cfg.trainable)}")
    total = sum(p.numel() for p in model.parameters())
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training %d tensors, %.2fM of %.2fM values", len(names), n / 1e6, total / 1e6)
    return names


def add_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Wrap with peft LoRA adapters on the decoder's projections (peft needed for this stage)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError("stage 'lora' needs peft: pip install -c constraints.txt peft") from exc
    targets = LORA_SCOPE.format("|".join(re.escape(t) for t in cfg.lora.target_modules))
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=targets, bias="none",
    )  # fmt: skip
    wrapped = get_peft_model(model, lora)
    n = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %.2fM trainable values", cfg.lora.r, targets, n / 1e6)
    return wrapped


def merge_lora(weights: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA tensors into plain weights: W = W0 + scaling * B @ A, names restored.

    Args:
        weights: a state dict with "<m>.base_layer.weight", "<m>.lora_A.<adapter>.weight" [r, in]
            and "<m>.lora_B.<adapter>.weight" [out, r].
    Returns:
        The plain state dict ("<m>.weight"), adapters gone.
    """
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if name.endswith(".base_layer.weight"):
            stem = name.removesuffix(".base_layer.weight")
            a = next(v for k, v in weights.items() if k.startswith(f"{stem}.lora_A."))
            b = next(v for k, v in weights.items() if k.startswith(f"{stem}.lora_B."))
            out[f"{stem}.weight"] = w + scaling * (b.float() @ a.float()).to(w.dtype)
        else:
            out[name.replace(".base_layer.", ".")] = w
    return out


def shardable_blocks(model: InfiniteVLForConditionalGeneration) -> list[nn.Module]:
    """Units FSDP shards one by one: each decoder layer and each vision block."""
    return [*model.model.visual.blocks, *model.model.language_model.layers]
