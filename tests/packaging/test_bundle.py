"""A built PyInstaller bundle answers ``generate`` and starts the app (offscreen).

Building takes ~5 minutes and ~1 GB here (packaging/pyinstaller/infinitevl.spec), too long for
every CI run: the test checks the bundle named by ``INFINITEVL_BUNDLE`` (its folder) and is
skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

BUNDLE = os.environ.get("INFINITEVL_BUNDLE")


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLE, reason="set INFINITEVL_BUNDLE to a built dist/infinitevl folder")
def test_bundle_generates_and_starts_the_app(tiny_checkpoint: Path, tmp_path: Path) -> None:
    command = Path(str(BUNDLE)) / "infinitevl"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run(
        [str(command), "generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "4", "hi"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = tmp_path / "data"
    app = subprocess.Popen(
        [str(command), "app", "--data-dir", str(data), "--model", str(tiny_checkpoint)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (data / "history.sqlite3").exists() and time.monotonic() < deadline:
            assert app.poll() is None, app.stdout.read().decode() if app.stdout else ""
            time.sleep(0.5)
        time.sleep(3)  # the model loads behind the window
        assert app.poll() is None
        # the running app listens on no port
        sockets = psutil.Process(app.pid).net_connections(kind="inet")
        assert [s for s in sockets if s.status == psutil.CONN_LISTEN] == []
    finally:
        app.terminate()  # SIGTERM closes the window the normal way
        app.wait(30)
    assert app.returncode == 0
