"""Delivery and queue event lines: logfmt by default, JSON for log shippers.

One event is a dict of fields; ``format_logfmt`` renders it as
``status=sent to=a@x msgid=<id> via=smtp:host:25 ...`` and ``JSONFormatter``
renders the same fields as one JSON object per line.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, Mapping, Optional

__all__ = [
    'DELIVERY_LOG',
    'EVENT_FIELDS_ATTR',
    'JSONFormatter',
    'JournalHandler',
    'QUEUE_LOG',
    'SMTP_LOG',
    'format_logfmt',
    'journal_available',
    'log_event',
    'syslog_handler',
]

DELIVERY_LOG = 'mailqueue.delivery_log'
QUEUE_LOG = 'mailqueue.queue_log'
SMTP_LOG = 'mailqueue.smtp'
EVENT_FIELDS_ATTR = 'mq_fields'

_BARE = re.compile(r'^[^\s"=\\]+$')


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and _BARE.match(text):
        return text
    escaped = text.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n').replace('\r', '\\r')
    return f'"{escaped}"'


def format_logfmt(fields: Mapping[str, Any]) -> str:
    return ' '.join(f'{key}={_logfmt_value(value)}' for key, value in fields.items() if value is not None)


def log_event(logger: logging.Logger, fields: Dict[str, Any], level: int = logging.INFO) -> None:
    """Log one event; the fields travel on the record for structured formatters."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, format_logfmt(fields), extra={EVENT_FIELDS_ATTR: fields})


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the event's fields (or the message)."""

    def format(self, record: logging.LogRecord) -> str:
        import json  # only log shippers need it; keep it off every tool's start-up

        data: Dict[str, Any] = {
            'time': self.formatTime(record, '%Y-%m-%dT%H:%M:%S%z'),
            'level': record.levelname.lower(),
            'logger': record.name,
        }
        fields: Optional[Dict[str, Any]] = getattr(record, EVENT_FIELDS_ATTR, None)
        if fields:
            data.update({k: (v if isinstance(v, (int, float, bool)) else str(v)) for k, v in fields.items()})
        else:
            data['message'] = record.getMessage()
        if record.exc_info:
            data['exception'] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


# --- syslog and the systemd journal ---------------------------------------------------------------

JOURNAL_SOCKET = '/run/systemd/journal/socket'
SYSLOG_SOCKET = '/dev/log'
# Tests (and unusual hosts) point these elsewhere.
JOURNAL_SOCKET_ENV = 'MAILQUEUE_JOURNAL_SOCKET'
SYSLOG_SOCKET_ENV = 'MAILQUEUE_SYSLOG_SOCKET'
_SYSLOG_MAIL_FACILITY = 2
_MAX_DATAGRAM = 60000


def journal_socket() -> str:
    import os

    return os.environ.get(JOURNAL_SOCKET_ENV) or JOURNAL_SOCKET


def syslog_socket() -> str:
    import os

    return os.environ.get(SYSLOG_SOCKET_ENV) or SYSLOG_SOCKET


def _priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _journal_field(name: str, value: str) -> bytes:
    data = value.encode('utf-8', 'replace')
    key = name.encode('ascii')
    if b'\n' in data:
        # the native protocol's binary form: name, newline, 64-bit little-endian length, value
        return key + b'\n' + len(data).to_bytes(8, 'little') + data + b'\n'
    return key + b'=' + data + b'\n'


def journal_field_name(key: str) -> str:
    """``queue_id`` -> ``MQ_QUEUE_ID`` (journal field names: upper case letters, digits, underscores)."""
    return 'MQ_' + re.sub(r'[^A-Z0-9_]', '_', key.upper())


class JournalHandler(logging.Handler):
    """Writes records to systemd's journal in its native protocol (stdlib socket, no dependency).

    MESSAGE is the formatted line; each event field becomes a structured field ``MQ_<NAME>``
    (``journalctl MQ_STATUS=deferred``); SYSLOG_IDENTIFIER is the tool. A journal that cannot be
    reached loses the line (never the mail).
    """

    def __init__(self, path: Optional[str] = None, identifier: str = 'mailqueue') -> None:
        import socket

        super().__init__()
        self.path = path or journal_socket()
        self.identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def datagram(self, record: logging.LogRecord) -> bytes:
        parts = [
            _journal_field('MESSAGE', self.format(record)),
            _journal_field('PRIORITY', str(_priority(record.levelno))),
            _journal_field('SYSLOG_IDENTIFIER', self.identifier),
            _journal_field('SYSLOG_FACILITY', str(_SYSLOG_MAIL_FACILITY)),
            _journal_field('MQ_LOGGER', record.name),
        ]
        fields: Optional[Dict[str, Any]] = getattr(record, EVENT_FIELDS_ATTR, None)
        for key, value in (fields or {}).items():
            parts.append(_journal_field(journal_field_name(key), str(value)))
        return b''.join(parts)[:_MAX_DATAGRAM]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sock.sendto(self.datagram(record), self.path)
        except OSError:
            pass  # no journal (any more): the line is lost, the mail is not
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def syslog_handler(identifier: str) -> Optional[logging.Handler]:
    """A SysLogHandler on the local syslog socket (facility mail), or None when there is none."""
    from logging.handlers import SysLogHandler

    try:
        handler = SysLogHandler(address=syslog_socket(), facility=SysLogHandler.LOG_MAIL)
    except OSError:
        return None
    handler.ident = f'{identifier}: '
    return handler


def journal_available() -> bool:
    import os
    import stat

    try:
        return stat.S_ISSOCK(os.stat(journal_socket()).st_mode)
    except OSError:
        return False
