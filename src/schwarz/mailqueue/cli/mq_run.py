"""mq-run: deliver what is in the queue (one pass, or ``--daemon``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import List, Optional, Sequence

from ..limits import WORKERS
from .common import EX_CONFIG, EX_OK, EX_TEMPFAIL, fail, load_app, print_error, run_main
from .parsing import ArgumentParser, bounded

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
exit codes: 0 the pass ran (messages may still be deferred), 64 usage error,
75 queue directory not accessible, 78 configuration error, 70 internal error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog='mq-run', description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('queue_dir', nargs='?', help='queue directory (default: queue_dir from the config)')
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


# Every directory a pass may write to: a claim renames new/ -> cur/, a deferral rewrites the
# file through tmp/, dead letters go to failed/, a file that cannot be updated after a partial
# delivery to hold/.
_WRITTEN_DIRS = ('new', 'cur', 'tmp', 'failed', 'hold')


def _why_unwritable(queue_dir: str) -> Optional[str]:
    """Why this process cannot work on the queue (a read-only mount, another user's 0700 queue), or None.

    Checked before the pass: otherwise every message is one "cannot claim" line and the
    run still looks successful to cron or systemd.
    """
    if not os.path.isdir(queue_dir):  # not a maildir queue (or gone): the store reports its own errors
        return None
    for name in _WRITTEN_DIRS:
        path = os.path.join(queue_dir, name)
        if os.access(path, os.W_OK | os.X_OK):
            continue
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f'cannot write to {name}/ ({os.strerror(errno.EROFS if read_only else errno.EACCES)})'
    return None


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    options = {'verbose': args.verbose, 'quiet': args.quiet}
    app = load_app(args.config, options)  # the SMTP settings live there, even with a queue_dir argument
    try:
        from ..config import ConfigError
        from ..queue.maildir import QueueWriteError
        from ..queue_runner import runner_from_settings
        from ..runner import terminal_or_none

        settings = app.settings
        queue_dir = args.queue_dir or settings.queue_dir
        if not queue_dir:
            fail(f'{settings.path or "configuration"}: queue_dir: not set (give the queue directory as argument)',
                 EX_CONFIG)
        show_progress = not (args.quiet or args.no_progress or args.daemon)
        try:
            runner = runner_from_settings(settings, queue_dir, plugins=app.plugins, workers=args.workers,
                                          force=args.force,
                                          progress=terminal_or_none() if show_progress else None)
        except QueueWriteError as exc:
            fail(f'queue {queue_dir}: {exc.strerror or exc}', EX_TEMPFAIL)
        except ConfigError as exc:
            fail(str(exc), EX_CONFIG)
        problem = _why_unwritable(queue_dir)
        if problem:
            fail(f'queue {queue_dir}: {problem}; nothing can be delivered', EX_TEMPFAIL)
        try:
            if args.daemon:
                runner.serve()
                return EX_OK
            stats = runner.run_once()
        except OSError as exc:  # permission denied, a symlinked queue directory, I/O errors
            fail(f'queue {queue_dir}: {exc.strerror or exc}', EX_TEMPFAIL)
        if stats.aborted and not args.quiet:
            print_error(PROG, stats.aborted)
        if stats.failed or stats.corrupt:
            # Dead letters need a human; from cron this line becomes the mail that says so.
            print_error(PROG, f'{stats.failed + stats.corrupt} message(s) moved to failed/ '
                        f'(see: mq-queue list --state failed)')
        return EX_OK
    finally:
        app.close()


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
