"""Which camera frames go to the model: a steady rate gate plus a bounded queue for while the
engine is busy. Pure logic, no Qt: timestamps are seconds from any monotonic clock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

MIN_RATE_HZ = 0.05  # one frame every 20 s
MAX_RATE_HZ = 10.0

Frame = TypeVar("Frame")


class FrameSampler(Generic[Frame]):
    """Keeps frames at `rate_hz` on average, whatever the camera's own rate and jitter.

    A frame is kept when it arrives at or after the next due time; the due time then advances by
    one period, so a 30 fps camera sampled at 4 Hz keeps every 7th or 8th frame, 4 per second.
    After a gap (the camera paused) sampling restarts from the next frame instead of bursting.
    Kept frames wait in a queue of at most `max_pending`; when the engine is slower than the
    rate, the oldest are dropped and counted, so the model always gets the newest.
    """

    def __init__(self, rate_hz: float, max_pending: int = 8) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._pending: deque[Frame] = deque(maxlen=max_pending)
        self._next_due: float | None = None
        self.period = 0.0
        self.dropped = 0
        self.kept = 0
        self.set_rate(rate_hz)

    def set_rate(self, rate_hz: float) -> None:
        """Change the rate; the next frame offered is kept.

        Raises:
            ValueError: a rate outside [MIN_RATE_HZ, MAX_RATE_HZ].
        """
        if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
            raise ValueError(
                f"frame rate {rate_hz:g}/s is outside {MIN_RATE_HZ:g}..{MAX_RATE_HZ:g} per second"
            )
        self.rate_hz = rate_hz
        self.period = 1.0 / rate_hz
        self._next_due = None

    def is_due(self, t: float) -> bool:
        """Whether a frame arriving at time t would be kept (nothing changes)."""
        return self._next_due is None or t >= self._next_due

    def offer(self, frame: Frame, t: float) -> bool:
        """Keep `frame` (arrived at time t) if it is due; True when kept."""
        if not self.is_due(t):
            return False
        due = t if self._next_due is None else self._next_due
        self._next_due = due + self.period
        if self._next_due <= t:
            # more than a period late: restart the schedule here rather than catch up in a burst
            self._next_due = t + self.period
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(frame)
        self.kept += 1
        return True

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def take(self) -> list[Frame]:
        """Every waiting frame, oldest first; the queue is empty afterwards."""
        frames = list(self._pending)
        self._pending.clear()
        return frames

    def reset(self) -> None:
        """Forget waiting frames and the schedule (the stream was stopped)."""
        self._pending.clear()
        self._next_due = None
