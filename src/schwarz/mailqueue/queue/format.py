"""One queue file: meta lines, ``X-Queue-Meta-End: end``, then the message bytes untouched.

    Return-path: <sender@example.org>
    Envelope-to: a@example.org,b@example.org
    X-Queue-Date: Fri, 29 Nov 2026 01:30:00 +0000
    X-Last-Attempt: ...          (after a failed attempt)
    X-Retries: 2                 (after a failed attempt)
    X-Queue-Last-Error: ...      (ours; readers ignore unknown X-Queue-* lines)
    X-Queue-Meta-End: end
    <message bytes>

Byte-compatible with mailqueue-runner 1.0.0 queue files. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import email.utils
import functools
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Dict, List, Optional, Sequence, Union

from ..addresses import InvalidAddressError, parse_address
from ..errors import CorruptMessage
from ..message import message_bytes_from

__all__ = [
    'META_END',
    'QueueFileError',
    'QueueMeta',
    'check_date',
    'check_envelope',
    'check_meta',
    'clean_value',
    'format_date',
    'parse_date',
    'parse_message_envelope',
    'parse_queue_bytes',
    'serialize_message_with_queue_data',
    'serialize_meta',
]

META_END = b'X-Queue-Meta-End: end'
_MAX_META_BYTES = 1024 * 1024
_UNSAFE = re.compile(r'[\r\n\x00]')

# Our own meta lines (X-Queue-* namespace), read back into QueueMeta.extra.
LAST_ERROR = 'X-Queue-Last-Error'
FAILED_REASON = 'X-Queue-Failed-Reason'
HOLD_REASON = 'X-Queue-Hold-Reason'
# When the message was first queued, kept when release/requeue restart its lifetime.
ORIGINAL_DATE = 'X-Queue-Original-Date'
# In a copy made by ``QueueAdmin.copy_to``: the message's id in the store it was copied from.
COPIED_FROM = 'X-Queue-Copied-From'


class QueueFileError(CorruptMessage, ValueError):
    """Not a queue file, or a truncated/corrupt one (a ``ValueError`` too, as in 1.x)."""


@dataclass
class QueueMeta:
    from_addr: str
    to_addrs: List[str]
    queue_date: Optional[datetime] = None
    last_delivery_attempt: Optional[datetime] = None
    retries: int = 0
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def last_error(self) -> Optional[str]:
        return self.extra.get(LAST_ERROR)

    @property
    def failed_reason(self) -> Optional[str]:
        return self.extra.get(FAILED_REASON)


def format_date(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return email.utils.format_datetime(value)


# Dates outside this range cannot be real queue dates, and the retry arithmetic
# (date + backoff, now - date) would overflow on them and stop a runner.
_MIN_YEAR = 1900
_MAX_YEAR = 9000


_MONTHS = {name: number for number, name in enumerate(
    ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'), start=1)}


def _parse_canonical_date(value: str) -> Optional[datetime]:
    """Fast path for what ``format_date`` writes ('Sun, 29 Nov 2026 01:30:00 +0000'); None otherwise."""
    parts = value.split()
    if len(parts) != 6 or not parts[0].endswith(','):
        return None
    _, day, month_name, year, clock, zone = parts
    month = _MONTHS.get(month_name)
    if month is None or len(zone) != 5 or zone[0] not in '+-' or not zone[1:].isdigit():
        return None
    try:
        hour, minute, second = clock.split(':')
        offset = int(zone[1:3]) * 60 + int(zone[3:5])
        tz = timezone.utc if offset == 0 else timezone(timedelta(minutes=offset if zone[0] == '+' else -offset))
        return datetime(int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError:
        return None


def parse_date(value: str) -> datetime:
    parsed = _parse_canonical_date(value)
    if parsed is None:
        # anything else RFC 2822 allows (files written by other tools or older versions)
        parsed = email.utils.parsedate_to_datetime(value)
    if parsed is None:  # pragma: no cover - Python < 3.10 returns None on garbage
        raise ValueError(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    if not _MIN_YEAR <= parsed.year <= _MAX_YEAR:
        raise ValueError(f'year {parsed.year} out of range')
    return parsed


def clean_value(value: str) -> str:
    """Meta values are single lines of UTF-8; anything else would corrupt the file (or fail to be
    written at all: a lone surrogate, from an argument that was not UTF-8, cannot be encoded)."""
    value = _UNSAFE.sub(' ', value)
    return value if value.isascii() else value.encode('utf-8', 'replace').decode('utf-8')


def check_date(what: str, when: Optional[datetime]) -> None:
    """A ``ValueError`` for a date no queue can hold (see ``_MIN_YEAR``; a database session in
    another time zone could not even read one near year 1 or 9999)."""
    if when is not None and not _MIN_YEAR <= when.year <= _MAX_YEAR:
        raise ValueError(f'{what} {when.isoformat()} is out of range (years {_MIN_YEAR} to {_MAX_YEAR})')


def check_meta(meta: QueueMeta) -> None:
    """What every store checks before it writes a message: the envelope and the dates."""
    check_envelope(meta.from_addr, meta.to_addrs)
    _check_dates(meta)


def _check_dates(meta: QueueMeta) -> None:
    check_date('queue date', meta.queue_date)
    check_date('last attempt', meta.last_delivery_attempt)


def check_envelope(from_addr: str, to_addrs: Sequence[str]) -> None:
    """The envelope rules of the whole package; ``InvalidAddressError`` (a ValueError) if broken.

    The same check on writing and on reading: nothing that could not have been queued
    by us (a line break, ``> NOTIFY=NEVER``, a local name) reaches the SMTP dialog.
    """
    _check_address(from_addr, True)
    for addr in to_addrs:
        _check_address(addr, False)


@functools.lru_cache(maxsize=4096)
def _check_address(text: str, allow_null: bool) -> None:
    # A runner reads the same few senders and recipients again and again: parse each once.
    # (Only valid addresses are cached: a refusal raises, and lru_cache keeps no exceptions.)
    parse_address(text, allow_null=allow_null)


def serialize_meta(meta: QueueMeta) -> bytes:
    try:
        check_envelope(meta.from_addr, meta.to_addrs)
    except InvalidAddressError as exc:
        raise InvalidAddressError(exc.address, f'cannot be stored in a queue file: {exc.reason}') from None
    _check_dates(meta)
    lines = [
        f'Return-path: <{meta.from_addr}>',
        f'Envelope-to: {",".join(meta.to_addrs)}',
        f'X-Queue-Date: {format_date(meta.queue_date or datetime.now(timezone.utc))}',
    ]
    if meta.last_delivery_attempt is not None:
        lines.append(f'X-Last-Attempt: {format_date(meta.last_delivery_attempt)}')
    if meta.retries:
        lines.append(f'X-Retries: {int(meta.retries)}')
    for name, value in meta.extra.items():
        if not name.startswith('X-Queue-') or name == 'X-Queue-Meta-End':
            raise ValueError(f'meta header outside the X-Queue- namespace: {name!r}')
        lines.append(f'{name}: {clean_value(value)}')
    return ('\r\n'.join(lines)).encode('utf-8') + b'\r\n' + META_END + b'\r\n'


def serialize_message_with_queue_data(
    msg: Any,
    sender: str,
    recipients: Union[str, Sequence[str]],
    queue_date: Optional[datetime] = None,
    last: Optional[datetime] = None,
    retries: Optional[int] = None,
    extra: Optional[Dict[str, str]] = None,
) -> bytes:
    if isinstance(recipients, str):
        recipients = [recipients]
    meta = QueueMeta(
        from_addr=sender or '',
        to_addrs=list(recipients),
        queue_date=queue_date or datetime.now(timezone.utc),
        last_delivery_attempt=last,
        retries=retries or 0,
        extra=dict(extra or {}),
    )
    return serialize_meta(meta) + message_bytes_from(msg)


def _strip_eol(line: bytes) -> bytes:
    return line.rstrip(b'\r\n')


def _parse_meta_lines(lines: List[bytes]) -> QueueMeta:
    from_addr: Optional[str] = None
    to_addrs: Optional[List[str]] = None
    meta = QueueMeta(from_addr='', to_addrs=[])
    for raw in lines:
        line = raw.decode('utf-8', 'replace')
        name, sep, value = line.partition(':')
        if not sep:
            raise QueueFileError(f'malformed meta line {line[:60]!r}')
        key = name.strip().lower()
        value = value.strip()
        if key in ('return-path', 'envelope-to'):
            try:
                # addresses must not be repaired: U+FFFD in place of a bad byte would be delivered
                # (only blanks are stripped: other white space or controls make the address invalid)
                value = raw.decode('utf-8').partition(':')[2].strip(' \t')
            except UnicodeDecodeError:
                raise QueueFileError(f'{name.strip()} is not UTF-8') from None
        try:
            if key == 'return-path':
                from_addr = value[1:-1] if value.startswith('<') and value.endswith('>') else value
            elif key == 'envelope-to':
                to_addrs = [a.strip(' \t') for a in value.split(',') if a.strip(' \t')]
            elif key == 'x-queue-date':
                meta.queue_date = parse_date(value)
            elif key == 'x-last-attempt':
                meta.last_delivery_attempt = parse_date(value)
            elif key == 'x-retries':
                meta.retries = int(value)
            elif key.startswith('x-queue-'):
                meta.extra[name.strip()] = value
        except (TypeError, ValueError, IndexError) as exc:
            raise QueueFileError(f'bad value for {name.strip()}: {value[:60]!r} ({exc})') from None
    if from_addr is None or to_addrs is None:
        raise QueueFileError('missing Return-path or Envelope-to')
    try:
        check_envelope(from_addr, to_addrs)
    except InvalidAddressError as exc:
        raise QueueFileError(f'invalid envelope address: {exc}') from None
    meta.from_addr = from_addr
    meta.to_addrs = to_addrs
    return meta


def parse_message_envelope(fp: IO[bytes]) -> QueueMeta:
    """Read the meta block from ``fp``; afterwards ``fp`` is positioned at the message bytes."""
    return _read_meta(fp, _MAX_META_BYTES)


def _read_meta(fp: IO[bytes], limit: int) -> QueueMeta:
    lines: List[bytes] = []
    consumed = 0
    while True:
        line = fp.readline(limit)
        if not line:
            raise QueueFileError('no X-Queue-Meta-End line (truncated or not a queue file)')
        consumed += len(line)
        if consumed > limit:
            raise QueueFileError('meta block too large (not a queue file)')
        stripped = _strip_eol(line)
        if stripped == META_END:
            break
        if stripped.strip():
            lines.append(stripped)
    return _parse_meta_lines(lines)


def parse_queue_bytes(data: bytes) -> tuple[QueueMeta, bytes]:
    # The same line-by-line reader as for files: the end marker counts only as a line of its
    # own, never inside a meta value (an SMTP reply stored as X-Queue-Last-Error may quote it).
    # Already in memory, so no size limit (a message to many thousands of recipients is fine).
    fp = io.BytesIO(data)
    meta = _read_meta(fp, len(data) + 1)
    return meta, data[fp.tell():]
