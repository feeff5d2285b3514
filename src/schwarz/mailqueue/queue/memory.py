"""An in-memory queue store: the reference implementation of the contract, for tests.

Nothing survives the process, so it is no place for real mail; it is for users'
own tests (``open_queue('memory://')``) and as the smallest complete example of
a store. Thread-safe. A claim belongs to the thread that made it: claims of
threads that have ended count as abandoned (the counterpart of a dead process's
released lock) and ``recover()`` gives them back.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .contract import (
    CLAIMED,
    FAILED,
    NEW,
    STATES,
    ClaimBatch,
    ClaimLost,
    QueuedMessage,
    QueueEntry,
    StateCount,
    apply_move,
    entering_meta,
    is_due,
    record_attempt,
)
from .format import FAILED_REASON, QueueMeta, check_envelope, check_meta
from .schedule import RetryPolicy

__all__ = ['MemoryQueue']


@dataclass
class _Record:
    state: str
    meta: QueueMeta
    msg_bytes: bytes
    changed: float
    token: Optional[object] = None
    owner: Optional[threading.Thread] = None
    origin: str = NEW  # where a claimed message goes back to on release


def _copy(meta: QueueMeta) -> QueueMeta:
    return QueueMeta(meta.from_addr, list(meta.to_addrs), meta.queue_date, meta.last_delivery_attempt,
                     meta.retries, dict(meta.extra))


class MemoryQueue:
    """A queue held in a dict. ``memory://name`` locations share one instance per name and process."""

    kind = 'memory'

    def __init__(self, name: str = '') -> None:
        self.location = f'memory://{name}'
        self._records: Dict[str, _Record] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._serial = itertools.count()
        # ids claim_due handed out in the current pass: one released or deferred during the
        # pass waits for the next pass (as in a maildir's walk over new/), so a runner's pass ends
        self._this_pass: Set[str] = set()

    def __repr__(self) -> str:
        return f'MemoryQueue({self.location!r})'

    # --- helpers ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f'{secrets.token_hex(6)}.{next(self._serial)}'

    def _add(self, state: str, msg_bytes: bytes, meta: QueueMeta) -> Tuple[str, _Record]:
        check_meta(meta)
        msg_id = self._new_id()
        record = _Record(state, _copy(meta), bytes(msg_bytes), time.time())
        with self._arrived:
            self._records[msg_id] = record
            if state == NEW:
                self._arrived.notify_all()
        return msg_id, record

    def _claim_record(self, msg_id: str, record: _Record) -> QueuedMessage:
        record.origin = record.state if record.state != CLAIMED else NEW
        token = object()
        record.token = token
        record.owner = threading.current_thread()
        record.state = CLAIMED
        record.changed = time.time()
        return QueuedMessage(self, msg_id, _copy(record.meta), record.msg_bytes, token)

    def _owned(self, msg: QueuedMessage) -> _Record:
        """The record of a claim that is still ours (call with the lock held)."""
        record = self._records.get(msg.msg_id)
        if record is None or msg.token is None or record.token is not msg.token:
            msg.token = None
            raise ClaimLost(f'{msg.msg_id} is no longer claimed by us')
        return record

    def _end_claim(self, msg: QueuedMessage, record: _Record, state: str, meta: QueueMeta) -> None:
        record.state = state
        record.meta = _copy(meta)
        record.token = record.owner = None
        record.changed = time.time()
        msg.token = None
        if state == NEW:
            self._arrived.notify_all()

    # --- writing new messages ---------------------------------------------------------------

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                queue_date: Optional[datetime] = None, extra: Optional[Dict[str, str]] = None,
                attempted: Optional[datetime] = None, retries: Optional[int] = None) -> str:
        meta = entering_meta(sender, recipients, queue_date=queue_date, extra=extra, attempted=attempted,
                             retries=retries)
        return self._add(NEW, msg_bytes, meta)[0]

    def enqueue_claimed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                        queue_date: Optional[datetime] = None) -> QueuedMessage:
        if not recipients:
            raise ValueError('cannot queue a message without recipients')
        meta = QueueMeta(sender or '', list(recipients), queue_date or datetime.now(timezone.utc))
        check_meta(meta)
        with self._lock:
            msg_id = self._new_id()
            record = self._records[msg_id] = _Record(CLAIMED, meta, bytes(msg_bytes), time.time())
            return self._claim_record(msg_id, record)

    def store_dead_letter(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        meta = QueueMeta(sender or '', list(recipients), datetime.now(timezone.utc), extra={FAILED_REASON: reason})
        return self._add(FAILED, msg_bytes, meta)[0]

    # --- claiming ---------------------------------------------------------------------------

    def claim_due(self, limit: int, *, now: datetime, policy: RetryPolicy,
                  force: bool = False) -> ClaimBatch:
        claimed = ClaimBatch()
        with self._lock:
            waiting = sorted(((r.meta.queue_date or now, msg_id) for msg_id, r in self._records.items()
                              if r.state == NEW and msg_id not in self._this_pass), key=lambda item: item[0])
            for _, msg_id in waiting:
                if len(claimed) >= limit:
                    break
                record = self._records[msg_id]
                if force or is_due(record.meta, policy, now):
                    claimed.append(self._claim_record(msg_id, record))
                    self._this_pass.add(msg_id)
                else:
                    claimed.not_due += 1
            if not claimed:
                self._this_pass.clear()  # an empty batch ends the pass
        return claimed

    def claim(self, msg_id: str, state: str = NEW) -> Optional[QueuedMessage]:
        with self._lock:
            record = self._records.get(msg_id)
            if record is None or record.state != state or self._held(record):
                return None
            return self._claim_record(msg_id, record)

    @staticmethod
    def _held(record: _Record) -> bool:
        """Claimed by a thread that is still alive (an ended thread's claim is abandoned)."""
        return record.token is not None and (record.owner is None or record.owner.is_alive())

    # --- ending a claim ---------------------------------------------------------------------

    def complete(self, msg: QueuedMessage, *, wait: bool = True) -> None:
        with self._lock:
            self._owned(msg)
            del self._records[msg.msg_id]
            msg.token = None

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str, attempt_time: datetime,
              next_attempt: Optional[datetime] = None) -> None:
        with self._arrived:
            record = self._owned(msg)
            record_attempt(msg.meta, recipients, error, attempt_time, next_attempt)
            self._end_claim(msg, record, NEW, msg.meta)

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str:
        with self._arrived:
            record = self._owned(msg)
            meta = msg.meta
            if recipients is not None:
                meta.to_addrs = list(recipients)
            meta.extra[FAILED_REASON] = reason
            self._end_claim(msg, record, FAILED, meta)
        return msg.msg_id

    def release(self, msg: QueuedMessage) -> None:
        with self._arrived:
            if msg.token is None:
                return
            record = self._owned(msg)
            # unchanged: what is stored, whatever the caller did to msg.meta
            self._end_claim(msg, record, record.origin, record.meta)
            msg.meta = _copy(record.meta)

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False,
             due_now: bool = False, queue_date: Optional[datetime] = None,
             extra: Optional[Dict[str, Optional[str]]] = None) -> None:
        if target_state not in STATES:
            raise ValueError(f'unknown state {target_state!r}')
        with self._arrived:
            record = self._owned(msg)
            apply_move(msg.meta, reset_retries=reset_retries, due_now=due_now, queue_date=queue_date, extra=extra)
            self._end_claim(msg, record, target_state, msg.meta)

    def rewrite(self, msg: QueuedMessage, *, sender: Optional[str] = None,
                recipients: Optional[Sequence[str]] = None) -> None:
        with self._lock:
            record = self._owned(msg)
            new_sender = msg.meta.from_addr if sender is None else sender
            new_recipients = list(msg.meta.to_addrs if recipients is None else recipients)
            check_envelope(new_sender, new_recipients)  # refused before anything changes
            msg.meta.from_addr = new_sender
            msg.meta.to_addrs = new_recipients
            record.meta = _copy(msg.meta)

    # --- looking without claiming -----------------------------------------------------------

    def _entry(self, msg_id: str, record: _Record) -> QueueEntry:
        active = self._held(record) if record.state == CLAIMED else None
        return QueueEntry(msg_id, record.state, len(record.msg_bytes), record.changed, _copy(record.meta),
                          active=active)

    def entry(self, msg_id: str) -> Optional[QueueEntry]:
        with self._lock:
            record = self._records.get(msg_id)
            return None if record is None else self._entry(msg_id, record)

    def ids(self, states: Sequence[str] = STATES) -> Iterator[Tuple[str, str]]:
        with self._lock:
            snapshot = [(r.state, msg_id) for msg_id, r in self._records.items() if r.state in states]
        yield from snapshot

    def view(self, msg_id: str) -> Optional[Tuple[QueueEntry, bytes]]:
        with self._lock:
            record = self._records.get(msg_id)
            if record is None:
                return None
            return self._entry(msg_id, record), record.msg_bytes

    def entries(self, states: Sequence[str] = STATES) -> Iterator[QueueEntry]:
        with self._lock:
            snapshot = [self._entry(msg_id, r) for msg_id, r in self._records.items() if r.state in states]
        snapshot.sort(key=lambda entry: (STATES.index(entry.state), entry.changed))
        yield from snapshot

    def stats(self) -> Dict[str, StateCount]:
        counts = {state: StateCount() for state in STATES}
        with self._lock:
            for record in self._records.values():
                count = counts[record.state]
                count.count += 1
                count.size += len(record.msg_bytes)
                date = record.meta.queue_date
                if date is not None and (count.oldest is None or date < count.oldest):
                    count.oldest = date
        return counts

    def resolve(self, prefix: str, states: Sequence[str] = STATES) -> List[Tuple[str, str]]:
        with self._lock:
            return [(r.state, msg_id) for msg_id, r in self._records.items()
                    if msg_id.startswith(prefix) and r.state in states]

    def delete(self, msg_id: str, state: str) -> Optional[bool]:
        with self._lock:
            record = self._records.get(msg_id)
            if record is None or record.state != state:
                return None
            if self._held(record):
                return False
            del self._records[msg_id]
            return True

    # --- housekeeping -----------------------------------------------------------------------

    def recover(self) -> int:
        recovered = 0
        with self._arrived:
            for record in self._records.values():
                if record.token is not None and record.owner is not None and not record.owner.is_alive():
                    record.state = record.origin
                    record.token = record.owner = None
                    recovered += 1
            if recovered:
                self._arrived.notify_all()
        return recovered

    def check(self) -> None:
        pass  # always usable

    def wait_for_work(self, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait(timeout)

    def close(self) -> None:
        pass


_named: Dict[str, MemoryQueue] = {}
_named_lock = threading.Lock()


def memory_queue(name: str, **options: object) -> MemoryQueue:
    """One store per name and process, so ``memory://x`` means the same queue everywhere in a test."""
    with _named_lock:
        queue = _named.get(name)
        if queue is None:
            queue = _named[name] = MemoryQueue(name)
        return queue
