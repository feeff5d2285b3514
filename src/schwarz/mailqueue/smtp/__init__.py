"""SMTP: one connection (``client``), the reusable transport (``transport``), reply errors (``errors``)."""

from .client import SMTPConnection, TLSMode
from .errors import AuthenticationError, ConnectError, PermanentError, SMTPError, TemporaryError, TLSError
from .transport import SMTPMailer

__all__ = [
    'AuthenticationError',
    'ConnectError',
    'PermanentError',
    'SMTPConnection',
    'SMTPError',
    'SMTPMailer',
    'TLSError',
    'TLSMode',
    'TemporaryError',
]
