"""Small, pure formatting helpers for human-facing output (ages, sizes, one-line text).

Nothing here touches the queue or the terminal; the callers decide whether the
output goes to a person or a pipe.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Optional

from .queue.schedule import format_duration

__all__ = ['ellipsize', 'error_line', 'format_age', 'format_size', 'format_until', 'one_line', 'printable']

_SIZE_UNITS = ('K', 'M', 'G', 'T', 'P')
# C0 controls except TAB and LF, DEL, and the C1 controls: on a terminal these can
# move the cursor or rewrite the screen, and mail headers or SMTP replies are
# attacker-controlled text. Also the bidirectional overrides and isolates and the
# Unicode line/paragraph separators: they reorder or break what is shown, so a
# reply could display as something other than what it says.
_CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]')
_LINE_BREAKS = re.compile(r'[\r\n\t]+')


def format_size(size: int) -> str:
    """``ls -h`` style: ``512``, ``1.2K``, ``12K``, ``3.4M``."""
    if size < 1024:
        return str(max(size, 0))
    value = float(size)
    for unit in _SIZE_UNITS:
        value /= 1024
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            if value < 10:
                return f'{value:.1f}{unit}'
            return f'{value:.0f}{unit}'
    raise AssertionError('unreachable')  # pragma: no cover


def format_age(delta: timedelta) -> str:
    """``45s``, ``3h12m``, ``2d4h``; negative ages (clock skew) show as ``0s``."""
    return format_duration(delta)


def format_until(when: Optional[datetime], now: datetime) -> str:
    """How long until ``when``: ``now`` when it is due (or ``None``), else e.g. ``12m``."""
    if when is None or when <= now:
        return 'now'
    return format_duration(when - now)


def printable(text: str) -> str:
    """Replace control characters (but keep tabs and line breaks) so text is safe on a terminal."""
    return _CONTROL.sub('?', text)


def error_line(text: str) -> str:
    """Text for one line on stderr: CR and LF shown as ``\\r`` and ``\\n``, other controls as ``?``.

    Error lines quote input (an option, an address) and server replies; an injected line
    break stays visible as such instead of forging a second line.
    """
    if text.isprintable():
        return text
    return printable(text.replace('\r', '\\r').replace('\n', '\\n'))


def one_line(text: Optional[str]) -> str:
    """Text for one cell of a listing: line breaks folded to spaces, controls replaced."""
    if not text:
        return ''
    if text.isprintable():  # the common case, and much cheaper than two substitutions
        return text.strip()
    return printable(_LINE_BREAKS.sub(' ', text)).strip()


def ellipsize(text: str, width: int, marker: str = '…') -> str:
    """Cut ``text`` to ``width`` characters, marking the cut."""
    if width <= 0:
        return ''
    if len(text) <= width:
        return text
    if width <= len(marker):
        return text[:width]
    return text[:width - len(marker)] + marker
