"""A scripted engine for timing edge cases of the app (slow tokens, cancel races, failures).

Same surface as ``engine.Engine``/``Session`` as the app uses it; it honours ``CancelToken``
between tokens. User flows are tested with the real engine on the tiny checkpoint instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import (
    CancelToken,
    EngineError,
    GenerationStats,
    InputError,
    ModelInfo,
    SamplingParams,
    StateError,
    TextDelta,
)

IMAGE_TOKENS = 10


@dataclass
class FakeScript:
    """What every reply of a FakeEngine says, and how fast."""

    words: tuple[str, ...] = ("Hello", " from", " the", " fake", " engine", ".")
    seconds_per_token: float = 0.0
    fail_with: str | None = None  # raise EngineError(fail_with) after the first token
    load_seconds: float = 0.0
    save_error: str | None = None  # Session.save raises OSError(save_error)
    started: threading.Event = field(default_factory=threading.Event)  # set at the first token


class FakeSession:
    def __init__(self, engine: FakeEngine, tokens_seen: int = 0, log: list[str] | None = None):
        self._engine = engine
        self._tokens_seen = tokens_seen
        self.log = list(log or [])  # what was fed, in order
        self.tokens_fed_total = 0
        self.last_stats: GenerationStats | None = None
        self._waiting = False

    @property
    def tokens_seen(self) -> int:
        return self._tokens_seen

    @property
    def state_nbytes(self) -> int:
        return 4096

    def _feed(self, what: str, tokens: int) -> None:
        self.log.append(what)
        self._tokens_seen += tokens
        self.tokens_fed_total += tokens

    def add_user_message(
        self, text: str, images: Sequence[Any] = (), cancel: CancelToken | None = None
    ) -> None:
        if not text.strip() and not images:
            raise InputError("empty message: give some text or at least one image")
        self._feed(f"user:{text}:{len(images)}", len(text.split()) + IMAGE_TOKENS * len(images))
        self._waiting = True

    def add_assistant_message(self, text: str, cancel: CancelToken | None = None) -> None:
        self._feed(f"assistant:{text}", len(text.split()) + 1)
        self._waiting = False

    def generate(
        self, params: SamplingParams, cancel: CancelToken | None = None
    ) -> Iterator[TextDelta]:
        if not self._waiting:
            raise InputError("nothing to answer")
        self._waiting = False
        script = self._engine.script
        reason, n = "length", 0
        for word in script.words[: params.max_new_tokens]:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if script.seconds_per_token:
                time.sleep(script.seconds_per_token)
            n += 1
            self._tokens_seen += 1
            script.started.set()
            yield TextDelta(word, (n,))
            if script.fail_with is not None:
                raise EngineError(script.fail_with)
        else:
            reason = "eos"
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
        self.last_stats = GenerationStats(1, n, 0.0, 0.01, reason)

    def feed_document(self, pages: Sequence[Any], *, progress=None, cancel=None) -> int:
        done = 0
        for _ in pages:
            if cancel is not None and cancel.is_set():
                break
            self._feed("page", IMAGE_TOKENS)
            done += 1
            if progress is not None:
                progress(done, len(pages))
        return done * IMAGE_TOKENS

    def feed_frames(self, frames: Sequence[Any], cancel: CancelToken | None = None) -> int:
        for _ in frames:
            self._feed("frame", IMAGE_TOKENS)
        return len(frames) * IMAGE_TOKENS

    def fork(self) -> FakeSession:
        return FakeSession(self._engine, self._tokens_seen, self.log)

    def save(self, path: str | Path) -> None:
        if self._engine.script.save_error is not None:
            Path(path).write_text("half")
            raise OSError(self._engine.script.save_error)
        Path(path).write_text(json.dumps({"tokens_seen": self._tokens_seen, "log": self.log}))


class FakeEngine:
    def __init__(self, script: FakeScript) -> None:
        self.script = script
        self.info = ModelInfo("fake", "/fake", "cpu", "float32", 1, 4096, False, None)
        self.sessions: list[FakeSession] = []

    @classmethod
    def factory(cls, script: FakeScript) -> Any:
        def load(path: str | None, device: str, quant: str = "none") -> FakeEngine:
            time.sleep(script.load_seconds)
            return cls(script)

        return load

    def new_session(self, system_prompt: str | None = None) -> FakeSession:
        session = FakeSession(self)
        self.sessions.append(session)
        return session

    def restore_session(self, path: str | Path) -> FakeSession:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {path}: {exc}") from exc
        session = FakeSession(self, raw["tokens_seen"], raw["log"])
        self.sessions.append(session)
        return session
