"""The queue: file format, retry schedule, backend interface and the maildir store.

Names are imported on first use (PEP 562): ``config`` needs only the schedule,
and ``mq-sendmail`` should not pay for the maildir code unless it queues.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    'STATES',
    'MaildirBackend',
    'MaildirQueue',
    'QueueBackend',
    'QueueEntry',
    'QueueFileError',
    'QueueMeta',
    'QueueWriteError',
    'QueuedMessage',
    'RetryPolicy',
    'enqueue_message',
    'parse_message_envelope',
    'serialize_message_with_queue_data',
]

_WHERE = {
    'STATES': 'backend', 'QueueBackend': 'backend', 'QueueEntry': 'backend', 'QueuedMessage': 'backend',
    'QueueFileError': 'format', 'QueueMeta': 'format', 'parse_message_envelope': 'format',
    'serialize_message_with_queue_data': 'format',
    'MaildirBackend': 'maildir', 'MaildirQueue': 'maildir', 'QueueWriteError': 'maildir',
    'enqueue_message': 'maildir',
    'RetryPolicy': 'schedule',
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'{__name__}.{module}'), name)


if TYPE_CHECKING:  # pragma: no cover
    from .backend import STATES, QueueBackend, QueuedMessage, QueueEntry
    from .format import QueueFileError, QueueMeta, parse_message_envelope, serialize_message_with_queue_data
    from .maildir import MaildirBackend, MaildirQueue, QueueWriteError, enqueue_message
    from .schedule import RetryPolicy
