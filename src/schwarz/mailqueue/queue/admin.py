"""Queue administration: what ``mq-queue`` does, as a library over any ``QueueStore``.

Every operation goes through the store contract (``queue.contract``): a message
is only changed while it is claimed (``store.claim(msg_id, state)``), exactly
like a runner does, so an admin action and a delivery never work on the same
message at once. A message that a runner is delivering right now is waited for
(up to ``wait`` seconds) and then reported as busy; one that disappears
meanwhile (delivered) is reported as gone. Nothing here knows how a store keeps
its messages (files, rows, a dict), so ``mq-queue`` works on every store.

Listings and statistics stream over ``store.entries()``: nothing is sorted and
no row is kept, so memory stays flat however large the queue is.

How the results look (table, JSON, Prometheus) is ``queue.admin_render``'s business.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ..errors import CorruptMessage
from ..logs import QUEUE_LOG, log_event
from .contract import (
    CLAIMED,
    FAILED,
    HELD,
    NEW,
    NEXT_ATTEMPT,
    STATES,
    QueuedMessage,
    QueueEntry,
    StoreSummary,
    Summarizing,
    due_time,
    is_due,
    same_queue,
)
from .format import (
    COPIED_FROM,
    FAILED_REASON,
    HOLD_REASON,
    LAST_ERROR,
    META_END,
    ORIGINAL_DATE,
    QueueMeta,
    format_date,
    parse_date,
)
from .locations import open_queue
from .schedule import RetryPolicy, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from .contract import QueueStore

__all__ = [
    'ABBREV_NAME_LIMIT',
    'ACTIVE',
    'BUSY',
    'COPIED_FROM',
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

# Our own meta values (readers ignore unknown X-Queue-* names).
HELD_SINCE = 'X-Queue-Held-Since'
# a copy on its way (written, meta not yet complete) is due only that far ahead: runners leave it alone
_COPY_PARKED = timedelta(days=3650)

MIN_PREFIX = 4
"""Shortest prefix accepted for an id (an exact id may be shorter)."""
MIN_ABBREV = 8
"""Shortest abbreviation shown in listings."""
ABBREV_NAME_LIMIT = 200_000
"""Finding the shortest unique prefixes needs every id in memory (about 100 bytes each);
above this many messages listings show full ids instead, so memory stays bounded."""

# Claimed messages are being delivered; purging them would race with the runner.
PURGE_STATES = (NEW, HELD, FAILED)

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

_POLL_FIRST = 0.005
_POLL_MAX = 0.05
_LENIENT_READ = 64 * 1024


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
    """One message as a listing shows it (read without claiming)."""

    msg_id: str
    state: str
    path: Optional[str]
    """Where the store keeps it, for humans (file stores only); never used to reach the message."""
    size: int
    mtime: float
    """When it entered its state (seconds since the epoch)."""
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
    """Why the stored message could not be read (None when it could)."""
    active: Optional[bool] = None
    """For claimed messages: True while a live owner holds the claim, False for an abandoned claim."""

    def age(self, now: datetime) -> timedelta:
        born = self.first_queued or datetime.fromtimestamp(self.mtime, timezone.utc)
        return max(now - born, timedelta(0))

    @property
    def reason(self) -> Optional[str]:
        """The one piece of text that best explains why the message is still here."""
        if self.error:
            return f'unreadable: {self.failed_reason or self.error}'
        if self.state == FAILED:
            return self.failed_reason or self.last_error
        if self.state == HELD:
            return self.hold_reason or self.last_error
        return self.last_error

    def as_json(self, now: datetime) -> Dict[str, Any]:
        """The JSON object of ``mq-queue list --json`` (see ``admin_render.row_json``)."""
        from .admin_render import row_json

        return row_json(self, now)


def lenient_meta(data: bytes) -> Dict[str, str]:
    """Whatever ``name: value`` lines precede the meta end of bytes the strict parser rejects.

    A corrupt message moved to failed carries its reason in such a line; showing it
    is the point of listing it at all. Names are lower case.
    """
    head = data[:_LENIENT_READ]
    end = head.find(META_END)
    if end < 0:
        return {}
    values: Dict[str, str] = {}
    for raw in head[:end].splitlines():
        name, sep, value = raw.decode('utf-8', 'replace').partition(':')
        if sep and name.strip():
            # The outermost (first) line wins: a message quarantined twice has nested meta blocks.
            values.setdefault(name.strip().lower(), value.strip())
    return values


def make_row(entry: QueueEntry, policy: RetryPolicy, now: datetime, raw: Optional[bytes] = None) -> Row:
    """The row of a store's entry; ``raw`` (the stored bytes of an unreadable message) adds what can be salvaged."""
    meta = entry.meta
    row = Row(msg_id=entry.msg_id, state=entry.state, path=entry.path, size=entry.size, mtime=entry.changed,
              from_addr=None, to_addrs=[], queue_date=None, first_queued=None, error=entry.error,
              active=entry.active)
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
        if entry.state in (NEW, CLAIMED):
            # As the runner sees it: a recorded next attempt, else the backoff; clock skew means due now.
            row.due = is_due(meta, policy, now)
            row.next_attempt = due_time(meta, policy)
            if row.due and row.next_attempt is not None and row.next_attempt > now:
                row.next_attempt = None
    elif raw:
        lenient = lenient_meta(raw)
        row.failed_reason = lenient.get(FAILED_REASON.lower())
        if 'x-queue-date' in lenient:
            try:
                row.first_queued = row.queue_date = parse_date(lenient['x-queue-date'])
            except (TypeError, ValueError):
                pass
    return row


def _already_due(meta: QueueMeta) -> bool:
    return meta.last_delivery_attempt is None and not meta.extra.get(NEXT_ATTEMPT)


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
    """The message bytes; for an unreadable message, everything the store holds."""

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
    """The store's location (for humans)."""
    generated: datetime
    states: Dict[str, StateStats] = field(default_factory=lambda: {s: StateStats() for s in STATES})
    deferred: int = 0
    """Waiting messages after at least one failed attempt."""
    due: int = 0
    """Waiting messages that the next run will try."""
    active: int = 0
    """Claimed messages whose owner is alive (being delivered)."""

    @property
    def total(self) -> StateStats:
        total = StateStats()
        for item in self.states.values():
            total.merge(item)
        return total

    @classmethod
    def from_summary(cls, path: str, generated: datetime, summary: StoreSummary) -> QueueStats:
        """The figures of a store that aggregates them itself (no unreadable messages there)."""
        stats = cls(path=path, generated=generated, deferred=summary.deferred, due=summary.due,
                    active=summary.active)
        for state, counted in summary.counts.items():
            stats.states[state] = StateStats(counted.count, counted.size, counted.oldest, counted.oldest_id)
        return stats

    def add(self, row: Row) -> None:
        self.states[row.state].add(row)
        if row.state == NEW and row.error is None:
            if row.retries > 0:
                self.deferred += 1
            if row.due:
                self.due += 1
        elif row.state == CLAIMED and row.active:
            self.active += 1

    def as_json(self) -> Dict[str, Any]:
        """``mq-queue stats --json`` (see ``admin_render.stats_json``)."""
        from .admin_render import stats_json

        return stats_json(self)

    def prometheus(self) -> str:
        """``mq-queue stats --prometheus`` (see ``admin_render.prometheus``)."""
        from .admin_render import prometheus

        return prometheus(self)


# --- the administrator -----------------------------------------------------------------------

Operation = Callable[[str, Optional[float]], ActionResult]
"""One action on one id, with a wait (None: the admin's default), e.g. ``lambda i, w: admin.hold(i, wait=w)``."""


class QueueAdmin:
    """Inspect and change a queue; every change happens under the message's claim."""

    def __init__(self, store: Union[QueueStore, str], policy: Optional[RetryPolicy] = None, *,
                 wait: float = 5.0, app: str = 'mq-queue', clock: Callable[[], datetime] = utcnow,
                 queue_log: Optional[logging.Logger] = None, abbrev_limit: Optional[int] = ABBREV_NAME_LIMIT) -> None:
        self.store = open_queue(store)
        self.abbrev_limit = abbrev_limit
        self.policy = policy or RetryPolicy()
        # Bounded like mq-queue --wait: nan would make every wait endless (deadline comparisons
        # with nan are always False), inf or 1e300 as good as endless.
        from ..limits import WAIT

        self.wait = WAIT.parse(max(float(wait), 0.0))
        self.app = app
        self.clock = clock
        self.queue_log = queue_log or logging.getLogger(QUEUE_LOG)

    @property
    def queue(self) -> QueueStore:  # the name before stores
        return self.store

    # --- reading ---------------------------------------------------------------------------

    def _row(self, entry: QueueEntry, now: datetime) -> Row:
        raw: Optional[bytes] = None
        if entry.meta is None and entry.error is not None:
            viewed = self.store.view(entry.msg_id)  # salvage what the unreadable message says about itself
            raw = viewed[1] if viewed is not None else None
        return make_row(entry, self.policy, now, raw)

    def rows(self, selection: Selection = Selection()) -> Iterator[Row]:
        """Stream the messages that ``selection`` covers, in the store's order, one read each."""
        now = self.clock()
        for entry in self.store.entries(selection.states):
            row = self._row(entry, now)
            if selection.matches(row, now):
                yield row

    def names(self, states: Sequence[str] = STATES) -> Iterator[str]:
        return (msg_id for _state, msg_id in self.store.ids(states))

    def abbrev_length(self, minimum: int = MIN_ABBREV) -> Optional[int]:
        """Abbreviation length that keeps every id in the queue unique (ids only, no message is read).

        None (show full ids) for a queue of more than ``abbrev_limit`` messages.
        """
        return abbrev_length(self.names(), minimum, self.abbrev_limit)

    def locate(self, msg_id: str) -> Optional[str]:
        """The state ``msg_id`` is in right now, or None."""
        entry = self.store.entry(msg_id)
        return entry.state if entry is not None else None

    def resolve(self, prefixes: Sequence[str]) -> List[str]:
        """Full ids for ``prefixes`` (same order). An exact id always wins over longer ids it prefixes."""
        for prefix in prefixes:
            _check_prefix(prefix)
        return [self._resolve_one(prefix) for prefix in prefixes]

    def _resolve_one(self, prefix: str) -> str:
        if self.store.entry(prefix) is not None:
            return prefix
        found: set[str] = set()
        # A message moving between states during the store's scan can be missed once; look again.
        for _attempt in range(3):
            found = {msg_id for _state, msg_id in self.store.resolve(prefix)}
            if found:
                break
        if prefix in found:
            return prefix
        if not found:
            raise UnknownID(f'{prefix}: no such message in {self.store.location}')
        if len(prefix) < MIN_PREFIX:
            raise InvalidID(f'{prefix}: too short; give at least {MIN_PREFIX} characters of the id')
        if len(found) > 1:
            raise AmbiguousID(prefix, sorted(found))
        return next(iter(found))

    def view(self, msg_id: str) -> MessageView:
        """Read one message without claiming it."""
        viewed = self.store.view(msg_id)
        if viewed is None:
            raise UnknownID(f'{msg_id}: no such message in {self.store.location}')
        entry, content = viewed
        row = make_row(entry, self.policy, self.clock(), content if entry.error is not None else None)
        return MessageView(row, entry.meta if entry.error is None else None, content)

    def stats(self) -> QueueStats:
        now = self.clock()
        if isinstance(self.store, Summarizing):
            # a million rows are a query's work, not a million Python objects'
            return QueueStats.from_summary(self.store.location, now, self.store.summary(self.policy, now))
        return self.stats_from_rows()

    def stats_from_rows(self) -> QueueStats:
        """``stats()`` by reading every entry (what stores without ``summary()`` need)."""
        result = QueueStats(path=self.store.location, generated=self.clock())
        for row in self.rows():
            result.add(row)
        return result

    def select_ids(self, selection: Selection) -> Iterator[Tuple[str, str]]:
        """(state, id) for bulk actions; reads the messages only when the selection needs it."""
        if selection.older_than is None and not selection.filters_addresses:
            return self.store.ids(selection.states)
        return ((row.state, row.msg_id) for row in self.rows(selection))

    def apply(self, ids: Iterable[str], operation: Operation, *, bulk: bool = False) -> Iterator[ActionResult]:
        """``operation`` on each id, results as they come.

        ``bulk`` (``--all``): walking the queue behind a running runner would mean waiting for
        every message it delivers at that moment; those are skipped and tried once more at the end.
        """
        busy: List[str] = []
        for msg_id in ids:
            result = operation(msg_id, 0 if bulk else None)
            if bulk and result.outcome == BUSY:
                busy.append(msg_id)
                continue
            yield result
        for msg_id in busy:
            yield operation(msg_id, None)

    # --- claiming ----------------------------------------------------------------------------

    def _acquire(self, action: str, msg_id: str, allowed: Collection[str],
                 wait: Optional[float] = None) -> Tuple[Optional[QueuedMessage], Optional[ActionResult]]:
        """Claim ``msg_id`` if it is in one of ``allowed``; wait (bounded) while someone else holds it."""
        msg, failure, _state = self._acquire_from(action, msg_id, allowed, wait)
        return msg, failure

    def _acquire_from(self, action: str, msg_id: str, allowed: Collection[str], wait: Optional[float] = None
                      ) -> Tuple[Optional[QueuedMessage], Optional[ActionResult], Optional[str]]:
        """``_acquire``, and the state the message was claimed from: a wait may end with the message
        elsewhere than where it was first seen (a runner failed it, an admin held it)."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        pause = _POLL_FIRST
        while True:
            state = self.locate(msg_id)
            if state is None:
                return None, ActionResult(msg_id, action, GONE,
                                          'no longer in the queue (delivered or removed meanwhile)'), None
            if state != CLAIMED and state not in allowed:
                return None, ActionResult(msg_id, action, WRONG_STATE, f'is in {state}/', state=state), None
            try:
                msg = self.store.claim(msg_id, state)
            except CorruptMessage as exc:
                return None, ActionResult(msg_id, action, CORRUPT,
                                          f'not a valid queue file ({exc}); moved to failed/', state=FAILED), None
            if msg is not None:
                if state == CLAIMED and NEW not in allowed:
                    # An abandoned claim is a waiting message: hand it back as recovery would.
                    self.store.release(msg)
                    return None, ActionResult(msg_id, action, WRONG_STATE, 'is in new/', state=NEW), None
                return msg, None, state
            if time.monotonic() >= deadline:
                return None, ActionResult(msg_id, action, BUSY,
                                          'busy: being delivered by another process; try again later',
                                          state=CLAIMED), None
            # Deliveries take milliseconds to seconds: poll soon, then less often.
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

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
        entry = self.store.entry(msg_id)
        if entry is not None and entry.state == NEW and entry.meta is not None and _already_due(entry.meta):
            return ActionResult(msg_id, 'retry', NOOP, 'already due', state=NEW)
        msg, failure = self._acquire('retry', msg_id, (NEW,), wait)
        if msg is None:
            assert failure is not None
            return failure
        if _already_due(msg.meta):
            self.store.release(msg)
            return ActionResult(msg_id, 'retry', NOOP, 'already due', state=NEW)
        self.store.move(msg, NEW, due_now=True)
        self._log('retry', msg_id, msg.meta)
        return ActionResult(msg_id, 'retry', OK, 'due now', state=NEW)

    def hold(self, msg_id: str, reason: Optional[str] = None, *, wait: Optional[float] = None) -> ActionResult:
        """Park a waiting message: never delivered, never expired, until released."""
        msg, failure = self._acquire('hold', msg_id, (NEW,), wait)
        if msg is None:
            assert failure is not None
            if failure.outcome == WRONG_STATE and failure.state == HELD:
                return ActionResult(msg_id, 'hold', NOOP, 'already held', state=HELD)
            return failure
        extra: Dict[str, Optional[str]] = {HELD_SINCE: format_date(self.clock())}
        if reason:
            extra[HOLD_REASON] = reason
        self.store.move(msg, HELD, extra=extra)
        self._log('held', msg_id, msg.meta, reason=reason)
        return ActionResult(msg_id, 'hold', OK, 'held', state=HELD)

    def release(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """Back from hold to new. The time spent on hold does not count against its lifetime."""
        msg, failure = self._acquire('release', msg_id, (HELD,), wait)
        if msg is None:
            assert failure is not None
            if failure.outcome == WRONG_STATE and failure.state == NEW:
                return ActionResult(msg_id, 'release', NOOP, 'not held', state=NEW)
            return failure
        meta = msg.meta
        extra: Dict[str, Optional[str]] = {HELD_SINCE: None, HOLD_REASON: None}
        lifetime_from: Optional[datetime] = None
        held_since = _extra_date(meta, HELD_SINCE)
        if held_since is not None and meta.queue_date is not None:
            if ORIGINAL_DATE not in meta.extra:
                extra[ORIGINAL_DATE] = format_date(meta.queue_date)
            lifetime_from = meta.queue_date + max(self.clock() - held_since, timedelta(0))
        self.store.move(msg, NEW, queue_date=lifetime_from, extra=extra)
        self._log('released', msg_id, msg.meta)
        return ActionResult(msg_id, 'release', OK, 'released', state=NEW)

    def requeue(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """From failed back to new as if just queued: retries reset, fresh lifetime, reason cleared."""
        entry = self.store.entry(msg_id)
        if entry is not None and entry.state == FAILED and (entry.meta is None or not entry.meta.to_addrs):
            # Claiming would make the store quarantine it once more; leave it alone.
            problem = entry.error or 'no recipients'
            return ActionResult(msg_id, 'requeue', CORRUPT, f'not a valid queue file ({problem}); '
                                f'inspect it with "show", remove it with "delete"', state=FAILED)
        msg, failure = self._acquire('requeue', msg_id, (FAILED,), wait)
        if msg is None:
            assert failure is not None
            return failure
        meta = msg.meta
        extra: Dict[str, Optional[str]] = {}
        if meta.queue_date is not None and ORIGINAL_DATE not in meta.extra:
            extra[ORIGINAL_DATE] = format_date(meta.queue_date)
        # attempts, last error and failure reason go; the lifetime starts now
        self.store.move(msg, NEW, reset_retries=True, queue_date=self.clock(), extra=extra)
        self._log('requeued', msg_id, msg.meta)
        return ActionResult(msg_id, 'requeue', OK, 'requeued', state=NEW)

    def delete(self, msg_id: str, *, wait: Optional[float] = None) -> ActionResult:
        """Remove a message from any state (also an unreadable one); waits while it is being delivered."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        attempts = 0
        pause = _POLL_FIRST
        while True:
            attempts += 1
            entry = self.store.entry(msg_id)
            if entry is None:
                return ActionResult(msg_id, 'delete', GONE,
                                    'no longer in the queue (delivered or removed meanwhile)')
            try:
                removed = self.store.delete(msg_id, entry.state)
            except CorruptMessage as exc:  # something the store cannot remove (a directory in a maildir)
                return ActionResult(msg_id, 'delete', CORRUPT, str(exc), state=entry.state)
            if removed is True:
                self._log('deleted', msg_id, entry.meta, state=entry.state)
                return ActionResult(msg_id, 'delete', OK, f'deleted from {entry.state}/', state=entry.state)
            if time.monotonic() >= deadline and attempts >= 3:
                return ActionResult(msg_id, 'delete', BUSY,
                                    'busy: being delivered by another process; try again later', state=CLAIMED)
            if removed is False:  # held by someone (None: it moved meanwhile; look again at once)
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)

    def purge(self, older_than: timedelta, states: Sequence[str] = PURGE_STATES, *,
              dry_run: bool = False) -> Iterator[ActionResult]:
        """Delete every message older than ``older_than`` in ``states``; busy ones are skipped."""
        selection = Selection(states=tuple(states), older_than=older_than)
        for row in self.rows(selection):
            if dry_run:
                yield ActionResult(row.msg_id, 'purge', OK, f'would be purged from {row.state}/', state=row.state)
                continue
            result = self.delete(row.msg_id, wait=0)
            result.action = 'purge'
            yield result

    # --- copying into another store ------------------------------------------------------------

    def copied_ids(self, target: QueueStore) -> Dict[str, Tuple[str, str]]:
        """``{source id: (state, id in target)}`` of the copies ``target`` holds (``COPIED_FROM``)."""
        found: Dict[str, Tuple[str, str]] = {}
        for entry in target.entries():
            source_id = entry.meta.extra.get(COPIED_FROM) if entry.meta is not None else None
            if source_id:
                found[source_id] = (entry.state, entry.msg_id)
        return found

    def copy_to(self, target: Union[QueueStore, str], *, wait: Optional[float] = None) -> Iterator[ActionResult]:
        """Move every message of this store into ``target``, one at a time, none lost or doubled.

        Each message is claimed here, written into ``target`` with its metadata (queue date,
        attempts, last attempt, last error, the other meta values; held stays held, failed stays
        failed, an abandoned claim goes to ``new``), and only then removed here. The copy
        records the id it had here (``COPIED_FROM``): a re-run after a crash between the two
        writes finds it, completes it and removes the message here, instead of copying it again.
        What cannot be covered: a copy in ``new`` that the target's runners delivered before
        that re-run (the message would be delivered twice; docs/postgresql.md). Messages being
        delivered here are waited for (``wait``) and then reported busy; unreadable ones go to
        ``failed`` here, as a runner would move them. ValueError: ``target`` is this very queue
        (under whatever name), before anything is touched.
        """
        target_store = open_queue(target)
        if same_queue(target_store, self.store):
            raise ValueError(f'the target {target_store.location} is the queue itself')
        copies = self.copied_ids(target_store)
        ids = [msg_id for _state, msg_id in self.store.ids((NEW, HELD, FAILED, CLAIMED))]
        for msg_id in ids:
            yield self._copy_one(msg_id, target_store, copies, wait)

    def _copy_one(self, msg_id: str, target: QueueStore, copies: Dict[str, Tuple[str, str]],
                  wait: Optional[float]) -> ActionResult:
        msg, failure, claimed_from = self._acquire_from('copy', msg_id, (NEW, HELD, FAILED), wait)
        if msg is None:
            assert failure is not None
            return failure
        # where it was when claimed, not when first seen: a wait for a runner may have ended with it
        # failed, or with another admin's hold; an abandoned claim goes where recovery would put it
        state = claimed_from if claimed_from in (HELD, FAILED) else NEW
        meta = msg.meta
        try:
            known = copies.get(msg_id)
            if known is None:
                # 1: written with its source id, parked (not due, fresh lifetime) while it is incomplete
                parked = self.clock() + _COPY_PARKED
                extra = {**meta.extra, COPIED_FROM: msg_id, NEXT_ATTEMPT: format_date(parked)}
                new_id = target.enqueue(msg.msg_bytes, meta.from_addr, list(meta.to_addrs),
                                        queue_date=self.clock(), extra=extra)
                copies[msg_id] = (NEW, new_id)
            else:
                new_id = known[1]
            # 2: its metadata and state, under the target's claim (also finishes a copy a crash interrupted)
            result = self._finish_copy(target, new_id, meta, state)
            if result is None:
                # someone else holds the copy in the target (a forced runner); the source keeps its
                # message until a re-run finishes the copy
                self.store.release(msg)
                return ActionResult(msg_id, 'copy', BUSY,
                                    f'its copy {new_id} is busy in the target; try again later', state=state)
            # 3: gone here
            self.store.complete(msg)
        except BaseException:
            if msg.is_claimed:
                self.store.release(msg)
            raise
        self._log('copied', msg_id, meta, target=target.location, target_id=new_id, state=state)
        detail = f'copied to {target.location} as {new_id} ({state})'
        if known is not None:
            detail = f'already copied as {new_id}; removed here'
        return ActionResult(msg_id, 'copy', OK if known is None else NOOP, detail, state=state)

    def _finish_copy(self, target: QueueStore, new_id: str, meta: QueueMeta, state: str) -> Optional[str]:
        """Give the copy ``new_id`` the source's meta and state; None when it cannot be claimed."""
        entry = target.entry(new_id)
        if entry is None:
            return new_id  # delivered (or deleted) in the target meanwhile: nothing left to finish
        copy = target.claim(new_id, entry.state)
        if copy is None:
            deadline = time.monotonic() + self.wait
            while copy is None and time.monotonic() < deadline:
                time.sleep(_POLL_MAX)
                entry = target.entry(new_id)
                if entry is None:
                    return new_id
                copy = target.claim(new_id, entry.state)
            if copy is None:
                return None
        copy.meta.retries = meta.retries
        copy.meta.last_delivery_attempt = meta.last_delivery_attempt
        extra: Dict[str, Optional[str]] = {NEXT_ATTEMPT: meta.extra.get(NEXT_ATTEMPT)}
        extra.update({key: value for key, value in meta.extra.items() if key != NEXT_ATTEMPT})
        target.move(copy, state, queue_date=meta.queue_date or self.clock(), extra=extra)
        return new_id

    def deliver(self, msg_id: str, handler: Any, *, wait: Optional[float] = None) -> ActionResult:
        """Deliver one waiting message now, whatever its schedule (``handler``: a ``MessageHandler``)."""
        msg, failure = self._acquire('deliver', msg_id, (NEW,), wait)
        if msg is None:
            assert failure is not None
            return failure
        try:
            result = handler.send_message(msg)
        finally:
            if msg.is_claimed:
                self.store.release(msg)
        if result is None:
            return ActionResult(msg_id, 'deliver', BUSY, 'could not claim the message', state=NEW)
        connection_failed = bool(getattr(result, 'connection_failed', False))
        reply = f' ({result.smtp_response})' if getattr(result, 'smtp_response', None) is not None else ''
        if result.discarded:
            return ActionResult(msg_id, 'deliver', OK, 'discarded by a plugin', state=None)
        if result.queued_to:
            return ActionResult(msg_id, 'deliver', DEFERRED, f'deferred: {result.error or reply.strip()}',
                                state=self.locate(msg_id), connection_failed=connection_failed)
        if result.refused:
            details = '; '.join(f'{addr}: {code} {text}' for addr, (code, text) in result.refused.items())
            return ActionResult(msg_id, 'deliver', REFUSED, f'refused: {details}', state=self.locate(msg_id))
        return ActionResult(msg_id, 'deliver', OK, f'sent{reply}', state=None)
