"""Application set-up shared by the CLIs and custom wrappers: config, logging, plugins."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional

from .config import KNOWN_KEYS, ConfigError, Settings, guess_config_path, load_config, settings_from_mapping
from .logs import DELIVERY_LOG, QUEUE_LOG, SMTP_LOG, JSONFormatter
from .plugins import PluginManager

__all__ = ['AppContext', 'configure_logging', 'guess_config_path', 'init_app', 'merge_settings']

# Keys a wrapper may pass in ``settings`` that are not config-file keys.
WRAPPER_KEYS = ('basic_logging_configured', 'mh')


class AppContext:
    """Settings, options and loaded plugins of one tool run; ``close()`` terminates the plugins."""

    def __init__(self, settings: Settings, options: Dict[str, Any], plugin_manager: Optional[PluginManager] = None,
                 plugins: Any = None, extra: Optional[Dict[str, Any]] = None) -> None:
        self.settings = settings
        self.options = options
        self.plugin_manager = plugin_manager
        self.plugins = plugins
        self.extra: Dict[str, Any] = extra if extra is not None else {}

    def close(self) -> None:
        if self.plugin_manager is not None:
            self.plugin_manager.terminate()
            self.plugin_manager = None


def merge_settings(base: Settings, overrides: Optional[Mapping[str, Any]]) -> Settings:
    if not overrides:
        return base
    values = {k: v for k, v in overrides.items() if k not in WRAPPER_KEYS}
    unknown = [k for k in values if k.lower() not in KNOWN_KEYS]
    if unknown:
        raise ConfigError('unknown key', 'settings', unknown[0])
    parsed = settings_from_mapping(values, base.path)
    for key in values:
        attr = KNOWN_KEYS[key.lower()][0]
        setattr(base, attr, getattr(parsed, attr))
    return base


class _LineFormatter(logging.Formatter):
    """One record, one line: a line break in the message (a file name, a server's reply, a
    database's DETAIL) is folded, so nobody can add a line that looks like one of ours. A
    traceback (``-v``) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).replace('\r', ' ').replace('\n', ' ')


class _ConsoleFormatter(_LineFormatter):
    """Console lines with control characters made harmless (``humanize.printable``).

    Log messages quote SMTP replies and queue file contents (at ``-v`` the whole dialog):
    an escape sequence from a server must not reach the operator's terminal.
    """

    def format(self, record: logging.LogRecord) -> str:
        from .humanize import printable

        return printable(super().format(record))


def _formatter(settings: Settings) -> logging.Formatter:
    if settings.log_format == 'json':
        return JSONFormatter()
    return _LineFormatter('%(asctime)s %(message)s')


def _target_handler(settings: Settings, prog: str) -> Optional[logging.Handler]:
    """The handler for ``log_target`` (besides the files): None for ``file``.

    ``journal`` falls back to syslog when there is no journal socket; ``syslog`` without a
    syslog socket logs nowhere but the files (a host without syslog must still send mail).
    """
    target = settings.log_target
    handler: Optional[logging.Handler] = None
    if target == 'journal':
        from .logs import JournalHandler, journal_available

        if journal_available():
            handler = JournalHandler(identifier=prog)
            handler.setFormatter(_LineFormatter('%(message)s'))
            return handler
        target = 'syslog'
    if target == 'syslog':
        from .logs import syslog_handler

        handler = syslog_handler(prog)
    elif target == 'stderr':
        handler = logging.StreamHandler(sys.stderr)
    if handler is not None:
        handler.setFormatter(_formatter(settings) if target == 'stderr' else _LineFormatter('%(message)s'))
    return handler


def configure_logging(settings: Settings, verbose: int = 0, quiet: bool = False) -> None:
    """Console output on ``mailqueue``; optional delivery/queue log files; or a fileConfig."""
    if settings.logging_config:
        from logging import config as logging_config

        try:
            logging_config.fileConfig(settings.logging_config, disable_existing_loggers=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f'cannot load logging configuration ({exc})', settings.path,
                              'logging_config') from None
        return
    root = logging.getLogger('mailqueue')
    console_level = logging.ERROR if quiet else logging.DEBUG if verbose >= 1 else logging.WARNING
    console = next((h for h in root.handlers if getattr(h, '_mq_console', False)), None)
    if console is None:
        console = logging.StreamHandler(sys.stderr)
        console._mq_console = True  # type: ignore[attr-defined]
        # every line names the tool, as the tools' own error lines do (cron mails mix several)
        prog = os.path.basename(sys.argv[0] or '') or 'mailqueue'
        console.setFormatter(_ConsoleFormatter(prog.replace('%', '%%') + ': %(message)s'))
        root.addHandler(console)
        root.propagate = False
    # The handler filters too: delivery/queue loggers are set to INFO for their log files and
    # propagate here, and from cron every line on stderr becomes a mail.
    console.setLevel(console_level)
    root.setLevel(console_level)
    prog = os.path.basename(sys.argv[0] or '') or 'mailqueue'
    shared = _target_handler(settings, prog)
    for logger_name, path in ((DELIVERY_LOG, settings.delivery_log), (QUEUE_LOG, settings.queue_log)):
        logger = logging.getLogger(logger_name)
        # A wrapper calling init_app() once per run (one_shot_queue_run) must not stack a
        # handler per call: every event would be written once more each time, and a changed
        # log_format would mix formats in one file.
        stale = [h for h in logger.handlers if getattr(h, '_mq_logfile', False)]
        for old in stale:
            logger.removeHandler(old)
            if old is not shared:
                old.close()
        handlers: List[logging.Handler] = [shared] if shared is not None else []
        if path:
            try:
                # created 0640 whatever the umask: who sent mail to whom is not for every local user
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
                file_handler = logging.FileHandler(path, encoding='utf-8')
            except OSError as exc:
                # A log file we cannot write must never stop mail. A user sending as themselves
                # while the log belongs to the queue's owner is normal: said only with -v, never
                # per mail; anything else (a missing directory) is a warning.
                key = 'delivery_log' if logger_name == DELIVERY_LOG else 'queue_log'
                level = logging.DEBUG if isinstance(exc, PermissionError) else logging.WARNING
                root.log(level, 'warning: %s: %s: cannot open %s (%s); not logging there',
                         settings.path or 'configuration', key, path, exc.strerror or exc)
            else:
                file_handler.setFormatter(_formatter(settings))
                handlers.append(file_handler)
        if not handlers:
            if stale:
                logger.setLevel(logging.NOTSET)  # back to what it was before we added the file
            continue
        for handler in handlers:
            handler._mq_logfile = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if verbose < 1:
        logging.getLogger(SMTP_LOG).setLevel(logging.INFO)


def _plugin_list(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [name for name in (part.strip() for part in value.split(',')) if name]


def init_app(config_path: Optional[str] = None, options: Optional[Mapping[str, Any]] = None,
             settings: Optional[Mapping[str, Any]] = None, *, load_plugins: bool = True) -> AppContext:
    """Load the config (if any), apply ``settings`` overrides, set up logging and plugins."""
    options = dict(options or {})
    path = guess_config_path(config_path)
    cfg = load_config(path) if path else Settings()
    cfg = merge_settings(cfg, settings)
    wrapper = dict(settings or {})
    if not wrapper.get('basic_logging_configured'):
        verbose = options.get('verbose', 0)
        configure_logging(cfg, verbose=int(verbose) if not isinstance(verbose, bool) else int(verbose),
                          quiet=bool(options.get('quiet')))
    for warning in cfg.warnings:
        logging.getLogger('mailqueue').warning('warning: %s', warning)
    context = AppContext(settings=cfg, options=options, extra={k: wrapper[k] for k in WRAPPER_KEYS
                                                                if k in wrapper})
    if load_plugins:
        manager = PluginManager(enabled=_plugin_list(cfg.plugins))
        context.plugins = manager.load()
        context.plugin_manager = manager
    return context
