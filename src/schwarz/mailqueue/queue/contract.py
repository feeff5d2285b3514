"""The queue contract: what every store offers, in domain terms (SPEC §11.1).

Everything above a store (handler, runner, ``mq-queue``, the CLIs, framework
backends) talks to a queue only through ``QueueStore``. No path, file handle,
lock, lease or SQL crosses this line: a claim is an opaque ``token`` that only
the store which issued it looks into, and a queue id is an opaque string.

States: ``new`` (waiting), ``cur`` (claimed by a runner or an application),
``hold`` (parked by an admin), ``failed`` (dead letters with a reason). The
names are the maildir's directory names, kept for compatibility.

Due-ness belongs to the store: ``defer`` records when a message is due again,
and ``claim_due`` picks and claims due messages in one step (a database does
it in one statement). A store that meets a message without a recorded due time
(maildir files written by 1.0.0) derives it from the ``RetryPolicy`` it is given.

A new store: implement ``QueueStore``, register its URL scheme in
``queue/locations.py``, and run ``tests/stores/`` against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from ..errors import ClaimLost, CorruptMessage, QueueError, QueueUnavailable
from .format import FAILED_REASON, LAST_ERROR, QueueMeta, format_date, parse_date

if TYPE_CHECKING:  # pragma: no cover
    from .schedule import RetryPolicy

__all__ = [
    'CLAIMED',
    'ClaimBatch',
    'FAILED',
    'HELD',
    'Identifying',
    'NEW',
    'STATES',
    'ClaimLost',
    'CorruptMessage',
    'QueueEntry',
    'QueueError',
    'QueueStore',
    'QueueUnavailable',
    'QueuedId',
    'QueuedMessage',
    'StateCount',
    'StoreSummary',
    'Summarizing',
    'due_time',
    'same_queue',
]

NEW = 'new'
CLAIMED = 'cur'
HELD = 'hold'
FAILED = 'failed'
STATES: Tuple[str, ...] = (NEW, CLAIMED, HELD, FAILED)

# Our own meta key for "due again at" (X-Queue-* lines are ours in queue files).
NEXT_ATTEMPT = 'X-Queue-Next-Attempt'


@dataclass
class QueueEntry:
    """A message as a listing sees it, without claiming it.

    ``changed`` is when it entered its state (seconds since the epoch). ``error`` is set
    instead of ``meta`` when the stored message cannot be read. ``path`` is informational
    (file stores only): nothing above the store may use it to reach the message.
    """

    msg_id: str
    state: str
    size: int
    changed: float
    meta: Optional[QueueMeta]
    error: Optional[str] = None
    path: Optional[str] = None
    #: claimed messages only: True while the claim's owner is alive, False for an abandoned claim
    #: (``recover()`` gives it back; ``claim(msg_id, CLAIMED)`` takes it over); None elsewhere
    active: Optional[bool] = None

    @property
    def mtime(self) -> float:  # the name of 1.x listings
        return self.changed


@dataclass
class StateCount:
    """Aggregates of one state: how many, how many bytes, the oldest queue date."""

    count: int = 0
    size: int = 0
    oldest: Optional[datetime] = None
    oldest_id: Optional[str] = None  # (``summary()`` fills it; ``stats()`` need not)


@dataclass
class StoreSummary:
    """What ``mq-queue stats`` shows, aggregated by the store.

    ``counts[state].oldest`` is when the oldest message first entered the queue (its
    X-Queue-Original-Date when an admin re-queued it, else its queue date). ``deferred``:
    waiting after at least one failed attempt; ``due``: waiting and due at ``now`` under the
    policy (``is_due``); ``active``: claimed by an owner that is alive.
    """

    counts: Dict[str, StateCount]
    deferred: int = 0
    due: int = 0
    active: int = 0


@runtime_checkable
class Summarizing(Protocol):
    """Optional: a store that can aggregate ``StoreSummary`` without handing out every message.

    A database does it in a query; a file store would have to read every file anyway, so it
    does not offer this and ``QueueAdmin.stats`` reads the entries. Stores that offer it run
    ``tests/stores/test_summary.py``, which compares both ways.
    """

    def summary(self, policy: RetryPolicy, now: datetime) -> StoreSummary:
        ...


@runtime_checkable
class Identifying(Protocol):
    """Optional: a store that can tell whether two locations name the same queue (a symlinked
    directory; one database reached by two host names). ``same_queue`` falls back to comparing
    locations for stores without it."""

    def identity(self) -> str:
        """Equal for two instances on the same queue, different otherwise (may ask the store)."""
        ...


def same_queue(one: QueueStore, other: QueueStore) -> bool:
    if one.kind != other.kind:
        return False
    if isinstance(one, Identifying) and isinstance(other, Identifying):
        return one.identity() == other.identity()
    return one.location == other.location


class ClaimBatch(List['QueuedMessage']):
    """What ``claim_due`` claimed, plus what it passed over on the way (for the run's statistics)."""

    def __init__(self, messages: Sequence[QueuedMessage] = (), *, not_due: int = 0, corrupt: int = 0) -> None:
        super().__init__(messages)
        self.not_due = not_due  # looked at, not due yet (stores that filter in a query report 0)
        self.corrupt = corrupt  # unreadable, moved to failed


class QueuedMessage:
    """A claimed message. Holds the claim until completed, deferred, failed, moved or released.

    The attribute names (``from_addr``, ``to_addrs``, ``retries``, ...) are those of
    mailqueue-runner 1.0.0's queued message objects.
    """

    def __init__(self, store: QueueStore, msg_id: str, meta: QueueMeta, msg_bytes: bytes,
                 token: object, path: Optional[str] = None) -> None:
        self.store = store
        self.msg_id = msg_id
        self.meta = meta
        self.msg_bytes = msg_bytes
        # Opaque: a lock, a lease... only ``store`` looks inside. None once the claim has ended.
        self.token: Optional[object] = token
        self.path = path

    @property
    def backend(self) -> QueueStore:  # 1.x name
        return self.store

    @property
    def from_addr(self) -> str:
        return self.meta.from_addr

    @property
    def to_addrs(self) -> List[str]:
        return list(self.meta.to_addrs)

    @property
    def retries(self) -> int:
        return self.meta.retries

    @property
    def last_delivery_attempt(self) -> Optional[datetime]:
        return self.meta.last_delivery_attempt

    @property
    def queue_date(self) -> Optional[datetime]:
        return self.meta.queue_date

    @property
    def is_claimed(self) -> bool:
        return self.token is not None

    def __repr__(self) -> str:
        return f'<QueuedMessage {self.msg_id} to={self.meta.to_addrs!r} retries={self.meta.retries}>'

    def __enter__(self) -> QueuedMessage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_claimed:
            self.store.release(self)


class QueuedId(str):
    """The id of a message queued without claiming it; a ``str``, and it knows its store.

    ``MessageHandler.send_message(queued_id)`` claims and sends it (conservative sending
    without ``in_progress``).
    """

    store: QueueStore

    def __new__(cls, store: QueueStore, msg_id: str) -> QueuedId:
        obj = super().__new__(cls, msg_id)
        obj.store = store
        return obj

    @property
    def queue(self) -> QueueStore:  # 1.x name
        return self.store


class QueueStore(Protocol):
    """What a runner, a handler and ``mq-queue`` need from a queue store."""

    #: short name for logs and results ('maildir', 'memory', 'postgresql')
    kind: str
    #: where it is, for humans (a path, a URL without password)
    location: str

    # --- writing new messages ---------------------------------------------------------------

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                queue_date: Optional[datetime] = None, extra: Optional[Dict[str, str]] = None,
                attempted: Optional[datetime] = None, retries: Optional[int] = None) -> str:
        """Store durably in ``new``; the id. ``QueueUnavailable`` when nothing could be stored.

        ``attempted``: the caller already tried to deliver it at that time (one attempt counted,
        so the queue, ``mq-queue`` and the delivery log agree on the number of attempts); it is
        due again at once all the same (the first runner pass tries it). With ``retries``: that
        many attempts were made, the last at ``attempted``, and the backoff schedule decides
        (``entering_meta``).
        """
        ...

    def enqueue_claimed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                        queue_date: Optional[datetime] = None) -> QueuedMessage:
        """Store durably and claimed by the caller (conservative sending: store, then send)."""
        ...

    def store_dead_letter(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        """Keep a copy in ``failed`` with the reason (recipients refused permanently)."""
        ...

    # --- claiming ---------------------------------------------------------------------------

    def claim_due(self, limit: int, *, now: datetime, policy: RetryPolicy,
                  force: bool = False) -> ClaimBatch:
        """Claim up to ``limit`` messages that are due at ``now`` (all waiting ones with ``force``).

        Messages whose lifetime ran out are due too (the runner moves them to failed).
        An empty list ends a pass: nothing more is due now. Unreadable messages met on
        the way are moved to ``failed`` with the reason, and skipped.
        """
        ...

    def claim(self, msg_id: str, state: str = NEW) -> Optional[QueuedMessage]:
        """Claim one message by id; None when it is gone or someone else holds it.

        From ``CLAIMED`` only an abandoned claim can be taken over (released, it goes to ``new``).

        ``CorruptMessage`` when it cannot be read (it is moved to ``failed`` first).
        """
        ...

    # --- ending a claim ---------------------------------------------------------------------

    def complete(self, msg: QueuedMessage, *, wait: bool = True) -> None:
        """Delivered: remove it.

        ``wait=False`` lets a store whose removal costs a round trip send it and read the answer
        later (before its next operation): then a lost claim is logged, not raised. The removal is
        as certain as with ``wait=True`` once this returns; only its confirmation comes later.
        """
        ...

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str, attempt_time: datetime,
              next_attempt: Optional[datetime] = None) -> None:
        """Temporary failure: keep only ``recipients``, count the attempt, due again at ``next_attempt``."""
        ...

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str:
        """Dead letter: to ``failed`` with the reason (and only ``recipients`` if given)."""
        ...

    def release(self, msg: QueuedMessage) -> None:
        """Give it back unchanged, to the state it was claimed from (a no-op once the claim ended)."""
        ...

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False,
             due_now: bool = False, queue_date: Optional[datetime] = None,
             extra: Optional[Dict[str, Optional[str]]] = None) -> None:
        """Admin moves (hold, release, requeue, retry) of a claimed message.

        ``reset_retries`` forgets every attempt and error; ``due_now`` keeps the attempt count
        but makes it due at once; ``queue_date`` restarts (or shifts) the lifetime; ``extra``
        sets (or, with None, removes) meta values.
        """
        ...

    def rewrite(self, msg: QueuedMessage, *, sender: Optional[str] = None,
                recipients: Optional[Sequence[str]] = None) -> None:
        """Change the envelope of a claimed message; it stays claimed."""
        ...

    # --- looking without claiming -----------------------------------------------------------

    def view(self, msg_id: str) -> Optional[Tuple[QueueEntry, bytes]]:
        """One message with its bytes, in whatever state; None when there is none."""
        ...

    def entries(self, states: Sequence[str] = STATES) -> Iterator[QueueEntry]:
        """Stream every message in ``states`` (memory stays flat however long the queue)."""
        ...

    def entry(self, msg_id: str) -> Optional[QueueEntry]:
        """One message as ``entries()`` shows it (no bytes), in whatever state; None when there is none."""
        ...

    def ids(self, states: Sequence[str] = STATES) -> Iterator[Tuple[str, str]]:
        """Stream ``(state, id)`` of every message in ``states`` without reading the messages."""
        ...

    def stats(self) -> Dict[str, StateCount]:
        """Counts per state."""
        ...

    def resolve(self, prefix: str, states: Sequence[str] = STATES) -> List[Tuple[str, str]]:
        """``(state, id)`` of every message whose id starts with ``prefix``."""
        ...

    def delete(self, msg_id: str, state: str) -> Optional[bool]:
        """Remove an unclaimed message: True; False when someone holds it; None when it is gone."""
        ...

    # --- housekeeping -----------------------------------------------------------------------

    def check(self) -> None:
        """``QueueUnavailable`` when this process cannot work on the store (read-only, no permission...)."""
        ...

    def recover(self) -> int:
        """Give claims whose owner died back (to the state they were claimed from, where the store
        knows it; the maildir puts them into ``new``); how many."""
        ...

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for new messages; True if something arrived."""
        ...

    def close(self) -> None:
        ...


def entering_meta(sender: str, recipients: Sequence[str], *, queue_date: Optional[datetime] = None,
                  extra: Optional[Dict[str, str]] = None, attempted: Optional[datetime] = None,
                  retries: Optional[int] = None) -> QueueMeta:
    """The meta block of a message entering the queue: what every store's ``enqueue`` writes.

    ``attempted`` alone: the caller tried it just now (one attempt), due again at once.
    ``retries``: attempts made before, the last at ``attempted`` (1.x's ``X-Retries`` and
    ``X-Last-Attempt``); due when the backoff schedule says.
    """
    from datetime import timezone

    if not recipients:
        raise ValueError('cannot queue a message without recipients')
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise ValueError(f'retries must be a whole number from 0, not {retries!r}')
    if attempted is not None and not isinstance(attempted, datetime):
        raise ValueError(f'the last attempt must be a datetime, not {attempted!r}')
    if retries is None:
        retries = 1 if attempted is not None else 0
        if attempted is not None:
            extra = {**(extra or {}), NEXT_ATTEMPT: format_date(attempted)}
    return QueueMeta(sender or '', list(recipients), queue_date or datetime.now(timezone.utc), attempted,
                     retries, extra=dict(extra or {}))


def record_attempt(meta: QueueMeta, recipients: Sequence[str], error: str, attempt_time: datetime,
                   next_attempt: Optional[datetime]) -> None:
    """What ``defer`` writes, the same for every store: pending recipients, one attempt more, why, when next."""
    meta.to_addrs = list(recipients)
    meta.retries += 1
    meta.last_delivery_attempt = attempt_time
    meta.extra[LAST_ERROR] = error
    if next_attempt is not None:
        meta.extra[NEXT_ATTEMPT] = format_date(next_attempt)
    else:
        meta.extra.pop(NEXT_ATTEMPT, None)  # the policy decides at claim time


def apply_move(meta: QueueMeta, *, reset_retries: bool, due_now: bool, queue_date: Optional[datetime],
               extra: Optional[Dict[str, Optional[str]]]) -> None:
    """The metadata side of ``move``, the same for every store (see ``QueueStore.move``)."""
    if queue_date is not None:
        meta.queue_date = queue_date
    if reset_retries:
        meta.retries = 0
        meta.extra.pop(FAILED_REASON, None)
        meta.extra.pop(LAST_ERROR, None)
    if reset_retries or due_now:
        meta.last_delivery_attempt = None
        meta.extra.pop(NEXT_ATTEMPT, None)
    for key, value in (extra or {}).items():
        if value is None:
            meta.extra.pop(key, None)
        else:
            meta.extra[key] = value


def due_time(meta: QueueMeta, policy: RetryPolicy) -> Optional[datetime]:
    """When a message is due: its recorded next attempt, else derived from the policy.

    None means due now. The lifetime's end is a due time too: an expired message must be
    claimed to be moved to failed.
    """
    recorded = meta.extra.get(NEXT_ATTEMPT)
    due: Optional[datetime] = None
    if recorded:
        try:
            due = parse_date(recorded)
        except ValueError:
            due = None
    if due is None:
        due = policy.next_attempt(meta.last_delivery_attempt, meta.retries)
    if due is not None and meta.queue_date is not None:
        try:
            due = min(due, meta.queue_date + policy.max_queue_lifetime)
        except OverflowError:
            pass
    return due


def is_due(meta: QueueMeta, policy: RetryPolicy, now: datetime) -> bool:
    """Due now; a due time far in the future (clock skew, see ``schedule.clock_skew``) counts as now."""
    from .schedule import clock_skew

    due = due_time(meta, policy)
    if due is None or due <= now:
        return True
    if meta.last_delivery_attempt is not None and clock_skew(meta.last_delivery_attempt, now) is not None:
        return True
    return policy.give_up_reason(meta.queue_date, meta.retries, now) is not None
