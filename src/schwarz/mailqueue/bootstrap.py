"""Objects from settings, in one place: the SMTP transport, the queue store, the chain, the runner.

``config`` only parses; the CLIs, ``one_shot_queue_run`` and framework backends
call these functions, so a setting means the same everywhere. Heavy modules
(the SMTP client, the stores) are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Optional, TextIO, Union

from .config import KNOWN_KEYS, ConfigError, Settings, check_ca_file, settings_from_mapping

if TYPE_CHECKING:  # pragma: no cover
    from .queue.contract import QueueStore
    from .runner import QueueRunner
    from .smtp.transport import SMTPMailer

__all__ = ['build_runner', 'build_transports', 'init_smtp_mailer', 'open_store', 'queue_location']


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


def init_smtp_mailer(settings: Union[Settings, Mapping[str, Any], None], smtp_log: Any = None) -> SMTPMailer:
    """Build an ``SMTPMailer`` from a settings dict (``smtp_*`` keys) or ``Settings`` (1.0.0 API)."""
    from .smtp.transport import SMTPMailer

    if not isinstance(settings, Settings):
        values = dict(settings or {})
        for key in values:
            if key.startswith('smtp_') and key not in KNOWN_KEYS:
                raise ConfigError('unknown key', None, key)
        settings = settings_from_mapping(values, strict=False)
    check_ca_file(settings)
    return SMTPMailer(
        hostname=settings.smtp_hostname or 'localhost',
        port=settings.smtp_port or 25,
        tls=settings.smtp_tls,
        tls_verify=settings.smtp_tls_verify,
        username=settings.smtp_username,
        password=settings.password() if settings.smtp_username else None,
        timeout=settings.smtp_timeout,
        smtp_log=smtp_log,
        cafile=settings.smtp_ca_file,
    )


def build_transports(settings: Settings, *, queue: bool = True) -> List[Any]:
    """SMTP to the smarthost, then (with ``queue`` and a configured queue) the durable queue."""
    transports: List[Any] = [init_smtp_mailer(settings)]
    where = queue_location(settings)
    if queue and where:
        from .queue.transport import QueueTransport

        # opened when first needed: a queue that cannot be used then is a temporary failure (75)
        transports.append(QueueTransport(where))
    return transports


def build_runner(settings: Settings, store: QueueStore, *, plugins: Any = None, handler: Any = None,
                 workers: Optional[int] = None, force: bool = False, progress: Optional[TextIO] = None,
                 app: str = 'mq-run') -> QueueRunner:
    """A ``QueueRunner`` configured the way ``mq-run`` configures it."""
    from .runner import QueueRunner

    mailer = None if handler is not None else init_smtp_mailer(settings)
    return QueueRunner(store, mailer=mailer, handler=handler, policy=settings.retry_policy(),
                       workers=workers or settings.workers, force=force, rate_limit=settings.smtp_rate_limit,
                       plugins=plugins, progress=progress, app=app)
