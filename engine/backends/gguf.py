"""GGUF models through llama-cpp-python, behind the session API of ``engine.engine``.

One ``GGUFEngine`` holds one llama.cpp model and context. Its sessions take turns on that context:
the one in use lives in it, the others as llama.cpp state snapshots (``llama_state_get_data``:
attention KV cells and recurrent states, e.g. Qwen3.5's Gated DeltaNet layers). A session is
saved as such a snapshot in a safetensors file with the model's fingerprint. Conversations use
the ChatML turns of the Qwen family; images go through the model's multimodal projector
(``mmproj*.gguf`` beside the model, via libmtmd) where there is one. Never imports Qt.
Over 500 lines: its session mirrors ``engine.engine.Session`` call for call. Images: ``mtmd.py``.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine import picture_turn
from engine.backends.mtmd import Projector
from engine.engine import (
    GREEDY,
    CancelToken,
    GenerationStats,
    ImageInput,
    ModelInfo,
    TextDelta,
    _check_text,
    _StopMatcher,
    slow_warning,
)
from engine.errors import Cancelled, CheckpointError, EngineError, InputError, StateError
from engine.preprocess import load_image
from engine.sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)

STATE_FORMAT = "infinitevl-gguf-state-1"
DEFAULT_CONTEXT_TOKENS = 8192
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Qwen3/3.5 templates answer without a reasoning block when it is given empty
_EMPTY_THINK = "<think>\n\n</think>\n\n"
_FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class GGUFFiles:
    """The language model's GGUF and, where there is one, its multimodal projector."""

    model: Path
    mmproj: Path | None


def find_files(path: str | Path, mmproj: str | Path | None = None) -> GGUFFiles:
    """The model and projector files of a .gguf path, or of a directory of them.

    A projector is a ``mmproj*.gguf`` beside the model (or ``mmproj`` itself).

    Raises:
        CheckpointError: no such file, no model in the directory, or several.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        models = [f for f in files if not f.name.lower().startswith("mmproj")]
        if len(models) != 1:
            names = ", ".join(f.name for f in models) or "none"
            raise CheckpointError(f"{path}: needs exactly one model .gguf (found {names})")
        model = models[0]
    elif path.is_file():
        model = path
    else:
        raise CheckpointError(f"GGUF model {path} does not exist")
    if mmproj is None:
        projectors = sorted(model.parent.glob("mmproj*.gguf"))
        mmproj = projectors[0] if projectors else None
    elif not Path(mmproj).is_file():
        raise CheckpointError(f"projector {mmproj} does not exist")
    return GGUFFiles(model, None if mmproj is None else Path(mmproj))


def gguf_fingerprint(files: GGUFFiles) -> str:
    """16 hex digits over each file's size and first MiB (GGUF header, metadata, first tensors)."""
    h = hashlib.sha256(b"gguf")
    for file in (files.model, files.mmproj):
        if file is None:
            continue
        h.update(f"{file.name}:{file.stat().st_size}".encode())
        with file.open("rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


class GGUFEngine:
    """A GGUF model ready to hold conversations. Build with :meth:`load`."""

    def __init__(self, llm: Any, files: GGUFFiles, info: ModelInfo, fingerprint: str) -> None:
        self._llm = llm
        self.files = files
        self.info = info
        self.fingerprint = fingerprint
        self.device = torch.device("cpu")
        self.n_ctx: int = llm.n_ctx()
        self.n_vocab: int = llm.n_vocab()
        self._active: GGUFSession | None = None
        self._mtmd: Any = None
        template = llm.metadata.get("tokenizer.chat_template", "")
        self.generation_prompt = f"{IM_START}assistant\n" + (
            _EMPTY_THINK if "<think>" in template else ""
        )
        self.eos_ids = self._eos_ids()
        # as the torch engine: placeholders only the prompt may write are never sampled
        self.banned_ids = tuple(
            ids[0]
            for ids in map(self.tokenize, ("<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"))
            if len(ids) == 1
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        mmproj: str | Path | None = None,
        n_ctx: int = DEFAULT_CONTEXT_TOKENS,
        n_threads: int | None = None,
    ) -> GGUFEngine:
        """Open a GGUF model (a .gguf file, or a directory with one and maybe its projector).

        Args:
            path: the model .gguf, or its directory.
            device: "auto" offloads every layer to the GPU when llama.cpp was built with one;
                "cpu" keeps them on the CPU; "cuda" insists on the GPU.
            mmproj: the multimodal projector; None looks for ``mmproj*.gguf`` beside the model.
            n_ctx: the context in tokens (attention layers keep that many keys).
            n_threads: CPU threads; None uses the cores this process may run on.

        Raises:
            EngineError: llama-cpp-python is not installed, or the device is not available.
            CheckpointError: missing files, or a file llama.cpp cannot load.
        """
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineError(
                "GGUF models need llama-cpp-python: "
                ".venv/bin/pip install -c constraints.txt -e '.[gguf]'"
            ) from exc
        files = find_files(path, mmproj)
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be auto, cpu or cuda for a GGUF model, got {device!r}")
        if device == "cuda" and not gpu:
            raise EngineError("device 'cuda' requested but this llama.cpp build has no GPU backend")
        use_gpu = gpu and device != "cpu"
        threads = n_threads or len(os.sched_getaffinity(0))
        try:
            llm = llama_cpp.Llama(
                model_path=str(files.model), n_ctx=n_ctx, n_batch=min(512, n_ctx),
                n_threads=threads, n_gpu_layers=-1 if use_gpu else 0, verbose=False,
            )  # fmt: skip
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{files.model}: llama.cpp cannot load it ({exc})") from exc
        engine = cls(llm, files, _model_info(llm, files, use_gpu), gguf_fingerprint(files))
        if files.mmproj is not None:
            engine._mtmd = Projector(files.mmproj, llm, use_gpu, threads)
        log.info("loaded GGUF %s (%s)", files.model, engine.info.dtype)
        return engine

    @property
    def has_vision(self) -> bool:
        return self._mtmd is not None

    def new_session(self, system_prompt: str | None = None) -> GGUFSession:
        """A fresh conversation; ``system_prompt`` None writes no system turn."""
        if system_prompt is not None:
            _check_text("system_prompt", system_prompt)
        return GGUFSession(self, system_prompt)

    def restore_session(self, path: str | Path) -> GGUFSession:
        """A session continuing from a file written by :meth:`GGUFSession.save`.

        Raises:
            StateError: a missing or damaged file, or a state of another model.
        """
        blob, meta = _read_state(Path(path), self.fingerprint)
        session = GGUFSession(self, None)
        session._blob = blob
        session._n_past = int(meta["n_past"])
        session._tokens_seen = int(meta["tokens_seen"])
        self._activate(session)
        return session

    def close(self) -> None:
        """Free the projector and the llama.cpp model and context."""
        if self._mtmd is not None:
            self._mtmd.close()
            self._mtmd = None
        self._llm.close()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``; chat tokens such as ``<|im_start|>`` are parsed as such."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _eos_ids(self) -> set[int]:
        ids = {int(self._llm.token_eos())}
        for text in (IM_END, "<|endoftext|>"):
            tokens = self.tokenize(text)
            if len(tokens) == 1:
                ids.add(tokens[0])
        return ids

    def _activate(self, session: GGUFSession) -> None:
        """Put ``session``'s state in the context, keeping the previous one's as a snapshot."""
        if self._active is session:
            return
        if self._active is not None:
            self._active._blob = self._snapshot()
        if session._blob is None:
            self._clear()
        else:
            self._restore(session._blob)
        self._llm.n_tokens = session._n_past
        self._active = session

    def _clear(self) -> None:
        """An empty context: every KV cell and recurrent state dropped (``Llama.reset`` keeps
        attention cells, which its own ``eval`` overwrites but libmtmd's does not)."""
        import llama_cpp

        self._llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._llm.ctx), True)

    def _snapshot(self) -> bytes:
        import llama_cpp

        ctx = self._llm.ctx
        size = llama_cpp.llama_state_get_size(ctx)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_get_data(ctx, buf, size)
        return ctypes.string_at(buf, n)

    def _restore(self, blob: bytes) -> None:
        import llama_cpp

        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if llama_cpp.llama_state_set_data(self._llm.ctx, buf, len(blob)) != len(blob):
            raise StateError("llama.cpp rejected the session state (another model or context?)")

    def _eval(self, ids: list[int], cancel: CancelToken | None) -> np.ndarray:
        """Feed tokens to the active session in batches; returns the last logits [vocab]."""
        llm = self._llm
        if llm.n_tokens + len(ids) > self.n_ctx:
            raise InputError(
                f"the conversation would pass the context of {self.n_ctx} tokens "
                f"({llm.n_tokens} used, {len(ids)} more)"
            )
        for start in range(0, len(ids), llm.n_batch):
            if cancel is not None and cancel.is_cancelled:
                raise Cancelled(f"prefill cancelled after {start} tokens")
            llm.eval(ids[start : start + llm.n_batch])
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _eval_with_images(self, text: str, images: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """Feed text holding one media marker per image; returns (last logits, tokens fed)."""
        assert self._mtmd is not None
        llm = self._llm
        # cells past the position may hold a rolled-back turn: libmtmd decodes on top of them
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        n_past, n_tokens = self._mtmd.eval(llm, text, images)
        llm.n_tokens = n_past
        return self._last_logits(), n_tokens


class GGUFSession:
    """One conversation on a :class:`GGUFEngine`; the same calls as ``engine.engine.Session``."""

    def __init__(self, engine: GGUFEngine, system_prompt: str | None) -> None:
        self._engine = engine
        self._system_prompt = system_prompt
        self._blob: bytes | None = None  # llama.cpp state while another session holds the context
        self._n_past = 0  # llama.cpp position of the next token
        self._tokens_seen = 0
        self._next_logits: np.ndarray | None = None  # [vocab] float32
        self._prompt_tokens = 0
        self._prefill_seconds = 0.0
        self._reply_vocab: set[int] = set()
        self.tokens_fed_total = 0
        self.last_stats: GenerationStats | None = None

    @property
    def tokens_seen(self) -> int:
        return self._tokens_seen

    @property
    def state_nbytes(self) -> int:
        """Bytes of this session's llama.cpp state (KV cells in use plus recurrent states)."""
        if self._engine._active is self:
            import llama_cpp

            return int(llama_cpp.llama_state_get_size(self._engine._llm.ctx))
        # a session that never ran holds the empty state of a fresh context
        return len(self._blob) if self._blob is not None else self._engine.info.state_nbytes

    @property
    def is_awaiting_reply(self) -> bool:
        return self._next_logits is not None

    def add_user_message(
        self,
        text: str,
        images: Sequence[ImageInput] = (),
        cancel: CancelToken | None = None,
    ) -> None:
        """Prefill a user turn (images first, then ``text``) and the generation prompt.

        Raises:
            InputError: an empty message, reserved chat tokens, images without a projector.
            Cancelled: ``cancel`` was set; the session is left as it was before the call.
        """
        _check_text("text", text)
        if isinstance(images, str | Path | np.ndarray | Image.Image):
            images = [images]
        if not text.strip() and not images:
            raise InputError("empty message: give some text or at least one image")
        pictures = [self._picture(img) for img in images]
        prompt = self._turn_opening() + "{media}" + text + f"{IM_END}\n"
        prompt += self._engine.generation_prompt
        if self._next_logits is not None:
            prompt = f"{IM_END}\n" + prompt
        start = time.perf_counter()
        fed, logits = self._feed(prompt, pictures, cancel)
        self._next_logits = logits
        self._prompt_tokens = fed
        self._prefill_seconds = time.perf_counter() - start

    def generate(
        self, params: SamplingParams = GREEDY, cancel: CancelToken | None = None
    ) -> Iterator[TextDelta]:
        """Stream the reply to the last user message; the assistant turn is closed at the end.

        Raises:
            InputError: no user message is waiting for a reply.
        """
        if not isinstance(params, SamplingParams):
            raise InputError(f"params must be SamplingParams, got {type(params).__name__}")
        if self._next_logits is None:
            raise InputError("nothing to answer: call add_user_message before generate")
        if params.num_beams > 1:
            raise InputError("beam search (num_beams > 1) is not available with GGUF models")
        return self._generate(params, cancel)

    def _generate(self, params: SamplingParams, cancel: CancelToken | None) -> Iterator[TextDelta]:
        engine = self._engine
        logits_np, self._next_logits = self._next_logits, None
        assert logits_np is not None
        sampler = Sampler(params, engine.n_vocab, "cpu", banned_ids=engine.banned_ids)
        if params.repetition_penalty != 1.0 and self._reply_vocab:
            sampler.observe(sorted(self._reply_vocab))
        stops = _StopMatcher(params.stop)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated: list[int] = []
        pending: list[int] = []
        unfed: int | None = None
        reason = "cancelled"
        start = time.perf_counter()
        try:
            engine._activate(self)
            while not (cancel is not None and cancel.is_cancelled):
                token_id = int(sampler(torch.from_numpy(logits_np)).item())
                if token_id in engine.eos_ids:
                    reason = "eos"
                    break
                unfed = token_id
                generated.append(token_id)
                self._reply_vocab.add(token_id)
                pending.append(token_id)
                sampler.observe([token_id])
                piece = engine._llm.detokenize([token_id], special=False)
                text, hit = stops.push(utf8.decode(piece))
                if text:
                    yield TextDelta(text, tuple(pending))
                    pending = []
                if hit:
                    reason = "stop"
                    break
                if len(generated) >= params.max_new_tokens:
                    reason = "length"
                    break
                if cancel is not None and cancel.is_cancelled:
                    break
                logits_np = self._eval([token_id], None)
                unfed = None
            if reason != "stop":
                text, _ = stops.push(utf8.decode(b"", final=True), final=True)
                if text:
                    yield TextDelta(text, tuple(pending))
        finally:
            decode_seconds = time.perf_counter() - start
            closing = ([unfed] if unfed is not None else []) + engine.tokenize(f"{IM_END}\n")
            self._eval(closing, None)
            self.tokens_fed_total += len(closing)
            self.last_stats = GenerationStats(
                prompt_tokens=self._prompt_tokens,
                generated_tokens=len(generated),
                prefill_seconds=self._prefill_seconds,
                decode_seconds=decode_seconds,
                stop_reason=reason,
            )

    def add_assistant_message(self, text: str, cancel: CancelToken | None = None) -> None:
        """Feed a reply written elsewhere (history replay) as the assistant's turn."""
        _check_text("text", text)
        opening = ""
        if self._next_logits is None:
            opening = self._system_block() + f"{IM_START}assistant\n"
        self._feed(f"{opening}{text}{IM_END}\n", [], cancel)
        self._next_logits = None
        self._reply_vocab.update(self._engine.tokenize(text))

    def feed_frames(self, frames: Sequence[np.ndarray], cancel: CancelToken | None = None) -> int:
        """Feed video/webcam frames (uint8 [H, W, 3]) as one user turn of images."""
        return self._feed_pictures(picture_turn.frames_list(frames), None, None, cancel)

    def feed_document(
        self,
        pages: Iterable[np.ndarray | Image.Image],
        *,
        progress: Callable[[int, int | None], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> int:
        """Read pages into the state, one ``Page i: <image>`` line each, as one user turn."""
        total = picture_turn.pages_total(pages)
        return self._feed_pictures(pages, picture_turn.PAGE_LABEL, progress, cancel, total)

    def _feed_pictures(
        self,
        pictures: Iterable[ImageInput],
        label: str | None,
        progress: Callable[[int, int | None], None] | None,
        cancel: CancelToken | None,
        total: int | None = None,
    ) -> int:
        if self._next_logits is not None:
            raise InputError("a user message is waiting for its reply: call generate first")

        def feed_one(before: str, picture: ImageInput, after: str) -> int:
            return self._feed(before + "{media}" + after, [self._picture(picture)], None)[0]

        return picture_turn.feed_picture_turn(
            pictures,
            opening=self._turn_opening(),
            label=label,
            feed_one=feed_one,
            close=lambda text: self._feed(text, [], None)[0],
            progress=progress,
            cancel=cancel,
            total=total,
        )

    def fork(self) -> GGUFSession:
        """An independent copy: feeding or generating on either leaves the other untouched."""
        other = GGUFSession(self._engine, self._system_prompt)
        if self._engine._active is self:
            other._blob = self._engine._snapshot()
        else:
            other._blob = self._blob
        other._n_past, other._tokens_seen = self._n_past, self._tokens_seen
        if self._next_logits is not None:
            other._next_logits = self._next_logits.copy()
        other._prompt_tokens, other._prefill_seconds = self._prompt_tokens, self._prefill_seconds
        other._reply_vocab = set(self._reply_vocab)
        return other

    def save(self, path: str | Path) -> None:
        """Write the llama.cpp state atomically (temp file, fsync, rename) with the fingerprint.

        Raises:
            StateError: a user message is waiting for its reply (save after generate).
        """
        if self._next_logits is not None:
            raise StateError(f"cannot save to {path}: a user message is waiting for its reply")
        engine = self._engine
        engine._activate(self)
        meta = {
            "format": STATE_FORMAT,
            "fingerprint": engine.fingerprint,
            "n_past": str(self._n_past),
            "tokens_seen": str(self._tokens_seen),
        }
        _write_state(Path(path), engine._snapshot(), meta)

    def _turn_opening(self) -> str:
        opening = f"{IM_START}user\n"
        return opening if self._tokens_seen else self._system_block() + opening

    def _system_block(self) -> str:
        if self._tokens_seen or self._system_prompt is None:
            return ""
        return f"{IM_START}system\n{self._system_prompt}{IM_END}\n"

    def _picture(self, image: ImageInput) -> np.ndarray:
        if not self._engine.has_vision:
            raise InputError(
                f"{self._engine.files.model.name} has no vision projector (mmproj*.gguf beside "
                "it): it reads text only"
            )
        if isinstance(image, str | Path):
            return load_image(image)
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image, dtype=np.uint8)
        raise InputError(f"an image must be a uint8 [H, W, 3] array, PIL image or path: {image!r}")

    def _feed(
        self, template: str, pictures: list[np.ndarray], cancel: CancelToken | None
    ) -> tuple[int, np.ndarray]:
        """Feed a turn (``{media}`` marks where its pictures go) whole or not at all."""
        engine = self._engine
        engine._activate(self)
        backup = engine._snapshot() if self._n_past else None
        n_past0, seen0 = self._n_past, self._tokens_seen
        try:
            if pictures:
                marker = engine._mtmd.marker
                logits, fed = engine._eval_with_images(
                    template.replace("{media}", marker * len(pictures)), pictures
                )
                self._n_past = engine._llm.n_tokens
                self._tokens_seen += fed
            else:
                ids = engine.tokenize(template.replace("{media}", ""))
                logits, fed = self._eval(ids, cancel), len(ids)
        except BaseException:
            if backup is None:
                engine._clear()
            else:
                engine._restore(backup)
            engine._llm.n_tokens = self._n_past = n_past0
            self._tokens_seen = seen0
            raise
        self.tokens_fed_total += fed
        return fed, logits

    def _eval(self, ids: list[int], cancel: CancelToken | None) -> np.ndarray:
        self._engine._activate(self)
        logits = self._engine._eval(ids, cancel)
        self._n_past = self._engine._llm.n_tokens
        self._tokens_seen += len(ids)
        return logits


def _model_info(llm: Any, files: GGUFFiles, use_gpu: bool) -> ModelInfo:
    import llama_cpp

    meta = llm.metadata
    num_parameters = int(llama_cpp.llama_model_n_params(llm.model))
    device = torch.device("cuda" if use_gpu else "cpu")
    name = meta.get("general.name") or files.model.stem
    return ModelInfo(
        name=name,
        path=str(files.model),
        device=device.type,
        dtype=_file_type(meta.get("general.file_type")),
        num_parameters=num_parameters,
        state_nbytes=int(llama_cpp.llama_state_get_size(llm.ctx)),
        is_embedded_default=False,
        slow_warning=slow_warning(name, num_parameters, device) if not use_gpu else None,
        quantization="gguf",
    )


def _file_type(value: str | None) -> str:
    """GGUF's general.file_type number as a name ("Q4_0"), via the gguf package when present."""
    if value is None:
        return "gguf"
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except (ImportError, ValueError):
        return f"gguf file type {value}"


def _write_state(path: Path, blob: bytes, meta: dict[str, str]) -> None:
    from safetensors.numpy import save

    meta = {**meta, "sha256": hashlib.sha256(blob).hexdigest()}
    data = save({"llama_state": np.frombuffer(blob, dtype=np.uint8)}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_state(path: Path, fingerprint: str) -> tuple[bytes, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise StateError(f"no session state at {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            blob = f.get_tensor("llama_state").tobytes()
    except (SafetensorError, OSError, KeyError) as exc:
        raise StateError(f"{path}: not a readable GGUF session state ({exc})") from exc
    if meta.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: not a GGUF session state (format {meta.get('format')!r})")
    if meta.get("fingerprint") != fingerprint:
        raise StateError(
            f"{path} belongs to another model (fingerprint {meta.get('fingerprint')}, "
            f"this model {fingerprint})"
        )
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise StateError(f"{path}: the state is damaged (checksum mismatch)")
    return blob, meta
