"""The queue as the last transport of a ``MessageHandler``, and ``enqueue_message``.

``QueueTransport`` works with any store (``open_queue``); ``MaildirBackend`` is
the 1.0.0 name, kept for the README's examples.
"""

from __future__ import annotations

import errno
from datetime import datetime, timezone
from typing import Literal, Optional, Sequence, Union, overload

from ..errors import QueueError, QueueMisconfigured
from ..message import message_bytes_from
from ..result import SendResult
from .contract import QueuedId, QueuedMessage, QueueStore
from .format import LAST_ERROR
from .locations import open_queue, split_location

__all__ = ['MaildirBackend', 'QueueTransport', 'enqueue_message']


class QueueTransport:
    """Transport that queues the message for ``mq-run`` (always succeeds unless the store fails)."""

    # MessageHandler: never queue a message that is already in a queue; fallback target for refusals
    is_queue = True

    def __init__(self, location: Union[str, QueueStore]) -> None:
        self._location = location
        self._store: Optional[QueueStore] = None if isinstance(location, str) else location

    @property
    def store(self) -> QueueStore:
        # opened on first use: building a handler must not touch the disk or the database
        if self._store is None:
            self._store = open_queue(self._location)
        return self._store

    @property
    def transport_name(self) -> str:
        if self._store is not None:
            return self._store.kind
        return split_location(str(self._location))[0]  # without opening it: naming must not fail

    def __repr__(self) -> str:
        location = self._location if isinstance(self._location, str) else self._location.location
        return f'{type(self).__name__}({location!r})'

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes,
             last_error: Optional[str] = None) -> SendResult:
        try:
            store = self.store
            # after a failed attempt (last_error), that attempt counts: 1 in the queue as in the log
            msg_id = store.enqueue(msg_bytes, from_addr, list(to_addrs),
                                   extra={LAST_ERROR: last_error} if last_error else None,
                                   attempted=datetime.now(timezone.utc) if last_error else None)
        except QueueError as exc:
            dropped = self._drop(exc, from_addr, to_addrs, msg_bytes)
            if dropped is not None:
                return dropped
            return SendResult(transport=self._kind_or_queue(), queued=False, error=str(exc),
                              deferred={a: (451, str(exc)) for a in to_addrs},
                              queue_misconfigured=isinstance(exc, QueueMisconfigured))
        return SendResult(transport=store.kind, queued=True, queued_to=list(to_addrs), queue_id=str(msg_id),
                          host=store.location)

    def _drop(self, exc: QueueError, from_addr: str, to_addrs: Sequence[str],
              msg_bytes: bytes) -> Optional[SendResult]:
        """A user who may not write the queue hands the message to its drop area (if it has one)."""
        if getattr(exc, 'errno', None) not in (errno.EACCES, errno.EPERM) or not isinstance(self._location, str):
            return None
        scheme, path = split_location(self._location)
        if scheme != 'maildir':
            return None
        from .maildir_drop import drop_message, has_drop_area

        if not has_drop_area(path):
            return None
        try:
            drop_id = drop_message(path, msg_bytes, from_addr, list(to_addrs))
        except QueueError:
            return None  # the first error says more (the queue is what was configured)
        return SendResult(transport='drop', queued=True, queued_to=list(to_addrs), queue_id=drop_id, host=path)

    def _kind_or_queue(self) -> str:
        return self._store.kind if self._store is not None else 'queue'

    def close(self) -> None:
        pass


class MaildirBackend(QueueTransport):
    """The maildir queue as a transport (mailqueue-runner 1.0.0's name); takes any location."""

    def __init__(self, queue_dir: Union[str, QueueStore]) -> None:
        super().__init__(queue_dir)
        self.queue_dir = queue_dir

    @property
    def queue(self) -> QueueStore:  # 1.x name
        return self.store


@overload
def enqueue_message(msg: object, queue_path: Union[str, QueueStore], sender: str,
                    recipients: Union[Sequence[str], str], return_msg: Literal[True], in_progress: Literal[True],
                    **queue_args: object) -> QueuedMessage: ...
@overload
def enqueue_message(msg: object, queue_path: Union[str, QueueStore], sender: str,
                    recipients: Union[Sequence[str], str], return_msg: Literal[False] = False,
                    in_progress: bool = False, **queue_args: object) -> str: ...
@overload
def enqueue_message(msg: object, queue_path: Union[str, QueueStore], sender: str,
                    recipients: Union[Sequence[str], str], return_msg: bool = False,
                    in_progress: Literal[False] = False, **queue_args: object) -> str: ...
@overload
def enqueue_message(msg: object, queue_path: Union[str, QueueStore], sender: str,
                    recipients: Union[Sequence[str], str], return_msg: bool = False, in_progress: bool = False,
                    **queue_args: object) -> Union[QueuedMessage, str]: ...
def enqueue_message(msg: object, queue_path: Union[str, QueueStore], sender: str,
                    recipients: Union[Sequence[str], str], return_msg: bool = False, in_progress: bool = False,
                    **queue_args: object) -> Union[QueuedMessage, str]:
    """Durably queue ``msg`` at a location (a path, ``maildir://``, ``postgresql://``...).

    ``in_progress=True, return_msg=True`` returns it claimed, for sending now
    ("conservative sending"); ``return_msg=True`` alone returns an id that
    ``MessageHandler.send_message`` can claim.

    ``queue_args`` as in 1.x: ``queue_date``, and ``retries`` with ``last`` (the attempts made
    before and the time of the last one: the backoff schedule decides when it is due). New:
    ``connection=conn`` (a ``postgresql://`` location only): insert through the application's
    own DB-API connection (psycopg 2 or 3) without committing: the mail exists if and only if
    the application's transaction commits.
    """
    unknown = sorted(set(queue_args) - {'queue_date', 'last', 'retries', 'connection'})
    if unknown:
        raise TypeError(f'enqueue_message() got an unexpected keyword argument {unknown[0]!r}')
    if isinstance(recipients, str):
        recipients = [recipients]
    queue_date = queue_args.get('queue_date')
    when = queue_date if isinstance(queue_date, datetime) else None
    last, retries = queue_args.get('last'), queue_args.get('retries')
    history = last is not None or retries is not None  # (checked by the store: contract.entering_meta)
    msg_bytes = message_bytes_from(msg)
    connection = queue_args.get('connection')
    if connection is not None:
        if not isinstance(queue_path, str) or split_location(queue_path)[0] not in ('postgresql', 'postgres'):
            raise ValueError('connection= needs a postgresql:// queue location')
        if in_progress or return_msg or history:
            raise ValueError('connection= cannot be combined with in_progress, return_msg, retries or last: '
                             'the message does not exist before the caller commits')
        from .postgres import enqueue_in_transaction

        return enqueue_in_transaction(connection, msg_bytes, sender, list(recipients), location=queue_path,
                                      queue_date=when)
    if in_progress and return_msg and history:
        raise ValueError('a message claimed at once (in_progress) starts without retries or last')
    store = open_queue(queue_path)
    if in_progress and return_msg:
        return store.enqueue_claimed(msg_bytes, sender, list(recipients), queue_date=when)
    if history:  # (a store written before retries= joined the contract still works without them)
        msg_id = store.enqueue(msg_bytes, sender, list(recipients), queue_date=when,
                               attempted=last, retries=retries or 0)  # type: ignore[arg-type]
    else:
        msg_id = store.enqueue(msg_bytes, sender, list(recipients), queue_date=when)
    return QueuedId(store, msg_id) if return_msg else msg_id
