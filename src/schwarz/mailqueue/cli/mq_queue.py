"""mq-queue: look at and manage the queue (``mailq`` / ``postqueue`` / ``postsuper`` of this project).

    mq-queue [-C FILE | --queue-dir LOCATION] list [--json] [--state S] [--older-than AGE] [--to X] [--from X]
    mq-queue show ID [--body]
    mq-queue retry ID...|--all [--now]
    mq-queue hold ID...|--all [--reason TEXT]
    mq-queue release ID...|--all
    mq-queue delete ID... [-y]
    mq-queue requeue ID...|--all
    mq-queue purge --older-than AGE [--state S] [-y] [--dry-run]
    mq-queue stats [--json | --prometheus] [-o FILE]
    mq-queue copy --to LOCATION

This module only parses arguments, prints and maps outcomes to exit codes. The
work is done by ``queue.admin.QueueAdmin`` over whatever store the location
names (``open_queue``), the output formats are ``queue.admin_render``'s.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

from ..humanize import error_line, format_age, one_line, printable
from ..limits import AGE, WAIT
from ..queue.admin import (
    BUSY,
    CORRUPT,
    DEFERRED,
    GONE,
    NOOP,
    OK,
    PURGE_STATES,
    REFUSED,
    WRONG_STATE,
    ActionResult,
    IDError,
    InvalidID,
    Operation,
    QueueAdmin,
    Row,
    Selection,
    UnknownID,
)
from ..queue.admin_render import ListingWriter, is_terminal, prometheus, row_json, show_fields, stats_json, stats_text
from ..queue.contract import NEW, STATES, same_queue
from ..queue.schedule import RetryPolicy
from .common import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    CLIError,
    fail,
    load_app,
    print_error,
    run_main,
)
from .parsing import ArgumentParser, bounded

if TYPE_CHECKING:  # pragma: no cover
    from ..queue.contract import QueueStore

__all__ = ['EX_IOERR', 'EX_NOINPUT', 'EX_NOPERM', 'build_parser', 'list_queue', 'main']

PROG = 'mq-queue'
# sysexits.h codes that cli.common does not need
EX_NOPERM = 77

_OUTCOME_CODES = {OK: EX_OK, NOOP: EX_OK, BUSY: EX_TEMPFAIL, GONE: EX_NOINPUT, WRONG_STATE: EX_USAGE,
                  CORRUPT: EX_DATAERR, DEFERRED: EX_TEMPFAIL, REFUSED: EX_UNAVAILABLE}
# What to do instead when a command does not apply to the state a message is in.
_HINTS = {
    ('retry', 'hold'): 'release it first',
    ('retry', 'failed'): 'use requeue',
    ('deliver', 'hold'): 'release it first',
    ('deliver', 'failed'): 'use requeue',
    ('hold', 'failed'): 'use requeue or delete',
    ('release', 'failed'): 'use requeue',
    ('requeue', 'new'): 'it is not failed; use retry',
    ('requeue', 'hold'): 'use release',
}
_PAST = {'retry': 'made due', 'hold': 'held', 'release': 'released', 'requeue': 'requeued',
         'delete': 'deleted', 'purge': 'purged', 'deliver': 'delivered', 'copy': 'copied'}
_MAX_CONNECTION_FAILURES = 3


# --- argument parsing ----------------------------------------------------------------------------


def _state(value: str) -> str:
    if value not in STATES:
        raise argparse.ArgumentTypeError(f'unknown state {value!r} (one of {", ".join(STATES)})')
    return value


def _note(value: str) -> str:
    from ..headers import not_utf8

    if not_utf8(value):
        raise argparse.ArgumentTypeError(f'not valid UTF-8: {ascii(value)}')
    return value


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Accepted before and after the sub-command; after it only overrides what was given.
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument('-C', '--config', metavar='FILE', default=d(None),
                        help='configuration file (default: ~/.mailqueue-runner.conf, then '
                             '/etc/mailqueue-runner.conf)')
    parser.add_argument('-d', '--queue-dir', metavar='LOCATION', default=d(None),
                        help='the queue: a directory or a location such as maildir:///var/spool/mq '
                             '(default: queue_url, else queue_dir from the configuration)')
    parser.add_argument('-v', '--verbose', action='count', default=d(0), help='more detail')
    parser.add_argument('--wait', metavar='SECONDS', type=bounded(WAIT), default=d(5.0),
                        help='how long to wait for a message that is being delivered, '
                             f'{WAIT.low:g} to {WAIT.high:g} (default: 5)')


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--older-than', metavar='AGE', type=bounded(AGE),
                        help='only messages queued longer ago than AGE (e.g. 30m, 2d, 1h30m)')
    parser.add_argument('--to', metavar='TEXT', help='only messages with a recipient containing TEXT')
    parser.add_argument('--from', dest='sender', metavar='TEXT',
                        help='only messages whose sender contains TEXT ("<>" for the null sender)')


def _add_ids(parser: argparse.ArgumentParser, bulk: bool) -> None:
    parser.add_argument('ids', nargs='*', metavar='ID',
                        help='queue id or a unique prefix of one; "-" reads ids from stdin, one per line')
    if bulk:
        parser.add_argument('--all', action='store_true', help='every message this command applies to')
        _add_filters(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description='Look at and manage the mailqueue-runner queue.',
                            epilog='Without a command, "list" is run. IDs may be abbreviated to a unique prefix.')
    _add_common(parser, defaults=True)
    common = ArgumentParser(add_help=False)
    _add_common(common, defaults=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')

    sub.add_parser('init', parents=[common], help='create the queue, or create/upgrade its database schema')
    p = sub.add_parser('setup', parents=[common], help='install the sample configuration and the systemd units; '
                       'create the queue (with --drop-area: submission for every local user)')
    from .mq_setup import add_arguments

    add_arguments(p)
    p = sub.add_parser('list', parents=[common], help='one line per message (streams; fine for huge queues)')
    p.add_argument('--json', action='store_true', help='one JSON object per line, full values')
    p.add_argument('--state', action='append', type=_state, metavar='STATE',
                   help=f'only this state ({", ".join(STATES)}); repeatable')
    _add_filters(p)
    p.add_argument('--sort', choices=('age', 'size'),
                   help='sort (oldest/largest first); keeps the listing in memory')

    p = sub.add_parser('show', parents=[common], help='envelope, queue metadata and headers of messages')
    p.add_argument('ids', nargs='+', metavar='ID')
    p.add_argument('--body', action='store_true', help='the whole message instead of only its headers')

    p = sub.add_parser('retry', parents=[common], help='make messages due now (or deliver them now)')
    _add_ids(p, bulk=True)
    p.add_argument('--now', action='store_true', help='deliver immediately instead of at the next queue run')

    p = sub.add_parser('hold', parents=[common], help='park waiting messages in hold/')
    _add_ids(p, bulk=True)
    p.add_argument('--reason', metavar='TEXT', type=_note, help='note kept with the message')

    p = sub.add_parser('release', parents=[common], help='move held messages back to new/')
    _add_ids(p, bulk=True)

    p = sub.add_parser('delete', parents=[common], help='remove messages')
    _add_ids(p, bulk=False)
    p.add_argument('-y', '--yes', action='store_true', help='do not ask for confirmation')

    p = sub.add_parser('requeue', parents=[common], help='move failed messages back to new/, retries reset')
    _add_ids(p, bulk=True)

    p = sub.add_parser('purge', parents=[common], help='delete messages older than AGE')
    p.add_argument('--older-than', metavar='AGE', type=bounded(AGE), required=True)
    p.add_argument('--state', action='append', type=_state, metavar='STATE',
                   help=f'only this state; repeatable (default: {", ".join(PURGE_STATES)})')
    p.add_argument('-y', '--yes', action='store_true', help='do not ask for confirmation')
    p.add_argument('-n', '--dry-run', action='store_true', help='only list what would be purged')

    p = sub.add_parser('stats', parents=[common], help='counts per state, oldest age, total size')
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument('--json', action='store_true', help='one JSON object')
    fmt.add_argument('--prometheus', action='store_true',
                     help='Prometheus text format (node_exporter textfile collector)')
    p.add_argument('-o', '--output', metavar='FILE', help='write FILE atomically instead of printing')

    p = sub.add_parser('copy', parents=[common], help='move every message into another queue (e.g. a maildir '
                       'into PostgreSQL), none lost or doubled; a re-run after a crash finishes the job')
    p.add_argument('--to', metavar='LOCATION', required=True,
                   help='the target queue (it must exist: mq-queue init), e.g. postgresql://db.example.org/mail')
    return parser


# --- the queue -----------------------------------------------------------------------------------


def _store_error(exc: Exception) -> CLIError:
    """A store that cannot be used: 66 when it is not there, 77 when we may not (a file), 78 when an
    operator must act (``mq-queue init``, a database grant, a setting), else 74 (I/O) or 75."""
    from ..errors import QueueMisconfigured

    code = getattr(exc, 'errno', None)
    if isinstance(exc, QueueMisconfigured):
        return CLIError(str(exc), EX_CONFIG)
    if code == errno.ENOENT:
        exit_code = EX_NOINPUT
    elif code in (errno.EACCES, errno.EPERM):
        exit_code = EX_NOPERM
    else:
        exit_code = EX_IOERR if isinstance(exc, OSError) else EX_TEMPFAIL
    filename = getattr(exc, 'filename', None)
    text = getattr(exc, 'strerror', None) or str(exc)
    return CLIError(f'{filename}: {text}' if filename else text, exit_code)


def _open_store(location: str, *, writable: bool, configured: bool = False) -> QueueStore:
    """The store at ``location``; it must exist (an admin tool creates no queue).

    ``configured``: the location came from the configuration file, so a malformed one is exit 78
    (a configuration error), not 64 (usage).
    """
    from ..errors import QueueError
    from ..queue.locations import open_queue

    try:
        store = open_queue(location, create=False)
        if writable:
            store.check()
    except ValueError as exc:  # not a location we know
        raise CLIError(str(exc), EX_CONFIG if configured else EX_USAGE) from None
    except (QueueError, OSError) as exc:
        raise _store_error(exc) from None
    return store


def list_queue(queue_dir: str, stream: TextIO, *, as_json: bool = False, policy: Optional[RetryPolicy] = None,
               prog: str = PROG) -> int:
    """Print the ``mq-queue list`` listing of a queue (a directory or location) to ``stream``.

    Used by ``mq-sendmail -bp``. Errors go to stderr as one line; the return value is the exit code.
    """
    from ..errors import QueueError

    try:
        admin = QueueAdmin(_open_store(queue_dir, writable=False, configured=True), policy)  # (-bp: by config)
        return _write_listing(admin, stream, Selection(), as_json=as_json)
    except CLIError as exc:
        print_error(prog, str(exc))
        return exc.exit_code
    except BrokenPipeError:
        raise
    except (QueueError, OSError) as exc:
        error = _store_error(exc)
        print_error(prog, str(error))
        return error.exit_code


# --- reporting -----------------------------------------------------------------------------------


class _Reporter:
    """Per-message lines (all of them for explicit ids, only problems for --all) and the exit code."""

    def __init__(self, action: str, bulk: bool, verbose: int) -> None:
        self.action = action
        self.bulk = bulk
        self.verbose = verbose
        self.counts: Dict[str, int] = {}
        self.exit_code = EX_OK

    def add(self, result: ActionResult) -> None:
        self.counts[result.outcome] = self.counts.get(result.outcome, 0) + 1
        code = _OUTCOME_CODES.get(result.outcome, EX_DATAERR)
        if result.outcome == GONE and result.action in ('delete', 'purge'):
            code = EX_OK  # the goal, "not in the queue", is reached
        if self.bulk and result.outcome in (GONE, WRONG_STATE):
            code = EX_OK  # --all covers what is there; a runner took this one meanwhile
        if code != EX_OK and self.exit_code == EX_OK:
            self.exit_code = code
        detail = result.detail
        hint = _HINTS.get((result.action, result.state or ''))
        if result.outcome == WRONG_STATE and hint:
            detail = f'{detail} ({hint})'
        # The detail may quote the SMTP server (retry --now): never raw onto the terminal.
        if result.ok or code == EX_OK:
            if not self.bulk or self.verbose:
                print(error_line(f'{result.msg_id}: {detail}'))
        else:
            print_error(PROG, f'{result.msg_id}: {detail}')

    def summary(self) -> None:
        if not self.bulk:
            return
        done = self.counts.get(OK, 0)
        noun = 'message' if done == 1 else 'messages'
        parts = [f'{_PAST.get(self.action, self.action)} {done} {noun}']
        for outcome, label in ((NOOP, 'unchanged'), (BUSY, 'busy'), (GONE, 'gone meanwhile'),
                               (WRONG_STATE, 'moved meanwhile'), (CORRUPT, 'unreadable'),
                               (DEFERRED, 'deferred'), (REFUSED, 'refused')):
            if self.counts.get(outcome):
                parts.append(f'{self.counts[outcome]} {label}')
        print(', '.join(parts))


def _explicit_ids(args: argparse.Namespace, admin: QueueAdmin) -> List[str]:
    given: List[str] = list(args.ids)
    if given == ['-']:
        given = [line.strip() for line in sys.stdin if line.strip() and not line.lstrip().startswith('#')]
        if not given:
            fail('no ids on stdin', EX_USAGE)
    elif '-' in given:
        fail('"-" (ids from stdin) cannot be combined with other ids', EX_USAGE)
    return admin.resolve(given)


def _targets(args: argparse.Namespace, admin: QueueAdmin, states: Tuple[str, ...]) -> Tuple[bool, Iterator[str]]:
    """(bulk, ids): explicit ids are all resolved first, so a typo changes nothing."""
    use_all = bool(getattr(args, 'all', False))
    if use_all and args.ids:
        fail(f'give ids or --all, not both (see {PROG} {args.command} --help)', EX_USAGE)
    if not use_all and not args.ids:
        fail(f'{args.command}: give one or more ids' + (' or --all' if hasattr(args, 'all') else ''), EX_USAGE)
    if use_all:
        selection = Selection(states=states, older_than=args.older_than, to=args.to, sender=args.sender)
        return True, (msg_id for _state, msg_id in admin.select_ids(selection))
    if any(getattr(args, name, None) is not None for name in ('older_than', 'to', 'sender')):
        fail('--older-than, --to and --from only apply to --all', EX_USAGE)
    return False, iter(_explicit_ids(args, admin))


def _report(reporter: _Reporter, results: Iterable[ActionResult],
            stop: Callable[[ActionResult], bool] = lambda result: False) -> int:
    for result in results:
        reporter.add(result)
        if stop(result):
            break
    reporter.summary()
    return reporter.exit_code


def _run_action(args: argparse.Namespace, admin: QueueAdmin, action: str, states: Tuple[str, ...],
                operation: Operation) -> int:
    bulk, ids = _targets(args, admin, states)
    return _report(_Reporter(action, bulk, args.verbose), admin.apply(ids, operation, bulk=bulk))


def _confirm(question: str, assume_yes: bool) -> bool:
    """Ask on a terminal; scripts (stdin not a terminal) and -y proceed."""
    if assume_yes or not is_terminal(sys.stdin):
        return True
    sys.stderr.write(f'{question} [y/N] ')
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ('y', 'yes')


# --- commands ------------------------------------------------------------------------------------


def _write_listing(admin: QueueAdmin, stream: TextIO, selection: Selection, *, as_json: bool,
                   sort: Optional[str] = None) -> int:
    now = admin.clock()
    rows: Iterable[Row] = admin.rows(selection)
    if sort == 'age':
        rows = sorted(rows, key=lambda r: r.age(now), reverse=True)
    elif sort == 'size':
        rows = sorted(rows, key=lambda r: r.size, reverse=True)
    if as_json:
        for row in rows:
            stream.write(json.dumps(row_json(row, now)) + '\n')
        return EX_OK
    table = ListingWriter(stream, admin.abbrev_length(), now)
    for row in rows:
        table.row(row)
    table.finish(filtered=selection != Selection())
    return EX_OK


def _cmd_list(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    selection = Selection(states=tuple(args.state) if args.state else STATES, older_than=args.older_than,
                          to=args.to, sender=args.sender)
    return _write_listing(admin, sys.stdout, selection, as_json=args.json, sort=args.sort)


def _write_bytes(data: bytes, terminal: bool) -> None:
    if terminal:
        # Mail is attacker-controlled: never let it drive the terminal.
        text = printable(data.decode('utf-8', 'replace').replace('\r\n', '\n'))
        sys.stdout.write(text if text.endswith('\n') else text + '\n')
        return
    sys.stdout.flush()
    buffer = getattr(sys.stdout, 'buffer', None)
    if buffer is None:
        sys.stdout.write(data.decode('utf-8', 'replace'))
        return
    buffer.write(data if data.endswith(b'\n') else data + b'\n')
    buffer.flush()


def _cmd_show(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    terminal = is_terminal(sys.stdout)
    for index, msg_id in enumerate(_explicit_ids(args, admin)):
        view = admin.view(msg_id)
        if index:
            sys.stdout.write('\n')
        for label, value in show_fields(view, admin.clock()):
            sys.stdout.write(f'{label + ":":<14} {one_line(value)}\n')
        sys.stdout.write('\n')
        content = view.content if args.body else view.headers
        if content:
            _write_bytes(content, terminal)
    return EX_OK


def _deliver_now(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    from ..bootstrap import init_smtp_mailer
    from ..config import ConfigError
    from ..handler import MessageHandler

    if not ctx.settings.smtp_hostname:
        fail('retry --now needs the SMTP settings (smtp_hostname) from a configuration file (-C FILE)', EX_CONFIG)
    bulk, ids = _targets(args, admin, (NEW,))
    try:
        mailer = init_smtp_mailer(ctx.settings)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    handler = MessageHandler([mailer], plugins=ctx.plugins, app=PROG, retry_policy=admin.policy)
    failures = [0]

    def unreachable(result: ActionResult) -> bool:
        failures[0] = failures[0] + 1 if result.connection_failed else 0
        if failures[0] < _MAX_CONNECTION_FAILURES:
            return False
        print(f'{PROG}: the SMTP server cannot be reached; the remaining messages stay queued', file=sys.stderr)
        return True

    try:
        results = admin.apply(ids, lambda msg_id, wait: admin.deliver(msg_id, handler, wait=wait), bulk=bulk)
        return _report(_Reporter('deliver', bulk, args.verbose), results, unreachable)
    finally:
        handler.close()


def _cmd_retry(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    if args.now:
        return _deliver_now(args, admin, ctx)
    return _run_action(args, admin, 'retry', (NEW,), lambda msg_id, wait: admin.retry(msg_id, wait=wait))


def _cmd_hold(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    return _run_action(args, admin, 'hold', (NEW,), lambda msg_id, wait: admin.hold(msg_id, args.reason, wait=wait))


def _cmd_release(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    return _run_action(args, admin, 'release', ('hold',), lambda msg_id, wait: admin.release(msg_id, wait=wait))


def _cmd_requeue(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    return _run_action(args, admin, 'requeue', ('failed',), lambda msg_id, wait: admin.requeue(msg_id, wait=wait))


def _describe(admin: QueueAdmin, msg_id: str) -> str:
    try:
        row = admin.view(msg_id).row
    except IDError:
        return msg_id
    if row.error is not None:
        return f'{msg_id} ({row.state}, unreadable)'
    return f'{msg_id} ({row.state}, from <{one_line(row.from_addr)}> to {one_line(",".join(row.to_addrs))})'


def _cmd_delete(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    ids = list(_targets(args, admin, STATES)[1])
    if is_terminal(sys.stdin) and not args.yes:
        for msg_id in ids[:10]:
            sys.stderr.write(f'  {_describe(admin, msg_id)}\n')
        if len(ids) > 10:
            sys.stderr.write(f'  ... and {len(ids) - 10} more\n')
        noun = 'this message' if len(ids) == 1 else f'these {len(ids)} messages'
        if not _confirm(f'Delete {noun}?', False):
            print('cancelled; nothing deleted', file=sys.stderr)
            return EX_OK
    return _report(_Reporter('delete', False, args.verbose), (admin.delete(msg_id) for msg_id in ids))


def _cmd_purge(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    states = tuple(args.state) if args.state else PURGE_STATES
    age = format_age(args.older_than)
    if not args.dry_run and is_terminal(sys.stdin) and not args.yes:
        matching = sum(1 for _ in admin.rows(Selection(states=states, older_than=args.older_than)))
        if not matching:
            print(f'no messages older than {age} in {", ".join(states)}')
            return EX_OK
        noun = 'message' if matching == 1 else 'messages'
        if not _confirm(f'Delete {matching} {noun} older than {age} from {", ".join(states)}?', False):
            print('cancelled; nothing deleted', file=sys.stderr)
            return EX_OK
    reporter = _Reporter('purge', True, args.verbose or int(args.dry_run))
    for result in admin.purge(args.older_than, states, dry_run=args.dry_run):
        reporter.add(result)
    if args.dry_run:
        count = reporter.counts.get(OK, 0)
        print(f'{count} {"message" if count == 1 else "messages"} would be purged')
    else:
        reporter.summary()
    return reporter.exit_code


def _write_atomically(path: str, text: str) -> None:
    # node_exporter may read at any moment: it must see the old file or the new one, never half.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.mq-queue-', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _cmd_stats(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    stats = admin.stats()
    if args.prometheus:
        text = prometheus(stats)
    elif args.json:
        text = json.dumps(stats_json(stats)) + '\n'
    else:
        text = stats_text(stats)
    if args.output:
        _write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return EX_OK


def _cmd_copy(args: argparse.Namespace, admin: QueueAdmin, ctx: Any) -> int:
    target = _open_store(args.to, writable=True)
    try:
        if same_queue(target, admin.store):  # (copy_to checks too, but only once iterated)
            fail(f'the target {target.location} is the queue itself', EX_USAGE)
        return _report(_Reporter('copy', True, args.verbose), admin.copy_to(target))
    finally:
        target.close()


# --- main ----------------------------------------------------------------------------------------

_COMMANDS: Dict[str, Callable[[argparse.Namespace, QueueAdmin, Any], int]] = {
    'list': _cmd_list, 'show': _cmd_show, 'retry': _cmd_retry, 'hold': _cmd_hold, 'release': _cmd_release,
    'delete': _cmd_delete, 'requeue': _cmd_requeue, 'purge': _cmd_purge, 'stats': _cmd_stats,
    'copy': _cmd_copy,
}
_READ_ONLY = ('list', 'show', 'stats')


def _cmd_init(args: argparse.Namespace) -> int:
    """Create the queue, or create/upgrade a database schema (idempotent)."""
    from ..bootstrap import queue_location
    from ..errors import QueueError
    from ..queue.locations import describe_location, init_store

    ctx = load_app(args.config, {'verbose': args.verbose}, require_config=False, load_plugins=False)
    try:
        location = queue_location(ctx.settings, args.queue_dir)
        if not location:
            fail('no queue: use --queue-dir LOCATION or set queue_url or queue_dir in the configuration', EX_USAGE)
        try:
            done = init_store(location)
        except ValueError as exc:
            fail(str(exc), EX_USAGE if args.queue_dir else EX_CONFIG)
        except (QueueError, OSError) as exc:
            raise _store_error(exc) from None
        print(f'{describe_location(location)}: {done}')
        return EX_OK
    finally:
        ctx.close()


def _cmd_setup(args: argparse.Namespace) -> int:
    """Install the shipped files and create the queue (``cli/mq_setup.py``)."""
    from ..bootstrap import queue_location
    from ..queue.locations import split_location
    from .mq_setup import run_setup

    ctx = load_app(args.config, {'verbose': args.verbose}, require_config=False, load_plugins=False)
    try:
        location = queue_location(ctx.settings, args.queue_dir) or '/var/spool/mailqueue'
    finally:
        ctx.close()
    scheme, path = split_location(location)
    if scheme != 'maildir':
        fail('setup works on a maildir queue (a directory)', EX_USAGE)
    return run_setup(args, os.path.abspath(path))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.command is None:
        args = parser.parse_args([*argv, 'list'])
    return args


def _admin(args: argparse.Namespace, settings: Any) -> QueueAdmin:
    from ..bootstrap import queue_location
    from ..config import ConfigError

    try:
        policy = settings.retry_policy()
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    location = queue_location(settings, args.queue_dir)
    if not location:
        fail('no queue directory: use --queue-dir LOCATION or set queue_url or queue_dir in the configuration',
             EX_CONFIG if settings.path else EX_USAGE)
    store = _open_store(location, writable=args.command not in _READ_ONLY, configured=not args.queue_dir)
    return QueueAdmin(store, policy, wait=args.wait, app=PROG)


def _body(argv: Sequence[str]) -> int:
    from ..errors import QueueError

    args = _parse(argv)
    if args.command == 'init':
        return _cmd_init(args)
    if args.command == 'setup':
        return _cmd_setup(args)
    needs_plugins = args.command == 'retry' and args.now
    ctx = load_app(args.config, {'verbose': args.verbose}, require_config=False, load_plugins=needs_plugins)
    try:
        admin = _admin(args, ctx.settings)
        try:
            return _COMMANDS[args.command](args, admin, ctx)
        except InvalidID as exc:
            fail(str(exc), EX_USAGE)
        except UnknownID as exc:
            fail(str(exc), EX_NOINPUT)
        except IDError as exc:  # ambiguous
            fail(str(exc), EX_USAGE)
        except BrokenPipeError:
            # The reader (head, less) is gone; stop quietly and keep Python from complaining at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EX_OK
        except (QueueError, OSError) as exc:
            raise _store_error(exc) from None
    finally:
        ctx.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
