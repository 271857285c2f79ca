"""Training run configuration: one TOML file per stage, parsed once into frozen dataclasses.

A run names its stage, what it starts from, which parameters train (regexes over the tensor
names of shared/reference/*.weights.tsv), the data mix and the optimiser schedule.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from engine.config import ModelConfig
from engine.errors import ConfigError

STAGES = ("teacher", "distill_layerwise", "distill_kl", "sft", "lora")

# every Gated DeltaNet parameter, as the published recipe trains them in stage 1
GDN_PARAMS = (
    "q_proj", "k_proj", "v_proj", "q_conv1d", "k_conv1d", "v_conv1d", "g_proj", "a_proj",
    "b_proj", "A_log", "dt_bias", "o_norm", "o_proj",
)  # fmt: skip
STAGE1_TRAINABLE = (
    r"model\.language_model\.layers\.{linear}\.self_attn\.(" + "|".join(GDN_PARAMS) + r")\b",
)


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Where samples come from and how big they may be.

    Attributes:
        weights: synthetic task -> frequency (see synthetic.tasks.TaskMix); empty: none.
        sharegpt: LLaVA/ShareGPT JSON files mixed in (image paths relative to each file).
        sharegpt_weight: probability of drawing from `sharegpt` instead of the generators.
        seed: the stream's seed; eval sets use other seeds.
        max_tokens: context length; longer samples are cut.
        max_pixels: images are resized to at most this many pixels.
        page_size, num_pages, screen_width, screen_height: sizes of rendered pages and screens.
        repeat: if > 0, cycle through the first `repeat` samples (overfitting checks, tests).
        size_multiple: pad rendered images to multiples of this many pixels (112: full vision
            windows, far fewer attention calls per batch on a GPU).
        line_size: (low, high) font pixels of the single words and lines (`ocr_word`,
            `ocr_line`, `ocr_unseen`).
        reading_view: those lines as OCR shows them to the model: one of the pieces OCR cuts
            a long line into (`synthetic.lines.one_piece`), text under 16 rows enlarged
            (`synthetic.lines.as_read`).
    """

    weights: dict[str, float] = field(default_factory=dict)
    sharegpt: tuple[str, ...] = ()
    sharegpt_weight: float = 0.0
    seed: int = 0
    max_tokens: int = 2048
    max_pixels: int = 448 * 448
    page_size: int = 336
    num_pages: tuple[int, int] = (2, 8)
    screen_width: tuple[int, int] = (224, 800)
    screen_height: tuple[int, int] = (56, 224)
    repeat: int = 0
    size_multiple: int = 0
    line_size: tuple[int, int] = (12, 24)
    reading_view: bool = False


@dataclass(frozen=True, slots=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "g_proj")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """One stage's run.

    Attributes:
        stage: one of STAGES.
        init: checkpoint directory the model starts from (for "teacher": may be a config.json
            of a fresh model).
        teacher: checkpoint of the frozen teacher (distillation stages).
        out_dir: where checkpoints, trainer state, loss log and curve go.
        trainable: regexes; a parameter trains when one matches its full name. "{linear}"
            stands for the indices of the linear_attention layers.
        layer_types: student layer pattern when `init` is a teacher (stage 1 conversion).
        steps, batch_size (global, in samples), micro_batch (samples per forward per rank).
        lr, warmup, weight_decay, grad_clip: AdamW with linear warmup and cosine decay.
        temperature: softmax temperature of the KL loss; mse_factor scales stage 1's MSE.
        glyph_weight: if > 0 (stage "teacher" only), a training-only head on the vision tower
            learns what each image token reads (synthetic.glyphs); its cross-entropy, summed
            over the supervised slots, is added to the reply loss with this weight.
        dtype: "float32" or "bfloat16" (autocast on CUDA; parameters stay float32).
        num_workers: DataLoader processes rendering samples; device: "auto", "cpu", "cuda".
        time_budget_s: if > 0, the run ends after this many seconds of training, and the
            learning-rate schedule follows elapsed time (whichever of time and steps is further).
        export_every_s: if > 0, also export the model to `out_dir/latest` this often (seconds
            of training), so a run cut off by a lost machine leaves a checkpoint behind.
    """

    stage: str
    init: str
    out_dir: str
    data: DataConfig
    teacher: str = ""
    trainable: tuple[str, ...] = (r".*",)
    layer_types: tuple[str, ...] = ()
    steps: int = 100
    batch_size: int = 8
    micro_batch: int = 1
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 2.0
    mse_factor: float = 1000.0
    glyph_weight: float = 0.0
    dtype: str = "float32"
    save_every: int = 100
    log_every: int = 10
    max_shard_bytes: int = 14_500_000
    num_workers: int = 0
    device: str = "auto"
    time_budget_s: float = 0.0
    export_every_s: float = 0.0
    lora: LoraConfig = LoraConfig()
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        raw = dict(raw)
        data = raw.pop("data", {})
        lora = raw.pop("lora", {})
        for key in ("trainable", "layer_types"):
            if key in raw:
                raw[key] = tuple(raw[key])
        for key in ("sharegpt", "num_pages", "screen_width", "screen_height", "line_size"):
            if key in data:
                data[key] = tuple(data[key])
        if "target_modules" in lora:
            lora["target_modules"] = tuple(lora["target_modules"])
        try:
            cfg = cls(data=DataConfig(**data), lora=LoraConfig(**lora), **raw)
        except TypeError as exc:
            raise ConfigError(f"training config: {exc}") from exc
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Self:
        """Read a TOML file; `overrides` replace top-level keys (CLI flags).

        A file with `base = "other.toml"` (beside it) is that config with the file's keys
        replacing the base's; its [data] and [lora] keys replace the base's one by one, and so do
        those of a `data` or `lora` override (``data={"seed": 13}`` changes the seed only).
        """
        raw = _read_toml(Path(path))
        return cls.from_dict(_layer(raw, {k: v for k, v in overrides.items() if v is not None}))

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"training config: stage {self.stage!r} not one of {STAGES}")
        if self.stage.startswith("distill") and not self.teacher:
            raise ConfigError(f"training config: stage {self.stage} needs `teacher`")
        if self.batch_size % self.micro_batch:
            raise ConfigError(
                f"training config: batch_size {self.batch_size} not a multiple of "
                f"micro_batch {self.micro_batch}"
            )
        if self.glyph_weight < 0 or (self.glyph_weight > 0 and self.stage != "teacher"):
            raise ConfigError(
                f"training config: glyph_weight {self.glyph_weight} (must be >= 0, and 0 unless "
                "the stage is teacher)"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"training config: dtype {self.dtype!r} not float32/bfloat16")
        low, high = self.data.line_size
        if not 6 <= low <= high:
            raise ConfigError(
                f"training config: data.line_size {self.data.line_size} (need 6 <= low <= high)"
            )

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's keys, with those of its `base` (recursively) beneath them."""
    if path.resolve() in seen:
        raise ConfigError(f"training config: {path} is its own base")
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _layer(_read_toml(path.parent / base, (*seen, path.resolve())), raw)


def _layer(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """`above`'s keys over `below`'s; the [data] and [lora] tables merge key by key."""
    merged = dict(below)
    for key, value in above.items():
        if key in ("data", "lora") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def trainable_patterns(cfg: TrainConfig, model_config: ModelConfig) -> list[re.Pattern[str]]:
    """Compile `cfg.trainable`, expanding "{linear}" to the linear_attention layer indices."""
    types = model_config.text.layer_types
    linear = [str(i) for i, t in enumerate(types) if t == "linear_attention"]
    alternation = "(?:" + "|".join(linear) + ")" if linear else "(?!)"
    return [re.compile(p.replace("{linear}", alternation)) for p in cfg.trainable]
