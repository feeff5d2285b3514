"""Flask-Mailman backend: send at once when the smarthost answers, queue durably when it does not.

    app.config['MAIL_BACKEND'] = 'schwarz.mailqueue.flask_mailman.EmailBackend'
    app.config['MAIL_SERVER'] = 'smtp.example.com'      # Flask-Mailman's MAIL_* keys are read ...
    app.config['MAILQUEUE'] = {'queue_dir': '/var/spool/myapp-mail'}   # ... and MAILQUEUE on top
    mail = Mail(app)

Options, later ones winning: the ``MAIL_*`` keys of the app config that Flask-Mailman's SMTP
backend uses (``MAIL_SERVER``, ``MAIL_PORT``, ``MAIL_USERNAME``, ``MAIL_PASSWORD``,
``MAIL_USE_TLS``, ``MAIL_USE_SSL``, ``MAIL_TIMEOUT``), then ``app.config['MAILQUEUE']``
(a dict of config-file keys plus ``config`` and ``mode``, or a config file path), then the
keyword arguments of ``mail.get_connection(...)``. ``mode``: ``send`` (SMTP first, queue what
cannot go out now; default) or ``queue`` (queue only; ``mq-run`` delivers).

The same contract and results as the Django backend (docs/frameworks.md): ``send_messages``
returns the number of messages that reached a recipient or the queue; refused recipients raise
``RecipientsFailed`` (an ``smtplib.SMTPRecipientsRefused``) unless ``fail_silently``.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Optional

try:
    from flask import current_app
    from flask_mailman.backends.base import BaseEmailBackend
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('schwarz.mailqueue.flask_mailman needs Flask-Mailman: '
                      f"pip install 'mailqueue-runner[flask]' ({exc})") from exc

from .frameworks import BackendConfig, MailSender, QueueingBackendMixin, RecipientsFailed, build_config

__all__ = ['EmailBackend', 'RecipientsFailed', 'backend_config']

SETTING = 'MAILQUEUE'
# Flask-Mailman's app config key -> the option name both Mailman and Django use
MAIL_KEYS = {
    'MAIL_SERVER': 'host',
    'MAIL_PORT': 'port',
    'MAIL_USERNAME': 'username',
    'MAIL_PASSWORD': 'password',
    'MAIL_USE_TLS': 'use_tls',
    'MAIL_USE_SSL': 'use_ssl',
    'MAIL_TIMEOUT': 'timeout',
    'MAIL_SSL_KEYFILE': 'ssl_keyfile',
    'MAIL_SSL_CERTFILE': 'ssl_certfile',
}


def backend_config(app_config: Mapping[str, Any], options: Optional[Mapping[str, Any]] = None) -> BackendConfig:
    """The configuration from a Flask app config (``MAIL_*``, then ``MAILQUEUE``) and ``options``."""
    mail_keys: Dict[str, Any] = {name: app_config[key] for key, name in MAIL_KEYS.items() if key in app_config}
    value = app_config.get(SETTING)
    if value is None:
        ours: Dict[str, Any] = {}
    elif isinstance(value, Mapping):
        ours = dict(value)
    elif isinstance(value, str) or hasattr(value, '__fspath__'):
        ours = {'config': value}
    else:
        raise TypeError(f'app.config[{SETTING!r}] must be a dict of options or a config file path, '
                        f'not {type(value).__name__}')
    return build_config([mail_keys, ours, dict(options or {})], where=f'app.config[{SETTING!r}]')


class EmailBackend(QueueingBackendMixin, BaseEmailBackend):
    """``MAIL_BACKEND = 'schwarz.mailqueue.flask_mailman.EmailBackend'``; needs an application context."""

    def __init__(self, mailman: Any = None, fail_silently: bool = False, **options: Any) -> None:
        super().__init__(mailman=mailman, fail_silently=fail_silently)
        self.fail_silently = fail_silently
        self._lock = threading.RLock()
        self.config = backend_config(current_app.config, options)
        self.sender = MailSender(self.config, 'flask')
