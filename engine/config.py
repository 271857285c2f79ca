"""Model configuration: the published config.json parsed once, defaults and aliases applied here.

Reads InfiniteVL's config (model_type ``infinite_vl``), Qwen2.5-VL's (``qwen2_5_vl``, flat or with a
nested ``text_config``) and tiny test configs. Nothing else in the engine reads raw config dicts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

from engine.errors import ConfigError

LayerType = Literal["linear_attention", "sliding_attention", "full_attention"]
LAYER_TYPES: tuple[str, ...] = ("linear_attention", "sliding_attention", "full_attention")


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """Read one field with a type check, so a config with wrong types fails with its name."""
    if key not in raw or raw[key] is None:
        if default is ...:
            raise ConfigError(f"config.json: missing required field {key!r}")
        return default
    value = raw[key]
    # bool is an int in Python; a boolean where a number belongs is still a wrong type
    if kind in (int, float, (int, float)) and isinstance(value, bool):
        raise ConfigError(f"config.json: {key!r} must be a number, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(
            f"config.json: {key!r} must be {name}, got {type(value).__name__} {value!r}"
        )
    return value


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ConfigError(f"config.json: {name!r} must be positive, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """Qwen2.5-VL vision tower: 14-px patches over 2 frames, window attention, 2x2 merger."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    fullatt_block_indexes: tuple[int, ...]
    out_hidden_size: int
    tokens_per_second: float
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> Self:
        depth = _positive("vision_config.depth", _get(raw, "depth", int))
        full = tuple(_get(raw, "fullatt_block_indexes", list, []))
        for i in full:
            if not isinstance(i, int) or not 0 <= i < depth:
                raise ConfigError(f"config.json: fullatt_block_indexes has {i!r}, depth is {depth}")
        cfg = cls(
            depth=depth,
            hidden_size=_positive("vision_config.hidden_size", _get(raw, "hidden_size", int)),
            intermediate_size=_get(raw, "intermediate_size", int),
            num_heads=_positive("vision_config.num_heads", _get(raw, "num_heads", int)),
            in_channels=_get(raw, "in_channels", int, _get(raw, "in_chans", int, 3)),
            patch_size=_get(raw, "patch_size", int, _get(raw, "spatial_patch_size", int, 14)),
            temporal_patch_size=_get(raw, "temporal_patch_size", int, 2),
            spatial_merge_size=_get(raw, "spatial_merge_size", int, 2),
            window_size=_get(raw, "window_size", int, 112),
            fullatt_block_indexes=full,
            out_hidden_size=_get(raw, "out_hidden_size", int),
            tokens_per_second=_get(raw, "tokens_per_second", (int, float), 2),
            hidden_act=_get(raw, "hidden_act", str, "silu"),
        )
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(
                f"config.json: vision hidden_size {cfg.hidden_size} not divisible by "
                f"num_heads {cfg.num_heads}"
            )
        return cfg

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_hf(self) -> dict[str, Any]:
        d = asdict(self)
        d["fullatt_block_indexes"] = list(self.fullatt_block_indexes)
        d.pop("rms_norm_eps")
        return d


@dataclass(frozen=True, slots=True)
class TextConfig:
    """The decoder: ``layer_types`` picks each layer (Gated DeltaNet, sliding or full attention)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    layer_types: tuple[str, ...]
    sliding_window: int
    # Gated DeltaNet (defaults are those the published InfiniteVL config leaves out)
    num_linear_heads: int = 16
    num_linear_key_value_heads: int = 16
    linear_head_dim: int = 128
    # InfiniteVL's config class types it float: 1.5 is valid where head size x 1.5 is whole
    expand_v: int | float = 2
    use_gate: bool = True
    use_short_conv: bool = True
    conv_size: int = 4
    norm_eps: float = 1e-5
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 128000

    @classmethod
    def from_hf(cls, raw: dict[str, Any], model_type: str) -> Self:
        num_layers = _positive("num_hidden_layers", _get(raw, "num_hidden_layers", int))
        layer_types = _layer_types(raw, model_type, num_layers)
        rope_scaling = _get(raw, "rope_scaling", dict, {})
        section = tuple(_get(rope_scaling, "mrope_section", list, [16, 24, 24]))
        if len(section) != 3 or not all(isinstance(s, int) for s in section):
            raise ConfigError(f"config.json: mrope_section must be 3 integers, got {section!r}")
        cfg = cls(
            vocab_size=_positive("vocab_size", _get(raw, "vocab_size", int)),
            hidden_size=_positive("hidden_size", _get(raw, "hidden_size", int)),
            intermediate_size=_positive("intermediate_size", _get(raw, "intermediate_size", int)),
            num_hidden_layers=num_layers,
            num_attention_heads=_positive(
                "num_attention_heads", _get(raw, "num_attention_heads", int)
            ),
            num_key_value_heads=_get(
                raw, "num_key_value_heads", int, raw.get("num_attention_heads")
            ),
            rms_norm_eps=_get(raw, "rms_norm_eps", float, 1e-6),
            rope_theta=_get(raw, "rope_theta", float, 1e6),
            mrope_section=section,  # type: ignore[arg-type]
            layer_types=layer_types,
            sliding_window=_sliding_window(raw, model_type, layer_types),
            num_linear_heads=_get(raw, "num_linear_heads", int, 16),
            num_linear_key_value_heads=_get(
                raw, "num_linear_key_value_heads", int, _get(raw, "num_linear_heads", int, 16)
            ),
            linear_head_dim=_get(raw, "linear_head_dim", int, 128),
            expand_v=_get(raw, "expand_v", (int, float), 2),
            use_gate=_get(raw, "use_gate", bool, True),
            use_short_conv=_get(raw, "use_short_conv", bool, True),
            conv_size=_get(raw, "conv_size", int, 4),
            norm_eps=_get(raw, "norm_eps", float, 1e-5),
            hidden_act=_get(raw, "hidden_act", str, "silu"),
            tie_word_embeddings=_get(raw, "tie_word_embeddings", bool, True),
            max_position_embeddings=_get(raw, "max_position_embeddings", int, 128000),
        )
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config.json: hidden_size {self.hidden_size} not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config.json: num_attention_heads {self.num_attention_heads} not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ConfigError(
                f"config.json: mrope_section {list(self.mrope_section)} sums to "
                f"{sum(self.mrope_section)}, expected head_dim/2 = {self.head_dim // 2}"
            )
        if self.num_linear_heads % self.num_linear_key_value_heads:
            raise ConfigError(
                f"config.json: num_linear_heads {self.num_linear_heads} not divisible by "
                f"num_linear_key_value_heads {self.num_linear_key_value_heads}"
            )
        value_head = self.linear_head_dim * self.expand_v
        if self.expand_v <= 0 or not math.isclose(value_head, round(value_head), rel_tol=1e-5):
            raise ConfigError(
                f"config.json: expand_v {self.expand_v} x linear_head_dim {self.linear_head_dim} "
                f"= {value_head} is no whole, positive value head size"
            )
        if self.sliding_window <= 0:
            raise ConfigError(
                f"config.json: sliding_window must be positive, got {self.sliding_window}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def linear_value_head_dim(self) -> int:
        return round(self.linear_head_dim * self.expand_v)

    @property
    def linear_key_dim(self) -> int:
        """Width of q_proj/k_proj in a Gated DeltaNet layer (query heads x head size)."""
        return self.num_linear_heads * self.linear_head_dim

    @property
    def linear_value_dim(self) -> int:
        """Width of v_proj/g_proj in a Gated DeltaNet layer."""
        return self.num_linear_heads * self.linear_value_head_dim

    def to_hf(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        section = d.pop("mrope_section")
        d["rope_scaling"] = {
            "mrope_section": list(section),
            "rope_type": "default",
            "type": "default",
        }
        d["use_sliding_window"] = "sliding_attention" in self.layer_types
        return d


def _sliding_window(raw: dict[str, Any], model_type: str, layer_types: tuple[str, ...]) -> int:
    """The window of the ``sliding_attention`` layers, read as InfiniteVL's config class reads it:
    written with ``use_sliding_window: false`` (its class default, so a checkpoint saved from a
    default config has it), the window is off and those layers attend over
    ``max_position_embeddings`` tokens; otherwise ``sliding_window`` (8192 when absent).
    A model without sliding layers keeps the number written: a full-attention teacher's window
    is the one its hybrid student gets (``with_layer_types``).
    (Qwen2.5-VL configs say where sliding layers are through ``_layer_types``.)"""
    off = model_type == "infinite_vl" and raw.get("use_sliding_window") is False
    if off and "sliding_attention" in layer_types:
        return _positive(
            "max_position_embeddings", _get(raw, "max_position_embeddings", int, 128000)
        )
    return _get(raw, "sliding_window", int, 8192) or 8192


def _layer_types(raw: dict[str, Any], model_type: str, num_layers: int) -> tuple[str, ...]:
    if raw.get("layer_types") is not None:
        types = _get(raw, "layer_types", list)
        bad = [t for t in types if t not in LAYER_TYPES]
        if bad:
            raise ConfigError(f"config.json: unknown layer_types {bad}; known: {list(LAYER_TYPES)}")
        if len(types) != num_layers:
            raise ConfigError(f"config.json: {len(types)} layer_types for {num_layers} layers")
        return tuple(types)
    if model_type == "infinite_vl":
        # the published default: one sliding-window layer then three Gated DeltaNet layers
        return tuple(
            "sliding_attention" if i % 4 == 0 else "linear_attention" for i in range(num_layers)
        )
    # Qwen2.5-VL: full attention, or sliding from max_window_layers on when use_sliding_window
    if raw.get("use_sliding_window"):
        first = _get(raw, "max_window_layers", int, num_layers)
        return tuple(
            "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)
        )
    return ("full_attention",) * num_layers


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The whole model: vision tower, decoder, and the token ids that join them."""

    model_type: str
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    bos_token_id: int | None
    eos_token_id: tuple[int, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> Self:
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {type(raw).__name__}")
        model_type = _get(raw, "model_type", str, "infinite_vl")
        # transformers >= 4.52 may nest the decoder fields under text_config
        text_raw = {**raw, **_get(raw, "text_config", dict, {})}
        vision_raw = _get(raw, "vision_config", dict)
        eos = _get(raw, "eos_token_id", (int, list), 151645)
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        text = TextConfig.from_hf(text_raw, model_type)
        vision = VisionConfig.from_hf(vision_raw)
        if vision.out_hidden_size != text.hidden_size:
            raise ConfigError(
                f"config.json: vision out_hidden_size {vision.out_hidden_size} != "
                f"hidden_size {text.hidden_size}"
            )
        cfg = cls(
            model_type=model_type,
            text=text,
            vision=vision,
            image_token_id=_get(raw, "image_token_id", int, 151655),
            video_token_id=_get(raw, "video_token_id", int, 151656),
            vision_start_token_id=_get(raw, "vision_start_token_id", int, 151652),
            vision_end_token_id=_get(raw, "vision_end_token_id", int, 151653),
            bos_token_id=_get(raw, "bos_token_id", int, None),
            eos_token_id=eos_ids,
            raw=raw,
        )
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            if not 0 <= getattr(cfg, name) < text.vocab_size:
                raise ConfigError(
                    f"config.json: {name} {getattr(cfg, name)} outside vocab_size {text.vocab_size}"
                )
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Read ``config.json`` (a file, or a checkpoint directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_hf(raw)

    def to_hf(self) -> dict[str, Any]:
        """The config.json this model is saved with (loadable by :meth:`from_hf`)."""
        out = dict(self.raw)
        out.pop("text_config", None)
        out.update(self.text.to_hf())
        out.update(
            model_type=self.model_type,
            vision_config={**self.raw.get("vision_config", {}), **self.vision.to_hf()},
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            vision_start_token_id=self.vision_start_token_id,
            vision_end_token_id=self.vision_end_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id)
            if len(self.eos_token_id) > 1
            else self.eos_token_id[0],
        )
        return out

    def fingerprint(self) -> str:
        """A short hash of the architecture; the loader adds the weights' hash to it."""
        blob = json.dumps(
            {"text": self.text.to_hf(), "vision": self.vision.to_hf(), "type": self.model_type},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_layer_types(self, layer_types: tuple[str, ...]) -> ModelConfig:
        """The same model with another layer pattern (teacher -> hybrid student)."""
        text = replace(self.text, layer_types=layer_types)
        text._validate()
        return replace(self, text=text, model_type="infinite_vl")


def tiny_config(
    layer_types: tuple[str, ...] = (
        "sliding_attention",
        "linear_attention",
        "sliding_attention",
        "linear_attention",
    ),
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    sliding_window: int = 8,
    tie_word_embeddings: bool = True,
) -> ModelConfig:
    """A tiny random-weight config for tests: hidden 64, 4 heads of 16, vision width 32."""
    raw = {
        "model_type": "infinite_vl",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": len(layer_types),
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        # head_dim 16 -> 8 rotary frequencies split over t, h, w
        "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        "layer_types": list(layer_types),
        "sliding_window": sliding_window,
        "num_linear_heads": 2,
        "num_linear_key_value_heads": 2,
        "linear_head_dim": 16,
        "expand_v": 2,
        "conv_size": 4,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": vocab_size - 8,
        "eos_token_id": vocab_size - 7,
        "vision_start_token_id": vocab_size - 5,
        "vision_end_token_id": vocab_size - 4,
        "vision_token_id": vocab_size - 3,
        "image_token_id": vocab_size - 2,
        "video_token_id": vocab_size - 1,
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "out_hidden_size": hidden_size,
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
    }
    return ModelConfig.from_hf(raw)
