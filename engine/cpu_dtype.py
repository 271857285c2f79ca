"""The dtype a small checkpoint computes in on this CPU: float32 or bfloat16, whichever answers
faster here, timed once per CPU, torch version, thread count and architecture, and remembered.

Which is faster depends on the CPU, not on the weights, and no CPU flag tells which:
- a 2-core AMD EPYC with AVX-512 BF16 (twenty-fifth session, `benchmarks/cpu_speed.py --model
  resources/default-model --tokens 40`): the embedded model's 800x200 prefill 241 ms in float32
  against 150 ms in bfloat16, decode 14.9 ms/token against 13.7: an OCR of 40 tokens 0.84 s
  against 0.70 s;
- a 2-core Intel Xeon with AMX-BF16 (docs/quantization.md): decode 5.71 ms/token in float32
  against 7.88 in bfloat16, an OCR of 80 tokens 0.57 s against 0.71 s;
- an AMD EPYC without AVX-512: bfloat16 matrix products 6x slower than float32 ones.

So the first load of such a checkpoint on a machine loads it both ways and times each on the
same work (`reply_seconds`: an 800x200 picture read in, then tokens decoded), in turns, and
keeps the faster; `cache_file()` remembers the choice, so later loads only read it. A few seconds,
once. ``INFINITEVL_CPU_DTYPE=float32`` (or ``bfloat16``) skips the timing; the tests pin float32,
since their references compute in float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from engine.errors import InputError

log = logging.getLogger(__name__)

ENV = "INFINITEVL_CPU_DTYPE"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROUNDS = 2  # timed turns of each dtype, after one that warms up
TIMED_TOKENS = 12  # tokens decoded per turn
REPLY_TOKENS = 40  # a screen region's OCR reply: the decode's weight against the prefill
PICTURE = (200, 800)  # rows, columns: the screen region the issue times


class _Answers(Protocol):
    def new_session(self) -> Any: ...


E = TypeVar("E", bound=_Answers)


def pinned() -> torch.dtype | None:
    """The dtype ``INFINITEVL_CPU_DTYPE`` names; None when unset or "auto" (time it).

    Raises:
        InputError: any other value.
    """
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in DTYPES:
        raise InputError(f"{ENV} must be float32, bfloat16 or auto, got {value!r}")
    return DTYPES[value]


def cache_file() -> Path:
    """Where the choices are remembered: ``$XDG_CACHE_HOME/infinitevl/cpu_dtype.json``
    (``~/.cache`` when unset)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "infinitevl" / "cpu_dtype.json"


def cpu_name() -> str:
    """The CPU's model name and its bfloat16-related flags (from /proc/cpuinfo on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())  # fmt: skip
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return " ".join([name, *sorted({f for f in flags if "bf16" in f or f.startswith("amx")})])


def timing_key(checkpoint: Path) -> str:
    """What a timing holds for: this CPU, torch's version and thread count, and the
    checkpoint's architecture (its config.json; the weights' values do not change the speed)."""
    config = (checkpoint / "config.json").read_bytes()
    text = f"{cpu_name()}|{torch.__version__}|{torch.get_num_threads()}|".encode() + config
    return hashlib.sha256(text).hexdigest()[:20]


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered(checkpoint: Path) -> torch.dtype | None:
    """The dtype timed faster for `checkpoint`'s architecture on this machine; None when not
    timed yet (or the cache file is unreadable: it is timed again)."""
    entry = _read_cache().get(timing_key(checkpoint))
    name = entry.get("dtype") if isinstance(entry, dict) else None
    return DTYPES.get(name) if isinstance(name, str) else None


def remember(checkpoint: Path, name: str, seconds: dict[str, float]) -> None:
    """Write the choice for `checkpoint` (whole-file replace: a reader never sees half of it).
    A cache that cannot be written is logged and skipped: the next load times again."""
    data = _read_cache()
    data[timing_key(checkpoint)] = {
        "dtype": name,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not remember the CPU dtype in %s: %s", path, e)


def prefill_and_step(engine: _Answers, picture: np.ndarray, tokens: int) -> tuple[float, float]:
    """Seconds `engine` takes to read `picture` in with the OCR prompt, and seconds per decoded
    token over a greedy reply of up to `tokens` (`benchmarks/cpu_speed.py` prints both)."""
    from engine.ocr import OCR_PROMPT
    from engine.sampling import SamplingParams

    session = engine.new_session()
    start = time.perf_counter()
    session.add_user_message(OCR_PROMPT, images=[picture])
    prefilled = time.perf_counter()
    reply = session.generate(SamplingParams(max_new_tokens=tokens))
    steps = sum(len(delta.token_ids) for delta in reply)
    decoded = time.perf_counter()
    return prefilled - start, (decoded - prefilled) / max(steps, 1)


def reply_seconds(engine: _Answers, picture: np.ndarray) -> float:
    """Seconds `engine` would take to read `picture` and reply in `REPLY_TOKENS` tokens: the
    prefill, plus that many times the mean decode step over up to `TIMED_TOKENS` greedy ones."""
    prefill, per_token = prefill_and_step(engine, picture, TIMED_TOKENS)
    return prefill + REPLY_TOKENS * per_token


def timed_choice(
    checkpoint: Path,
    load: Callable[[torch.dtype], E],
    seconds: Callable[[E, np.ndarray], float] | None = None,
) -> E:
    """Load `checkpoint` in each of `DTYPES` (`load`), time each on the same picture in turns
    (`seconds`, default `reply_seconds`; `ROUNDS` times after a warm-up), remember the faster and
    return its engine."""
    seconds = seconds or reply_seconds
    engines = {name: load(dtype) for name, dtype in DTYPES.items()}
    picture = np.random.default_rng(0).integers(0, 256, (*PICTURE, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(ROUNDS + 1):
        for name, engine in engines.items():
            times[name].append(seconds(engine, picture))
    best = {name: min(t[1:]) for name, t in times.items()}
    choice = min(best, key=best.__getitem__)
    remember(checkpoint, choice, best)
    log.info(
        "timed on this CPU: %s; %s from now on (remembered in %s; %s=float32 or bfloat16 "
        "pins one)",
        ", ".join(f"{n} {s:.2f} s" for n, s in best.items()), choice, cache_file(), ENV,
    )
    return engines[choice]
