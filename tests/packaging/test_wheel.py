"""The wheel and sdist build from the tracked files; the wheel installs into a fresh virtual
environment (no system or project site-packages) and answers with ``infinitevl generate``.

Dependencies resolve through pip's own configuration with ``-c constraints.txt``, so torch is
the CPU build on this machine's disk (find-links); without such a wheel the install test is
skipped rather than pulling a multi-GB CUDA build.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_PIN = "torch==2.13.0"


def _tracked_copy(dest: Path) -> Path:
    """The checkout's files that git does not ignore, as they are on disk, in ``dest``: builds
    never write build/ or *.egg-info into the shared checkout, and ignored files (.venv,
    checkpoints) cannot sneak in; new files not committed yet come along with their users."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, names):
        src = ROOT / os.fsdecode(raw)
        if src.is_file():
            target = dest / os.fsdecode(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def _build(source: Path, out: Path) -> tuple[Path, Path]:
    code = (
        # setuptools rewrites sys.argv while it builds: read the output folder first
        "import sys; from setuptools import build_meta as b; out = sys.argv[1]; "
        "b.build_wheel(out); b.build_sdist(out)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, Path]:
    source = _tracked_copy(tmp_path_factory.mktemp("source"))
    # the embedded model's place holds the tiny checkpoint: the wheel must carry what is there
    embedded = source / "resources" / "default-model"
    shutil.rmtree(embedded, ignore_errors=True)
    shutil.copytree(tiny_checkpoint, embedded)
    return _build(source, tmp_path_factory.mktemp("dist"))


def _local_cpu_torch() -> Path | None:
    # the find-links pip would use: $PIP_FIND_LINKS, then pip's config files
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    for conf in (
        Path("/etc/pip.conf"),
        Path.home() / ".config/pip/pip.conf",
        Path.home() / ".pip/pip.conf",
    ):
        parser = configparser.ConfigParser()
        if conf.is_file():
            parser.read(conf)
            dirs += parser.get("global", "find-links", fallback="").split()
    for d in dirs:
        found = sorted(Path(d.removeprefix("file://")).glob("torch-2.13.0+cpu-*.whl"))
        if found:
            return found[0]
    return None


@pytest.mark.slow
def test_wheel_and_sdist_contents(built: tuple[Path, Path]) -> None:
    wheel, sdist = built
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "engine/__main__.py",
        "engine/models.py",
        "app/main.py",
        "app/history/schema.sql",
    ):
        assert needed in names, needed
    assert any(n.startswith("kernels/gated_delta/") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", ".venv"))]
    # the embedded default model, as data the installer puts under <prefix>/share
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    for needed in ("config.json", "tokenizer.json", "model.safetensors"):
        assert f"share/infinitevl-desktop/default-model/{needed}" in data, needed
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "infinitevl = engine.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    top = members[0].split("/")[0]
    for needed in ("pyproject.toml", "README.md", "engine/models.py", "app/history/schema.sql"):
        assert f"{top}/{needed}" in members, needed
    assert wheel.stat().st_size < 5_000_000 and sdist.stat().st_size < 5_000_000


@pytest.mark.slow
def test_wheel_installs_in_fresh_venv_and_generates(
    built: tuple[Path, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    if _local_cpu_torch() is None:
        pytest.skip("no CPU torch 2.13.0 wheel in pip's find-links: would download a CUDA build")
    wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, command = venv / "bin" / "python", venv / "bin" / "infinitevl"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # torch is the CPU build pinned in constraints.txt, and the venv sees nothing of the project's
    probe = subprocess.run(
        [str(python), "-c", "import torch, engine, sys; print(torch.__version__, engine.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    version, where = probe.stdout.split()
    assert version == "2.13.0+cpu" and str(venv) in where
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")

    def infinitevl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = infinitevl("generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "5", "hi")
    assert done.returncode == 0, done.stderr
    assert "model: " in done.stderr and "generated" in done.stderr
    # without --model the installed command answers with the embedded model the wheel carries
    embedded = infinitevl("generate", "--max-new-tokens", "3", "hello")
    assert embedded.returncode == 0, embedded.stderr
    where = str(venv / "share" / "infinitevl-desktop" / "default-model")
    assert where in embedded.stderr and "generated" in embedded.stderr
    # the app extra is not installed: one clear line, exit 2
    app = infinitevl("app")
    assert app.returncode == 2 and "PySide6" in app.stderr and app.stderr.count("\n") == 1
    listed = infinitevl("models", "list")
    assert listed.returncode == 0 and "no models" in listed.stdout
