"""mailqueue-runner: deliver email to an SMTP smarthost without losing a message.

The public names are imported lazily (PEP 562) so that ``mq-sendmail``, which
starts once per cron mail, pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    'DebugMailer',
    'MailQueueError',
    'MaildirBackend',
    'MessageHandler',
    'MQAction',
    'MQSignal',
    'SendResult',
    'SMTPMailer',
    'TLSMode',
    'enqueue_message',
    'guess_config_path',
    'init_app',
    'init_smtp_mailer',
    'open_queue',
    'parse_message_envelope',
    'registry',
    'send_all_queued_messages',
    'serialize_message_with_queue_data',
]

_WHERE = {
    'DebugMailer': 'handler',
    'MailQueueError': 'errors',
    'MaildirBackend': 'queue.transport',
    'MessageHandler': 'handler',
    'MQAction': 'plugins',
    'MQSignal': 'plugins',
    'SendResult': 'result',
    'SMTPMailer': 'smtp.transport',
    'TLSMode': 'smtp.client',
    'enqueue_message': 'queue.transport',
    'open_queue': 'queue.locations',
    'guess_config_path': 'config',
    'init_app': 'app',
    'init_smtp_mailer': 'bootstrap',
    'parse_message_envelope': 'queue.format',
    'registry': 'plugins',
    'send_all_queued_messages': 'runner',
    'serialize_message_with_queue_data': 'queue.format',
}


def __getattr__(name: str) -> Any:
    module_name = _WHERE.get(name)
    if module_name is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(f'{__name__}.{module_name}')
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .app import init_app
    from .bootstrap import init_smtp_mailer
    from .config import guess_config_path
    from .errors import MailQueueError
    from .handler import DebugMailer, MessageHandler
    from .plugins import MQAction, MQSignal, registry
    from .queue.format import parse_message_envelope, serialize_message_with_queue_data
    from .queue.locations import open_queue
    from .queue.transport import MaildirBackend, enqueue_message
    from .result import SendResult
    from .runner import send_all_queued_messages
    from .smtp.client import TLSMode
    from .smtp.transport import SMTPMailer
