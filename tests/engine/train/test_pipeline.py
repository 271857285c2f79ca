"""engine.train.pipeline: each stage starts from the checkpoint of the stage before it."""

from pathlib import Path

import pytest

from engine.train.config import ConfigError, TrainConfig
from engine.train.pipeline import CONFIGS, ORDER, parse_settings, run_pipeline, stage_paths


def _ckpt(work: Path, stage: str) -> None:
    (work / stage / "checkpoint").mkdir(parents=True, exist_ok=True)


def test_reading_then_teacher_then_student(tmp_path: Path) -> None:
    assert stage_paths(tmp_path, "reading")["init"] == str(tmp_path / "start")
    # no reading checkpoint: the teacher starts from scratch
    assert stage_paths(tmp_path, "teacher")["init"] == str(tmp_path / "start")
    _ckpt(tmp_path, "reading")
    assert stage_paths(tmp_path, "teacher")["init"] == str(tmp_path / "reading" / "checkpoint")
    paths = stage_paths(tmp_path, "distill_layerwise")
    assert paths["init"] == paths["teacher"] == str(tmp_path / "teacher" / "checkpoint")
    assert stage_paths(tmp_path, "lora")["init"] == str(tmp_path / "sft" / "checkpoint")


@pytest.mark.parametrize("stage", ["reading", "teacher"])
def test_a_further_run_continues_from_its_own_checkpoint(tmp_path: Path, stage: str) -> None:
    _ckpt(tmp_path, "reading")
    _ckpt(tmp_path, stage)
    assert stage_paths(tmp_path, stage)["init"] == str(tmp_path / stage / "checkpoint")


@pytest.mark.parametrize("name", ORDER)
def test_every_stage_has_a_config_that_parses(tmp_path: Path, name: str) -> None:
    cfg = TrainConfig.from_file(CONFIGS / f"{name}.toml", **stage_paths(tmp_path, name))
    assert cfg.data.weights
    assert cfg.out_dir == str(tmp_path / name)


@pytest.mark.parametrize("name", ["distill_layerwise", "distill_kl", "sft"])
def test_a_cpu_config_is_its_stage_in_smaller_steps(name: str) -> None:
    # the *_cpu.toml configs run a stage on a CPU when no GPU is lent: same tensors, same loss
    paths = {"init": "x", "out_dir": "y", "teacher": "x"}
    gpu = TrainConfig.from_file(CONFIGS / f"{name}.toml", **paths)
    cpu = TrainConfig.from_file(CONFIGS / f"{name}_cpu.toml", **paths)
    same = ("stage", "trainable", "layer_types", "temperature", "mse_factor")
    assert [getattr(cpu, k) for k in same] == [getattr(gpu, k) for k in same]
    assert cpu.batch_size < gpu.batch_size and cpu.dtype == "float32"
    assert "ocr_unseen" in cpu.data.weights


def test_a_config_with_a_base_replaces_only_its_own_keys(tmp_path: Path) -> None:
    # GIVEN a base config and one that names it, changing one top-level and one [data] key
    (tmp_path / "a.toml").write_text(
        'stage = "sft"\nlr = 0.1\nbatch_size = 8\n[data]\nseed = 4\nmax_tokens = 64\n'
    )
    (tmp_path / "b.toml").write_text('base = "a.toml"\nlr = 0.2\n[data]\nmax_tokens = 32\n')
    cfg = TrainConfig.from_file(tmp_path / "b.toml", init="x", out_dir="y")
    # THEN its keys win and the base's others stay, [data] key by key
    assert (cfg.lr, cfg.batch_size) == (0.2, 8)
    assert (cfg.data.seed, cfg.data.max_tokens) == (4, 32)
    # AND a config that is its own base is refused, not read forever
    (tmp_path / "c.toml").write_text('base = "c.toml"\n')
    with pytest.raises(ConfigError, match="its own base"):
        TrainConfig.from_file(tmp_path / "c.toml")


def test_set_changes_one_key_of_one_stage() -> None:
    settings = parse_settings(
        ["reading.batch_size=256", "reading.lr=1.4e-3", "sft.dtype='float32'"]
    )
    assert settings == {"reading": {"batch_size": 256, "lr": 1.4e-3}, "sft": {"dtype": "float32"}}
    for bad in ("reading=3", "nosuchstage.lr=1", "reading.lr=", "reading.lr=fast"):
        with pytest.raises(ValueError, match="--set"):
            parse_settings([bad])


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """The configs `engine.train.trainer.train` is called with (nothing trains)."""
    seen: list[TrainConfig] = []
    monkeypatch.setattr(
        "engine.train.trainer.train", lambda cfg: seen.append(cfg) or Path(cfg.out_dir)
    )
    return seen


def test_a_data_setting_changes_only_that_key_of_the_data_table(
    tmp_path: Path, trained: list[TrainConfig]
) -> None:
    # a further run of a stage from its own checkpoint needs a new data seed, or it sees the
    # first run's samples again; the task mix and sizes must stay the stage's
    seen = trained
    settings = parse_settings(["sft.data={seed=14}"])
    run_pipeline(tmp_path, ["sft"], {}, set(), {}, settings)
    plain = TrainConfig.from_file(CONFIGS / "sft.toml", init="x", out_dir="y")
    assert seen[0].data.seed == 14 != plain.data.seed
    assert seen[0].data.weights == plain.data.weights
    assert seen[0].data.max_tokens == plain.data.max_tokens


def test_train_command_data_seed_keeps_the_rest_of_the_data_table(
    tmp_path: Path, trained: list[TrainConfig]
) -> None:
    from engine.train.__main__ import main as train_main

    config = str(CONFIGS / "sft.toml")
    assert train_main([config, "--init", "x", "--out-dir", str(tmp_path), "--data-seed", "21"]) == 0
    assert train_main([config, "--init", "x", "--out-dir", str(tmp_path)]) == 0
    with_seed, without = trained
    assert with_seed.data.seed == 21 != without.data.seed
    assert with_seed.data.weights == without.data.weights


def test_settings_reach_only_their_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, TrainConfig] = {}

    def fake_train(cfg: TrainConfig) -> Path:
        seen[cfg.out_dir.rsplit("/", 1)[-1]] = cfg
        return Path(cfg.out_dir) / "checkpoint"

    monkeypatch.setattr("engine.train.trainer.train", fake_train)
    settings = parse_settings(["reading.batch_size=256", "reading.micro_batch=256"])
    run_pipeline(tmp_path, ["reading", "teacher"], {"reading": 9.0}, set(), {}, settings)
    assert (seen["reading"].batch_size, seen["reading"].micro_batch) == (256, 256)
    assert seen["reading"].time_budget_s == 9.0
    assert (
        seen["teacher"].batch_size
        == TrainConfig.from_file(CONFIGS / "teacher.toml", init="x", out_dir="y").batch_size
    )


def test_gpu_run_knows_the_pipeline_stages_and_refuses_others(tmp_path: Path) -> None:
    import re
    import subprocess

    script = Path(__file__).parents[3] / "engine" / "train" / "gpu_run.sh"
    names = re.search(r'^ALL="([^"]+)"', script.read_text(), re.M)
    assert names is not None and tuple(names.group(1).split()) == ORDER
    (tmp_path / ".train_carry").mkdir()
    env = {"PATH": "/usr/bin:/bin", "W": str(tmp_path / "w")}
    for from_, says in [("sfx", "unknown stage 'sfx'"), ("sft", "not carried")]:
        run = subprocess.run(
            ["bash", str(script), "start"],
            cwd=tmp_path,
            env={**env, "FROM": from_},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2 and says in run.stderr
