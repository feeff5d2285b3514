"""Exceptions that mirror what an SMTP server (or the network) told us.

``TemporaryError`` means "try again later" (4xx, connection trouble, timeouts);
``PermanentError`` means "this will never work" (5xx). Configuration problems
that no retry can fix (bad TLS settings, refused AUTH) are permanent for the
message but reported distinctly so operators can see what to change.
"""

from __future__ import annotations

import re
from typing import Optional

from ..errors import MailQueueError
from ..result import Reply

__all__ = [
    'UNREACHABLE',
    'AuthenticationError',
    'ConnectError',
    'PermanentError',
    'SMTPError',
    'TemporaryError',
    'TLSError',
    'TokenRefused',
    'TokenUnavailable',
    'error_for_reply',
    'is_rate_reply',
    'is_unreachable_error',
    'is_unreachable',
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


class TokenUnavailable(TemporaryError):
    """No OAuth2 token now: the token endpoint is down, slow or answered 5xx, or the token command failed.

    Temporary: the message is queued and goes out once a token can be had again.
    """


class TokenRefused(AuthenticationError):
    """The token endpoint refused our grant (``invalid_grant``, ``invalid_client``...).

    Needs the operator (a revoked refresh token, a wrong secret), but temporary for the
    message like any refused credentials: fix the configuration and the queue drains.
    """


# The text with which a message deferred only because the smarthost could not be reached (or no
# token could be had) is recorded: ``<recipient>: 451 smarthost unreachable: <what happened>``.
# The runner recognises such messages and makes them due at once when the host is back.
UNREACHABLE = 'smarthost unreachable: '
_UNREACHABLE_ERROR = re.compile(r'\S+: \d{3} ' + re.escape(UNREACHABLE))


def is_unreachable(exc: BaseException) -> bool:
    """A failure of the connection itself (or of getting a token), not the server's verdict on a message."""
    return isinstance(exc, (ConnectError, TLSError, TokenUnavailable))


def is_unreachable_error(text: Optional[str]) -> bool:
    """Is this recorded error (a queue entry's last error) one of "the smarthost was unreachable"?"""
    return bool(text) and _UNREACHABLE_ERROR.match(text or '') is not None


# "Slow down" replies: 421 (closing, often "too many ...") and 4.7.x with words of a rate limit
# (Exchange Online: "4.7.500 Server busy, try again later"; Gmail: "4.7.0 ... rate limited").
_RATE_WORDS = re.compile(r'too many|rate|limit|exceeded|throttl|slow down|server busy|try again later', re.I)
_ENHANCED_4_7 = re.compile(r'(?:^|\s)4\.7\.\d{1,3}\b')


def is_rate_reply(code: int, text: str) -> bool:
    """A temporary reply that asks us to send more slowly (not a verdict on this message)."""
    if code == 421:
        return True
    return 400 <= code < 500 and _ENHANCED_4_7.search(text) is not None and _RATE_WORDS.search(text) is not None


def error_for_reply(reply: Reply, context: str) -> SMTPError:
    cls = PermanentError if reply.is_permanent else TemporaryError
    return cls(f'{context}: {reply}', reply)
