"""mq-run: deliver what is in the queue (one pass, or ``--daemon``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence

from ..limits import WORKERS
from .common import EX_CONFIG, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE, fail, load_app, print_error, run_main
from .parsing import ArgumentParser, bounded

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AppContext
    from ..config import Settings
    from ..queue.contract import QueueStore
    from ..queue.schedule import RetryPolicy

__all__ = ['main']

PROG = 'mq-run'

DESCRIPTION = """\
Deliver queued messages to the configured SMTP smarthost.

One pass honours the retry schedule (exponential backoff from retry_min_delay
to retry_max_delay; messages older than max_queue_lifetime or refused
permanently move to failed/). Run it from cron or a systemd timer, or keep it
running with --daemon. Any number of mq-run processes may work on one queue.
"""

EPILOG = """\
exit codes: 0 the pass ran (messages may still be deferred), 64 usage error, 66 no queue
at the QUEUE given, 75 queue not usable (not writable, unreachable), 78 configuration error,
70 internal error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog='mq-run', description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('queue_dir', nargs='?', metavar='QUEUE',
                        help='queue directory or location, e.g. maildir:///var/spool/mq '
                        '(default: queue_url, else queue_dir from the config)')
    parser.add_argument('-C', '--config', metavar='FILE', help='configuration file '
                        '(default: ~/.mailqueue-runner.conf, then /etc/mailqueue-runner.conf)')
    parser.add_argument('--force', action='store_true', help='ignore the retry schedule: try every message now')
    parser.add_argument('-w', '--workers', type=bounded(WORKERS), metavar='N',
                        help='parallel SMTP connections, each reused for many messages, '
                        f'{WORKERS.low} to {WORKERS.high} (default: workers from the config, else 4)')
    parser.add_argument('--daemon', action='store_true',
                        help='keep running; pick up new messages within a second; stop cleanly on SIGTERM/SIGINT')
    parser.add_argument('--no-progress', action='store_true', help='no progress line even on a terminal')
    parser.add_argument('-v', '--verbose', action='count', default=0, help='show the SMTP dialog')
    parser.add_argument('-q', '--quiet', action='store_true', help='print nothing but errors')
    return parser


def run_queue(prog: str, app: AppContext, location: Optional[str] = None, *, force: bool = False,
              workers: Optional[int] = None, daemon: bool = False, quiet: bool = False,
              progress: bool = True) -> int:
    """One pass (or the daemon) over the configured queue; ``mq-run`` and ``mq-sendmail -q`` both run this."""
    from ..bootstrap import build_runner, open_store, queue_location
    from ..config import ConfigError
    from ..errors import QueueError, QueueMisconfigured
    from ..intake import intake_for
    from ..queue.locations import describe_location
    from ..runner import terminal_or_none

    settings = app.settings
    where = queue_location(settings, location)
    if not where:
        hint = ' (or give the queue location as argument)' if prog == PROG else ''
        fail(f'{settings.path or "configuration"}: queue_dir: not set{hint}', EX_CONFIG)
    shown = describe_location(where)
    try:
        if location is None:
            store = open_store(settings, where)  # (a maildir named in the configuration is created)
        else:
            store = _named_store(location, settings)
        store.check()
        runner = build_runner(settings, store, plugins=app.plugins, workers=workers, force=force,
                              progress=terminal_or_none() if progress and not (quiet or daemon) else None)
        runner.intake = intake_for(settings, store, app=prog)
        if daemon:
            runner.serve()
            return EX_OK
        stats = runner.run_once()
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    except QueueMisconfigured as exc:
        fail(_naming(shown, str(exc)), EX_CONFIG)
    except QueueError as exc:  # read-only, permission denied, a symlinked queue directory, I/O errors
        fail(f'{_naming(shown, getattr(exc, "strerror", None) or str(exc))}; nothing can be delivered', EX_TEMPFAIL)
    if stats.aborted and not quiet:
        print_error(prog, stats.aborted)
    if (stats.unreachable or stats.aborted) and not quiet and terminal_or_none() is not None:
        # An operator at a terminal should not wonder why nothing moved: say when the next try is.
        print_error(prog, _waiting_line(store, settings.retry_policy()))
    if stats.failed or stats.corrupt:
        # Dead letters need a human; from cron this line becomes the mail that says so.
        print_error(prog, f'{stats.failed + stats.corrupt} message(s) moved to failed/ '
                    f'(see: mq-queue list --state failed)')
    return EX_OK


def _named_store(location: str, settings: Settings) -> QueueStore:
    """The queue named on the command line: it must exist (a typo must not start an empty
    queue and report success), and a malformed one is a usage error."""
    import errno

    from ..errors import QueueError
    from ..queue.locations import describe_location, open_queue

    try:
        return open_queue(location, create=False, stale_after=settings.stale_claim_timeout)
    except ValueError as exc:
        fail(str(exc), EX_USAGE)
    except QueueError as exc:
        if getattr(exc, 'errno', None) != errno.ENOENT:
            raise
        fail(f'no queue at {describe_location(location)} (mq-queue init creates one)', EX_NOINPUT)


def _naming(shown: str, problem: str) -> str:
    """The problem, naming the queue once (a store's own messages may name it already)."""
    return problem if shown in problem else f'queue {shown}: {problem}'


def _waiting_line(store: QueueStore, policy: RetryPolicy) -> str:
    """``smarthost unreachable: 3 message(s) wait; next attempt at 14:35 (...)`` from the store."""
    from datetime import datetime, timezone

    from ..queue.contract import NEW, due_time

    waiting = 0
    earliest: Optional[datetime] = None
    for entry in store.entries((NEW,)):
        waiting += 1
        due = due_time(entry.meta, policy) if entry.meta is not None else None
        if due is not None and (earliest is None or due < earliest):
            earliest = due
    now = datetime.now(timezone.utc)
    when = 'now' if earliest is None or earliest <= now else earliest.astimezone().strftime('at %H:%M:%S')
    return (f'smarthost unreachable: {waiting} message(s) wait in the queue; next attempt {when} '
            f'(mq-run --force tries them at once)')


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    app = load_app(args.config, {'verbose': args.verbose, 'quiet': args.quiet})
    try:
        return run_queue(PROG, app, args.queue_dir, force=args.force, workers=args.workers, daemon=args.daemon,
                         quiet=args.quiet, progress=not args.no_progress)
    finally:
        app.close()


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
