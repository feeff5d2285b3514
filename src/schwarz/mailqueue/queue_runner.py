"""``one_shot_queue_run``: what ``mq-run`` does, callable from a custom wrapper (README cookbook)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, TextIO

from .app import init_app
from .config import ConfigError, Settings, init_smtp_mailer
from .queue.maildir import get_queue
from .runner import QueueRunner, RunStats, send_all_queued_messages, terminal_or_none

__all__ = ['one_shot_queue_run', 'runner_from_settings', 'send_all_queued_messages']


def runner_from_settings(cfg: Settings, queue_dir: str, *, plugins: Any = None, handler: Any = None,
                         workers: Optional[int] = None, force: bool = False,
                         progress: Optional[TextIO] = None) -> QueueRunner:
    """A ``QueueRunner`` configured the way ``mq-run`` configures it (shared by the CLI and wrappers).

    Raises ``ConfigError`` (bad retry settings) and ``QueueWriteError`` (queue not usable).
    """
    queue = get_queue(queue_dir)
    queue.stale_after = cfg.stale_claim_timeout
    mailer = None if handler is not None else init_smtp_mailer(cfg)
    return QueueRunner(queue, mailer=mailer, handler=handler, policy=cfg.retry_policy(),
                       workers=workers or cfg.workers, force=force, rate_limit=cfg.smtp_rate_limit,
                       plugins=plugins, progress=progress)


def one_shot_queue_run(queue_dir: Optional[str], config_path: Optional[str] = None,
                       options: Optional[Mapping[str, Any]] = None,
                       settings: Optional[Mapping[str, Any]] = None) -> RunStats:
    """One pass over the queue. ``settings`` may carry ``plugins``, ``basic_logging_configured``, ``mh``."""
    options = dict(options or {})
    app = init_app(config_path, options=options, settings=settings)
    try:
        cfg = app.settings
        queue_dir = queue_dir or cfg.queue_dir
        if not queue_dir:
            raise ConfigError('no queue_dir configured', cfg.path, 'queue_dir')
        progress = terminal_or_none() if options.get('progress', True) and not options.get('quiet') else None
        runner = runner_from_settings(cfg, queue_dir, plugins=app.plugins, handler=app.extra.get('mh'),
                                      workers=int(options.get('workers') or 0), force=bool(options.get('force')),
                                      progress=progress)
        if options.get('daemon'):
            runner.serve()
            return RunStats()
        return runner.run_once()
    finally:
        app.close()

