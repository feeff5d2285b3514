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
    'Transport',
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
    'Transport': 'protocols',
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


# mailqueue-runner 1.0.0 names with a replacement in 2.x: still importable, with a DeprecationWarning
# naming the replacement (schwarz.mailqueue.compat; docs/upgrading.md). Not in __all__: a star import
# does not warn.
_DEPRECATED = frozenset({
    'BaseMsg', 'InMemoryMsg', 'MsgInfo', 'PluginLoader', 'autogenerate_headers', 'create_maildir_directories',
    'default_tls_mode', 'default_tls_verify', 'dt_now', 'lock_file', 'move_message', 'parse_list_str',
    'required_tls_mode',
})


def _deprecated(name: str) -> Any:
    import warnings

    from . import compat

    warnings.warn(f'schwarz.mailqueue.{name} is deprecated (mailqueue-runner 1.0.0); use {compat.DEPRECATED[name]}',
                  DeprecationWarning, stacklevel=3)
    return getattr(compat, name)


def __getattr__(name: str) -> Any:
    module_name = _WHERE.get(name)
    if module_name is None:
        if name in _DEPRECATED:
            return _deprecated(name)
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
    from .protocols import Transport
    from .queue.format import parse_message_envelope, serialize_message_with_queue_data
    from .queue.locations import open_queue
    from .queue.transport import MaildirBackend, enqueue_message
    from .result import SendResult
    from .runner import send_all_queued_messages
    from .smtp.client import TLSMode
    from .smtp.transport import SMTPMailer
