"""Nothing leaked: weights from safetensors only, no remote code, private files, no open port,
no connection anywhere unless a download is asked for.
"""

from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from app.reader.pane import ReaderPane
from engine.errors import CheckpointError
from tests.badinput import corpus

ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 20_000
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_watching: list[list[tuple[str, str]]] = []  # stack of event logs while a `watch()` is active


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _watching[-1].append((event, os.fsdecode(args[0])))
    elif event in ("socket.connect", "socket.bind", "import") or event.startswith("pickle."):
        _watching[-1].append((event, repr(args[:2])))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside watch()


class watch:  # noqa: N801 (a context manager read as a phrase: `with watch() as seen`)
    """Record file opens, socket connects/binds, imports and unpickling inside the block."""

    def __enter__(self) -> list[tuple[str, str]]:
        _watching.append([])
        return _watching[-1]

    def __exit__(self, *exc: object) -> None:
        _watching.pop()


@pytest.fixture
def poisoned_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint plus a pickle and remote code that would leave a mark if run."""
    path = tmp_path / "poisoned"
    shutil.copytree(tiny_checkpoint, path)
    mark = tmp_path / "code-ran"
    payload = f"open({str(mark)!r}, 'w').write('ran')\n"
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04" + payload.encode())
    (path / "modeling_infinite_vl.py").write_text(payload)
    (path / "configuration_infinite_vl.py").write_text(payload)
    return path


def test_weights_only_from_safetensors_pickle_never_opened(poisoned_checkpoint: Path) -> None:
    from engine.engine import Engine

    # WHEN a checkpoint with a pickle and .py files beside its safetensors is loaded and used
    with watch() as seen:
        engine = Engine.load(poisoned_checkpoint, device="cpu")
        session = engine.new_session()
        session.add_user_message("hello")
        list(session.generate(_params()))
    # THEN neither the pickle nor the code was opened, imported or unpickled
    opened = [p for e, p in seen if e == "open" and Path(p).parent == poisoned_checkpoint]
    assert opened and all(Path(p).suffix not in (*PICKLE_SUFFIXES, ".py") for p in opened), opened
    assert not any(e.startswith("pickle.") for e, _ in seen)
    assert not any(e == "import" and "modeling_infinite_vl" in a for e, a in seen)
    assert not (poisoned_checkpoint.parent / "code-ran").exists()


def test_pickle_only_checkpoint_is_refused_unopened(poisoned_checkpoint: Path) -> None:
    from engine.engine import Engine

    for weights in poisoned_checkpoint.glob("*.safetensors*"):
        weights.unlink()
    for index in poisoned_checkpoint.glob("*.index.json"):
        index.unlink()
    with watch() as seen, pytest.raises(CheckpointError, match="pickle"):
        Engine.load(poisoned_checkpoint, device="cpu")
    assert not [p for e, p in seen if e == "open" and p.endswith(PICKLE_SUFFIXES)]
    assert not (poisoned_checkpoint.parent / "code-ran").exists()


def _calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_no_remote_code_and_no_pickle_loading_in_sources() -> None:
    # statically: nothing in engine/ or app/ passes trust_remote_code=True, unpickles, or runs
    # torch.load outside the training pipeline's own resume files (engine/train/checkpointing.py)
    offenders = []
    for path in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("app/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text("utf-8"))
        for name, call in _calls(tree):
            for kw in call.keywords:
                if kw.arg == "trust_remote_code" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    offenders.append(f"{rel}:{call.lineno} trust_remote_code")
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(f"{rel}:{call.lineno} {name}")
            if name == "torch.load" and rel != "engine/train/checkpointing.py":
                offenders.append(f"{rel}:{call.lineno} torch.load")
    assert offenders == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _params() -> Any:
    from engine.sampling import SamplingParams

    return SamplingParams(max_new_tokens=6)


@pytest.mark.gui
def test_app_files_private_no_port_no_connection(
    qtbot: Any, make_window: Any, tiny_factory: Any, data_dir: Path
) -> None:
    # sockets other tests of this process left open (a fake hub on loopback) are not the app's
    before = {(c.laddr, c.raddr) for c in psutil.Process().net_connections(kind="inet")}
    old_umask = os.umask(0o022)  # a usual desktop umask: files would be world-readable
    try:
        with watch() as seen:
            # GIVEN the app, a chat with an image, a document read and a restart
            window = make_window(tiny_factory)
            qtbot.waitUntil(lambda: window.engine_client.model_info is not None, timeout=WAIT_MS)
            conversation_id = window.current_conversation_id
            window.store.set_options(conversation_id, "", {"max_new_tokens": 6})
            window.attach_image(np.full((40, 56, 3), 90, np.uint8))
            with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
                window.composer.input.setPlainText("what is this?")
                window.composer.submit()
            page = np.full((56, 56, 3), 200, np.uint8)
            with qtbot.waitSignal(window.engine_client.job_finished, timeout=WAIT_MS):
                window.engine_client.read_document(conversation_id, [page], "page.pdf")
            # a document opened in the reader renders its pages into a private folder
            pdf = data_dir.parent / "doc.pdf"
            pdf.write_bytes(corpus.minimal_pdf(pages=2))
            pane = window.findChild(ReaderPane)
            assert pane is not None and pane.open_paths([pdf])
            qtbot.waitUntil(lambda: pane.rendered.page_path(1).exists(), timeout=WAIT_MS)
            cache_mode = _mode(pane.rendered.cache_dir)
            connections = [
                c
                for c in psutil.Process().net_connections(kind="inet")
                if (c.laddr, c.raddr) not in before
            ]
    finally:
        os.umask(old_umask)
    # THEN the process listens on no port and connected nowhere
    assert [c for c in connections if c.status == psutil.CONN_LISTEN] == []
    assert connections == []
    # urllib3 probes for IPv6 on import by binding ('::1', 0): a loopback socket that never listens
    assert [
        a
        for e, a in seen
        if e == "socket.connect" or (e == "socket.bind" and not a.endswith("('::1', 0))"))
    ] == []
    # THEN the data directory and everything in it are the user's alone
    files = [p for p in data_dir.rglob("*")]
    assert any(p.suffix == ".state" for p in files), "no snapshot was written"
    assert any(p.parent.parent.name == "attachments" for p in files), "no attachment was stored"
    assert any(p.name.endswith("-wal") for p in files)
    assert _mode(data_dir) == 0o700
    assert cache_mode == 0o700
    loose = {str(p.relative_to(data_dir)): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert loose == {}


@pytest.mark.slow
def _output(process: subprocess.Popen[bytes]) -> str:
    """What a finished child printed (its exit code first), for the assertion message."""
    out = process.stdout.read().decode(errors="replace") if process.stdout else ""
    return f"exit code {process.returncode}\n{out[-8000:]}"


def test_infinitevl_app_process_listens_on_no_port(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # the real command in its own process, offscreen, until its model is loaded
    import time

    data = tmp_path / "data"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONFAULTHANDLER": "1"}
    argv = [
        sys.executable,
        "-m",
        "engine",
        "app",
        "--data-dir",
        str(data),
        "--model",
        str(tiny_checkpoint),
    ]
    app = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not (data / "history.sqlite3").exists() and time.monotonic() < deadline:
            assert app.poll() is None, _output(app)
            time.sleep(0.3)
        time.sleep(4)  # the model loads behind the window
        assert app.poll() is None, _output(app)
        process = psutil.Process(app.pid)
        sockets = [
            c
            for p in (process, *process.children(recursive=True))
            for c in p.net_connections("inet")
        ]
        assert sockets == []
    finally:
        app.terminate()  # SIGTERM: the window closes the normal way
        app.wait(60)
    assert app.returncode == 0, _output(app)
    assert _mode(data) == 0o700 and _mode(data / "history.sqlite3") == 0o600
