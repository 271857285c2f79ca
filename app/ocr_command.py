"""`infinitevl ocr --region`: the screen-region OCR without the main window, for the desktop's own
shortcut settings to run. Freeze the screen, pick a region, transcribe, copy to the clipboard,
print the text on stdout, and show the result for a few seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtWidgets

from app.capture.ocr_flow import OCR_PARAMS, OcrEngineBridge, OcrFlow, grab_current_desktop
from app.capture.result_popup import OcrResultPopup
from app.capture.screenshot import MonitorShot
from app.engine_client import EngineClient, load_engine
from app.main import has_display
from engine import InputError, SamplingParams

log = logging.getLogger(__name__)

# 2: cannot run as asked (no display, a bad option), as the other infinitevl commands
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3


@dataclass(slots=True)
class OcrRun:
    """The parts of one command run, built but not started (tests drive them)."""

    flow: OcrFlow
    client: EngineClient
    popup: OcrResultPopup
    exit_code: int = EXIT_FAILED
    text: str = ""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="infinitevl ocr", description=__doc__.splitlines()[0])
    p.add_argument("--region", action="store_true", required=True, help="drag a screen region")
    p.add_argument("--model", type=Path, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=OCR_PARAMS.max_new_tokens,
        help=f"longest transcription, in tokens (default {OCR_PARAMS.max_new_tokens})",
    )
    return p.parse_args(list(argv))


def build_ocr_run(
    model: Path | None,
    device: str,
    snapshots_dir: Path,
    engine_factory: Callable[[str | None, str, str], Any] = load_engine,
    grab: Callable[[], list[MonitorShot]] = grab_current_desktop,
    params: SamplingParams = OCR_PARAMS,
) -> OcrRun:
    """Load the model in the background and wire flow, engine and popup; nothing shown yet."""
    client = EngineClient(snapshots_dir, engine_factory)
    # the model loads on the engine thread while the user is still dragging
    client.load_model(None if model is None else str(model), device)
    flow = OcrFlow(grab)
    bridge = OcrEngineBridge(flow, client, params, parent=flow)
    run = OcrRun(flow, client, OcrResultPopup(can_send=False))
    flow.transcription_requested.connect(run.popup.show_reading)
    bridge.progress.connect(run.popup.show_progress)
    run.popup.cancel_requested.connect(bridge.cancel)

    def on_copied(text: str, crop: np.ndarray) -> None:
        run.text, run.exit_code = text, EXIT_OK
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        run.popup.show_copied(text, crop)

    def on_failed(message: str) -> None:
        run.exit_code = EXIT_FAILED
        sys.stderr.write(f"infinitevl ocr: {message}\n")
        run.popup.show_failure(message)

    def on_cancelled() -> None:
        run.exit_code = EXIT_CANCELLED
        QtWidgets.QApplication.quit()

    def on_model_load_failed(message: str) -> None:
        if flow.picker is not None:
            flow.picker.close()
        flow.is_busy = False
        on_failed(f"cannot load the model: {message}")

    client.model_load_failed.connect(on_model_load_failed)
    flow.text_copied.connect(on_copied)
    flow.capture_failed.connect(on_failed)
    flow.capture_cancelled.connect(on_cancelled)
    run.popup.cancel_requested.connect(on_cancelled)
    # the process owns the clipboard until it exits: stay while the result is on screen
    run.popup.dismissed.connect(QtWidgets.QApplication.quit)
    return run


def run_ocr_region(model: Path | None, device: str, params: SamplingParams = OCR_PARAMS) -> int:
    """Run one capture in its own event loop; returns the exit code."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["infinitevl-ocr"])
    QtWidgets.QApplication.setQuitOnLastWindowClosed(False)
    with tempfile.TemporaryDirectory(prefix="infinitevl-ocr-") as tmp:
        run = build_ocr_run(model, device, Path(tmp), params=params)
        run.flow.start()
        if run.flow.is_busy:
            app.exec()
        elif run.popup.isVisible():
            app.exec()  # the capture failed at once: show why, then leave
        run.client.shutdown()
    return run.exit_code


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not has_display():
        sys.stderr.write(
            "infinitevl ocr: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "run it in a desktop session.\n"
        )
        return EXIT_USAGE
    try:
        params = replace(OCR_PARAMS, max_new_tokens=args.max_new_tokens)
    except InputError as exc:
        sys.stderr.write(f"infinitevl ocr: {exc}\n")
        return EXIT_USAGE
    return run_ocr_region(args.model, args.device, params)
