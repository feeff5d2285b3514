"""``manage.py mailqueue``: deliver the queue of the Django backend, show its status, create its schema.

    manage.py mailqueue                 # one pass (cron, systemd timer), like mq-run
    manage.py mailqueue --daemon        # keep delivering; stops cleanly on SIGTERM/SIGINT
    manage.py mailqueue status [--json] # messages per state, like mq-queue stats
    manage.py mailqueue init            # create/upgrade the PostgreSQL schema (database mode)

The settings are the backend's: ``settings.MAILQUEUE``, or the ``MAILERS`` entry that uses
``schwarz.mailqueue.django.EmailBackend`` (``--mailer ALIAS`` when there are several).
With ``'database': 'default'`` the runner connects to that database with the credentials
of ``settings.DATABASES``. Exit codes as mq-run: 75 when the queue cannot be used, 78 for a
configuration problem.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

EX_TEMPFAIL = 75
EX_CONFIG = 78


class Command(BaseCommand):
    help = ('Deliver the mail queue of schwarz.mailqueue.django.EmailBackend (one pass, or --daemon), '
            'show its status, or create its PostgreSQL schema (init).')

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument('action', nargs='?', default='run', choices=('run', 'status', 'init'),
                            help='run: deliver what is due (default); status: messages per state; '
                                 'init: create or upgrade the PostgreSQL schema')
        parser.add_argument('--daemon', action='store_true',
                            help='keep running; new messages go out within a second; stop with SIGTERM/SIGINT')
        parser.add_argument('--force', action='store_true', help='ignore the retry schedule: try every message now')
        parser.add_argument('--workers', type=int, metavar='N', help='parallel SMTP connections (default: workers)')
        parser.add_argument('--mailer', metavar='ALIAS', help='the MAILERS entry whose settings to use')
        parser.add_argument('--json', action='store_true', help='status as JSON')

    def handle(self, *args: Any, **options: Any) -> None:
        from schwarz.mailqueue.config import ConfigError
        from schwarz.mailqueue.django import command_config, queue_location
        from schwarz.mailqueue.errors import QueueError, QueueMisconfigured
        from schwarz.mailqueue.queue.locations import describe_location

        try:
            config, _alias = command_config(options.get('mailer'))
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=EX_CONFIG) from None
        location = queue_location(config)
        if not location:
            raise CommandError('no queue configured (queue_url, queue_dir or database in MAILQUEUE)',
                               returncode=EX_CONFIG)
        action = options['action']
        try:
            if action == 'init':
                self._init(config, location)
            elif action == 'status':
                self._status(config, location, as_json=options['json'])
            else:
                self._run(config, location, options)
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=EX_CONFIG) from None
        except QueueError as exc:
            shown, text = describe_location(location), str(exc)
            code = EX_CONFIG if isinstance(exc, QueueMisconfigured) else EX_TEMPFAIL
            raise CommandError(text if shown in text else f'queue {shown}: {text}', returncode=code) from None

    def _init(self, config: Any, location: str) -> None:
        from schwarz.mailqueue.bootstrap import open_store
        from schwarz.mailqueue.queue.locations import describe_location, split_location

        if split_location(location)[0] in ('postgresql', 'postgres'):
            from schwarz.mailqueue.queue.postgres import init_schema

            before, after = init_schema(location)
            what = 'created' if before == 0 else 'up to date' if before == after else f'upgraded from {before}'
            self.stdout.write(f'mail queue schema {what} (version {after})')
            return
        store = open_store(config.settings, location)
        store.check()
        self.stdout.write(f'mail queue {describe_location(location)} ready')

    def _status(self, config: Any, location: str, *, as_json: bool) -> None:
        from schwarz.mailqueue.bootstrap import open_store
        from schwarz.mailqueue.queue.admin import QueueAdmin
        from schwarz.mailqueue.queue.admin_render import stats_json, stats_text

        store = open_store(config.settings, location)
        try:
            stats = QueueAdmin(store, config.settings.retry_policy(), app='manage.py mailqueue').stats()
        finally:
            store.close()
        if as_json:
            self.stdout.write(json.dumps(stats_json(stats)))
        else:
            self.stdout.write(stats_text(stats), ending='')

    def _run(self, config: Any, location: str, options: Any) -> None:
        from schwarz.mailqueue.app import configure_logging
        from schwarz.mailqueue.bootstrap import build_runner, open_store
        from schwarz.mailqueue.limits import WORKERS
        from schwarz.mailqueue.plugins import PluginManager

        settings = config.settings
        workers = options.get('workers')
        if workers is not None:
            try:
                workers = WORKERS(workers)
            except ValueError as exc:
                raise CommandError(f'--workers: {exc}') from None
        verbosity = int(options.get('verbosity', 1))
        # like mq-run: problems on stderr, -v 2 shows the SMTP dialog, -v 0 only errors
        configure_logging(settings, verbose=1 if verbosity >= 2 else 0, quiet=verbosity == 0)
        enabled = None if settings.plugins is None else [p.strip() for p in settings.plugins.split(',') if p.strip()]
        plugins = PluginManager(enabled=enabled)
        try:
            store = open_store(settings, location)
            store.check()
            runner = build_runner(settings, store, plugins=plugins.load(), workers=workers,
                                  force=options.get('force', False), app='manage.py mailqueue')
            if options.get('daemon'):
                runner.serve()
                return
            stats = runner.run_once()
        finally:
            plugins.terminate()
        if stats.aborted:
            self.stderr.write(stats.aborted)
        if verbosity >= 1:
            self.stdout.write(f'sent {stats.sent}, deferred {stats.deferred}, failed {stats.failed + stats.corrupt}')
