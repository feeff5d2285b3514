"""Django e-mail backend: send at once when the smarthost answers, queue durably when it does not.

    EMAIL_BACKEND = 'schwarz.mailqueue.django.EmailBackend'
    MAILQUEUE = {
        'smtp_hostname': 'smtp.example.com', 'smtp_port': 587, 'smtp_username': '...',
        'smtp_password': '...', 'queue_dir': '/var/spool/myapp-mail',
    }
    INSTALLED_APPS += ['schwarz.mailqueue']     # for ``manage.py mailqueue``

Options, later ones winning: the ``MAILQUEUE`` dict, the keyword arguments of
``get_connection()``; or, on Django 6.1+, only ``MAILERS[alias]['OPTIONS']``. When they (and a
config file they name) name no smarthost, Django's ``EMAIL_*`` SMTP settings that the project
sets (``EMAIL_HOST``, ``EMAIL_PORT``, ``EMAIL_HOST_USER``, ``EMAIL_HOST_PASSWORD``,
``EMAIL_USE_TLS``, ``EMAIL_USE_SSL``, ``EMAIL_TIMEOUT``: what its SMTP backend would use) come
below them, else localhost port 25, Django's defaults. Keys: the config-file
keys (``smtp_*``, ``queue_url``, ``queue_dir``, retry settings ...), ``config`` (a config file read first),
``mode`` (``send``: SMTP first, queue what cannot go out now; ``queue``: queue only, the runner
delivers), ``database`` (a Django database alias: the queue is a PostgreSQL queue in that
database and each message is inserted through Django's connection, inside the current
transaction) and ``schema`` (its PostgreSQL schema, default ``mailqueue``).
``MAILQUEUE = '/etc/myapp/mailqueue.conf'`` is short for ``{'config': '...'}``.

Results per recipient (docs/frameworks.md): ``send_messages`` returns the number of messages
that reached at least one recipient or the queue; recipients refused permanently (5xx), or
refused temporarily without a queue to take them, raise ``RecipientsFailed`` (an
``smtplib.SMTPRecipientsRefused``) after the batch unless ``fail_silently``.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

try:
    from django.conf import settings as django_settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.mail.backends.base import BaseEmailBackend
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"schwarz.mailqueue.django needs Django: pip install 'mailqueue-runner[django]' ({exc})") from exc

from .config import ConfigError
from .frameworks import BackendConfig, MailSender, QueueingBackendMixin, RecipientsFailed, build_config
from .result import SendResult

__all__ = ['EmailBackend', 'OptionError', 'RecipientsFailed', 'backend_config', 'command_config', 'database_location',
           'location_for_database', 'queue_location']

SETTING = 'MAILQUEUE'
BACKEND_PATH = 'schwarz.mailqueue.django.EmailBackend'
EXTRA_KEYS = ('database', 'schema')
DEFAULT_SCHEMA = 'mailqueue'

# DATABASES[...]['OPTIONS'] that are Django's own, not libpq connection parameters.
_DJANGO_DB_OPTIONS = frozenset({'assume_role', 'isolation_level', 'pool', 'server_side_binding', 'cursor_factory',
                                'context', 'prepare_threshold'})


class OptionError(ImproperlyConfigured, ValueError):
    """A backend option that cannot be used. Also a ``ValueError``, as Django's SMTP backend
    raises for ``use_tls`` with ``use_ssl``."""


# Django's SMTP settings -> the option names of its SMTP backend (and ours)
EMAIL_SETTINGS = {
    'EMAIL_HOST': 'host',
    'EMAIL_PORT': 'port',
    'EMAIL_HOST_USER': 'username',
    'EMAIL_HOST_PASSWORD': 'password',
    'EMAIL_USE_TLS': 'use_tls',
    'EMAIL_USE_SSL': 'use_ssl',
    'EMAIL_TIMEOUT': 'timeout',
    'EMAIL_SSL_CERTFILE': 'ssl_certfile',
    'EMAIL_SSL_KEYFILE': 'ssl_keyfile',
}


def _improperly_configured(exc: ConfigError, alias: Optional[str]) -> ImproperlyConfigured:
    try:
        from django.core.mail import InvalidMailer  # Django 6.1+: names the MAILERS entry
    except ImportError:
        return OptionError(str(exc))
    if alias is not None:
        return InvalidMailer(str(exc), alias=alias)
    return OptionError(str(exc))


def _email_settings() -> Dict[str, Any]:
    """The ``EMAIL_*`` SMTP settings the project sets (an empty user or password counts as unset,
    as in Django's SMTP backend); Django's defaults are left out (``backend_config`` falls back
    to them last)."""
    found: Dict[str, Any] = {}
    for setting, name in EMAIL_SETTINGS.items():
        if not django_settings.is_overridden(setting):
            continue
        value = getattr(django_settings, setting, None)
        if name in ('username', 'password', 'ssl_certfile', 'ssl_keyfile') and not value:
            continue
        found[name] = value
    return found


def _has_invalid_mailer() -> bool:
    try:
        from django.core.mail import InvalidMailer  # noqa: F401
    except ImportError:
        return False
    return True


def _setting() -> Dict[str, Any]:
    value = getattr(django_settings, SETTING, None)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) or hasattr(value, '__fspath__'):
        return {'config': value}
    raise ImproperlyConfigured(f'settings.{SETTING} must be a dict of options or a config file path, '
                               f'not {type(value).__name__}')


def backend_config(options: Optional[Mapping[str, Any]] = None, *, alias: Optional[str] = None) -> BackendConfig:
    """The backend's configuration: ``settings.MAILQUEUE`` then ``options``; only ``options`` with MAILERS.

    With Django 6.1's ``MAILERS`` (``alias`` given) the entry's ``OPTIONS`` are the whole
    configuration, as Django asks of every backend; otherwise the ``MAILQUEUE`` setting,
    with ``options`` (``get_connection(**options)``) on top.
    """
    if alias is None:
        where = f'settings.{SETTING}'
    else:  # Django 6.1's InvalidMailer names the MAILERS entry itself
        where = 'OPTIONS' if _has_invalid_mailer() else f'MAILERS[{alias!r}] OPTIONS'
    sources = [dict(options or {})] if alias is not None else [_setting(), dict(options or {})]
    try:
        database = next((s['database'] for s in reversed(sources) if s.get('database') is not None), None)
        config = build_config(sources, where=where, extra_keys=EXTRA_KEYS, default_mode='queue' if database else None,
                              fallback=_email_settings() if alias is None else None)
        if config.extra.get('database'):
            _check_database(config, where)
        elif config.extra.get('schema'):
            raise ConfigError('only with database (the schema of the transactional queue; otherwise give it in '
                              'queue_url as mq_schema=...)', where, 'schema')
    except ConfigError as exc:
        raise _improperly_configured(exc, alias) from None
    settings = config.settings
    if alias is None and config.mode == 'send' and settings.smtp_hostname is None and not settings.accounts:
        # what Django's SMTP backend would talk to (EMAIL_HOST and EMAIL_PORT, or their defaults)
        settings.smtp_hostname = str(getattr(django_settings, 'EMAIL_HOST', None) or 'localhost')
        if settings.smtp_port is None:
            settings.smtp_port = int(getattr(django_settings, 'EMAIL_PORT', None) or 25)
    return config


def _check_database(config: BackendConfig, where: str) -> None:
    from django.db import connections

    alias = str(config.extra['database'])
    if config.mode != 'queue':
        raise ConfigError('a transactional queue (database) needs mode "queue": a message sent at once could '
                          'not be taken back when the transaction rolls back', where, 'mode')
    from .errors import BadLocation
    from .queue.pg_location import check_schema_name

    try:
        check_schema_name(_schema(config))
    except BadLocation as exc:
        raise ConfigError(str(exc), where, 'schema') from None
    if alias not in connections.settings:
        raise ConfigError(f'no database {alias!r} in settings.DATABASES', where, 'database')
    vendor = connections[alias].vendor
    if vendor != 'postgresql':
        raise ConfigError(f'database {alias!r} is {vendor}; the transactional queue needs PostgreSQL', where,
                          'database')


def _schema(config: BackendConfig) -> str:
    schema = config.extra.get('schema')
    if schema:
        return str(schema)
    url = config.settings.queue_url
    if url and url.startswith(('postgresql://', 'postgres://')):
        from .queue.pg_location import split_location

        return split_location(url)[1].get('schema') or DEFAULT_SCHEMA
    return DEFAULT_SCHEMA


def database_location(alias: str = 'default', schema: str = DEFAULT_SCHEMA) -> str:
    """A ``postgresql://`` queue location for Django's database ``alias`` (its NAME, USER, HOST, ...).

    What ``manage.py mailqueue`` gives the runner when the backend queues through Django's
    connection; the runner opens connections of its own.
    """
    from django.db import connections

    return location_for_database(connections.settings[alias], schema)


def location_for_database(db: Mapping[str, Any], schema: str = DEFAULT_SCHEMA) -> str:
    """``database_location`` for one ``settings.DATABASES`` entry; libpq parameters from ``OPTIONS`` are kept."""
    params: List[Tuple[str, str]] = []
    for key, value in (db.get('OPTIONS') or {}).items():
        if key not in _DJANGO_DB_OPTIONS and isinstance(value, (str, int)) and not isinstance(value, bool):
            params.append((key, str(value)))
    for key, name in (('HOST', 'host'), ('PORT', 'port')):
        if db.get(key):
            params.append((name, str(db[key])))
    userinfo = ''
    if db.get('USER'):
        userinfo = quote(str(db['USER']), safe='')
        if db.get('PASSWORD'):
            userinfo += ':' + quote(str(db['PASSWORD']), safe='')
        userinfo += '@'
    query = '&'.join(f'{key}={quote(value, safe="")}' for key, value in params)
    query = (query + '&' if query else '') + f'mq_schema={quote(schema, safe="")}'
    return f'postgresql://{userinfo}/{quote(str(db.get("NAME") or ""), safe="")}?{query}'


def queue_location(config: BackendConfig) -> Optional[str]:
    """Where the runner finds this configuration's queue (``queue_url``/``queue_dir``, or the database)."""
    from .bootstrap import queue_location as configured

    where = configured(config.settings)
    if where:
        return where
    if config.extra.get('database'):
        return database_location(str(config.extra['database']), _schema(config))
    return None


class TransactionalSender(MailSender):
    """Queue only, through Django's own connection: the message exists if and only if the transaction commits.

    A failure to queue is raised even with ``fail_silently``: PostgreSQL has aborted the
    transaction by then, and the application must not believe its data (or its mail) committed.
    """

    def __init__(self, config: BackendConfig, app: Optional[str] = None) -> None:
        super().__init__(config, app)
        self.database = str(config.extra['database'])
        self.schema = _schema(config)
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> bool:
        opened = not self._open
        self._open = True
        return opened

    def close(self) -> None:
        self._open = False

    def send(self, from_addr: str, recipients: List[str], msg_bytes: bytes) -> SendResult:
        from django.db import DatabaseError, connections, transaction

        from .errors import QueueUnavailable
        from .logs import QUEUE_LOG, log_event
        from .message import get_header
        from .queue.postgres import SchemaMissing, enqueue_in_transaction

        connection = connections[self.database]
        try:
            # A savepoint inside the application's transaction (or a transaction of its own outside
            # one): a failed insert does not leave Django's transaction state behind PostgreSQL's.
            with transaction.atomic(using=self.database):
                msg_id = enqueue_in_transaction(connection, msg_bytes, from_addr, recipients, schema=self.schema)
        except DatabaseError as exc:
            code = getattr(exc.__cause__, 'sqlstate', None) or getattr(exc.__cause__, 'pgcode', None)
            if code in ('42P01', '3F000'):  # undefined_table, invalid_schema_name
                raise SchemaMissing(f'the mail queue schema "{self.schema}" does not exist in database '
                                    f'{self.database!r}; create it with: manage.py mailqueue init') from exc
            raise QueueUnavailable(f'cannot queue the message in database {self.database!r}: {exc}') from exc
        import logging

        msgid = get_header(msg_bytes, 'Message-ID')
        log_event(logging.getLogger(QUEUE_LOG), {
            'status': 'queued', 'to': ','.join(recipients), 'msgid': msgid[0] if msgid else None, 'queue_id': msg_id,
            'via': 'postgresql', 'from': from_addr or '<>', 'attempts': 0, 'app': self.app,
            'transaction': 'pending' if connection.in_atomic_block else None,
        })
        return SendResult(transport='postgresql', queued=True, queued_to=list(recipients), queue_id=msg_id)


class EmailBackend(QueueingBackendMixin, BaseEmailBackend):
    """``EMAIL_BACKEND = 'schwarz.mailqueue.django.EmailBackend'`` (or a ``MAILERS`` entry's ``BACKEND``).

    Keyword options override ``settings.MAILQUEUE`` (see the module docstring); Django's own
    SMTP option names (``host``, ``port``, ``username``, ``password``, ``use_tls``,
    ``use_ssl``, ``timeout``) work too, so ``send_mail(auth_user=..., auth_password=...)``
    and existing ``MAILERS`` OPTIONS keep their meaning.
    """

    def __init__(self, fail_silently: bool = False, *, alias: Optional[str] = None, **options: Any) -> None:
        # Django 6.1's get_connection(**kwargs) with MAILERS marks the kwargs it added (username,
        # password, fail_silently); all of them are options here.
        options.pop('_ignore_unknown_kwargs', None)
        if alias is not None:
            super().__init__(alias=alias)
        else:
            super().__init__()
        self.alias = alias
        self.fail_silently = fail_silently
        self._lock = threading.RLock()
        self.config = backend_config(options, alias=alias)
        app = 'django' if alias is None else f'django:{alias}'
        if self.config.extra.get('database'):
            self.sender: MailSender = TransactionalSender(self.config, app)
        else:
            self.sender = MailSender(self.config, app)

    def open(self) -> Optional[bool]:
        try:
            return super().open()
        except ConfigError as exc:
            raise _improperly_configured(exc, self.alias) from None


def _uses_this_backend(entry: Mapping[str, Any]) -> bool:
    from django.utils.module_loading import import_string

    backend = entry.get('BACKEND')
    if not isinstance(backend, str):
        return False
    try:
        cls = import_string(backend)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, EmailBackend)


def command_config(mailer: Optional[str] = None) -> Tuple[BackendConfig, Optional[str]]:
    """The configuration ``manage.py mailqueue`` works with, and the MAILERS alias it came from.

    ``mailer`` names a ``MAILERS`` entry (Django 6.1+). Without it: the one ``MAILERS`` entry
    whose backend is this one, else ``settings.MAILQUEUE``.
    """
    mailers = getattr(django_settings, 'MAILERS', None) or {}
    if mailer is not None:
        if mailer not in mailers:
            raise ImproperlyConfigured(f'no mailer {mailer!r} in settings.MAILERS')
        if not _uses_this_backend(mailers[mailer]):
            raise ImproperlyConfigured(f'MAILERS[{mailer!r}] does not use {BACKEND_PATH}')
        return backend_config(mailers[mailer].get('OPTIONS'), alias=mailer), mailer
    ours = [alias for alias, entry in mailers.items() if isinstance(entry, Mapping) and _uses_this_backend(entry)]
    if len(ours) > 1:
        raise ImproperlyConfigured(f'several MAILERS use {BACKEND_PATH} ({", ".join(ours)}); '
                                   f'choose one with --mailer')
    if ours:
        return backend_config(mailers[ours[0]].get('OPTIONS'), alias=ours[0]), ours[0]
    return backend_config(), None
