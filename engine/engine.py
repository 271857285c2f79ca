"""Runtime: a loaded model and its conversations (sessions) with constant-size state.

``Engine`` owns the model, tokenizer and image parameters; ``Session`` owns one conversation's
state and feeds it (user turns with images, document pages, video frames) and generates replies
token by token. Every feed leaves the state at a turn boundary of the Qwen2-VL chat format, so a
session can be forked, saved, restored and continued at any time. Never imports Qt.
Over 500 lines: the session's feed and decode loops read best next to each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine import cpu_dtype, default_model, picture_turn
from engine.beam import StepFn, beam_search, beam_search_groups
from engine.config import ModelConfig
from engine.errors import Cancelled, CheckpointError, EngineError, InputError, StateError
from engine.loader import load_model, weight_files, weights_fingerprint
from engine.model.infinitevl import InfiniteVLForConditionalGeneration
from engine.model.stack_rows import stack_rows
from engine.preprocess import ImageParams, image_token_count, open_picture, preprocess_images
from engine.quant import METHODS as QUANT_METHODS
from engine.quant import decodes_eagerly_on, num_quantized_weights
from engine.sampling import Sampler, SamplingParams
from engine.state import FullAttnState, ModelState
from engine.tokenizer import (
    END_OF_TEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    Tokenizer,
    chat_prompt,
)
from kernels.sdpa import sdpa_context

log = logging.getLogger(__name__)

ImageInput = np.ndarray | Image.Image | str | Path
PREFILL_CHUNK_TOKENS = 2048
# one message's text (a 10 MB paste would prefill for minutes on a CPU); documents go as pages
MAX_TEXT_CHARS = 1_000_000
SLOW_PARAMETERS = 1_000_000_000
GREEDY = SamplingParams()
_IMAGE_BLOCK = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
# user text may not write the tokens that structure the conversation
_RESERVED = (IM_START, IM_END, END_OF_TEXT, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)


class CancelToken(threading.Event):
    """Set by the caller (any thread) to stop a request; the engine checks it between steps."""

    def cancel(self) -> None:
        self.set()

    @property
    def is_cancelled(self) -> bool:
        return self.is_set()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the streamed reply and the token ids it came from."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What one reply cost. ``stop_reason``: "eos" | "stop" | "length" | "cancelled"."""

    prompt_tokens: int
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stop_reason: str

    @property
    def cancelled(self) -> bool:
        return self.stop_reason == "cancelled"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The loaded model as the user sees it (status bar, CLI banner)."""

    name: str
    path: str
    device: str
    dtype: str
    num_parameters: int
    state_nbytes: int
    is_embedded_default: bool
    slow_warning: str | None
    # "int8", "int4" or "nf4" when the linear layers hold quantized weights (engine.quant)
    quantization: str | None = None


@dataclass(slots=True)
class _Segment:
    """Prompt tokens to feed: a text run (splittable) or one whole image block."""

    ids: list[int]
    pixel_values: torch.Tensor | None = None  # [patches, C * T * P * P]
    grid_thw: torch.Tensor | None = None  # [1, 3]


class Engine:
    """A loaded model ready to hold conversations. Build with :meth:`load`."""

    def __init__(
        self,
        model: InfiniteVLForConditionalGeneration,
        config: ModelConfig,
        tokenizer: Tokenizer,
        image_params: ImageParams,
        info: ModelInfo,
        fingerprint: str,
    ) -> None:
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.image_params = image_params
        self.info = info
        self.fingerprint = fingerprint
        self.prefill_chunk_tokens = PREFILL_CHUNK_TOKENS
        self.device = next(model.parameters()).device
        # how replies decode: "cuda" through a captured CUDA graph on CUDA (eager elsewhere),
        # "static" also runs the graph's static step eagerly on the CPU (tests), "off" eager
        self.decode_graph = "cuda"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str | None = None,
        quant: str | None = None,
    ) -> Engine:
        """Load a checkpoint directory (None: the embedded default model).

        Args:
            path: a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json).
            device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
            dtype: "float32", "bfloat16", "float16", or None: as stored, except on CPU where a
                checkpoint of at most 256 MiB of weights (``is_small``) runs in float32
                or bfloat16, whichever this CPU runs faster (timed on its first load here and
                remembered, ``engine.cpu_dtype``; ``INFINITEVL_CPU_DTYPE`` pins one).
            quant: "int8", "int4" or "nf4" quantizes the linear layers as they load ("none" or
                None: as stored; docs/quantization.md).

        Raises:
            EngineError: no embedded default model and no path; a device that is not available;
                a checkpoint the loader rejects (CheckpointError, ConfigError).
        """
        is_default = path is None
        if path is None:
            path = default_model.find_default_model()
            if path is None:
                raise EngineError(default_model.no_default_model_message())
        path = Path(path)
        resolved = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        if quant not in (None, "none", *QUANT_METHODS):
            raise InputError(f"quant must be none, {', '.join(QUANT_METHODS)}, got {quant!r}")
        quant = None if quant == "none" else quant
        if torch_dtype is None and quant is None and resolved.type == "cpu" and is_small(path):
            # float32 or bfloat16, whichever is faster on this CPU
            torch_dtype = cpu_dtype.pinned() or cpu_dtype.remembered(path)
            if torch_dtype is None:
                return cpu_dtype.timed_choice(
                    path, lambda dt: cls._load(path, resolved, dt, None, is_default)
                )
        return cls._load(path, resolved, torch_dtype, quant, is_default)

    @classmethod
    def _load(
        cls,
        path: Path,
        resolved: torch.device,
        torch_dtype: torch.dtype | None,
        quant: str | None,
        is_default: bool,
    ) -> Engine:
        model, config = load_model(path, device=resolved, dtype=torch_dtype, quant=quant)
        model.eval()
        tokenizer = Tokenizer.from_dir(path)
        image_params = ImageParams.from_dir(path)
        info = model_info(model, path, is_embedded_default=is_default)
        # the directory's fingerprint: a state saved under bfloat16 restores under float32
        fingerprint = weights_fingerprint(path, config)
        log.info(
            "loaded %s on %s (%s, %d parameters)",
            path,
            info.device,
            info.dtype,
            info.num_parameters,
        )
        return cls(model, config, tokenizer, image_params, info, fingerprint)

    @property
    def reply_end_ids(self) -> frozenset[int]:
        """Tokens that end a reply: the config's end tokens, and as Qwen2.5-VL's
        generation_config, ``<|im_end|>`` and ``<|endoftext|>``."""
        special = self.tokenizer.special
        return frozenset(
            {*self.config.eos_token_id, special.im_end, special.end_of_text, special.eos}
        )

    @property
    def placeholder_ids(self) -> tuple[int, int]:
        """The image and video pads: a placeholder fed without its pixels has no meaning, so
        only a prompt writes them and no reply may choose them."""
        special = self.tokenizer.special
        return special.image_pad, special.video_pad

    def new_session(self, system_prompt: str | None = None) -> Session:
        """A fresh conversation; ``system_prompt`` None uses the chat template's default."""
        if system_prompt is not None:
            _check_text("system_prompt", system_prompt)
        return Session(self, self.model.new_state(device=self.device), system_prompt)

    def restore_session(self, path: str | Path) -> Session:
        """A session continuing from a state written by :meth:`Session.save`.

        Raises:
            StateError: a missing or damaged file, or a state of another model.
        """
        state = ModelState.load(path, self.fingerprint, self.config.text, device=self.device)
        _match_state_dtype(state, self.model.new_state(device="meta"))
        return Session(self, state, None)


class Session:
    """One conversation: its state, and the calls that feed it and generate replies.

    Attributes:
        tokens_fed_total: tokens this object prefilled (turns, pages, frames, turn endings; not
            the reply's own tokens), in this process.
        last_stats: the stats of the latest :meth:`generate`, None before one finishes.

    The repetition penalty covers every assistant token of the conversation that this object
    (or the session it was forked from) generated or replayed; a restored session starts afresh.
    """

    def __init__(self, engine: Engine, state: ModelState, system_prompt: str | None) -> None:
        self._engine = engine
        self._state = state
        self._system_prompt = system_prompt
        # logits for the reply's first token; set by add_user_message, used by generate
        self._next_logits: torch.Tensor | None = None  # [vocab] float32
        self._prompt_tokens = 0
        self._prefill_seconds = 0.0
        # the assistant's tokens so far, for the repetition penalty (not kept in saved states)
        self._reply_vocab: set[int] = set()
        self.tokens_fed_total = 0
        self.last_stats: GenerationStats | None = None
        # the CUDA-graph decode step over this state (built on the first reply, kept for greedy)
        self._graph: Any = None  # engine.cuda_graph.DecodeGraph (imported on CUDA only)
        self._graph_key: tuple[object, ...] | None = None

    @property
    def tokens_seen(self) -> int:
        return self._state.tokens_seen

    @property
    def state_nbytes(self) -> int:
        return self._state.nbytes()

    @property
    def is_awaiting_reply(self) -> bool:
        """True between :meth:`add_user_message` and the :meth:`generate` that answers it."""
        return self._next_logits is not None

    def add_user_message(
        self,
        text: str,
        images: Sequence[ImageInput] = (),
        cancel: CancelToken | None = None,
    ) -> None:
        """Prefill a user turn (images first, then ``text``) and the generation prompt.

        Raises:
            InputError: an empty message (no text and no images), text holding a reserved chat
                token, an unreadable or empty image.
            Cancelled: ``cancel`` was set between chunks. On any error the session is left as it
                was before the call.
        """
        _check_text("text", text)
        if isinstance(images, str | Path | np.ndarray | Image.Image):
            images = [images]
        if not text.strip() and not images:
            raise InputError("empty message: give some text or at least one image")
        pictures = [self._image_segment(img) for img in images]
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in pictures]
        parts.append({"type": "text", "text": text})
        if self.tokens_seen == 0 and self._next_logits is None:
            messages: list[dict[str, Any]] = []
            if self._system_prompt is not None:
                messages.append({"role": "system", "content": self._system_prompt})
            prompt = chat_prompt([*messages, {"role": "user", "content": parts}])
        else:
            # the turn the template writes for every message after the first
            body = _IMAGE_BLOCK * len(pictures) + text
            prompt = f"{IM_START}user\n{body}{IM_END}\n{IM_START}assistant\n"
        if self._next_logits is not None:
            # a second user message before a reply: close the empty assistant turn first
            prompt = f"{IM_END}\n" + prompt
        segments = self._segments(prompt, pictures)
        # a turn is fed whole or not at all: cancelled or failed, the session is as before
        backup = self._state.clone()
        start = time.perf_counter()
        try:
            fed, logits = self._prefill(segments, cancel)
        except BaseException:
            self._state = backup
            raise
        self._next_logits = logits
        self._prompt_tokens = fed
        self._prefill_seconds = time.perf_counter() - start
        log.debug(
            "user turn: %d tokens, %d images, %.3f s", fed, len(pictures), self._prefill_seconds
        )

    def generate(
        self, params: SamplingParams = GREEDY, cancel: CancelToken | None = None
    ) -> Iterator[TextDelta]:
        """Stream the reply to the last user message; the assistant turn is closed at the end.

        Stops on an end-of-sequence token, a stop string (text before it is emitted, the stop
        string is not), ``params.max_new_tokens``, or ``cancel`` (checked between tokens). Closing
        the generator early counts as cancelled. ``last_stats`` is set when it ends. With
        ``params.num_beams`` above 1 the reply is found by beam search (``engine.beam``) and comes
        as one delta at the end.

        Raises:
            InputError: no user message is waiting for a reply.
        """
        if not isinstance(params, SamplingParams):
            raise InputError(f"params must be SamplingParams, got {type(params).__name__}")
        if self._next_logits is None:
            raise InputError("nothing to answer: call add_user_message before generate")
        if params.num_beams > 1:
            return self._generate_beam(params, cancel)
        return self._generate(params, cancel)

    def _generate(self, params: SamplingParams, cancel: CancelToken | None) -> Iterator[TextDelta]:
        engine = self._engine
        logits, self._next_logits = self._next_logits, None
        assert logits is not None
        sampler = Sampler(
            params, logits.shape[-1], logits.device, banned_ids=engine.placeholder_ids
        )
        graph = self._decode_graph(params, sampler)
        if graph is not None:
            sampler = graph.sampler  # the one captured in the graph (a reused graph's, reset)
        if params.repetition_penalty != 1.0 and self._reply_vocab:
            sampler.observe(sorted(self._reply_vocab))
        eos = engine.reply_end_ids
        stops = _StopMatcher(params.stop)
        # other special tokens a model may emit are fed back to it but never shown as text
        decoder = engine.tokenizer.stream_decoder(skip_special_tokens=True)
        generated: list[int] = []
        pending_ids: list[int] = []
        unfed: int | None = None  # the last sampled token, not yet fed to the model
        chosen: int | None = None  # the token the graph's step chose (sampled on the device)
        reason = "cancelled"
        start = time.perf_counter()
        try:
            while True:
                if cancel is not None and cancel.is_cancelled:
                    break
                token: torch.Tensor | None = None
                if chosen is None:
                    token = sampler(logits)
                    token_id = int(token.item())  # the one host sync per token
                else:
                    token_id = chosen  # read back by the graph's step: its one host sync
                if token_id in eos:
                    reason = "eos"
                    break
                unfed = token_id
                generated.append(token_id)
                self._reply_vocab.add(token_id)
                pending_ids.append(token_id)
                if token is not None:
                    sampler.observe(token)  # the graph's step observes what it chooses itself
                text, hit = stops.push(decoder.push(token_id))
                if text:
                    yield TextDelta(text, tuple(pending_ids))
                    pending_ids = []
                if hit:
                    reason = "stop"
                    break
                if len(generated) >= params.max_new_tokens:
                    reason = "length"
                    break
                if cancel is not None and cancel.is_cancelled:
                    break
                if graph is not None:
                    # feeds the token (None: the graph's own choice, already in place), returns
                    # the next; None when the capture failed and the rest goes eagerly
                    chosen = self._graph_step(graph, token_id if chosen is None else None)
                    if chosen is None:
                        graph = None
                if graph is None:
                    chosen = None
                    if token is None:  # the graph chose it, then its capture failed
                        token = torch.tensor(token_id, dtype=torch.long, device=engine.device)
                    logits = self._forward(token.view(1, 1))
                unfed = None
            if reason != "stop":
                text, _ = stops.push(decoder.flush(), final=True)
                if text:
                    yield TextDelta(text, tuple(pending_ids))
        finally:
            decode_seconds = time.perf_counter() - start
            self._close_assistant_turn(unfed)
            self.last_stats = GenerationStats(
                prompt_tokens=self._prompt_tokens,
                generated_tokens=len(generated),
                prefill_seconds=self._prefill_seconds,
                decode_seconds=decode_seconds,
                stop_reason=reason,
            )
            log.debug("reply: %s", self.last_stats)

    def _decode_graph(self, params: SamplingParams, sampler: Sampler) -> Any:
        """The CUDA-graph decode step for this reply (a ``DecodeGraph``), or None to decode eagerly.

        On CUDA (or anywhere with ``decode_graph == "static"``: the same step run eagerly), for
        the InfiniteVL model over a fixed-size state (no full-attention cache, which grows), in
        float weights or quantized ones, except int8 on CUDA (``quant.decodes_eagerly_on``). A
        greedy reply reuses the session's graph while the state is the same object with the same
        tensors (its sampler's penalty mask is reset); a sampled reply captures its own (its
        sampler and seeded generator live in the graph).
        """
        engine = self._engine
        on_cuda = engine.device.type == "cuda"
        if engine.decode_graph == "off" or (engine.decode_graph == "cuda" and not on_cuda):
            return None
        from engine import cuda_graph
        from kernels import swa

        model = engine.model
        if not isinstance(model, InfiniteVLForConditionalGeneration):  # a test's fake model
            return None
        if on_cuda and not swa.has_triton():
            return None
        if decodes_eagerly_on(model, engine.device.type):
            return None
        state = self._state
        if any(isinstance(st, FullAttnState) for st in state.layers):
            return None
        p = params
        key = (p.temperature, p.top_p, p.top_k, p.repetition_penalty, _state_key(state))
        graph = self._graph
        if graph is not None and p.is_greedy and self._graph_key == key and graph.state is state:
            graph.sampler.seen.zero_()
            return graph
        self._graph = self._graph_key = None
        graph = cuda_graph.DecodeGraph(model, state, sampler=sampler)
        self._graph, self._graph_key = graph, key
        return graph

    def _graph_step(self, graph: Any, token: int | None) -> int | None:
        """``graph.step(token)``; None if capturing the graph failed (then decode eagerly).

        A failed capture runs nothing, so the token is still to be fed.
        """
        capturing = graph.captures_next
        try:
            return int(graph.step(token))
        except Exception:
            if not capturing:
                raise
            log.warning("capturing the decode step's CUDA graph failed: eager", exc_info=True)
            self._engine.decode_graph = "off"
            self._graph = self._graph_key = None
            return None

    def next_token_logprobs(self) -> torch.Tensor:
        """Log-probabilities [vocab] (float32) of the reply's next token, for a caller's own
        search (``engine.beam``); image and video placeholders, which only a prompt writes, get
        -inf. Feed the chosen token with :meth:`feed_reply_token`.

        Raises:
            InputError: no user message is waiting for a reply.
        """
        if self._next_logits is None:
            raise InputError("nothing to answer: call add_user_message first")
        logprobs = torch.log_softmax(self._next_logits.float(), dim=-1)
        logprobs[list(self._engine.placeholder_ids)] = float("-inf")
        return logprobs

    def feed_reply_token(self, token_id: int) -> None:
        """Feed one token of a reply that a caller's own search writes; the session still awaits
        the rest (:meth:`next_token_logprobs` gives the next token's). A search ends the turn
        with :meth:`add_assistant_message` on the session it started from.

        Raises:
            InputError: no user message is waiting for a reply, or an id outside the vocabulary.
        """
        if self._next_logits is None:
            raise InputError("nothing to answer: call add_user_message first")
        vocab = self._next_logits.shape[-1]
        if not 0 <= token_id < vocab:
            raise InputError(f"token id {token_id} outside the vocabulary (0-{vocab - 1})")
        token = torch.tensor([[token_id]], dtype=torch.long, device=self._engine.device)
        self._next_logits = self._forward(token)
        self._reply_vocab.add(token_id)

    def _generate_beam(
        self, params: SamplingParams, cancel: CancelToken | None
    ) -> Iterator[TextDelta]:
        """``generate`` by beam search (``engine.beam``): the reply comes in one piece at the end.
        Cancelled, it gives nothing and closes the turn empty, as a greedy reply cancelled before
        its first token does."""
        engine = self._engine
        start = time.perf_counter()
        ids: list[int] = []
        reason = "cancelled"
        try:
            ids = beam_search(
                self.next_token_logprobs(), self.beam_step(), num_beams=params.num_beams,
                max_new_tokens=params.max_new_tokens, eos=engine.reply_end_ids, cancel=cancel,
            )  # fmt: skip
            reason = "length" if len(ids) == params.max_new_tokens else "eos"
        except Cancelled:
            pass
        text = engine.tokenizer.decode(ids, skip_special_tokens=True)
        try:
            if text:
                yield TextDelta(text, tuple(ids))
        finally:
            self.add_assistant_message(text)
            self.last_stats = GenerationStats(
                prompt_tokens=self._prompt_tokens,
                generated_tokens=len(ids),
                prefill_seconds=self._prefill_seconds,
                decode_seconds=time.perf_counter() - start,
                stop_reason=reason,
            )

    def beam_step(self) -> StepFn:
        """``engine.beam``'s step over this session, which awaits its reply: the beams are the
        rows of one batched copy of the state, reordered and fed in one model call a step
        (``engine.beam.fork_step``, a fork per beam, is the reference). The session's own state
        is never fed."""
        if self._next_logits is None:
            raise InputError("nothing to answer: call add_user_message first")
        return _rows_step(self._engine, self._state)

    def add_assistant_message(self, text: str, cancel: CancelToken | None = None) -> None:
        """Feed a reply written elsewhere (history replay) as the assistant's turn.

        Answers the waiting user message, or stands as an assistant turn of its own.

        Raises:
            InputError: text holding a reserved chat token.
            Cancelled: ``cancel`` was set; the session is left as it was before the call.
        """
        _check_text("text", text)
        opening = ""
        if self._next_logits is None:
            opening = f"{IM_START}assistant\n"
            if self.tokens_seen == 0:
                opening = self._system_block() + opening
        ids = self._engine.tokenizer.encode(f"{opening}{text}{IM_END}\n")
        backup = self._state.clone()
        try:
            self._prefill([_Segment(ids)], cancel)
        except BaseException:
            self._state = backup
            raise
        self._next_logits = None
        self._reply_vocab.update(self._engine.tokenizer.encode(text))

    def _close_assistant_turn(self, unfed: int | None) -> None:
        """Feed what the state has not seen of the reply, then ``<|im_end|>\\n``."""
        ids = ([unfed] if unfed is not None else []) + self._engine.tokenizer.encode(f"{IM_END}\n")
        self._prefill([_Segment(ids)], None)

    def feed_frames(self, frames: Sequence[np.ndarray], cancel: CancelToken | None = None) -> int:
        """Feed video/webcam frames (uint8 [H, W, 3] each) as one user turn of image blocks.

        Cancel is checked between frames; frames fed before it stay in the state.

        Returns:
            tokens fed.
        """
        frames = picture_turn.frames_list(frames)
        pictures = (self._image_segment(f) for f in frames)
        return self._feed_pictures(pictures, None, None, cancel)

    def feed_document(
        self,
        pages: Iterable[np.ndarray | Image.Image],
        *,
        progress: Callable[[int, int | None], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> int:
        """Read pages into the state, one ``Page i: <image>`` line each, as one user turn.

        ``progress(done, total)`` is called before the first page and after each (total None for
        an iterable without a length). Cancel is checked between pages; pages read before it stay.

        Returns:
            tokens fed.
        """
        total = picture_turn.pages_total(pages)
        pictures = (self._image_segment(page) for page in pages)
        label = picture_turn.PAGE_LABEL
        return self._feed_pictures(pictures, label, progress or _no_progress, cancel, total)

    def _feed_pictures(
        self,
        pictures: Iterator[_Segment],
        label: str | None,
        progress: Callable[[int, int | None], None] | None,
        cancel: CancelToken | None,
        total: int | None = None,
    ) -> int:
        """Feed a user turn of image blocks, one forward per image, and close it."""
        if self._next_logits is not None:
            raise InputError("a user message is waiting for its reply: call generate first")
        tok = self._engine.tokenizer

        def feed_one(before: str, picture: _Segment, after: str) -> int:
            ids = tok.encode(before) + picture.ids + (tok.encode(after) if after else [])
            return self._prefill([_Segment(ids, picture.pixel_values, picture.grid_thw)], None)[0]

        def close(text: str) -> int:
            return self._prefill([_Segment(tok.encode(text))], None)[0]

        return picture_turn.feed_picture_turn(
            pictures,
            opening=self._turn_opening(),
            label=label,
            feed_one=feed_one,
            close=close,
            progress=progress,
            cancel=cancel,
            total=total,
        )

    def _turn_opening(self) -> str:
        """The text that opens a user turn: on a fresh session, the system block before it."""
        opening = f"{IM_START}user\n"
        return opening if self.tokens_seen else self._system_block() + opening

    def _system_block(self) -> str:
        """The template's system turn: the session's system prompt, or the template's default."""
        system = [{"role": "system", "content": self._system_prompt}] if self._system_prompt else []
        empty_user: dict[str, Any] = {"role": "user", "content": []}
        rendered = chat_prompt([*system, empty_user], add_generation_prompt=False)
        return rendered.removesuffix(f"{IM_START}user\n{IM_END}\n")

    def fork(self) -> Session:
        """An independent copy: feeding or generating on either leaves the other untouched."""
        other = Session(self._engine, self._state.clone(), self._system_prompt)
        if self._next_logits is not None:
            other._next_logits = self._next_logits.clone()
        other._prompt_tokens, other._prefill_seconds = self._prompt_tokens, self._prefill_seconds
        other._reply_vocab = set(self._reply_vocab)
        return other

    def save(self, path: str | Path) -> None:
        """Write the state atomically (temp file, fsync, rename) with the model's fingerprint.

        Raises:
            StateError: a user message is waiting for its reply (save after generate).
        """
        if self._next_logits is not None:
            raise StateError(f"cannot save to {path}: a user message is waiting for its reply")
        self._state.save(path, self._engine.fingerprint)

    def _image_segment(self, image: ImageInput) -> _Segment:
        """Preprocess one image into its block: vision start, N image pads, vision end."""
        engine = self._engine
        picture = open_picture(image, max_pixels=engine.image_params.max_pixels)
        pixel_values, grid_thw = preprocess_images([picture], engine.image_params)
        n = image_token_count(grid_thw[0], engine.config.vision.spatial_merge_size)
        special = engine.tokenizer.special
        ids = [special.vision_start, *([special.image_pad] * n), special.vision_end]
        return _Segment(ids, pixel_values, grid_thw)

    def _segments(self, prompt: str, pictures: list[_Segment]) -> list[_Segment]:
        """Split a rendered prompt at its image blocks and put each picture's tokens there."""
        ids = self._engine.tokenizer.encode(prompt)
        block = self._engine.tokenizer.encode(_IMAGE_BLOCK)
        segments: list[_Segment] = []
        start = 0
        for picture in pictures:
            at = _find(ids, block, start)
            assert at >= 0, "the chat template wrote fewer image blocks than images"
            segments += [_Segment(ids[start:at]), picture]
            start = at + len(block)
        segments.append(_Segment(ids[start:]))
        return [s for s in segments if s.ids]

    def _prefill(
        self, segments: list[_Segment], cancel: CancelToken | None
    ) -> tuple[int, torch.Tensor | None]:
        """Feed segments in chunks of at most ``prefill_chunk_tokens``, never splitting an image.

        Returns:
            (tokens fed, logits [vocab] of the last token).

        Raises:
            Cancelled: ``cancel`` was set between chunks.
        """
        fed, logits = 0, None
        for ids, pixel_values, grid_thw in _chunks(segments, self._engine.prefill_chunk_tokens):
            if cancel is not None and cancel.is_cancelled:
                raise Cancelled(f"prefill cancelled after {fed} tokens")
            tokens = torch.tensor([ids], dtype=torch.long, device=self._engine.device)
            logits = self._forward(tokens, pixel_values, grid_thw)
            fed += len(ids)
        self.tokens_fed_total += fed
        return fed, logits

    def _forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One model call on ``input_ids`` [1, T]; returns the last position's logits [vocab]."""
        device = self._engine.device
        # no_grad, not inference_mode: states outlive the call and are cloned and saved outside it
        with torch.no_grad(), sdpa_context(device):
            logits = self._engine.model(
                input_ids,
                self._state,
                pixel_values=None if pixel_values is None else pixel_values.to(device),
                image_grid_thw=None if grid_thw is None else grid_thw.to(device),
                logits_to_keep=1,
            )
        return logits[0, -1]


def beam_generate_together(
    sessions: Sequence[Session], params: SamplingParams, cancel: CancelToken | None = None
) -> list[str]:
    """The beam-searched replies of sessions that each await one, searched together: each
    session's beams are rows of one batch, fed in one model call a step (``engine.beam.
    beam_search_groups``), so that k short replies cost about the steps of the longest, not k
    times its calls. Prompts of different lengths or image sizes are aligned to one position
    (``engine.model.stack_rows``). Each reply is what ``generate`` with ``params`` would find
    for that session alone, up to the float rounding of a wider batch and of the alignment. The
    sessions stay awaiting their replies (their states are never fed): OCR reads its pieces this
    way and drops the sessions.

    Raises:
        InputError: a session of another engine, or one not awaiting a reply.
        StateError: sessions of a model with full attention (a growing cache per sequence).
        Cancelled: ``cancel`` was set (checked before each step).
    """
    if not sessions:
        return []
    engine = sessions[0]._engine
    if any(s._engine is not engine for s in sessions):
        raise InputError("beam_generate_together: the sessions must share one engine")
    firsts = [s.next_token_logprobs() for s in sessions]  # InputError unless awaiting
    step = _rows_step(engine, stack_rows([s._state for s in sessions], engine.config.text))
    replies = beam_search_groups(
        firsts, step, num_beams=params.num_beams, max_new_tokens=params.max_new_tokens,
        eos=engine.reply_end_ids, cancel=cancel,
    )  # fmt: skip
    return [engine.tokenizer.decode(ids, skip_special_tokens=True) for ids in replies]


def _rows_step(engine: Engine, state: ModelState) -> StepFn:
    """``engine.beam``'s step over the rows of ``state`` (never fed itself): the rows kept at a
    step are copied from their parents, fed one token each in one model call."""
    pads = list(engine.placeholder_ids)
    rows = state
    # the rows are copied into one of two zeroed buffers in turn, reused while the batch fits:
    # a copy needs only the cache slots written (`ModelState.select`), never a new zeroed ring
    buffers: list[ModelState | None] = [None, None]

    def step(parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        nonlocal rows
        # inference_mode, not no_grad: the beams' states die with the search (`generate` feeds
        # the reply to the session's own state afterwards; OCR drops its sessions), and each op
        # costs less (~5% of a screen region's OCR on a CPU)
        with torch.inference_mode(), sdpa_context(engine.device):
            spare = buffers[0]
            if spare is None or spare.batch < len(parents):
                spare = rows.zeros_like(len(parents))
            buffers[0], buffers[1] = buffers[1], spare
            rows = rows.select(parents, out=spare)  # a copy, never the session's own state
            ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=engine.device)
            logits = engine.model(ids, rows, logits_to_keep=1)[:, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        logprobs[:, pads] = float("-inf")
        return logprobs

    return step


def _state_key(state: ModelState) -> tuple[object, ...]:
    """The identity of ``state``'s tensors: a graph captured over them needs the same ones."""
    return tuple(t.data_ptr() for st in state.layers for t in st.tensors().values())


def _chunks(
    segments: list[_Segment], limit: int
) -> Iterator[tuple[list[int], torch.Tensor | None, torch.Tensor | None]]:
    """Pack segments into forwards of at most ``limit`` tokens (an image block may exceed it)."""
    ids: list[int] = []
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []

    def flush() -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        out = (ids[:], torch.cat(pixels) if pixels else None, torch.cat(grids) if grids else None)
        ids.clear()
        pixels.clear()
        grids.clear()
        return out

    for seg in segments:
        if seg.pixel_values is not None:
            if ids and len(ids) + len(seg.ids) > limit:
                yield flush()
            ids.extend(seg.ids)
            pixels.append(seg.pixel_values)
            assert seg.grid_thw is not None
            grids.append(seg.grid_thw)
            continue
        rest = seg.ids
        while rest:
            if len(ids) >= limit:
                yield flush()
            room = limit - len(ids)
            ids.extend(rest[:room])
            rest = rest[room:]
    if ids:
        yield flush()


class _StopMatcher:
    """Holds back streamed text that may be the start of a stop string.

    Generation ends at the first stop string to be completed, as if the text came one character
    at a time, whatever pieces the tokens cut it into (stops "c" and "bcc" in "bcc": "c", at
    "b"); of the stops completed by the same character, the longest.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def push(self, text: str, *, final: bool = False) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found)."""
        held = self.held + text
        # (end, start) of each stop's first occurrence: the earliest end, then the earliest start
        hits = [(i + len(s), i) for s in self.stops if (i := held.find(s)) >= 0]
        if hits:
            self.held = ""
            return held[: min(hits)[1]], True
        keep = 0 if final else _partial_stop(held, self.stops)
        self.held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep], False


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _find(ids: list[int], pattern: list[int], start: int) -> int:
    for i in range(start, len(ids) - len(pattern) + 1):
        if ids[i : i + len(pattern)] == pattern:
            return i
    return -1


def _no_progress(done: int, total: int | None) -> None:
    """Progress sink for callers that pass none."""


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"{name} is {len(text):,} characters long; one message holds at most "
            f"{MAX_TEXT_CHARS:,}: split it, or read long documents as pages"
        )
    reserved = [t for t in _RESERVED if t in text]
    if reserved:
        raise InputError(f"{name} contains reserved chat tokens {reserved}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # lone surrogates: bytes that were not UTF-8 (e.g. a command-line argument, decoded
        # with surrogateescape); the tokenizer would fail with a TypeError
        raise InputError(
            f"{name} is not valid Unicode: {exc.reason} at character {exc.start} "
            "(bytes that are not UTF-8?)"
        ) from exc


def _match_state_dtype(state: ModelState, fresh: ModelState) -> None:
    """Cast a restored state to the dtypes this model computes in (a bf16 state, fp32 model)."""
    for a, b in zip(state.layers, fresh.layers, strict=True):
        for (name, t), u in zip(a.tensors().items(), b.tensors().values(), strict=True):
            if t.dtype != u.dtype:
                log.info("restored state: %s %s -> %s", name, t.dtype, u.dtype)
                setattr(a, name, t.to(u.dtype))


def resolve_device(device: str) -> torch.device:
    """The device for a name: auto is CUDA when available, else the CPU.

    Raises:
        InputError: not a device name.  EngineError: CUDA asked for but not available.
    """
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda") or device.startswith("cuda:")
    ):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"device {device!r} is not a device name ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise EngineError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices here")
    return resolved


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | None) -> torch.dtype | None:
    """A dtype name ("float32", "bfloat16", "float16") or None (the loader's default)."""
    if dtype is None:
        return None
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


# on CPU a model this small (stored bytes) may run in float32, which costs it little memory;
# whether float32 or bfloat16 is faster depends on the CPU (engine.cpu_dtype times both)
CPU_FLOAT32_MAX_STORED_BYTES = 256 * 2**20


def is_small(path: Path) -> bool:
    """Whether the checkpoint at `path` holds at most ``CPU_FLOAT32_MAX_STORED_BYTES`` of
    weights: on a CPU, `Engine.load` then runs it in float32 or bfloat16, whichever
    `engine.cpu_dtype` finds faster there; a larger one runs as stored."""
    try:
        stored = sum(f.stat().st_size for f in weight_files(path))
    except (CheckpointError, OSError):
        return False  # the loader names what is wrong
    return stored <= CPU_FLOAT32_MAX_STORED_BYTES


def model_info(
    model: InfiniteVLForConditionalGeneration, path: Path, *, is_embedded_default: bool
) -> ModelInfo:
    """Describe a loaded model; warn when it is large for its device."""
    param = next(model.parameters())
    num_parameters = sum(p.numel() for p in model.parameters()) + num_quantized_weights(model)
    by_dtype: Counter[torch.dtype] = Counter()
    for p in model.parameters():
        by_dtype[p.dtype] += p.numel()
    dtype = by_dtype.most_common(1)[0][0]
    state_nbytes = model.new_state(device="meta").nbytes()
    name = path.resolve().name or str(path)
    return ModelInfo(
        name=name,
        path=str(path),
        device=str(param.device),
        dtype=str(dtype).removeprefix("torch."),
        num_parameters=num_parameters,
        state_nbytes=state_nbytes,
        is_embedded_default=is_embedded_default,
        slow_warning=slow_warning(name, num_parameters, param.device),
        quantization=getattr(getattr(model, "quantization", None), "method", None),
    )


def slow_warning(name: str, num_parameters: int, device: torch.device) -> str | None:
    """A plain sentence for a model that is slow on its device (over 1e9 parameters on a CPU)."""
    if device.type != "cpu" or num_parameters <= SLOW_PARAMETERS:
        return None
    return (
        f"{name} has {num_parameters / 1e9:.1f} billion parameters and runs on the CPU here: "
        "expect seconds for each word of a reply and minutes for each image or page it reads. "
        "A CUDA GPU, or the embedded default model, answers far faster."
    )
