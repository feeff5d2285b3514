"""The allowed range of every number a user can set, in the configuration or on the command line.

One table, one check: ``config.py`` and the command-line tools (through
``cli/parsing.py``) parse with the same objects, so a key and the flag that
overrides it accept exactly the same values, and an absurd value is one clear
line naming the range instead of an ``OverflowError`` deep in the runner, a
million threads, or a wait on ``nan`` that never ends.

Only ASCII digits count as digits: ``int()`` and ``float()`` also accept the
digits of other scripts (``'٣'`` is 3), ``_`` separators, ``nan``, ``inf`` and
exponents, none of which anyone means in a port number or a worker count.
Pure: no I/O, no logging.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .queue.schedule import format_duration, parse_duration

__all__ = [
    'AGE',
    'ATTEMPTS',
    'LIFETIME',
    'PORT',
    'RATE_LIMIT',
    'RETRY_DELAY',
    'STALE_CLAIM',
    'TIMEOUT',
    'WAIT',
    'WORKERS',
    'DurationRange',
    'IntRange',
    'NumberRange',
    'Range',
    'RateRange',
]

# Plain decimal notation only: no sign, exponent, '_', nan or inf.
_DECIMAL = re.compile(r'(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z')


def _shown(value: object) -> str:
    # The value goes into a one-line error message: keep it short (it may be a pasted paragraph).
    text = repr(value.strip() if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + '...'


class Range:
    """A parser that also checks bounds. ``ValueError`` (naming the range) for anything else."""

    what = 'value'

    def describe(self) -> str:
        raise NotImplementedError

    def parse(self, value: object) -> object:
        raise NotImplementedError

    def __call__(self, value: object) -> object:
        return self.parse(value)

    def _error(self, value: object) -> ValueError:
        return ValueError(f'expected {self.describe()}, got {_shown(value)}')


class IntRange(Range):
    """A whole number from ``low`` to ``high`` (both included)."""

    def __init__(self, low: int, high: int, what: str = 'a whole number') -> None:
        self.low = low
        self.high = high
        self.what = what

    def describe(self) -> str:
        return f'{self.what} from {self.low} to {self.high}'

    def parse(self, value: object) -> int:
        if isinstance(value, bool):
            raise self._error(value)
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            text = value.strip()
            if not text or not text.isascii() or not text.isdigit():
                raise self._error(value)
            # Compare lengths first: int() of a pasted 5000-digit string is refused (or slow).
            if len(text.lstrip('0')) > len(str(self.high)):
                raise self._error(value)
            number = int(text)
        else:
            raise self._error(value)
        if not self.low <= number <= self.high:
            raise self._error(value)
        return number


class NumberRange(Range):
    """A finite decimal number (seconds, a rate) within bounds; ``low`` excluded when ``above_low``."""

    def __init__(self, low: float, high: float, what: str, *, above_low: bool = False) -> None:
        self.low = low
        self.high = high
        self.what = what
        self.above_low = above_low

    def describe(self) -> str:
        low, high = f'{self.low:g}', f'{self.high:g}'
        if self.above_low:
            return f'{self.what} greater than {low} and at most {high}'
        return f'{self.what} from {low} to {high}'

    def parse(self, value: object) -> float:
        if isinstance(value, bool):
            raise self._error(value)
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            text = value.strip()
            if not _DECIMAL.match(text) or len(text) > 40:
                raise self._error(value)
            number = float(text)
        else:
            raise self._error(value)
        low_ok = number > self.low if self.above_low else number >= self.low
        # math.isfinite first: every comparison with nan is False, and inf is out of any range.
        if not math.isfinite(number) or not low_ok or number > self.high:
            raise self._error(value)
        return number


class RateRange(NumberRange):
    """A rate in messages per second: ``10`` (per second), ``30/min``, ``500/h``; bounds per second."""

    _UNITS = {'s': 1.0, 'sec': 1.0, 'second': 1.0, 'm': 60.0, 'min': 60.0, 'minute': 60.0,
              'h': 3600.0, 'hour': 3600.0}

    def parse(self, value: object) -> float:
        if isinstance(value, str) and '/' in value:
            number, _, unit = value.strip().partition('/')
            seconds = self._UNITS.get(unit.strip().lower())
            if seconds is None or not _DECIMAL.match(number.strip()) or len(number) > 40:
                raise self._error(value)
            per_unit = float(number.strip())
            rate = per_unit / seconds
            if not math.isfinite(rate) or not self.low <= rate <= self.high:
                raise self._error(value)
            return rate
        return super().parse(value)


class DurationRange(Range):
    """A duration (``300``, ``5m``, ``1h30m``, ``2d``) from ``low`` to ``high``."""

    def __init__(self, low: timedelta, high: timedelta, what: str = 'a duration') -> None:
        self.low = low
        self.high = high
        self.what = what

    def describe(self) -> str:
        return f'{self.what} (like 90s, 30m or 2d) from {format_duration(self.low)} to {format_duration(self.high)}'

    def parse(self, value: object) -> timedelta:
        try:
            delta = parse_duration(value)
        except (ValueError, TypeError):
            raise self._error(value) from None
        if not self.low <= delta <= self.high:
            raise self._error(value)
        return delta


# --- the caps (documented in docs/cli.md, docs/queue-admin.md, docs/mailqueue-runner.conf.sample) ---

# smtp_port
PORT = IntRange(1, 65535, 'a port number')
# workers, mq-run --workers: threads with one SMTP connection each. Postfix allows 20 per
# destination by default; a few hundred connections to one smarthost is already abuse.
WORKERS = IntRange(1, 256)
# max_attempts: with the default backoff, 1000 attempts take more than five months.
ATTEMPTS = IntRange(1, 1000)
# smtp_timeout: per connect and per read. socket.settimeout() overflows on huge values, and
# an hour of silence from a server is never worth waiting for.
TIMEOUT = NumberRange(0, 3600, 'seconds', above_low=True)
# mq-queue --wait: how long to wait for a message another process is delivering.
WAIT = NumberRange(0, 3600, 'seconds')
# smtp_rate_limit, messages per second (or "30/min", "500/h"): below 0.001 (one per 17 minutes)
# the pause between messages stops making sense (and overflows the lock timeout near zero).
RATE_LIMIT = RateRange(0.001, 100000, 'messages per second (or per minute: 30/min, per hour: 500/h)')
# retry_min_delay, retry_max_delay: the backoff arithmetic adds them to dates.
RETRY_DELAY = DurationRange(timedelta(0), timedelta(days=365))
# max_queue_lifetime and mq-queue --older-than: ten years.
LIFETIME = DurationRange(timedelta(0), timedelta(days=3650))
AGE = LIFETIME
# stale_claim_timeout: a claim younger than this may be a delivery in progress; taking it
# over would send the message twice.
STALE_CLAIM = DurationRange(timedelta(minutes=5), timedelta(days=3650))
