"""How queue administration results look: the ``mq-queue`` table, ``show`` fields, stats text,
JSON objects and the Prometheus text format.

Apart from ``queue.admin`` (the operations) so that the operations know nothing of
terminals and formats, and apart from the CLI so that other front ends (a monitoring
script, a web page, node_exporter's textfile collector) get the same output without
going through ``mq-queue``. Pure functions of ``Row``/``QueueStats``/``MessageView``
values; only ``ListingWriter`` writes, to the stream it is given.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, TextIO, Tuple

from ..humanize import ellipsize, format_age, format_size, format_until, one_line
from .contract import CLAIMED, HELD, NEW, NEXT_ATTEMPT
from .format import COPIED_FROM, FAILED_REASON, HOLD_REASON, LAST_ERROR, format_date

if TYPE_CHECKING:  # pragma: no cover
    from .admin import MessageView, QueueStats, Row, StateStats

__all__ = [
    'ListingWriter',
    'is_terminal',
    'prometheus',
    'row_json',
    'show_fields',
    'state_text',
    'stats_json',
    'stats_text',
]

# meta values the show fields present in their own way (admin.HELD_SINCE, admin.ORIGINAL_DATE)
# shown under their own labels (Held since, Queued, Next attempt) already
_SHOWN_AS_DATES = ('X-Queue-Held-Since', 'X-Queue-Original-Date', NEXT_ATTEMPT)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _ellipsis(stream: Any) -> str:
    encoding = (getattr(stream, 'encoding', None) or '').lower().replace('-', '')
    return '…' if encoding == 'utf8' else '...'


def _iso(value: Optional[datetime]) -> Optional[str]:
    return value.isoformat() if value is not None else None


def _seconds(delta: Optional[timedelta]) -> int:
    return int(delta.total_seconds()) if delta is not None else 0


# --- JSON ----------------------------------------------------------------------------------------


def row_json(row: Row, now: datetime) -> Dict[str, Any]:
    """One message of ``mq-queue list --json``: full values, nothing shortened."""
    return {
        'id': row.msg_id,
        'state': row.state,
        'path': row.path,
        'size': row.size,
        'mtime': datetime.fromtimestamp(row.mtime, timezone.utc).isoformat(),
        'queue_date': _iso(row.queue_date),
        'first_queued': _iso(row.first_queued),
        'age_seconds': int(row.age(now).total_seconds()),
        'retries': row.retries,
        'last_attempt': _iso(row.last_attempt),
        'next_attempt': _iso(row.next_attempt),
        'due': row.due,
        'active': row.active,
        'from': row.from_addr,
        'to': list(row.to_addrs),
        'last_error': row.last_error,
        'failed_reason': row.failed_reason,
        'hold_reason': row.hold_reason,
        'held_since': _iso(row.held_since),
        'error': row.error,
    }


def stats_json(stats: QueueStats) -> Dict[str, Any]:
    """``mq-queue stats --json``."""

    def one(item: StateStats) -> Dict[str, Any]:
        age = item.oldest_age(stats.generated)
        return {
            'messages': item.count,
            'bytes': item.bytes,
            'unreadable': item.unreadable,
            'oldest_age_seconds': int(age.total_seconds()) if age is not None else None,
            'oldest_id': item.oldest_id,
        }

    return {
        'queue': stats.path,
        'generated': stats.generated.isoformat(),
        'states': {name: one(item) for name, item in stats.states.items()},
        'total': one(stats.total),
        'deferred': stats.deferred,
        'due': stats.due,
        'active': stats.active,
    }


# --- Prometheus ------------------------------------------------------------------------------------


def prometheus(stats: QueueStats) -> str:
    """Prometheus text exposition format (for node_exporter's textfile collector)."""
    lines: List[str] = []

    def family(name: str, help_text: str, samples: Iterable[Tuple[str, int]]) -> None:
        lines.append(f'# HELP {name} {help_text}')
        lines.append(f'# TYPE {name} gauge')
        for labels, value in samples:
            lines.append(f'{name}{labels} {int(value)}')

    by_state = list(stats.states.items())
    family('mailqueue_messages', 'Messages in the queue, by state.',
           ((f'{{state="{s}"}}', item.count) for s, item in by_state))
    family('mailqueue_size_bytes', 'Total size of the queue files, by state.',
           ((f'{{state="{s}"}}', item.bytes) for s, item in by_state))
    family('mailqueue_oldest_message_age_seconds',
           'Age of the oldest message, by state (0 when there is none).',
           ((f'{{state="{s}"}}', _seconds(item.oldest_age(stats.generated))) for s, item in by_state))
    family('mailqueue_unreadable_files', 'Files in the queue that are not readable queue files, by state.',
           ((f'{{state="{s}"}}', item.unreadable) for s, item in by_state))
    family('mailqueue_deferred_messages', 'Messages waiting in new/ after at least one failed attempt.',
           [('', stats.deferred)])
    family('mailqueue_due_messages', 'Messages in new/ that the next queue run will try.', [('', stats.due)])
    family('mailqueue_active_deliveries', 'Messages in cur/ claimed by a live process.', [('', stats.active)])
    return '\n'.join(lines) + '\n'


# --- human text ------------------------------------------------------------------------------------


def stats_text(stats: QueueStats) -> str:
    """The ``mq-queue stats`` table."""
    lines = [f'{"STATE":<8}{"MESSAGES":>10}{"SIZE":>8}{"OLDEST":>9}']
    for name, item in [*stats.states.items(), ('total', stats.total)]:
        age = item.oldest_age(stats.generated)
        lines.append(f'{name:<8}{item.count:>10}{format_size(item.bytes):>8}'
                     f'{format_age(age) if age is not None else "-":>9}')
    extra = f'deferred {stats.deferred}, due now {stats.due}, being delivered {stats.active}'
    if stats.total.unreadable:
        extra += f', unreadable {stats.total.unreadable}'
    lines.append(extra)
    return '\n'.join(lines) + '\n'


def state_text(row: Row, now: datetime) -> str:
    """The state with what it means for the message, for ``show``."""
    if row.state == NEW:
        if row.error is not None:
            return 'new (unreadable; the next queue run moves it to failed/)'
        if row.due:
            return 'new (waiting, due now)'
        return f'new (deferred, next attempt in {format_until(row.next_attempt, now)})'
    if row.state == CLAIMED:
        if row.active:
            return 'cur (being delivered right now)'
        return 'cur (abandoned claim; the next queue run puts it back to new/)'
    if row.state == HELD:
        return 'hold (held by an administrator; never delivered or expired until released)'
    return 'failed (dead letter; "requeue" sends it again)'


def _when(value: datetime, now: datetime) -> str:
    if value <= now:
        return f'{format_date(value)} ({format_age(now - value)} ago)'
    return f'{format_date(value)} (in {format_age(value - now)})'


def show_fields(view: MessageView, now: datetime) -> List[Tuple[str, str]]:
    """``(label, value)`` pairs of ``mq-queue show`` (values unfiltered: the caller makes them safe)."""
    row = view.row
    fields = [('Queue-ID', row.msg_id), ('State', state_text(row, now))]
    if row.path:
        fields.append(('File', row.path))
    fields.append(('Size', f'{format_size(row.size)} ({row.size} bytes)'))
    if row.error is not None:
        fields.append(('Unreadable', row.error))
        if row.failed_reason:
            fields.append(('Reason', row.failed_reason))
        return fields
    meta = view.meta
    assert meta is not None
    fields.append(('Sender', f'<{meta.from_addr}>'))
    fields.append(('Recipients', ', '.join(meta.to_addrs)))
    if row.first_queued is not None:
        fields.append(('Queued', _when(row.first_queued, now)))
    if row.queue_date is not None and row.queue_date != row.first_queued:
        fields.append(('Lifetime from', _when(row.queue_date, now)))
    fields.append(('Attempts', str(meta.retries)))
    if meta.last_delivery_attempt is not None:
        fields.append(('Last attempt', _when(meta.last_delivery_attempt, now)))
    if row.state == NEW:
        fields.append(('Next attempt', 'now' if row.due or row.next_attempt is None else
                       _when(row.next_attempt, now)))
    if row.held_since is not None:
        fields.append(('Held since', _when(row.held_since, now)))
    labels = {LAST_ERROR: 'Last error', FAILED_REASON: 'Failed reason', HOLD_REASON: 'Hold reason',
              COPIED_FROM: 'Copied from'}
    for name, value in meta.extra.items():
        if name in labels:
            fields.append((labels[name], value))
        elif name not in _SHOWN_AS_DATES:
            fields.append((name, value))
    return fields


def _next_column(row: Row, now: datetime) -> str:
    if row.error is not None:
        return '-'
    if row.state == CLAIMED:
        return 'sending' if row.active else 'stale'
    if row.state == NEW:
        return format_until(row.next_attempt, now)
    return '-'


class ListingWriter:
    """The ``mq-queue list`` table: fixed-width columns, so rows are printed as they stream in
    (no second pass over the queue). On a terminal: a header, columns fitted to its width,
    long values shortened, and a footer; into a pipe: one full line per message, nothing else.
    """

    FROM_WIDTH = 24
    TO_WIDTH = 28
    FULL_ID_WIDTH = 23  # what maildir ids look like: 12 hex digits, a dot, a timestamp

    def __init__(self, stream: TextIO, abbrev: Optional[int], now: datetime,
                 terminal: Optional[bool] = None) -> None:
        self.stream = stream
        self.abbrev = abbrev
        id_width = self.id_width = abbrev or self.FULL_ID_WIDTH
        self.now = now
        self.terminal = is_terminal(stream) if terminal is None else terminal
        self.marker = _ellipsis(stream)
        self.from_width = self.FROM_WIDTH
        self.to_width = self.TO_WIDTH
        self.error_width: Optional[int] = None
        self.count = 0
        self.total = 0
        if self.terminal:
            columns = shutil.get_terminal_size((120, 24)).columns
            fixed = id_width + 6 + 6 + 5 + 7 + 5 + 2 * 8
            room = max(columns - fixed, 30)
            self.from_width = min(self.FROM_WIDTH, max(12, room // 4))
            self.to_width = min(self.TO_WIDTH, max(12, room // 3))
            self.error_width = max(room - self.from_width - self.to_width, 10)

    def _line(self, cells: Tuple[str, ...]) -> str:
        ident, state, age, tries, nxt, size, sender, rcpts, error = cells
        return (f'{ident:<{self.id_width}}  {state:<6}  {age:>6}  {tries:>5}  {nxt:>7}  {size:>5}  '
                f'{sender:<{self.from_width}}  {rcpts:<{self.to_width}}  {error}').rstrip() + '\n'

    def _address(self, addr: str) -> str:
        """One address as a cell: piped, white space (in a quoted local part) is written ``\\x20``,
        so each column stays one whitespace-separated field for awk and cut."""
        text = one_line(addr)
        if self.terminal or not any(ch.isspace() for ch in text):
            return text
        return ''.join(f'\\x{ord(ch):02x}' if ch.isspace() else ch for ch in text)

    def _recipients(self, addrs: List[str]) -> str:
        text = ','.join(self._address(a) for a in addrs) or '-'
        if not self.terminal or len(text) <= self.to_width or len(addrs) < 2:
            return text if not self.terminal else ellipsize(text, self.to_width, self.marker)
        more = f',+{len(addrs) - 1}'
        return ellipsize(self._address(addrs[0]), self.to_width - len(more), self.marker) + more

    def row(self, row: Row) -> None:
        if self.count == 0 and self.terminal:
            self.stream.write(self._line(('ID', 'STATE', 'AGE', 'TRIES', 'NEXT', 'SIZE', 'FROM', 'TO',
                                          'LAST ERROR')))
        self.count += 1
        self.total += row.size
        sender = '-' if row.from_addr is None else (self._address(row.from_addr) or '<>')
        error = one_line(row.reason) or '-'
        if self.terminal:
            sender = ellipsize(sender, self.from_width, self.marker)
            if self.error_width is not None:
                error = ellipsize(error, self.error_width, self.marker)
        ident = row.msg_id if self.abbrev is None else row.msg_id[:self.abbrev]
        self.stream.write(self._line((
            one_line(ident), row.state, format_age(row.age(self.now)),
            str(row.retries) if row.error is None else '-', _next_column(row, self.now),
            format_size(row.size), sender, self._recipients(row.to_addrs), error)))

    def finish(self, filtered: bool) -> None:
        if self.count == 0:
            if not filtered:
                # The sendmail/Postfix wording: monitoring scripts grep for it.
                self.stream.write('Mail queue is empty\n')
            elif self.terminal:
                self.stream.write('no matching messages\n')
        elif self.terminal:
            noun = 'message' if self.count == 1 else 'messages'
            self.stream.write(f'-- {self.count} {noun}, {format_size(self.total)}\n')
