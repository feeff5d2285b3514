"""``one_shot_queue_run``: what ``mq-run`` does, callable from a custom wrapper (README cookbook)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, TextIO

from .app import init_app
from .bootstrap import build_runner, open_store
from .config import Settings
from .runner import QueueRunner, RunStats, send_all_queued_messages, terminal_or_none

__all__ = ['one_shot_queue_run', 'runner_from_settings', 'send_all_queued_messages']


def runner_from_settings(cfg: Settings, queue_dir: Optional[str], *, plugins: Any = None, handler: Any = None,
                         workers: Optional[int] = None, force: bool = False,
                         progress: Optional[TextIO] = None) -> QueueRunner:
    """A ``QueueRunner`` configured the way ``mq-run`` configures it, for a queue location.

    Raises ``ConfigError`` (bad settings, no queue) and ``QueueError`` (queue not usable).
    """
    return build_runner(cfg, open_store(cfg, queue_dir), plugins=plugins, handler=handler, workers=workers,
                        force=force, progress=progress)


def one_shot_queue_run(queue_dir: Optional[str], config_path: Optional[str] = None,
                       options: Optional[Mapping[str, Any]] = None,
                       settings: Optional[Mapping[str, Any]] = None) -> RunStats:
    """One pass over the queue. ``settings`` may carry ``plugins``, ``basic_logging_configured``, ``mh``."""
    options = dict(options or {})
    app = init_app(config_path, options=options, settings=settings)
    try:
        progress = terminal_or_none() if options.get('progress', True) and not options.get('quiet') else None
        runner = runner_from_settings(app.settings, queue_dir, plugins=app.plugins, handler=app.extra.get('mh'),
                                      workers=int(options.get('workers') or 0), force=bool(options.get('force')),
                                      progress=progress)
        if options.get('daemon'):
            runner.serve()
            return RunStats()
        return runner.run_once()
    finally:
        app.close()
