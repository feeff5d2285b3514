"""Exceptions that mirror what an SMTP server (or the network) told us.

``TemporaryError`` means "try again later" (4xx, connection trouble, timeouts);
``PermanentError`` means "this will never work" (5xx). Configuration problems
that no retry can fix (bad TLS settings, refused AUTH) are permanent for the
message but reported distinctly so operators can see what to change.
"""

from __future__ import annotations

from typing import Optional

from ..errors import MailQueueError
from ..result import Reply

__all__ = [
    'AuthenticationError',
    'ConnectError',
    'PermanentError',
    'SMTPError',
    'TemporaryError',
    'TLSError',
    'error_for_reply',
]


class SMTPError(MailQueueError):
    """Base class; ``reply`` carries the server's code and text (synthetic for network errors)."""

    temporary = True

    def __init__(self, message: str, reply: Optional[Reply] = None) -> None:
        super().__init__(message)
        self.reply = reply if reply is not None else Reply(451 if self.temporary else 554, message)


class TemporaryError(SMTPError):
    temporary = True


class PermanentError(SMTPError):
    temporary = False


class ConnectError(TemporaryError, ConnectionError):
    """Could not reach the server, or it went away mid-dialog (counts as 451).

    Also a ``ConnectionError``: code that handles network trouble generically catches it.
    """


class TLSError(TemporaryError):
    """TLS handshake or certificate verification failed.

    Temporary on purpose: a certificate gets fixed or renewed, and the queued
    message must still be there when it is.
    """


class AuthenticationError(TemporaryError):
    """The server refused our credentials (or we refused to send them in clear text).

    Temporary for the message: the operator fixes the password, the queue drains.
    """


def error_for_reply(reply: Reply, context: str) -> SMTPError:
    cls = PermanentError if reply.is_permanent else TemporaryError
    return cls(f'{context}: {reply}', reply)
