"""Flask-Mailman backend: send at once when the smarthost answers, queue durably when it does not.

    app.config['MAIL_BACKEND'] = 'schwarz.mailqueue.flask_mailman.EmailBackend'
    app.config['MAIL_SERVER'] = 'smtp.example.com'      # Flask-Mailman's MAIL_* keys are read ...
    app.config['MAILQUEUE'] = {'queue_dir': '/var/spool/myapp-mail'}   # ... and MAILQUEUE on top
    mail = Mail(app)

Options, later ones winning: ``app.config['MAILQUEUE']`` (a dict of config-file keys plus
``config`` and ``mode``, or a config file path), then the keyword arguments of
``mail.get_connection(...)``. When they (and a config file they name) name no smarthost, the
SMTP settings Flask-Mailman's own SMTP backend uses come below them, read where it reads them
(its state, ``app.extensions['mailman']``, which ``Mail(app)`` builds from ``MAIL_SERVER``,
``MAIL_PORT``, ``MAIL_USERNAME``, ``MAIL_PASSWORD``, ``MAIL_USE_TLS``, ``MAIL_USE_SSL``,
``MAIL_TIMEOUT``), else Flask-Mailman's defaults (``localhost``, port 25). ``mode``: ``send`` (SMTP
first, queue what cannot go out now; default) or ``queue`` (queue only; ``mq-run`` delivers).

The same contract and results as the Django backend (docs/frameworks.md): ``send_messages``
returns the number of messages that reached a recipient or the queue; refused recipients raise
``RecipientsFailed`` (an ``smtplib.SMTPRecipientsRefused``) unless ``fail_silently``.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Optional

try:
    from flask import current_app, has_app_context
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
# the attribute of Flask-Mailman's state each key becomes, and the default Mail.init_mail gives it
STATE = {
    'MAIL_SERVER': ('server', 'localhost'),
    'MAIL_PORT': ('port', 25),
    'MAIL_USERNAME': ('username', None),
    'MAIL_PASSWORD': ('password', None),
    'MAIL_USE_TLS': ('use_tls', False),
    'MAIL_USE_SSL': ('use_ssl', False),
    'MAIL_TIMEOUT': ('timeout', None),
    'MAIL_SSL_KEYFILE': ('ssl_keyfile', None),
    'MAIL_SSL_CERTFILE': ('ssl_certfile', None),
}


def backend_config(app_config: Optional[Mapping[str, Any]], options: Optional[Mapping[str, Any]] = None, *,
                   state: Any = None) -> BackendConfig:
    """The configuration from Flask-Mailman's ``state`` (else the ``MAIL_*`` keys of
    ``app_config``), then ``app_config['MAILQUEUE']``, then ``options``.

    ``app_config`` None: no application is at hand (``MAILQUEUE`` is not read).
    """
    config = app_config if app_config is not None else {}
    mail_keys: Dict[str, Any] = {}
    for key, name in MAIL_KEYS.items():
        if state is None:
            if key in config:
                mail_keys[name] = config[key]
            continue
        attr, default = STATE[key]
        value = getattr(state, attr, None)
        # a default of Flask-Mailman's must not override the smarthost of a config file
        if key in config or value != default:
            mail_keys[name] = value
    value = config.get(SETTING)
    if value is None:
        ours: Dict[str, Any] = {}
    elif isinstance(value, Mapping):
        ours = dict(value)
    elif isinstance(value, str) or hasattr(value, '__fspath__'):
        ours = {'config': value}
    else:
        raise TypeError(f'app.config[{SETTING!r}] must be a dict of options or a config file path, '
                        f'not {type(value).__name__}')
    result = build_config([ours, dict(options or {})], where=f'app.config[{SETTING!r}]', fallback=mail_keys)
    settings = result.settings
    if result.mode == 'send' and settings.smtp_hostname is None and not settings.accounts:
        # what Flask-Mailman's SMTP backend would talk to
        settings.smtp_hostname = str(getattr(state, 'server', None) or config.get('MAIL_SERVER') or 'localhost')
        if settings.smtp_port is None:
            settings.smtp_port = int(getattr(state, 'port', None) or config.get('MAIL_PORT') or 25)
    return result


class EmailBackend(QueueingBackendMixin, BaseEmailBackend):
    """``MAIL_BACKEND = 'schwarz.mailqueue.flask_mailman.EmailBackend'``.

    Made by ``mail.get_connection()`` (which passes Flask-Mailman's state) it needs no application
    context until the first message; ``app.config['MAILQUEUE']`` is read then, once.
    """

    def __init__(self, mailman: Any = None, fail_silently: bool = False, **options: Any) -> None:
        super().__init__(mailman=mailman, fail_silently=fail_silently)
        self.fail_silently = fail_silently
        self._lock = threading.RLock()
        self._options = options
        self._sender: Optional[MailSender] = None
        if has_app_context():
            self._make_sender()  # a configuration error shows where the backend is made

    def _make_sender(self) -> MailSender:
        with self._lock:
            if self._sender is None:
                if not has_app_context():
                    # without it app.config['MAILQUEUE'] cannot be read, and defaults in its place
                    # would send what should be queued (or not queue what cannot go out)
                    raise RuntimeError('the mailqueue-runner backend reads app.config["MAILQUEUE"] with its '
                                       'first message: send inside an application context (app.app_context())')
                self._sender = MailSender(backend_config(current_app.config, self._options, state=self.mailman),
                                          'flask')
            return self._sender

    @property
    def sender(self) -> MailSender:  # type: ignore[override]  # (the mixin's other user sets it in __init__)
        return self._sender if self._sender is not None else self._make_sender()

    @property
    def config(self) -> BackendConfig:
        return self.sender.config

    def close(self) -> None:
        if self._sender is not None:  # (nothing was opened before the configuration was read)
            self._sender.close()
