"""engine/train/gpu_tree.sh: what a device call sends, and hiding a committed checkpoint from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[3] / "engine" / "train" / "gpu_tree.sh"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def _tree(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=repo, capture_output=True, text=True)


def _sent(repo: Path) -> set[str]:
    return set(_git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split())


def test_hide_stops_sending_a_checkpoint_and_show_restores_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "resources" / "default-model").mkdir(parents=True)
    weights = repo / "resources" / "default-model" / "model.safetensors"
    weights.write_bytes(b"\1" * 2_000_000)
    (repo / "code.py").write_text("x = 1\n")
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    assert "2.0 MB" in _tree(repo, "size").stdout

    # WHEN the checkpoint is hidden: a call would no longer send it, and the files stay
    hide = _tree(repo, "hide", "resources/default-model/")
    assert hide.returncode == 0, hide.stderr
    assert _sent(repo) == {"code.py"} and weights.stat().st_size == 2_000_000
    assert "0.0 MB" in _tree(repo, "size").stdout

    # WHEN shown again: tracked as committed, nothing staged, the exclude file as it was
    show = _tree(repo, "show")
    assert show.returncode == 0, show.stderr
    assert "resources/default-model/model.safetensors" in _sent(repo)
    assert _git(repo, "status", "--porcelain") == ""
    exclude = repo / ".git" / "info" / "exclude"
    assert "/resources/default-model" not in exclude.read_text().splitlines()


def test_hide_refuses_with_staged_changes_or_untracked_paths(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    assert _tree(repo, "hide", "nothing-here").returncode == 2
    (repo / "a.txt").write_text("b\n")
    _git(repo, "add", "a.txt")
    refused = _tree(repo, "hide", "a.txt")
    assert refused.returncode == 1 and "staged" in refused.stderr
    assert "a.txt" in _sent(repo)
