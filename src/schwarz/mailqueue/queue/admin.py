"""Queue administration: what ``mq-queue`` does, as a library over a ``MaildirQueue``.

Everything here is safe on a live queue: a message is only changed while its
lock is held (``claim()``), exactly like the runner does, so an admin action
and a delivery can never work on the same message at once. A message that a
runner is delivering right now is waited for (up to ``wait`` seconds) and then
reported as busy; one that disappears meanwhile (delivered) is reported as gone.

Listings and statistics stream over the directories: nothing is sorted and no
row is kept, so memory stays flat however large the queue is.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Collection, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..logs import QUEUE_LOG, log_event
from .backend import STATES, QueuedMessage
from .format import (
    FAILED_REASON,
    HOLD_REASON,
    LAST_ERROR,
    META_END,
    QueueFileError,
    QueueMeta,
    format_date,
    parse_date,
    serialize_meta,
)
from .maildir import MaildirQueue
from .schedule import RetryPolicy

__all__ = [
    'ABBREV_NAME_LIMIT',
    'ACTIVE',
    'BUSY',
    'CORRUPT',
    'DEFERRED',
    'GONE',
    'HELD_SINCE',
    'MIN_ABBREV',
    'MIN_PREFIX',
    'NOOP',
    'OK',
    'ORIGINAL_DATE',
    'PURGE_STATES',
    'REFUSED',
    'WRONG_STATE',
    'ActionResult',
    'AmbiguousID',
    'IDError',
    'InvalidID',
    'MessageView',
    'QueueAdmin',
    'QueueStats',
    'Row',
    'Selection',
    'StateStats',
    'UnknownID',
    'abbrev_length',
    'make_row',
]

# Our own meta lines (readers ignore unknown X-Queue-* lines).
ORIGINAL_DATE = 'X-Queue-Original-Date'
"""When the message was first queued, kept when release/requeue restart its lifetime."""
HELD_SINCE = 'X-Queue-Held-Since'

MIN_PREFIX = 4
"""Shortest prefix accepted for an id (an exact id may be shorter)."""
MIN_ABBREV = 8
"""Shortest abbreviation shown in listings."""
ABBREV_NAME_LIMIT = 200_000
"""Finding the shortest unique prefixes needs every name in memory (about 100 bytes each);
above this many messages listings show full ids instead, so memory stays bounded."""

# Messages in cur/ are being delivered; purging them would race with the runner.
PURGE_STATES = ('new', 'hold', 'failed')

# ActionResult.outcome values
OK = 'ok'
NOOP = 'noop'
BUSY = 'busy'
GONE = 'gone'
WRONG_STATE = 'wrong-state'
CORRUPT = 'corrupt'
DEFERRED = 'deferred'
REFUSED = 'refused'
ACTIVE = 'active'

_O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
_O_NONBLOCK = getattr(os, 'O_NONBLOCK', 0)
_POLL_FIRST = 0.005
_POLL_MAX = 0.05
_LENIENT_READ = 64 * 1024


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- ids ---------------------------------------------------------------------------------------


class IDError(ValueError):
    """A queue id given by a user that cannot be used."""


class InvalidID(IDError):
    pass


class UnknownID(IDError):
    pass


class AmbiguousID(IDError):
    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        self.prefix = prefix
        self.matches = sorted(matches)
        shown = ', '.join(self.matches[:5]) + (', ...' if len(self.matches) > 5 else '')
        super().__init__(f'{prefix}: ambiguous, matches {len(self.matches)} messages ({shown})')


def _check_prefix(prefix: str) -> None:
    if not prefix or '/' in prefix or prefix.startswith('.') or '\x00' in prefix or prefix.strip() != prefix:
        raise InvalidID(f'{prefix!r}: not a queue id')


def abbrev_length(names: Iterable[str], minimum: int = MIN_ABBREV,
                  limit: Optional[int] = None) -> Optional[int]:
    """Shortest length at which every name is distinguished from all others (at least ``minimum``).

    None when there are more than ``limit`` names. Two sorted neighbours share the longest
    prefixes, so comparing neighbours is enough.
    """
    ordered: List[str] = []
    for name in names:
        ordered.append(name)
        if limit is not None and len(ordered) > limit:
            return None
    ordered.sort()
    length = minimum
    for left, right in zip(ordered, ordered[1:]):
        common = 0
        for a, b in zip(left, right):
            if a != b:
                break
            common += 1
        if common + 1 > length:
            length = common + 1
    return length


# --- rows ----------------------------------------------------------------------------------------


def _extra_date(meta: Optional[QueueMeta], name: str) -> Optional[datetime]:
    if meta is None or name not in meta.extra:
        return None
    try:
        return parse_date(meta.extra[name])
    except (TypeError, ValueError):
        return None


@dataclass
class Row:
    """One queue file as a listing shows it (read without claiming)."""

    msg_id: str
    state: str
    path: str
    size: int
    mtime: float
    from_addr: Optional[str]
    to_addrs: List[str]
    queue_date: Optional[datetime]
    """The date the retry lifetime counts from."""
    first_queued: Optional[datetime]
    """When the message entered the queue (differs from ``queue_date`` after release/requeue)."""
    retries: int = 0
    last_attempt: Optional[datetime] = None
    next_attempt: Optional[datetime] = None
    due: Optional[bool] = None
    last_error: Optional[str] = None
    failed_reason: Optional[str] = None
    hold_reason: Optional[str] = None
    held_since: Optional[datetime] = None
    error: Optional[str] = None
    """Why the file could not be read as a queue file (None when it could)."""
    active: Optional[bool] = None
    """For cur/: True while a live process holds the claim, False for an abandoned claim."""

    def age(self, now: datetime) -> timedelta:
        born = self.first_queued or datetime.fromtimestamp(self.mtime, timezone.utc)
        return max(now - born, timedelta(0))

    @property
    def reason(self) -> Optional[str]:
        """The one piece of text that best explains why the message is still here."""
        if self.error:
            return f'unreadable: {self.failed_reason or self.error}'
        if self.state == 'failed':
            return self.failed_reason or self.last_error
        if self.state == 'hold':
            return self.hold_reason or self.last_error
        return self.last_error

    def as_json(self, now: datetime) -> Dict[str, Any]:
        def iso(value: Optional[datetime]) -> Optional[str]:
            return value.isoformat() if value is not None else None

        return {
            'id': self.msg_id,
            'state': self.state,
            'path': self.path,
            'size': self.size,
            'mtime': datetime.fromtimestamp(self.mtime, timezone.utc).isoformat(),
            'queue_date': iso(self.queue_date),
            'first_queued': iso(self.first_queued),
            'age_seconds': int(self.age(now).total_seconds()),
            'retries': self.retries,
            'last_attempt': iso(self.last_attempt),
            'next_attempt': iso(self.next_attempt),
            'due': self.due,
            'active': self.active,
            'from': self.from_addr,
            'to': list(self.to_addrs),
            'last_error': self.last_error,
            'failed_reason': self.failed_reason,
            'hold_reason': self.hold_reason,
            'held_since': iso(self.held_since),
            'error': self.error,
        }


def _lenient_meta(path: str) -> Dict[str, str]:
    """Whatever ``name: value`` lines precede the meta end of a file the strict parser rejects.

    A corrupt file moved to failed/ carries its reason in such a line; showing it
    is the point of listing the file at all.
    """
    try:
        with open(path, 'rb', opener=lambda p, f: os.open(p, f | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)) as fp:
            head = fp.read(_LENIENT_READ)
    except OSError:
        return {}
    end = head.find(META_END)
    if end < 0:
        return {}
    values: Dict[str, str] = {}
    for raw in head[:end].splitlines():
        name, sep, value = raw.decode('utf-8', 'replace').partition(':')
        if sep and name.strip():
            # The outermost (first) line wins: a file quarantined twice has nested meta blocks.
            values.setdefault(name.strip().lower(), value.strip())
    return values


def _lock_state(path: str) -> Optional[bool]:
    """True if a live process holds the file's lock, False if nobody does, None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except OSError:
        return None
    try:
        # A shared lock is enough to test and, being released at once, never blocks a runner for long.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


def make_row(msg_id: str, state: str, path: str, size: int, mtime: float, meta: Optional[QueueMeta],
             error: Optional[str], policy: RetryPolicy, now: datetime, *, check_lock: bool = True) -> Row:
    row = Row(msg_id=msg_id, state=state, path=path, size=size, mtime=mtime, from_addr=None, to_addrs=[],
              queue_date=None, first_queued=None, error=error)
    if meta is not None:
        row.from_addr = meta.from_addr
        row.to_addrs = list(meta.to_addrs)
        row.queue_date = meta.queue_date
        row.first_queued = _extra_date(meta, ORIGINAL_DATE) or meta.queue_date
        row.retries = meta.retries
        row.last_attempt = meta.last_delivery_attempt
        row.last_error = meta.extra.get(LAST_ERROR)
        row.failed_reason = meta.extra.get(FAILED_REASON)
        row.hold_reason = meta.extra.get(HOLD_REASON)
        row.held_since = _extra_date(meta, HELD_SINCE)
        if state in ('new', 'cur'):
            # With now: a last attempt stamped in the future (clock skew) shows as due, as the runner sees it.
            row.next_attempt = policy.next_attempt(meta.last_delivery_attempt, meta.retries, now)
            row.due = row.next_attempt is None or row.next_attempt <= now
    elif error is not None:
        lenient = _lenient_meta(path)
        row.failed_reason = lenient.get(FAILED_REASON.lower())
        if 'x-queue-date' in lenient:
            try:
                row.first_queued = row.queue_date = parse_date(lenient['x-queue-date'])
            except (TypeError, ValueError):
                pass
    if state == 'cur' and check_lock:
        row.active = _lock_state(path)
    return row


@dataclass(frozen=True)
class Selection:
    """Which messages a listing or a bulk action covers."""

    states: Tuple[str, ...] = STATES
    older_than: Optional[timedelta] = None
    to: Optional[str] = None
    """Case-insensitive substring of any recipient."""
    sender: Optional[str] = None
    """Case-insensitive substring of the sender; ``<>`` selects the null sender."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.states if s not in STATES]
        if unknown:
            raise ValueError(f'unknown state {unknown[0]!r} (one of {", ".join(STATES)})')

    @property
    def filters_addresses(self) -> bool:
        return self.to is not None or self.sender is not None

    def matches(self, row: Row, now: datetime) -> bool:
        if self.older_than is not None and row.age(now) <= self.older_than:
            return False
        if self.to is not None:
            needle = self.to.lower()
            if not any(needle in addr.lower() for addr in row.to_addrs):
                return False
        if self.sender is not None:
            if row.from_addr is None:
                return False
            if self.sender == '<>':
                if row.from_addr:
                    return False
            elif self.sender.lower() not in row.from_addr.lower():
                return False
        return True


# --- results -------------------------------------------------------------------------------------


@dataclass
class ActionResult:
    msg_id: str
    action: str
    outcome: str
    detail: str = ''
    state: Optional[str] = None
    """Where the message is now (or was found, for failures)."""
    connection_failed: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in (OK, NOOP)


@dataclass
class MessageView:
    row: Row
    meta: Optional[QueueMeta]
    content: bytes
    """The message bytes; for an unreadable file, the whole file."""

    @property
    def headers(self) -> bytes:
        """The header block, up to (not including) the blank line."""
        data = self.content
        ends = [i for i in (data.find(b'\r\n\r\n'), data.find(b'\n\n')) if i >= 0]
        if not ends:
            return data
        return data[:min(ends)]


@dataclass
class StateStats:
    count: int = 0
    bytes: int = 0
    oldest: Optional[datetime] = None
    oldest_id: Optional[str] = None
    unreadable: int = 0

    def add(self, row: Row) -> None:
        self.count += 1
        self.bytes += row.size
        if row.error is not None:
            self.unreadable += 1
        born = row.first_queued or datetime.fromtimestamp(row.mtime, timezone.utc)
        if self.oldest is None or born < self.oldest:
            self.oldest = born
            self.oldest_id = row.msg_id

    def merge(self, other: StateStats) -> None:
        self.count += other.count
        self.bytes += other.bytes
        self.unreadable += other.unreadable
        if other.oldest is not None and (self.oldest is None or other.oldest < self.oldest):
            self.oldest = other.oldest
            self.oldest_id = other.oldest_id

    def oldest_age(self, now: datetime) -> Optional[timedelta]:
        if self.oldest is None:
            return None
        return max(now - self.oldest, timedelta(0))


@dataclass
class QueueStats:
    path: str
    generated: datetime
    states: Dict[str, StateStats] = field(default_factory=lambda: {s: StateStats() for s in STATES})
    deferred: int = 0
    """Messages in new/ after at least one failed attempt."""
    due: int = 0
    """Messages in new/ that the next run will try."""
    active: int = 0
    """Messages in cur/ whose claim is held by a live process."""

    @property
    def total(self) -> StateStats:
        total = StateStats()
        for item in self.states.values():
            total.merge(item)
        return total

    def as_json(self) -> Dict[str, Any]:
        def one(item: StateStats) -> Dict[str, Any]:
            age = item.oldest_age(self.generated)
            return {
                'messages': item.count,
                'bytes': item.bytes,
                'unreadable': item.unreadable,
                'oldest_age_seconds': int(age.total_seconds()) if age is not None else None,
                'oldest_id': item.oldest_id,
            }

        return {
            'queue': self.path,
            'generated': self.generated.isoformat(),
            'states': {name: one(item) for name, item in self.states.items()},
            'total': one(self.total),
            'deferred': self.deferred,
            'due': self.due,
            'active': self.active,
        }

    def prometheus(self) -> str:
        """Prometheus text exposition format (for node_exporter's textfile collector)."""
        lines: List[str] = []

        def family(name: str, help_text: str, samples: Iterable[Tuple[str, int]]) -> None:
            lines.append(f'# HELP {name} {help_text}')
            lines.append(f'# TYPE {name} gauge')
            for labels, value in samples:
                lines.append(f'{name}{labels} {int(value)}')

        by_state = list(self.states.items())
        family('mailqueue_messages', 'Messages in the queue, by state.',
               ((f'{{state="{s}"}}', item.count) for s, item in by_state))
        family('mailqueue_size_bytes', 'Total size of the queue files, by state.',
               ((f'{{state="{s}"}}', item.bytes) for s, item in by_state))
        family('mailqueue_oldest_message_age_seconds',
               'Age of the oldest message, by state (0 when there is none).',
               ((f'{{state="{s}"}}', _seconds(item.oldest_age(self.generated))) for s, item in by_state))
        family('mailqueue_unreadable_files', 'Files in the queue that are not readable queue files, by state.',
               ((f'{{state="{s}"}}', item.unreadable) for s, item in by_state))
        family('mailqueue_deferred_messages', 'Messages waiting in new/ after at least one failed attempt.',
               [('', self.deferred)])
        family('mailqueue_due_messages', 'Messages in new/ that the next queue run will try.', [('', self.due)])
        family('mailqueue_active_deliveries', 'Messages in cur/ claimed by a live process.', [('', self.active)])
        return '\n'.join(lines) + '\n'


def _seconds(delta: Optional[timedelta]) -> int:
    return int(delta.total_seconds()) if delta is not None else 0


# --- the administrator -----------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QueueAdmin:
    """Inspect and change a queue; every change happens under the message's lock."""

    def __init__(self, queue: MaildirQueue, policy: Optional[RetryPolicy] = None, *, wait: float = 5.0,
                 app: str = 'mq-queue', clock: Callable[[], datetime] = _utcnow,
                 queue_log: Optional[logging.Logger] = None, abbrev_limit: Optional[int] = ABBREV_NAME_LIMIT) -> None:
        self.queue = queue
        self.abbrev_limit = abbrev_limit
        self.policy = policy or RetryPolicy()
        # Bounded like mq-queue --wait: nan would make every wait endless (deadline comparisons
        # with nan are always False), inf or 1e300 as good as endless.
        from ..limits import WAIT

        self.wait = WAIT.parse(max(float(wait), 0.0))
        self.app = app
        self.clock = clock
        self.queue_log = queue_log or logging.getLogger(QUEUE_LOG)

    # --- reading ---------------------------------------------------------------------------

    def rows(self, selection: Selection = Selection()) -> Iterator[Row]:
        """Stream the messages that ``selection`` covers, directory order, one file read each."""
        now = self.clock()
        for entry in self.queue.entries(selection.states):
            row = make_row(entry.msg_id, entry.state, entry.path, entry.size, entry.mtime, entry.meta,
                           entry.error, self.policy, now)
            if selection.matches(row, now):
                yield row

    def names(self, states: Sequence[str] = STATES) -> Iterator[str]:
        for state in states:
            yield from self.queue.iter_ids(state)

    def abbrev_length(self, minimum: int = MIN_ABBREV) -> Optional[int]:
        """Abbreviation length that keeps every id in the queue unique (names only, no file is opened).

        None (show full ids) for a queue of more than ``abbrev_limit`` messages.
        """
        return abbrev_length(self.names(), minimum, self.abbrev_limit)

    def locate(self, msg_id: str, hint: Optional[str] = None) -> Optional[str]:
        """The state directory that holds ``msg_id`` right now, or None."""
        order = ((hint,) if hint else ()) + tuple(s for s in STATES if s != hint)
        for state in order:
            try:
                os.lstat(os.path.join(self.queue.path, state, msg_id))
            except FileNotFoundError:
                continue
            return state
        return None

    def resolve(self, prefixes: Sequence[str]) -> List[str]:
        """Full ids for ``prefixes`` (same order). An exact id always wins over longer ids it prefixes."""
        for prefix in prefixes:
            _check_prefix(prefix)
        matches: Dict[str, set[str]] = {p: set() for p in prefixes}
        # A message moving between directories during the scan can be missed once; look again.
        for _attempt in range(3):
            for name in self.names():
                for prefix in prefixes:
                    if name.startswith(prefix):
                        matches[prefix].add(name)
            if all(matches.values()):
                break
        resolved: List[str] = []
        for prefix in prefixes:
            found = matches[prefix]
            if prefix in found:
                resolved.append(prefix)
            elif not found:
                raise UnknownID(f'{prefix}: no such message in {self.queue.path}')
            elif len(prefix) < MIN_PREFIX:
                raise InvalidID(f'{prefix}: too short; give at least {MIN_PREFIX} characters of the id')
            elif len(found) > 1:
                raise AmbiguousID(prefix, sorted(found))
            else:
                resolved.append(next(iter(found)))
        return resolved

    def view(self, msg_id: str) -> MessageView:
        """Read one message without claiming it (a runner may move it meanwhile; follow it)."""
        now = self.clock()
        for _attempt in range(20):
            state = self.locate(msg_id)
            if state is None:
                break
            path = os.path.join(self.queue.path, state, msg_id)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    row = make_row(msg_id, state, path, st.st_size, st.st_mtime, None, 'not a regular file',
                                   self.policy, now)
                    return MessageView(row, None, b'')
                try:
                    meta, body = self.queue.read_message(state, msg_id)
                except QueueFileError as exc:
                    with open(path, 'rb', opener=lambda p, f: os.open(p, f | _O_NOFOLLOW | _O_CLOEXEC)) as fp:
                        raw = fp.read()
                    row = make_row(msg_id, state, path, st.st_size, st.st_mtime, None, str(exc), self.policy, now)
                    return MessageView(row, None, raw)
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            row = make_row(msg_id, state, path, st.st_size, st.st_mtime, meta, None, self.policy, now)
            return MessageView(row, meta, body)
        raise UnknownID(f'{msg_id}: no such message in {self.queue.path}')

    def stats(self) -> QueueStats:
        now = self.clock()
        result = QueueStats(path=self.queue.path, generated=now)
        for row in self.rows():
            result.states[row.state].add(row)
            if row.state == 'new' and row.error is None:
                if row.retries > 0:
                    result.deferred += 1
                if row.due:
                    result.due += 1
            elif row.state == 'cur' and row.active:
                result.active += 1
        return result

    def select_ids(self, selection: Selection) -> Iterator[Tuple[str, str]]:
        """(state, id) for bulk actions; reads meta only when the selection needs it."""
        if selection.older_than is None and not selection.filters_addresses:
            for state in selection.states:
                for msg_id in self.queue.iter_ids(state):
                    yield state, msg_id
            return
        for row in self.rows(selection):
            yield row.state, row.msg_id

    # --- claiming ----------------------------------------------------------------------------

    def _acquire(self, action: str, msg_id: str, allowed: Collection[str],
                 wait: Optional[float] = None) -> Tuple[Optional[QueuedMessage], Optional[ActionResult]]:
        """Claim ``msg_id`` if it is in one of ``allowed``; wait (bounded) while someone else holds it."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        pause = _POLL_FIRST
        while True:
            state = self.locate(msg_id)
            if state is None:
                return None, ActionResult(msg_id, action, GONE,
                                          'no longer in the queue (delivered or removed meanwhile)')
            if state != 'cur' and state not in allowed:
                return None, ActionResult(msg_id, action, WRONG_STATE, f'is in {state}/', state=state)
            try:
                msg = self.queue.claim(msg_id, state)
            except QueueFileError as exc:
                return None, ActionResult(msg_id, action, CORRUPT,
                                          f'not a valid queue file ({exc}); moved to failed/', state='failed')
            if msg is not None:
                if state == 'cur' and 'new' not in allowed:
                    # An abandoned claim is a waiting message: hand it back as recovery would.
                    self.queue.release(msg)
                    return None, ActionResult(msg_id, action, WRONG_STATE, 'is in new/', state='new')
                return msg, None
            if time.monotonic() >= deadline:
                return None, ActionResult(msg_id, action, BUSY,
                                          'busy: being delivered by another process; try again later',
                                          state='cur')
            # Deliveries take milliseconds to seconds: poll soon, then less often.
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def _rewrite(self, msg: QueuedMessage, target_state: str) -> None:
        # MaildirQueue has no public "rewrite meta under the claim" yet; this is exactly
        # what its own defer()/fail() do: a locked tmp copy atomically replaces the claimed file.
        self.queue._replace_locked(msg, serialize_meta(msg.meta) + msg.msg_bytes, target_state)

    def _log(self, status: str, msg_id: str, meta: Optional[QueueMeta], **fields: Any) -> None:
        event: Dict[str, Any] = {'status': status, 'queue_id': msg_id}
        if meta is not None:
            event['to'] = ','.join(meta.to_addrs)
            event['from'] = meta.from_addr or '<>'
            event['attempts'] = meta.retries
        event['app'] = self.app
        event.update(fields)
        log_event(self.queue_log, event)

    # --- actions -----------------------------------------------------------------------------

    def retry(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """Make a deferred message due now; its attempt count (and so later backoff) is kept."""
        meta = self._peek_meta('new', msg_id)
        if meta is not None and meta.last_delivery_attempt is None:
            return ActionResult(msg_id, 'retry', NOOP, 'already due', state='new')
        msg, failure = self._acquire('retry', msg_id, ('new',), wait)
        if msg is None:
            assert failure is not None
            return failure
        if msg.meta.last_delivery_attempt is None:
            self.queue.release(msg)
            return ActionResult(msg_id, 'retry', NOOP, 'already due', state='new')
        msg.meta.last_delivery_attempt = None
        self._rewrite(msg, 'new')
        self._log('retry', msg_id, msg.meta)
        return ActionResult(msg_id, 'retry', OK, 'due now', state='new')

    def hold(self, msg_id: str, reason: Optional[str] = None, *, wait: Optional[float] = None) -> ActionResult:
        """Park a waiting message in hold/: never delivered, never expired, until released."""
        msg, failure = self._acquire('hold', msg_id, ('new',), wait)
        if msg is None:
            assert failure is not None
            if failure.outcome == WRONG_STATE and failure.state == 'hold':
                return ActionResult(msg_id, 'hold', NOOP, 'already held', state='hold')
            return failure
        msg.meta.extra[HELD_SINCE] = format_date(self.clock())
        if reason:
            msg.meta.extra[HOLD_REASON] = reason
        self._rewrite(msg, 'hold')
        self._log('held', msg_id, msg.meta, reason=reason)
        return ActionResult(msg_id, 'hold', OK, 'held', state='hold')

    def release(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """Back from hold/ to new/. The time spent on hold does not count against its lifetime."""
        msg, failure = self._acquire('release', msg_id, ('hold',), wait)
        if msg is None:
            assert failure is not None
            if failure.outcome == WRONG_STATE and failure.state == 'new':
                return ActionResult(msg_id, 'release', NOOP, 'not held', state='new')
            return failure
        meta = msg.meta
        held_since = _extra_date(meta, HELD_SINCE)
        if held_since is not None and meta.queue_date is not None:
            meta.extra.setdefault(ORIGINAL_DATE, format_date(meta.queue_date))
            meta.queue_date += max(self.clock() - held_since, timedelta(0))
        meta.extra.pop(HELD_SINCE, None)
        meta.extra.pop(HOLD_REASON, None)
        self._rewrite(msg, 'new')
        self._log('released', msg_id, meta)
        return ActionResult(msg_id, 'release', OK, 'released', state='new')

    def requeue(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """From failed/ back to new/ as if just queued: retries reset, fresh lifetime, reason cleared."""
        path = os.path.join(self.queue.path, 'failed', msg_id)
        try:
            meta = self.queue.read_meta('failed', msg_id)
            if not meta.to_addrs:
                raise QueueFileError('no recipients in Envelope-to')
        except QueueFileError as exc:
            # Claiming would wrap the file in yet another quarantine header; leave it alone.
            return ActionResult(msg_id, 'requeue', CORRUPT, f'not a valid queue file ({exc}); '
                                f'inspect it with "show", remove it with "delete"', state='failed')
        except OSError as exc:
            if exc.errno == errno.ELOOP or (os.path.lexists(path) and not os.path.isfile(path)):
                return ActionResult(msg_id, 'requeue', CORRUPT, 'not a regular file', state='failed')
            # Not (or no longer) in failed/: _acquire below says where it is.
        msg, failure = self._acquire('requeue', msg_id, ('failed',), wait)
        if msg is None:
            assert failure is not None
            return failure
        meta = msg.meta
        now = self.clock()
        if meta.queue_date is not None:
            meta.extra.setdefault(ORIGINAL_DATE, format_date(meta.queue_date))
        meta.queue_date = now
        # move() with reset_retries rewrites the file from msg.meta: attempts, last error and reason go.
        self.queue.move(msg, 'new', reset_retries=True)
        self._log('requeued', msg_id, meta)
        return ActionResult(msg_id, 'requeue', OK, 'requeued', state='new')

    def delete(self, msg_id: str, *, wait: Optional[float] = None, hint: Optional[str] = None) -> ActionResult:
        """Remove a message from any state (also an unreadable file); waits while it is being delivered."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        attempts = 0
        pause = _POLL_FIRST
        while True:
            attempts += 1
            state = self.locate(msg_id, hint)
            if state is None:
                return ActionResult(msg_id, 'delete', GONE,
                                    'no longer in the queue (delivered or removed meanwhile)')
            path = os.path.join(self.queue.path, state, msg_id)
            meta = self._peek_meta(state, msg_id)
            try:
                removed = self._unlink_locked(path)
            except IsADirectoryError:
                return ActionResult(msg_id, 'delete', CORRUPT, f'{path} is a directory; remove it by hand',
                                    state=state)
            if removed is True:
                self._log('deleted', msg_id, meta, state=state)
                return ActionResult(msg_id, 'delete', OK, f'deleted from {state}/', state=state)
            if time.monotonic() >= deadline and attempts >= 3:
                return ActionResult(msg_id, 'delete', BUSY,
                                    'busy: being delivered by another process; try again later', state='cur')
            if removed is False:
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)

    def _peek_meta(self, state: str, msg_id: str) -> Optional[QueueMeta]:
        try:
            return self.queue.read_meta(state, msg_id)
        except (OSError, QueueFileError):
            return None

    def _unlink_locked(self, path: str) -> Optional[bool]:
        """Remove ``path`` under its lock. True: removed; False: someone holds it; None: it moved away.

        Same protocol as ``MaildirQueue.claim``: exclusive non-blocking ``flock``, then
        check that the locked inode is still the one at the path. Unlike ``claim``,
        the file is never parsed, so an unreadable file is not moved around first.
        """
        try:
            st_path = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st_path.st_mode):
            raise IsADirectoryError(errno.EISDIR, 'is a directory', path)
        if not stat.S_ISREG(st_path.st_mode):
            # Symlinks and the like can never be claimed (O_NOFOLLOW), so nobody can hold them.
            try:
                os.unlink(path)
            except FileNotFoundError:
                return None
            self._sync(path)
            return True
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                st_now = os.lstat(path)
            except FileNotFoundError:
                return None
            st_fd = os.fstat(fd)
            if (st_now.st_ino, st_now.st_dev) != (st_fd.st_ino, st_fd.st_dev):
                return None  # replaced by its owner meanwhile; look again
            os.unlink(path)
        finally:
            os.close(fd)
        self._sync(path)
        return True

    def _sync(self, path: str) -> None:
        if self.queue.fsync:
            _fsync_dir(os.path.dirname(path))

    def purge(self, older_than: timedelta, states: Sequence[str] = PURGE_STATES, *,
              dry_run: bool = False) -> Iterator[ActionResult]:
        """Delete every message older than ``older_than`` in ``states``; busy ones are skipped."""
        selection = Selection(states=tuple(states), older_than=older_than)
        for row in self.rows(selection):
            if dry_run:
                yield ActionResult(row.msg_id, 'purge', OK, f'would be purged from {row.state}/', state=row.state)
                continue
            result = self.delete(row.msg_id, wait=0, hint=row.state)
            result.action = 'purge'
            yield result

    def deliver(self, msg_id: str, handler: Any, *, wait: Optional[float] = None) -> ActionResult:
        """Deliver one waiting message now, whatever its schedule (``handler``: a ``MessageHandler``)."""
        msg, failure = self._acquire('deliver', msg_id, ('new',), wait)
        if msg is None:
            assert failure is not None
            return failure
        try:
            result = handler.send_message(msg)
        finally:
            if msg.is_claimed:
                self.queue.release(msg)
        if result is None:
            return ActionResult(msg_id, 'deliver', BUSY, 'could not claim the message', state='new')
        connection_failed = bool(getattr(result, 'connection_failed', False))
        reply = f' ({result.smtp_response})' if getattr(result, 'smtp_response', None) is not None else ''
        if result.discarded:
            return ActionResult(msg_id, 'deliver', OK, 'discarded by a plugin', state=None)
        if result.queued_to:
            return ActionResult(msg_id, 'deliver', DEFERRED, f'deferred: {result.error or reply.strip()}',
                                state=self.locate(msg_id, 'new'), connection_failed=connection_failed)
        if result.refused:
            details = '; '.join(f'{addr}: {code} {text}' for addr, (code, text) in result.refused.items())
            return ActionResult(msg_id, 'deliver', REFUSED, f'refused: {details}', state=self.locate(msg_id))
        return ActionResult(msg_id, 'deliver', OK, f'sent{reply}', state=None)
