"""The ``infinitevl`` command: info on the published 4B config, generate, and its error paths."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import default_model
from engine.__main__ import layer_pattern, main

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
CONFIG_4B = REFERENCE / "infinitevl-4b.config.json"
WEIGHTS_4B = REFERENCE / "infinitevl-4b.weights.tsv"
ROOT = Path(__file__).resolve().parents[2]


def _tsv_parameters(path: Path) -> int:
    """Values of every tensor listed, the tied lm_head left out (it is embed_tokens)."""
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape, _ = line.split("\t")
        if name == "lm_head.weight":
            continue
        n = 1
        for d in re.findall(r"\d+", shape):
            n *= int(d)
        total += n
    return total


def _state_bytes_4b() -> int:
    """The reference README's state: 27 Gated DeltaNet layers, 9 sliding-window layers (bf16)."""
    gdn = 16 * 128 * 256 * 4 + (2048 + 2048 + 4096) * 3 * 2  # S float32 + conv tails bf16
    swa = 2 * (2 * 8192 * 128) * 2  # k and v ring buffers, bf16
    return 27 * gdn + 9 * swa


def test_info_4b_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(CONFIG_4B)]) == 0
    out = capsys.readouterr().out
    assert "36: [sliding, linear, linear, linear] x 9" in out
    assert f"{_tsv_parameters(WEIGHTS_4B):,}" in out
    assert f"{_state_bytes_4b():,} bytes" in out
    assert "32 blocks of width 1280" in out and "[7, 15, 23, 31]" in out


def test_info_json_on_checkpoint_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(CONFIG_4B.read_text())
    assert main(["info", str(tmp_path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["layer_pattern"] == "[sliding, linear, linear, linear] x 9"
    assert facts["num_parameters"] == _tsv_parameters(WEIGHTS_4B) == 4_408_381_536
    assert facts["state_nbytes"] == _state_bytes_4b()
    assert facts["vision"]["depth"] == 32
    assert facts["num_parameters_vision"] + facts["num_parameters_text"] == facts["num_parameters"]


def test_info_reads_dtype_as_newer_transformers_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = json.loads(CONFIG_4B.read_text())
    raw["dtype"] = raw.pop("torch_dtype")  # transformers >= 4.56 saves "dtype"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert main(["info", str(tmp_path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert (facts["state_dtype"], facts["state_nbytes"]) == ("bfloat16", _state_bytes_4b())


@pytest.mark.parametrize(
    ("types", "pattern"),
    [
        (["full_attention"] * 36, "[full] x 36"),
        (["sliding_attention", "linear_attention"] * 2, "[sliding, linear] x 2"),
        (
            ["linear_attention", "sliding_attention", "sliding_attention"],
            "[linear, sliding, sliding] x 1",
        ),
    ],
)
def test_layer_pattern(types: list[str], pattern: str) -> None:
    assert layer_pattern(types) == pattern


def test_info_missing_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.json" in err and "Traceback" not in err


def test_info_bad_config_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": "big", "vision_config": {}}))
    assert main(["info", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_generate_without_default_model_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tmp_path / "default-model")
    monkeypatch.setattr(default_model, "installed_dirs", lambda: [tmp_path / "share"])
    assert main(["generate", "hello"]) == 2
    err = capsys.readouterr().err
    assert "no embedded default model" in err and "--model" in err and "hustvl/InfiniteVL" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
    ],
)
def test_generate_bad_sampling_flags(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", *args, "hello"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_app_without_pyside6(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "PySide6" else real(name, *a)
    )
    assert main(["app"]) == 2
    assert "PySide6" in capsys.readouterr().err


def test_cli_entry_point_runs_as_a_process(tmp_path: Path) -> None:
    # the installed command and `python -m engine` are the same main(); run the module once
    done = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith("infinitevl info: no config.json") and "Traceback" not in done.stderr
    )


def _sample_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (60, 40), (10, 200, 30)).save(path)
    return path


def test_generate_tiny_streams_and_exits_0(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.engine import Engine
    from engine.sampling import SamplingParams

    image = _sample_png(tmp_path / "green.png")
    args = ["--model", str(tiny_checkpoint), "--image", str(image), "--max-new-tokens", "12"]
    assert main(["generate", *args, "--device", "cpu", "Describe it."]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"model: {tiny_checkpoint} (") and "parameters, cpu, float32)" in err
    assert "prompt tokens" in err and "generated" in err
    # stdout is exactly the session's reply to the same turn
    session = Engine.load(tiny_checkpoint).new_session()
    session.add_user_message("Describe it.", [image])
    expected = "".join(d.text for d in session.generate(SamplingParams(max_new_tokens=12)))
    assert out == expected + "\n"


def test_generate_seeded_sampling_repeats(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(tiny_checkpoint), "--temperature", "0.9", "--seed", "3"]
    outs = []
    for _ in range(2):
        assert main([*args, "--max-new-tokens", "8", "hi"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_generate_missing_image_is_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.png"
    assert main(["generate", "--model", str(tiny_checkpoint), "--image", str(missing), "hi"]) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("infinitevl generate: ")


def test_generate_embedded_default_banner(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tiny_checkpoint)
    assert main(["generate", "--max-new-tokens", "2", "hi"]) == 0
    assert capsys.readouterr().err.startswith(f"embedded default model: {tiny_checkpoint} (")


def test_app_gets_every_argument_after_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    import engine.__main__ as cli

    seen: list[list[str]] = []
    fake = types.SimpleNamespace(run=lambda argv: seen.append(argv) or 7)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    assert main(["app", "--help"]) == 7
    assert main(["--debug", "app", "--model", "/m", "--theme", "dark"]) == 7
    assert seen == [["--help"], ["--model", "/m", "--theme", "dark"]]


def test_unexpected_failure_exit_1_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.__main__ as cli

    def boom(path: Path, *, as_json: bool) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "info", boom)
    assert main(["info", "x"]) == 1
    err = capsys.readouterr().err
    assert err == "infinitevl info: unexpected RuntimeError: boom\n"
    assert main(["info", "x", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["generate", "--max-new-tokens", "many", "hi"], ["info"], ["nonsense"], []],
    ids=["bad-int", "missing-arg", "unknown-command", "no-command"],
)
def test_bad_arguments_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--help" in err
