"""Objects from settings, in one place: the SMTP transport, the queue store, the chain, the runner.

``config`` only parses; the CLIs, ``one_shot_queue_run`` and framework backends
call these functions, so a setting means the same everywhere. Heavy modules
(the SMTP client, the stores) are imported inside the functions that need them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, TextIO, Union

from .config import KNOWN_KEYS, ConfigError, Settings, check_ca_file, settings_from_mapping

if TYPE_CHECKING:  # pragma: no cover
    from .queue.contract import QueueStore
    from .runner import QueueRunner
    from .smtp.ratelimit import Clock
    from .smtp.transport import AccountRouter, SMTPMailer

__all__ = [
    'build_runner',
    'build_smtp_transport',
    'build_transports',
    'init_smtp_mailer',
    'open_store',
    'queue_location',
    'token_cache_path',
]


def queue_location(settings: Settings, override: Optional[str] = None) -> Optional[str]:
    """Where the queue is: an explicit location, else ``queue_url``, else ``queue_dir``; None if none."""
    return override or settings.queue_url or settings.queue_dir


def open_store(settings: Settings, location: Optional[str] = None) -> QueueStore:
    """The configured store; ``ConfigError`` (naming the key) when there is none or it is malformed.

    The store is not touched yet: a store that cannot be used raises ``QueueUnavailable``
    on first use (or from its ``check()``).
    """
    from .queue.locations import open_queue

    where = queue_location(settings, location)
    if not where:
        raise ConfigError('not set (queue_url or queue_dir)', settings.path, 'queue_dir')
    try:
        return open_queue(where, stale_after=settings.stale_claim_timeout)
    except ValueError as exc:
        raise ConfigError(str(exc), settings.path, 'queue_url' if settings.queue_url else 'queue_dir') from None


# The OAuth2 token cache, when smtp_oauth2_token_cache is not set: a file in the maildir queue's
# directory (next to new/, cur/...: owned by the queue's user, 0700, and surviving reboots).
TOKEN_CACHE_NAME = 'oauth2-token-cache.json'


def token_cache_path(settings: Settings) -> Optional[str]:
    """Where OAuth2 tokens are cached: ``smtp_oauth2_token_cache``, else beside a maildir queue, else nowhere."""
    if settings.smtp_oauth2_token_cache:
        return settings.smtp_oauth2_token_cache
    where = queue_location(settings)
    if not where:
        return None
    from .queue.locations import split_location

    scheme, rest = split_location(where)
    if scheme != 'maildir' or not rest.startswith('/'):
        return None  # a database queue has no directory: set smtp_oauth2_token_cache
    import os

    return os.path.join(rest, TOKEN_CACHE_NAME)


def _token_source(settings: Settings, cache_path: Optional[str], clock: Optional[Callable[[], float]]) -> Any:
    from .smtp.auth import CommandTokenSource, OAuth2TokenSource

    now = clock or time.time
    if settings.smtp_oauth2_token_command:
        return CommandTokenSource(settings.smtp_oauth2_token_command, clock=now)
    from .smtp.token_cache import TokenCache

    assert settings.smtp_oauth2_token_url and settings.smtp_oauth2_client_id  # check_smtp_settings
    return OAuth2TokenSource(
        settings.smtp_oauth2_token_url, settings.smtp_oauth2_client_id,
        client_secret=settings.smtp_oauth2_client_secret,
        client_secret_command=settings.smtp_oauth2_client_secret_command,
        scope=settings.smtp_oauth2_scope,
        refresh_token=settings.smtp_oauth2_refresh_token,
        refresh_token_command=settings.smtp_oauth2_refresh_token_command,
        cache=TokenCache(cache_path) if cache_path else None,
        timeout=settings.smtp_timeout,
        username=settings.smtp_username or '',
        clock=now,
    )


def _mailer(settings: Settings, smtp_log: Any, *, patient: bool = False, clock: Optional[Clock] = None,
            token_clock: Optional[Callable[[], float]] = None, cache_path: Optional[str] = None,
            name: Optional[str] = None) -> SMTPMailer:
    from .smtp.hosts import parse_hosts
    from .smtp.ratelimit import RateLimiter
    from .smtp.transport import SMTPMailer

    check_ca_file(settings)
    port = settings.smtp_port or 25
    try:
        hosts = parse_hosts(settings.smtp_hostname or 'localhost', port)
    except ValueError as exc:
        raise ConfigError(f'invalid value ({exc})', settings.path, 'smtp_hostname') from None
    token_source = _token_source(settings, cache_path, token_clock) if settings.uses_oauth2 else None
    password = settings.password() if settings.smtp_username and token_source is None else None
    return SMTPMailer(
        hostname=hosts[0][0],
        port=port,
        tls=settings.smtp_tls,
        tls_verify=settings.smtp_tls_verify,
        username=settings.smtp_username,
        password=password,
        timeout=settings.smtp_timeout,
        smtp_log=smtp_log,
        cafile=settings.smtp_ca_file,
        hosts=hosts,
        auth=settings.smtp_auth,
        token_source=token_source,
        rate_limiter=RateLimiter(settings.smtp_rate_limit, clock),
        patient=patient,
        name=name,
    )


def init_smtp_mailer(settings: Union[Settings, Mapping[str, Any], None],
                     smtp_log: Any = None) -> Union[SMTPMailer, AccountRouter]:
    """Build an ``SMTPMailer`` from a settings dict (``smtp_*`` keys) or ``Settings`` (1.0.0 API).

    ``Settings`` with ``[account:NAME]`` sections give an ``AccountRouter`` (same interface:
    ``send``, ``clone``, ``close``), so every caller sends each message through its account.
    """
    if not isinstance(settings, Settings):
        values = dict(settings or {})
        for key in values:
            if key.startswith('smtp_') and key not in KNOWN_KEYS:
                raise ConfigError('unknown key', None, key)
        settings = settings_from_mapping(values, strict=False)
    if settings.accounts:
        return build_smtp_transport(settings, smtp_log)
    return _mailer(settings, smtp_log, cache_path=token_cache_path(settings))


def build_smtp_transport(settings: Settings, smtp_log: Any = None, *, patient: bool = False,
                         clock: Optional[Clock] = None,
                         token_clock: Optional[Callable[[], float]] = None) -> Union[SMTPMailer, AccountRouter]:
    """The SMTP transport: one ``SMTPMailer``, or an ``AccountRouter`` when accounts are configured.

    ``patient`` (the runner): after a "slow down" reply, wait and try the message again
    instead of spending an attempt. ``clock``/``token_clock``: injectable for tests.
    """
    cache_path = token_cache_path(settings)
    default = _mailer(settings, smtp_log, patient=patient, clock=clock, token_clock=token_clock,
                      cache_path=cache_path)
    if not settings.accounts:
        return default
    from .smtp.transport import AccountRouter

    accounts = []
    for account in settings.accounts:
        assert account.account_name is not None
        mailer = _mailer(account, smtp_log, patient=patient, clock=clock, token_clock=token_clock,
                         cache_path=token_cache_path(account) or cache_path, name=account.account_name)
        accounts.append((account.account_name, account.match_from, mailer))
    return AccountRouter(default, accounts)


def build_transports(settings: Settings, *, queue: bool = True) -> List[Any]:
    """SMTP to the smarthost, then (with ``queue`` and a configured queue) the durable queue."""
    smtp = build_smtp_transport(settings)
    transports: List[Any] = [smtp]
    where = queue_location(settings)
    if queue and where:
        if settings.accounts:
            from .accounts import AccountQueueTransport

            # the queue records the account of each message (X-Queue-Account)
            transports.append(AccountQueueTransport(where, smtp.account_for))  # type: ignore[union-attr]
        else:
            from .queue.transport import QueueTransport

            # opened when first needed: a queue that cannot be used then is a temporary failure (75)
            transports.append(QueueTransport(where))
    return transports


def build_runner(settings: Settings, store: QueueStore, *, plugins: Any = None, handler: Any = None,
                 workers: Optional[int] = None, force: bool = False, progress: Optional[TextIO] = None,
                 app: str = 'mq-run', clock: Optional[Clock] = None,
                 token_clock: Optional[Callable[[], float]] = None) -> QueueRunner:
    """A ``QueueRunner`` configured the way ``mq-run`` configures it."""
    from .runner import QueueRunner

    # smtp_rate_limit is kept by the SMTP transport (per account, shared by the workers' clones); a
    # handler of the caller's own is rate-limited by the runner, as before
    mailer = None if handler is not None else build_smtp_transport(settings, patient=True, clock=clock,
                                                                    token_clock=token_clock)
    return QueueRunner(store, mailer=mailer, handler=handler, policy=settings.retry_policy(),
                       workers=workers or settings.workers, force=force, plugins=plugins, progress=progress,
                       app=app, rate_limit=settings.smtp_rate_limit if handler is not None else None)

