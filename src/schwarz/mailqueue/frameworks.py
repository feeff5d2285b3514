"""What the Django and Flask-Mailman backends share: options, the send loop, per-recipient results.

Both frameworks have the same e-mail backend contract (Flask-Mailman is a port of
Django's mail package): ``send_messages(messages)`` returns how many messages went out,
``fail_silently`` swallows delivery errors, ``open()``/``close()`` keep one connection
for many messages. ``QueueingBackendMixin`` implements that contract once over a
``MessageHandler``; ``schwarz.mailqueue.django`` and ``schwarz.mailqueue.flask_mailman``
only add where their options come from.

No framework is imported here.
"""

from __future__ import annotations

import email.policy
import inspect
import smtplib
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from .config import KNOWN_KEYS, ConfigError, Settings, load_config, settings_from_mapping
from .errors import MailQueueError
from .result import SendResult

__all__ = [
    'BackendConfig',
    'MODES',
    'MailSender',
    'QueueingBackendMixin',
    'RecipientsFailed',
    'build_config',
    'envelope_address',
    'message_bytes',
]

#: ``send``: SMTP first, queue what cannot go out now (default); ``queue``: queue only, the runner delivers.
MODES = ('send', 'queue')

# Option names of Django's SMTP backend (its EMAIL_* settings, MAILERS OPTIONS, the
# ``username``/``password`` that send_mail() passes) and of Flask-Mailman: the config key each means.
SMTP_OPTION_NAMES = {
    'host': 'smtp_hostname',
    'port': 'smtp_port',
    'username': 'smtp_username',
    'password': 'smtp_password',
    'timeout': 'smtp_timeout',
}
_TLS_FLAGS = ('use_tls', 'use_ssl')
_UNSUPPORTED = ('ssl_keyfile', 'ssl_certfile')


class RecipientsFailed(MailQueueError, smtplib.SMTPRecipientsRefused):
    """Some recipients got the message neither now nor later: refused permanently, or not queued.

    An ``smtplib.SMTPRecipientsRefused`` (so an ``SMTPException``, what Django's SMTP backend
    raises), with the same ``recipients`` attribute: ``{address: (code, reply bytes)}``.
    Also: ``refused`` (permanent, 5xx) and ``deferred`` (temporary and not queued:
    no queue configured, or the queue failed) as ``{address: (code, text)}``, ``results``
    (``(message, SendResult)`` for each message concerned) and ``sent``, the number of
    messages that reached at least one recipient or the queue (what ``send_messages``
    would have returned).
    """

    def __init__(self, results: List[Tuple[Any, SendResult]], sent: int) -> None:
        refused: Dict[str, Tuple[int, str]] = {}
        deferred: Dict[str, Tuple[int, str]] = {}
        for _message, result in results:
            refused.update(result.refused)
            deferred.update(result.deferred)
        super().__init__(_as_smtplib(refused, deferred))
        self.refused = refused
        self.deferred = deferred
        self.results = results
        self.sent = sent

    def __reduce__(self) -> Tuple[Any, ...]:
        # pickle (Celery, multiprocessing, parallel test runners) and copy: the outcome travels,
        # the messages in ``results`` do not (their connection is this process's backend)
        return (_restored, (type(self), self.refused, self.deferred, self.sent))

    def __str__(self) -> str:
        parts = [f'{addr}: {code} {text}'.strip() for addr, (code, text) in self.refused.items()]
        parts += [f'{addr}: {code} {text} (not queued)'.strip() for addr, (code, text) in self.deferred.items()]
        return f'{len(parts)} recipient(s) failed: ' + '; '.join(parts)


_Outcome = Dict[str, Tuple[int, str]]


def _as_smtplib(refused: _Outcome, deferred: _Outcome) -> Dict[str, Tuple[int, bytes]]:
    """``SMTPRecipientsRefused.recipients``: ``{address: (code, reply bytes)}``."""
    return {addr: (code, text.encode('utf-8', 'replace')) for addr, (code, text) in {**deferred, **refused}.items()}


def _restored(cls: Type[RecipientsFailed], refused: _Outcome, deferred: _Outcome, sent: int) -> RecipientsFailed:
    """A ``RecipientsFailed`` unpickled or copied: the same outcome, no ``results``."""
    exc = cls([], sent)
    exc.refused, exc.deferred = dict(refused), dict(deferred)
    exc.recipients = _as_smtplib(exc.refused, exc.deferred)
    exc.args = (exc.recipients,)
    return exc


class BackendConfig:
    """Typed settings plus the backend's own options."""

    def __init__(self, settings: Settings, mode: str, extra: Optional[Dict[str, Any]] = None) -> None:
        self.settings = settings
        self.mode = mode
        self.extra: Dict[str, Any] = extra if extra is not None else {}

    def __repr__(self) -> str:
        return f'BackendConfig({self.settings!r}, mode={self.mode!r}, extra={self.extra!r})'


def _plain(value: Any) -> Any:
    import os

    return os.fspath(value) if isinstance(value, os.PathLike) else value


def build_config(sources: Iterable[Mapping[str, Any]], *, where: str, extra_keys: Sequence[str] = (),
                 default_mode: Optional[str] = None, fallback: Optional[Mapping[str, Any]] = None) -> BackendConfig:
    """One ``BackendConfig`` from option mappings; later mappings win, ``None`` values count as unset.

    Keys: the config-file keys (``smtp_hostname``, ``queue_url``, ...), ``config`` (a config
    file whose ``[mqrunner]`` section comes first), ``mode`` (``send`` or ``queue``), the
    SMTP option names of Django/Flask-Mailman (``host``, ``port``, ``username``, ``password``,
    ``timeout``, ``use_tls``, ``use_ssl``) and ``extra_keys`` (the caller's own). Anything
    else is a ``ConfigError`` naming ``where`` and the key.

    ``fallback``: the framework's own SMTP settings (Django's ``EMAIL_*``, Flask-Mailman's
    ``MAIL_*``), used as a whole below ``sources`` when neither they nor a config file name a
    smarthost: a smarthost is never half one's and half the other's.
    """
    sources = list(sources)
    config = _build_config(sources, where, extra_keys, default_mode)
    settings = config.settings
    if fallback and not (fallback.get('username') and fallback.get('password')):
        # as their SMTP backends: a login only with both (a user alone sent an empty password)
        fallback = {key: value for key, value in fallback.items() if key not in ('username', 'password')}
    if fallback and settings.smtp_hostname is None and not settings.accounts:
        config = _build_config([fallback, *sources], where, extra_keys, default_mode)
    return config


def _tls_of(source: Mapping[str, Any], where: str) -> Optional[str]:
    """The ``smtp_tls`` a mapping's Django-style ``use_tls``/``use_ssl`` ask for (None: neither)."""
    flags = {str(key).lower(): value for key, value in source.items() if str(key).lower() in _TLS_FLAGS}
    use_tls, use_ssl = bool(flags.get('use_tls')), bool(flags.get('use_ssl'))
    if use_tls and use_ssl:
        raise ConfigError('use_tls and use_ssl are mutually exclusive', where, 'use_ssl')
    # Django's use_tls means STARTTLS, use_ssl TLS from the first byte; False keeps our default
    return 'implicit' if use_ssl else 'starttls' if use_tls else None


def _build_config(sources: Sequence[Mapping[str, Any]], where: str, extra_keys: Sequence[str],
                  default_mode: Optional[str]) -> BackendConfig:
    # one name per setting before the layers meet: a later layer's host= must beat an earlier
    # smtp_hostname, and its use_ssl an earlier use_tls
    merged: Dict[str, Any] = {}
    for source in sources:
        tls = _tls_of(source, where)
        for key, value in source.items():
            name = str(key).lower()
            if value is None or name in _TLS_FLAGS:
                continue
            merged[SMTP_OPTION_NAMES.get(name, name)] = _plain(value)
        if tls is not None and not any(str(key).lower() == 'smtp_tls' and value is not None
                                       for key, value in source.items()):
            merged.pop('smtp_tls', None)
            merged['smtp_tls'] = tls
    values: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    config_path: Optional[str] = None
    mode = None
    for key, value in merged.items():
        name = key.lower()
        if name == 'config':
            config_path = str(value)
        elif name == 'mode':
            mode = str(value).strip().lower()
        elif name in extra_keys:
            extra[name] = value
        elif name in _UNSUPPORTED:
            raise ConfigError('TLS client certificates are not supported', where, key)
        elif name in KNOWN_KEYS:
            values[name] = value
        else:
            raise ConfigError('unknown option', where, key)
    if config_path is not None:
        settings = load_config(config_path)
        if values:
            parsed = settings_from_mapping(values, where)
            for key in values:
                attr = KNOWN_KEYS[key][0]
                setattr(settings, attr, getattr(parsed, attr))
    else:
        settings = settings_from_mapping(values, where)
    mode = mode or default_mode or 'send'
    if mode not in MODES:
        raise ConfigError(f'unknown mode {mode!r} (send: SMTP first, then the queue; queue: queue only)', where,
                          'mode')
    if mode == 'queue' and not (settings.queue_url or settings.queue_dir) and not extra.get('database'):
        raise ConfigError('mode "queue" needs a queue (queue_url or queue_dir)', where, 'mode')
    return BackendConfig(settings, mode, extra)


def envelope_address(text: object, *, local_domain: Optional[str] = None, what: str = 'recipient') -> str:
    """The envelope form of a header-style address (``"Name" <a@example.org>`` -> ``a@example.org``).

    A non-ASCII domain is IDNA-encoded when the local part is ASCII (as Django does), so
    no SMTPUTF8 is needed; a non-ASCII local part stays as it is (the server must offer
    SMTPUTF8). A bare local name (``webmaster``) gets ``local_domain`` (``default_domain``,
    else the domain of ``from``). ``ValueError`` for anything that is not one address.
    """
    from .addresses import InvalidAddressError, parse_mailbox

    raw = str(text)
    try:
        address = parse_mailbox(raw, allow_local=True).address
    except InvalidAddressError as exc:
        raise ValueError(f'Invalid address ({what}): {exc}') from None  # (Django's words)
    local, domain = address.local_part, address.domain
    if not domain:
        if not local_domain:
            raise ValueError(f'Invalid address ({what}): {raw!r} has no domain (set default_domain or from)')
        domain = local_domain
    if local.isascii() and not domain.isascii() and not domain.startswith('['):
        try:
            domain = domain.encode('idna').decode('ascii')
        except UnicodeError as exc:
            raise ValueError(f'Invalid address ({what}): {raw!r}: {exc}') from None
    return f'{local}@{domain}'


def message_bytes(email_message: Any) -> bytes:
    """The bytes of a Django/Flask-Mailman ``EmailMessage``, as their SMTP backends send them.

    Django 6 builds the message with ``policy=email.policy.SMTP``; Django 4.2/5.x and
    Flask-Mailman serialise their ``SafeMIME*`` objects with ``linesep='\\r\\n'``.
    """
    build = email_message.message
    try:
        takes_policy = 'policy' in inspect.signature(build).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        takes_policy = False
    if takes_policy:
        return bytes(build(policy=email.policy.SMTP).as_bytes())
    return bytes(build().as_bytes(linesep='\r\n'))


_plugins_lock = threading.Lock()
_plugins_loaded = False
_plugins_registry: Any = None


def process_plugins(settings: Settings) -> Any:
    """The plugin registry of this process: plugins are loaded by the first backend that opens.

    A web process sends many messages over its lifetime; its plugins (entry point group
    ``mailqueue.plugins``, restricted by the ``plugins`` option) are initialised once and
    terminated when the process exits. None without PuzzlePluginSystem or without installed plugins.
    """
    global _plugins_loaded, _plugins_registry
    with _plugins_lock:
        if not _plugins_loaded:
            from .plugins import PluginManager

            enabled = None
            if settings.plugins is not None:
                enabled = [name.strip() for name in settings.plugins.split(',') if name.strip()]
            manager = PluginManager(enabled=enabled)
            _plugins_registry = manager.load()
            _plugins_loaded = True
            if _plugins_registry is not None:
                import atexit

                atexit.register(manager.terminate)
        return _plugins_registry


class MailSender:
    """A ``MessageHandler`` built on ``open()`` and closed on ``close()``; SMTP connections live in between."""

    app = 'framework'

    def __init__(self, config: BackendConfig, app: Optional[str] = None) -> None:
        self.config = config
        if app:
            self.app = app
        self.handler: Any = None

    @property
    def is_open(self) -> bool:
        return self.handler is not None

    def transports(self) -> List[Any]:
        from .bootstrap import build_transports, init_smtp_mailer, queue_location
        from .queue.transport import QueueTransport

        settings = self.config.settings
        if self.config.mode == 'queue':
            where = queue_location(settings)
            if not where:  # build_config checks this; a subclass may queue elsewhere
                raise ConfigError('mode "queue" needs a queue (queue_url or queue_dir)', settings.path, 'mode')
            return [QueueTransport(where)]
        if queue_location(settings):
            return build_transports(settings)
        return [init_smtp_mailer(settings)]

    def open(self) -> bool:
        """Build the handler; True if it was built now, False if it was open already."""
        if self.handler is not None:
            return False
        from .handler import MessageHandler

        settings = self.config.settings
        self.handler = MessageHandler(self.transports(), app=self.app, plugins=process_plugins(settings),
                                      retry_policy=settings.retry_policy())
        return True

    def close(self) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.close()

    def send(self, from_addr: str, recipients: List[str], msg_bytes: bytes) -> SendResult:
        if self.handler is None:
            self.open()
        result: Optional[SendResult] = self.handler.send_message(msg_bytes, sender=from_addr, recipients=recipients)
        assert result is not None  # only a queued message that someone else holds gives None
        return result


class QueueingBackendMixin:
    """``open``/``close``/``send_messages`` of a Django-style e-mail backend over a ``MailSender``.

    The class using it sets ``self.fail_silently``, ``self.sender`` (a ``MailSender``) and
    ``self._lock`` (a ``threading.RLock``) in its ``__init__``.
    """

    fail_silently: bool
    sender: MailSender
    _lock: threading.RLock
    default_charset = 'utf-8'

    def open(self) -> Optional[bool]:
        """Like Django's SMTP backend: True if this call opened the connection, False if it was open.

        Nothing is sent over the network here: the SMTP connection is made by the first
        message (and kept until ``close()``), so a smarthost that is down does not stop
        ``open()``; its messages are queued.
        """
        return self.sender.open()

    def close(self) -> None:
        """Close the SMTP connection (if any); the next message opens a new one."""
        self.sender.close()

    def envelope(self, email_message: Any) -> Optional[Tuple[str, List[str], bytes]]:
        """``(sender, recipients, bytes)`` of a message, or None when it has no recipients."""
        settings = self.sender.config.settings
        local_domain = settings.local_domain()
        raw_recipients = [addr for addr in email_message.recipients() if addr]
        if not raw_recipients:
            return None
        recipients: List[str] = []
        for raw in raw_recipients:
            address = envelope_address(raw, local_domain=local_domain)
            if address not in recipients:
                recipients.append(address)
        sender_text = email_message.from_email or settings.from_addr
        if not sender_text:
            # (not the null sender: that is for bounces, and the message would have no From either)
            raise ValueError('message has no sender: give it a from_email, or set DEFAULT_FROM_EMAIL '
                             '(MAIL_DEFAULT_SENDER) or the "from" option')
        sender = envelope_address(sender_text, local_domain=local_domain, what='sender')
        return sender, recipients, message_bytes(email_message)

    def send_messages(self, email_messages: Optional[Sequence[Any]]) -> int:
        """Send or queue each message; the number of messages that reached a recipient or the queue.

        Each recipient is handled on its own: accepted ones are done, temporarily refused
        ones are queued (mode ``send`` with a queue), permanently refused ones are reported.
        Unless ``fail_silently``, ``RecipientsFailed`` (an ``smtplib.SMTPRecipientsRefused``)
        is raised after the whole batch was handled if any recipient was refused or could not
        be queued; the messages of the batch that went out are not sent again by anyone.
        """
        if not email_messages:
            return 0
        failures: List[Tuple[Any, SendResult]] = []
        sent = 0
        with self._lock:
            opened = self.open()
            try:
                for email_message in email_messages:
                    envelope = self.envelope(email_message)
                    if envelope is None:
                        continue
                    result = self.sender.send(*envelope)
                    if result.accepted or result.queued_to:
                        sent += 1
                    if result.refused or result.deferred:
                        failures.append((email_message, result))
            finally:
                if opened:
                    self.close()
        if failures and not self.fail_silently:
            raise RecipientsFailed(failures, sent)
        return sent
