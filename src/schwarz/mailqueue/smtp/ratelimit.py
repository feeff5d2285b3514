"""Per-account sending rate (``smtp_rate_limit = 30/min``), shared by every connection of the account.

Message starts are spaced evenly: at 30/min one every 2 seconds, so no 60-second
window ever holds more than 30 (Exchange Online's limit for one mailbox). The
limiter is one object shared by a transport and its clones, so the runner's
workers together keep to it.

A "slow down" reply from the server (421, or 4.7.x "too many ...") pauses the
account (60 s, doubling with each further one up to 15 min) and halves its rate
(down to an eighth of the configured one); replies without complaint restore it
step by step.

The clock is injectable: tests run 90 messages at 30/min in simulated minutes.
"""

from __future__ import annotations

import threading
import time
from typing import Optional, Protocol

__all__ = ['Clock', 'RateLimiter', 'SystemClock']

PAUSE = 60.0
MAX_PAUSE = 900.0
MAX_SLOWDOWN = 8.0
RELAX_AFTER = 10  # messages without complaint before the rate doubles back


class Clock(Protocol):
    def monotonic(self) -> float:
        ...

    def sleep_until(self, deadline: float, stop: threading.Event) -> bool:
        """Wait until ``deadline`` (``monotonic()`` time); False when ``stop`` was set first."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float, stop: threading.Event) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not stop.is_set()
            if stop.wait(remaining):
                return False


class RateLimiter:
    """At most ``rate`` message starts per second (None: no limit, but "slow down" replies still pause)."""

    def __init__(self, rate: Optional[float] = None, clock: Optional[Clock] = None, *, pause: float = PAUSE,
                 max_pause: float = MAX_PAUSE) -> None:
        self.rate = rate
        self.clock: Clock = clock or SystemClock()
        self.base_pause = pause
        self.max_pause = max_pause
        self._base_interval = 1.0 / rate if rate else 0.0
        self._interval = self._base_interval
        self._next = self.clock.monotonic()
        self._paused_until = 0.0
        self._strikes = 0
        self._calm = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f'RateLimiter(rate={self.rate!r}, interval={self._interval:g})'

    @property
    def interval(self) -> float:
        """Seconds between message starts now (0: unlimited)."""
        return self._interval

    def acquire(self, stop: Optional[threading.Event] = None) -> bool:
        """Wait for this message's slot; False when ``stop`` was set while waiting."""
        with self._lock:
            now = self.clock.monotonic()
            slot = max(self._next, self._paused_until, now)
            self._next = slot + self._interval
        if slot <= now:
            return True
        return self.clock.sleep_until(slot, stop if stop is not None else threading.Event())

    def slow_down(self) -> float:
        """The server asked us to slow down: pause the account; the length of the pause."""
        with self._lock:
            now = self.clock.monotonic()
            self._strikes += 1
            self._calm = 0
            pause = min(self.max_pause, self.base_pause * 2 ** min(self._strikes - 1, 16))
            self._paused_until = max(self._paused_until, now + pause)
            if self._base_interval:
                self._interval = min(self._base_interval * MAX_SLOWDOWN, self._interval * 2)
            return pause

    def relax(self) -> None:
        """A message went through without complaint."""
        with self._lock:
            self._strikes = 0
            if self._interval > self._base_interval:
                self._calm += 1
                if self._calm >= RELAX_AFTER:
                    self._calm = 0
                    self._interval = max(self._base_interval, self._interval / 2)

    def paused_for(self) -> float:
        """Seconds until the account may send again after a "slow down" (0 when not paused)."""
        with self._lock:
            return max(0.0, self._paused_until - self.clock.monotonic())
