"""The queue: the store contract, the stores, the file format and the retry schedule.

- ``contract``: what every store offers (``QueueStore``), claimed messages, entries;
- ``locations``: ``open_queue(location)``, from a path or URL to a store;
- ``maildir`` (embedded default), ``memory`` (tests), ``postgres``: the stores;
- ``transport``: the queue as a handler transport, ``enqueue_message``;
- ``format`` (queue file bytes) and ``schedule`` (backoff): pure.

Names are imported on first use (PEP 562): ``config`` needs only the schedule,
and ``mq-sendmail`` should not pay for a store unless it queues.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    'STATES',
    'MaildirBackend',
    'MaildirQueue',
    'MemoryQueue',
    'QueueEntry',
    'QueueFileError',
    'QueueMeta',
    'QueueStore',
    'QueueTransport',
    'QueueWriteError',
    'QueuedMessage',
    'RetryPolicy',
    'enqueue_message',
    'open_queue',
    'parse_message_envelope',
    'serialize_message_with_queue_data',
]

_WHERE = {
    'STATES': 'contract', 'QueueStore': 'contract', 'QueueEntry': 'contract', 'QueuedMessage': 'contract',
    'QueueFileError': 'format', 'QueueMeta': 'format', 'parse_message_envelope': 'format',
    'serialize_message_with_queue_data': 'format',
    'MaildirQueue': 'maildir', 'QueueWriteError': 'maildir',
    'MemoryQueue': 'memory',
    'open_queue': 'locations',
    'MaildirBackend': 'transport', 'QueueTransport': 'transport', 'enqueue_message': 'transport',
    'RetryPolicy': 'schedule',
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'{__name__}.{module}'), name)


if TYPE_CHECKING:  # pragma: no cover
    from .contract import STATES, QueuedMessage, QueueEntry, QueueStore
    from .format import QueueFileError, QueueMeta, parse_message_envelope, serialize_message_with_queue_data
    from .locations import open_queue
    from .maildir import MaildirQueue, QueueWriteError
    from .memory import MemoryQueue
    from .schedule import RetryPolicy
    from .transport import MaildirBackend, QueueTransport, enqueue_message
