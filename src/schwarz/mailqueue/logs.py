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
    'QUEUE_LOG',
    'SMTP_LOG',
    'format_logfmt',
    'log_event',
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
