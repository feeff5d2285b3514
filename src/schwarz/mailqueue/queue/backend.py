"""The small interface between a queue store and everything above it.

The runner, the handler and the CLIs only talk to a queue through this
protocol, so a different store (e.g. PostgreSQL with row leases) can be added
without touching them. ``queue/maildir.py`` is the embedded default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence

from .format import QueueMeta

__all__ = ['QueueBackend', 'QueueEntry', 'QueuedMessage', 'STATES']

# new: waiting; cur: claimed by a runner or application; hold: parked by an admin;
# failed: dead letters with a reason.
STATES = ('new', 'cur', 'hold', 'failed')


@dataclass
class QueueEntry:
    """A message as seen by a listing, without claiming it."""

    msg_id: str
    state: str
    path: str
    size: int
    mtime: float
    meta: Optional[QueueMeta]
    error: Optional[str] = None


class QueuedMessage:
    """A claimed queue file: holds the claim (lock) until completed, deferred, failed or released."""

    def __init__(self, backend: QueueBackend, msg_id: str, meta: QueueMeta, msg_bytes: bytes,
                 path: str, handle: Any) -> None:
        self.backend = backend
        self.msg_id = msg_id
        self.meta = meta
        self.msg_bytes = msg_bytes
        self.path = path
        self._handle = handle

    # The attribute names of mailqueue-runner 1.0.0's queued message objects.
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
        return self._handle is not None

    def __repr__(self) -> str:
        return f'<QueuedMessage {self.msg_id} to={self.meta.to_addrs!r} retries={self.meta.retries}>'

    def __enter__(self) -> QueuedMessage:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.is_claimed:
            self.backend.release(self)


class QueueBackend(Protocol):
    """What a runner, a handler and ``mq-queue`` need from a queue store."""

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *, claimed: bool = False,
                queue_date: Optional[datetime] = None,
                extra: Optional[Dict[str, str]] = None) -> QueuedMessage | str: ...

    def store_failed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str: ...

    def iter_ids(self, state: str = 'new') -> Iterator[str]: ...

    def claim(self, msg_id: str, state: str = 'new',
              want: Optional[Callable[[QueueMeta], bool]] = None) -> Optional[QueuedMessage]: ...

    def complete(self, msg: QueuedMessage) -> None: ...

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str,
              attempt_time: datetime) -> None: ...

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str: ...

    def release(self, msg: QueuedMessage) -> None: ...

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False) -> None: ...

    def recover_stale(self) -> int: ...

    def flush(self) -> None: ...

    def changed_marker(self) -> float:
        """Changes when messages arrive (the daemon polls it; the maildir uses new/'s mtime)."""
        ...

    def entries(self, states: Sequence[str] = STATES) -> Iterator[QueueEntry]: ...
