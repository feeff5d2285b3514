"""One exception tree for the whole package.

Callers catch these, never ``OSError`` or ``ValueError`` from deep inside a
store or the network. Families:

- ``QueueError``: a queue store cannot do what was asked (``QueueUnavailable``:
  the store itself is unusable, e.g. a full disk or an unreachable database;
  ``CorruptMessage``: one stored message cannot be read; ``ClaimLost``: a
  claimed message was taken away, e.g. an expired lease).
- ``SMTPError`` (in ``smtp.errors``): what a server or the network told us.
- ``ConfigError`` (in ``config``): a setting that cannot work.

Some classes also derive from the built-in exception they replaced
(``OSError``, ``ValueError``) so that code written against 1.x keeps working.
"""

from __future__ import annotations

__all__ = ['BadLocation', 'ClaimLost', 'CorruptMessage', 'MailQueueError', 'QueueError', 'QueueMisconfigured',
           'QueueUnavailable', 'StoreNotInitialised']


class MailQueueError(Exception):
    """Root of every exception this package raises on purpose."""


class QueueError(MailQueueError):
    """A queue operation failed."""


class QueueUnavailable(QueueError):
    """The store cannot be used (cannot be written, reached, or created); nothing was half-done."""


class QueueMisconfigured(QueueUnavailable):
    """Trying again later does not help: an operator must act (a connection setting the driver
    rejects, a database role without the privilege, a schema newer than this code). Exit 78."""


class StoreNotInitialised(QueueMisconfigured):
    """The store exists but is not set up for this version (a database schema missing or older):
    a configuration problem an operator fixes with ``mq-queue init`` (exit 78, not 75)."""


class BadLocation(QueueMisconfigured, ValueError):
    """A queue location that cannot be used as written (a parameter the store or its driver does
    not know, a malformed URI). Also a ``ValueError``: a command-line tool says so with exit 64,
    from a configuration file it is 78."""


class CorruptMessage(QueueError):
    """A stored message cannot be read; stores move such messages to the failed state with the reason."""


class ClaimLost(QueueError):
    """A claimed message is no longer ours (lease taken back, removed by an admin); nothing was changed."""
