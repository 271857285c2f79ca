"""The embedded model's whole recipe, stage after stage, in one work folder.

`python -m engine.train.pipeline --work W --stages reading,teacher,distill_layerwise,...` runs
each named stage with its config from `configs/default/`, wiring each stage's `init` (and
`teacher`) to the checkpoints of the stages before it:

  W/start (config.json + tokenizer) -> reading -> teacher -> distill_layerwise -> distill_kl
    -> sft -> lora

`reading` is the teacher's first part (words and single lines, its own config), so the teacher
learns to look at the picture before it meets whole screens and pages.

A stage whose folder already holds a checkpoint is skipped unless named in --again, so a series
of time-limited runs (each with `--budget stage=seconds`) continues where the last one stopped.
`--set stage.key=value` changes one top-level key of a stage's config for this run (a TOML
value: `--set reading.batch_size=256 --set reading.lr=1.4e-3`).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path
from typing import Any

from engine.train.config import TrainConfig

log = logging.getLogger(__name__)

ORDER = ("reading", "teacher", "distill_layerwise", "distill_kl", "sft", "lora")
CONFIGS = Path(__file__).parent / "configs" / "default"


def stage_paths(work: Path, stage: str) -> dict[str, str]:
    """init / teacher / out_dir of `stage` inside the work folder.

    `reading` and `teacher` continue from their own checkpoint when the folder has one (a
    further run of the stage); `teacher` starts from scratch when no `reading` checkpoint exists.
    """
    teacher_ckpt = work / "teacher" / "checkpoint"
    prev = {
        "reading": work / "start",
        "teacher": work / "reading" / "checkpoint",
        "distill_layerwise": teacher_ckpt,
        "distill_kl": work / "distill_layerwise" / "checkpoint",
        "sft": work / "distill_kl" / "checkpoint",
        "lora": work / "sft" / "checkpoint",
    }[stage]
    if stage in ("reading", "teacher") and (work / stage / "checkpoint").is_dir():
        prev = work / stage / "checkpoint"
    elif stage == "teacher" and not prev.is_dir():
        prev = work / "start"
    paths = {"init": str(prev), "out_dir": str(work / stage)}
    if stage.startswith("distill"):
        paths["teacher"] = str(teacher_ckpt)
    return paths


def run_pipeline(work: Path, stages: list[str], budgets: dict[str, float], again: set[str],
                 overrides: dict[str, object],
                 settings: dict[str, dict[str, Any]] | None = None) -> Path | None:  # fmt: skip
    """Run `stages` in order; return the last checkpoint written.

    Args:
        overrides: top-level config keys set for every stage; `settings`: stage -> keys for it.
    """
    from engine.train.trainer import train

    last = None
    for stage in stages:
        done = work / stage / "checkpoint"
        if done.is_dir() and stage not in again:
            log.info("%s: checkpoint exists, skipped", stage)
            last = done
            continue
        cfg = TrainConfig.from_file(
            CONFIGS / f"{stage}.toml",
            **{**stage_paths(work, stage), **overrides, **(settings or {}).get(stage, {})},
        )
        if stage in budgets:
            cfg = cfg.with_(time_budget_s=budgets[stage])
        if stage in again:
            # a fresh run of the stage, not a resume of the previous one
            (work / stage / "trainer_state.pt").unlink(missing_ok=True)
        log.info("%s: init %s, %.0f s budget", stage, cfg.init, cfg.time_budget_s)
        last = train(cfg)
    return last


def parse_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """["reading.batch_size=256", ...] -> {"reading": {"batch_size": 256}} (values as TOML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, eq, value = item.partition("=")
        stage, dot, key = name.partition(".")
        if not (eq and dot and key) or stage not in ORDER:
            raise ValueError(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {ORDER}")
        try:
            out.setdefault(stage, {})[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--set {item!r}: {value!r} is not a TOML value ({exc})") from exc
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(
        prog="python -m engine.train.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--stages", default=",".join(ORDER))
    p.add_argument("--budget", action="append", default=[], help="stage=seconds")
    p.add_argument("--again", default="", help="stages to rerun although done")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="one config key of one stage, e.g. reading.batch_size=256")  # fmt: skip
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in ORDER]
    if unknown:
        p.error(f"unknown stages {unknown}; known: {list(ORDER)}")
    budgets = {k: float(v) for k, v in (b.split("=", 1) for b in args.budget)}
    try:
        settings = parse_settings(args.set)
    except ValueError as exc:
        p.error(str(exc))
    overrides = {"num_workers": args.num_workers, "device": args.device}
    last = run_pipeline(
        args.work,
        stages,
        budgets,
        set(filter(None, args.again.split(","))),
        {k: v for k, v in overrides.items() if v is not None},
        settings,
    )
    print(last)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
