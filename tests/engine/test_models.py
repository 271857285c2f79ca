"""engine.models against a loopback hub (tests/engine/fake_hub.py) serving the tiny checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.__main__ import main
from engine.engine import CancelToken, Engine
from engine.errors import Cancelled
from engine.models import (
    DownloadError,
    DownloadProgress,
    delete_model,
    download_model,
    is_allowed_file,
    list_models,
    model_path,
)
from engine.sampling import SamplingParams
from tests.engine.fake_hub import FakeHub, HubRepo

REPO = "tiny-org/tiny-infinitevl"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub_files(tiny_checkpoint: Path) -> dict[str, bytes]:
    files = HubRepo.from_dir(tiny_checkpoint).files
    # a pickle and remote code beside the safetensors: never fetched
    files["pytorch_model.bin"] = b"\x80\x04pickle that must never be fetched"
    files["modeling_evil.py"] = b"raise SystemExit('remote code ran')"
    return files


@pytest.fixture
def hub(hub_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    with FakeHub({REPO: HubRepo(hub_files)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def _weights(files: dict[str, bytes]) -> str:
    return next(n for n in files if n.endswith(".safetensors"))


def test_download_model_into_hub_cache_loads(hub: FakeHub, tmp_path: Path) -> None:
    # GIVEN a hub serving the tiny checkpoint plus a pickle and a .py file
    seen: list[DownloadProgress] = []
    # WHEN it is downloaded
    path = download_model(REPO, cache_dir=tmp_path, progress=seen.append)
    # THEN the snapshot is in the standard cache layout, huggingface_hub finds it offline,
    # progress ended at the total, the pickle and the code were never requested
    from huggingface_hub import hf_hub_download

    assert path.parent.parent == tmp_path / "models--tiny-org--tiny-infinitevl"
    assert (path / "config.json").is_symlink()
    cached = hf_hub_download(REPO, "config.json", cache_dir=tmp_path, local_files_only=True)
    assert Path(cached).read_bytes() == (path / "config.json").read_bytes()
    assert seen[-1].done == seen[-1].total > 0
    assert all(b.done <= b.total for b in seen)
    requested = " ".join(p for _, p, _ in hub.log)
    assert "pytorch_model.bin" not in requested and "modeling_evil.py" not in requested
    assert not (path / "pytorch_model.bin").exists()
    session = Engine.load(path, device="cpu").new_session()
    session.add_user_message("hello")
    assert len(list(session.generate(SamplingParams(max_new_tokens=3)))) >= 1


def test_download_model_resumes_after_a_dropped_connection(
    hub: FakeHub, hub_files: dict[str, bytes], tmp_path: Path
) -> None:
    # GIVEN a connection that drops after 200,000 bytes of the weights
    weights = _weights(hub_files)
    assert len(hub_files[weights]) > 300_000
    hub.cut_after[weights] = 200_000
    # WHEN the download fails, then is retried
    with pytest.raises(DownloadError, match=weights):
        download_model(REPO, cache_dir=tmp_path)
    partial = list((tmp_path / "models--tiny-org--tiny-infinitevl" / "blobs").glob("*.incomplete"))
    (kept,) = [p.stat().st_size for p in partial]
    assert 0 < kept <= 200_000
    path = download_model(REPO, cache_dir=tmp_path)
    # THEN the retry asked for the rest only, and the file is whole
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith(weights)]
    assert ranges == ["", f"bytes={kept}-"]
    assert (path / weights).read_bytes() == hub_files[weights]


def test_download_model_rejects_a_corrupt_file(
    hub: FakeHub, hub_files: dict[str, bytes], tmp_path: Path
) -> None:
    weights = _weights(hub_files)
    hub.corrupt.add(weights)
    with pytest.raises(DownloadError, match=f"{weights}: hash .* differs"):
        download_model(REPO, cache_dir=tmp_path)
    blobs = tmp_path / "models--tiny-org--tiny-infinitevl" / "blobs"
    # nothing with the bad bytes stays: neither as a blob nor as a partial file to resume
    assert all(p.read_bytes()[:1] != bytes([hub_files[weights][0] ^ 0xFF]) for p in blobs.iterdir())
    with pytest.raises(DownloadError, match="not a complete checkpoint|no local model"):
        model_path(REPO, cache_dir=tmp_path)


def test_download_model_cancel_keeps_partial_for_resume(
    hub: FakeHub, hub_files: dict[str, bytes], tmp_path: Path
) -> None:
    cancel = CancelToken()
    hub.chunk_delay = 0.05

    def stop_midway(p: DownloadProgress) -> None:
        if p.filename.endswith(".safetensors") and p.done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        download_model(REPO, cache_dir=tmp_path, progress=stop_midway, cancel=cancel)
    hub.chunk_delay = 0.0
    path = download_model(REPO, cache_dir=tmp_path)
    weights = _weights(hub_files)
    assert (path / weights).read_bytes() == hub_files[weights]


def test_download_model_errors_are_clear(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no model 'tiny-org/absent'"):
        download_model("tiny-org/absent", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match="no revision 'v9'"):
        download_model(REPO, "v9", cache_dir=tmp_path)


def test_download_model_refuses_a_pickle_only_repo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04pickle"}
    with FakeHub({"org/pickled": HubRepo(files)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        with pytest.raises(DownloadError, match="only safetensors"):
            download_model("org/pickled", cache_dir=tmp_path)
        assert not any(p.endswith("pytorch_model.bin") for _, p, _ in server.log)


def test_download_model_unreachable_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub({}) as server:
        endpoint = server.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_model(REPO, cache_dir=tmp_path)


def test_list_and_delete_models(hub: FakeHub, tmp_path: Path) -> None:
    assert list_models(tmp_path / "absent") == []
    path = download_model(REPO, cache_dir=tmp_path)
    (model,) = list_models(tmp_path)
    assert (model.repo_id, model.refs, model.path, model.is_checkpoint) == (
        REPO,
        ("main",),
        path,
        True,
    )
    assert model_path(f"{REPO}@{model.revision[:8]}", cache_dir=tmp_path) == path
    assert delete_model(REPO, cache_dir=tmp_path) > 0
    assert list_models(tmp_path) == []
    with pytest.raises(DownloadError, match="no local model"):
        delete_model(REPO, cache_dir=tmp_path)


def test_is_allowed_file() -> None:
    assert is_allowed_file("model-00001-of-00002.safetensors")
    assert is_allowed_file("sub/tokenizer.json")
    for name in ("pytorch_model.bin", "model.pt", "modeling_x.py", "x.pkl", "model.ckpt"):
        assert not is_allowed_file(name)


def test_cli_models_download_list_path_delete(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["models", *cache, "download", REPO]) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert (path / "config.json").is_file() and "(100%)" in err
    assert main(["models", *cache, "list"]) == 0
    assert REPO in capsys.readouterr().out
    assert main(["models", *cache, "path", REPO]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert main(["models", *cache, "delete", REPO]) == 0
    assert main(["models", *cache, "path", REPO]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no local model" in err


def test_cli_models_download_unknown_model_exit_2(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--cache-dir", str(tmp_path), "download", "org/absent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infinitevl models: no model 'org/absent'") and err.count("\n") == 1


@pytest.mark.slow
def test_cli_models_uses_hf_environment(hub: FakeHub, tmp_path: Path) -> None:
    # a fresh process reads HF_ENDPOINT and HF_HUB_CACHE as huggingface_hub's own tools do
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "models", "download", REPO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent.parent.parent == tmp_path
