"""The queue: file format, retry schedule, backend interface and the maildir store."""

from .backend import STATES, QueueBackend, QueuedMessage, QueueEntry
from .format import QueueFileError, QueueMeta, parse_message_envelope, serialize_message_with_queue_data
from .maildir import MaildirBackend, MaildirQueue, QueueWriteError, enqueue_message
from .schedule import RetryPolicy

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
