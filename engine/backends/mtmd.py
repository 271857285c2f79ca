"""Images into a llama.cpp context through libmtmd (llama-cpp-python's ``mtmd_cpp``).

A ``Projector`` wraps a multimodal projector GGUF (``mmproj*.gguf``) for one text model: it
tokenizes a message whose media markers stand for images and evaluates it at the context's
current position. Imported by ``engine.backends.gguf`` only when a projector exists.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CheckpointError, EngineError, InputError

log = logging.getLogger(__name__)


_GGML_ERROR = 3
_log_callback: Any = None  # kept alive: libmtmd holds the pointer


def _route_logs(mtmd_cpp: Any) -> None:
    """libmtmd's messages (loader tables, per-image timings) into this module's logger."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            log.log(logging.WARNING if level == _GGML_ERROR else logging.DEBUG, "%s", message)

    _log_callback = callback
    mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))


class Projector:
    """libmtmd over a projector GGUF: images into the llama.cpp context at the current position."""

    def __init__(self, path: Path, llm: Any, use_gpu: bool, n_threads: int) -> None:
        from llama_cpp import mtmd_cpp

        self._lib = mtmd_cpp
        _route_logs(mtmd_cpp)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), llm.model, params)
        if not self._ctx:
            raise CheckpointError(f"{path}: libmtmd cannot load this projector")
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            raise CheckpointError(f"{path}: this projector has no vision encoder")
        self.marker = mtmd_cpp.mtmd_default_marker().decode()

    def eval(self, llm: Any, text: str, images: list[np.ndarray]) -> tuple[int, int]:
        """Tokenize and feed ``text`` with ``images``; returns (new position, tokens fed)."""
        import llama_cpp

        lib = self._lib
        bitmaps = []
        for image in images:
            h, w, _ = image.shape
            data = (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())
            bitmaps.append(lib.mtmd_bitmap_init(w, h, data))
        chunks = lib.mtmd_input_chunks_init()
        try:
            raw = text.encode("utf-8")
            inp = lib.mtmd_input_text(raw, len(raw), False, True)
            array = (lib.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if lib.mtmd_tokenize(self._ctx, chunks, ctypes.byref(inp), array, len(bitmaps)) != 0:
                raise InputError("libmtmd could not tokenize the images of this message")
            n_tokens = int(lib.mtmd_helper_get_n_tokens(chunks))
            if llm.n_tokens + n_tokens > llm.n_ctx():
                raise InputError(f"the message would pass the context of {llm.n_ctx()} tokens")
            new_n_past = llama_cpp.llama_pos(0)
            status = lib.mtmd_helper_eval_chunks(
                self._ctx, llm.ctx, chunks, llm.n_tokens, 0, llm.n_batch, True,
                ctypes.byref(new_n_past),
            )  # fmt: skip
            if status != 0:
                raise EngineError(f"libmtmd failed to evaluate the message (status {status})")
            return int(new_n_past.value), n_tokens
        finally:
            lib.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                lib.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        self._lib.mtmd_free(self._ctx)
