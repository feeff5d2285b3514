"""When to try a queued message again, and when to give up. Pure functions, no I/O.

Exponential backoff like Postfix: after the n-th failed attempt wait
``min_delay * 2**(n-1)``, capped at ``max_delay``. A message older than
``max_queue_lifetime`` (or past ``max_attempts``) is given up on.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Optional, Tuple

__all__ = ['CLOCK_SKEW_TOLERANCE', 'RetryPolicy', 'clock_skew', 'format_duration', 'parse_duration', 'skewed_times']

_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
# What timedelta can hold, in seconds (a little less than 1e9 days).
_MAX_SECONDS = timedelta.max.total_seconds()


def parse_duration(value: object) -> timedelta:
    """``90``, ``90s``, ``5m``, ``4h``, ``5d``, ``1w``, ``1h30m`` -> timedelta; bare numbers are seconds.

    Only ASCII digits count (``int()`` and ``float()`` also take other scripts' digits, which
    no one types on purpose). Anything ``timedelta`` cannot hold is a ``ValueError``, never
    an ``OverflowError``; the caller decides the sensible upper bound (``limits.py``).
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f'invalid duration {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(' ', '')
        if not text:
            raise ValueError('empty duration')
        seconds = 0.0
        number = ''
        seen_unit = False
        for ch in text:
            if '0' <= ch <= '9' or ch == '.':
                number += ch
            elif ch in _UNITS and number:
                seconds += _number(number, value) * _UNITS[ch]
                number = ''
                seen_unit = True
            else:
                raise ValueError(f'invalid duration {value!r} (examples: 300, 5m, 4h, 5d)')
        if number:
            if seen_unit:
                raise ValueError(f'invalid duration {value!r}: number without unit at the end')
            seconds += _number(number, value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f'invalid duration {value!r}' if math.isnan(seconds) else f'negative duration {value!r}')
    try:
        if not seconds < _MAX_SECONDS:
            raise OverflowError
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f'duration {_shown(value)} is too long') from None


def _number(text: str, value: object) -> float:
    try:
        return float(text)
    except ValueError:  # '.', '1.2.3'
        raise ValueError(f'invalid duration {value!r} (examples: 300, 5m, 4h, 5d)') from None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def format_duration(delta: timedelta) -> str:
    """Compact human form: ``45s``, ``3m``, ``3h12m``, ``2d4h``."""
    seconds = int(max(delta.total_seconds(), 0))
    if seconds < 60:
        return f'{seconds}s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes}m'
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f'{hours}h{minutes:02d}m' if minutes else f'{hours}h'
    days, hours = divmod(hours, 24)
    return f'{days}d{hours}h' if hours else f'{days}d'


class RetryPolicy:
    """Backoff and give-up rules. Immutable by convention."""

    __slots__ = ('min_delay', 'max_delay', 'max_queue_lifetime', 'max_attempts')

    def __init__(self, min_delay: timedelta = timedelta(minutes=5), max_delay: timedelta = timedelta(hours=4),
                 max_queue_lifetime: timedelta = timedelta(days=5), max_attempts: Optional[int] = None) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_queue_lifetime = max_queue_lifetime
        self.max_attempts = max_attempts
        if self.min_delay.total_seconds() < 0 or self.max_delay < self.min_delay:
            raise ValueError('retry delays must satisfy 0 <= retry_min_delay <= retry_max_delay')
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError('max_attempts must be at least 1')

    def __repr__(self) -> str:
        return (f'RetryPolicy({self.min_delay!r}, {self.max_delay!r}, {self.max_queue_lifetime!r}, '
                f'{self.max_attempts!r})')

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryPolicy):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))

    def delay_after(self, retries: int) -> timedelta:
        """Wait after the ``retries``-th failed attempt (0 failed attempts: no wait)."""
        if retries <= 0:
            return timedelta(0)
        min_seconds = self.min_delay.total_seconds()
        max_seconds = self.max_delay.total_seconds()
        # Cap the exponent: 2**retries overflows floats long before retries is unreasonable.
        exponent = min(retries - 1, 64)
        return timedelta(seconds=min(min_seconds * (2 ** exponent), max_seconds))

    def next_attempt(self, last_attempt: Optional[datetime], retries: int,
                     now: Optional[datetime] = None) -> Optional[datetime]:
        """When the message becomes due; None means due now (never tried).

        With ``now``, a last attempt in the future (see ``clock_skew``) also means due now.
        """
        if last_attempt is None or retries <= 0:
            return None
        if now is not None and clock_skew(last_attempt, now) is not None:
            return None
        try:
            return last_attempt + self.delay_after(retries)
        except OverflowError:  # a date near year 9999: never due by backoff, but no crash
            return datetime.max.replace(tzinfo=last_attempt.tzinfo)

    def is_due(self, last_attempt: Optional[datetime], retries: int, now: datetime) -> bool:
        due = self.next_attempt(last_attempt, retries, now)
        return due is None or due <= now

    def give_up_reason(self, queue_date: Optional[datetime], retries: int, now: datetime) -> Optional[str]:
        """Why the message should move to failed/ before (or instead of) another attempt.

        A queue date in the future (``clock_skew``) counts as now: the message is young.
        """
        if queue_date is not None and now - queue_date > self.max_queue_lifetime:
            return f'expired: in queue longer than {format_duration(self.max_queue_lifetime)}'
        if self.max_attempts is not None and retries >= self.max_attempts:
            return f'gave up after {retries} attempts'
        return None


# A time this far ahead of our clock is a clock problem (a host whose clock was wrong when it
# wrote the queue file, a clock set back), not the normal spread between hosts sharing a queue.
# Within it the stored time is used as it is, so two hosts a few seconds apart do not retry early.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)


def clock_skew(when: Optional[datetime], now: datetime) -> Optional[timedelta]:
    """How far ``when`` (a queue date or last attempt read from a queue file) lies in the future.

    None when it does not, or only within ``CLOCK_SKEW_TOLERANCE``. Trusting such a time
    would keep a message waiting until the clock catches up, possibly for years; the
    schedule treats it as now instead. Pure: the caller logs it (once per message: the next
    attempt stores a time from the current clock).
    """
    if when is None:
        return None
    ahead = when - now
    return ahead if ahead > CLOCK_SKEW_TOLERANCE else None


def skewed_times(queue_date: Optional[datetime], last_attempt: Optional[datetime],
                 now: datetime) -> Tuple[Tuple[str, timedelta], ...]:
    """The times of one queue file that lie in the future: ``(('last attempt', 3d), ...)``; for log lines."""
    found = []
    for name, when in (('queue date', queue_date), ('last attempt', last_attempt)):
        ahead = clock_skew(when, now)
        if ahead is not None:
            found.append((name, ahead))
    return tuple(found)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
