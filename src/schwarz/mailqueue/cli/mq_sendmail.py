"""``mq-sendmail``: a ``/usr/sbin/sendmail`` drop-in that relays to one SMTP smarthost.

Accepts what real callers pass (cron, PHP ``mail()``, mutt, git send-email,
mailx, Symfony's ``-bs``), reads the message from stdin, applies only the
header edits asked for (plus removing ``Bcc:``), and submits it through the
library (SMTP, then the queue when one is configured).

This module is the dispatch: the option parser is ``sendmail_options``, the
message handling ``sendmail_message``, the ``-bs`` dialog ``sendmail_smtp``;
``-q`` is ``mq-run``'s code and ``-bp`` ``mq-queue list``'s. It runs once per cron
mail, so every module is imported only by the mode that needs it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, List, Optional, Sequence

from .common import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_USAGE,
    CLIError,
    fail,
    load_app,
    report_outcome,
    run_main,
)
from .sendmail_options import PROG, USAGE, SendmailOptions, parse_args, recipient_args

if TYPE_CHECKING:  # pragma: no cover
    from ..app import AppContext
    from ..submit import Submitter

# USAGE, SendmailOptions and parse_args stay importable from here (tests and earlier callers use them)
__all__ = ['USAGE', 'SendmailOptions', 'main', 'parse_args']


def _submitter(app: AppContext, opts: SendmailOptions) -> Submitter:
    from ..submit import Submitter

    return Submitter(app.settings, plugins=app.plugins, app=PROG, aliases_path=opts.aliases,
                     use_aliases=opts.use_aliases)


def _resolve_or_fail(submitter: Submitter, recipients: Sequence[str]) -> List[str]:
    try:
        resolved = submitter.resolve(recipients)
    except Exception as exc:
        # Imported here: with only full addresses the aliases module is never loaded.
        from ..aliases import AliasesError, UnresolvableRecipientError

        if isinstance(exc, UnresolvableRecipientError):
            fail(f'{exc} (add them to the aliases file or set default_domain)', EX_NOUSER)
        if isinstance(exc, AliasesError):
            fail(str(exc), EX_CONFIG)
        raise
    if not resolved:
        fail('no recipients left after alias expansion', EX_USAGE)
    return resolved


# --- the modes ------------------------------------------------------------------------------


def _deliver_stdin(opts: SendmailOptions) -> int:
    """-bm (the default): the message on stdin to the recipients."""
    from ..config import ConfigError
    from ..headers import HeaderValueError, check_header_text
    from ..submit import local_hostname, summarize
    from .sendmail_message import choose_sender, edit_message, header_recipients, read_message
    from .sendmail_options import check_sender

    if opts.full_name is not None:
        try:
            check_header_text('full name (-F)', opts.full_name)
        except HeaderValueError as exc:
            fail(str(exc), EX_USAGE)
    if opts.sender is not None:
        check_sender(opts.sender)
    cli_recipients = recipient_args(opts.recipients)
    if not cli_recipients and not opts.extract_recipients:
        fail('no recipients given (name them as arguments or use -t)', EX_USAGE)
    app = load_app(opts.config, {'verbose': opts.verbose})
    try:
        data = read_message(getattr(sys.stdin, 'buffer', None), opts.ignore_dots, app.settings.max_message_size)
        recipients = list(cli_recipients)
        if opts.extract_recipients:
            recipients += [addr for addr in header_recipients(data) if addr not in recipients]
            if not recipients:
                fail('no recipients found in the To:, Cc: or Bcc: headers (-t)', EX_DATAERR)
        with _submitter(app, opts) as submitter:
            resolved = _resolve_or_fail(submitter, recipients)
            sender = choose_sender(opts, submitter, data)
            data = edit_message(data, opts, sender=sender, recipients=resolved, hostname=local_hostname,
                                settings=app.settings)
            try:
                result = submitter.send(data, sender, resolved)
            except ConfigError as exc:  # configuration trouble found only now (password command)
                fail(str(exc), EX_CONFIG)
            return report_outcome(PROG, summarize(result, queue_configured=submitter.queue_configured))
    finally:
        app.close()


def _smtp_session(opts: SendmailOptions) -> int:
    """-bs: SMTP on stdin/stdout."""
    from ..submit import local_hostname
    from .sendmail_smtp import serve, unavailable

    hostname = local_hostname()
    stdout = sys.stdout.buffer
    try:
        app = load_app(opts.config, {'verbose': opts.verbose})
    except Exception:
        unavailable(stdout, hostname)
        raise
    try:
        with _submitter(app, opts) as submitter:
            serve(submitter, opts, hostname, sys.stdin.buffer, stdout, PROG)
    finally:
        app.close()
    return EX_OK


def _list_queue(opts: SendmailOptions) -> int:
    """-bp (mailq): ``mq-queue list`` of the configured queue (queue_url, else queue_dir)."""
    from ..bootstrap import queue_location
    from ..config import ConfigError

    app = load_app(opts.config, {'verbose': opts.verbose}, load_plugins=False)
    try:
        settings = app.settings
        try:
            # The same policy as mq-queue, so "next attempt" columns agree.
            policy = settings.retry_policy()
        except ConfigError as exc:
            fail(str(exc), EX_CONFIG)
    finally:
        app.close()
    location = queue_location(settings)
    if not location:
        print('no queue_dir configured: messages are never queued')
        return EX_OK
    from .mq_queue import list_queue

    return list_queue(location, sys.stdout, policy=policy, prog=PROG)


def _run_queue(opts: SendmailOptions) -> int:
    """-q: one pass over the queue, exactly as ``mq-run`` (the same code, so the same errors and exit codes)."""
    from .mq_run import run_queue

    quiet = not opts.verbose
    app = load_app(opts.config, {'verbose': opts.verbose, 'quiet': quiet})
    try:
        return run_queue(PROG, app, quiet=quiet, progress=False)
    finally:
        app.close()


def _check_aliases(opts: SendmailOptions) -> int:
    """-bi (newaliases): read the aliases file and say how many aliases it has."""
    from ..aliases import AliasesError
    from ..submit import DEFAULT_ALIASES, Submitter

    app = load_app(opts.config, {'verbose': opts.verbose}, require_config=False, load_plugins=False)
    try:
        submitter = Submitter(app.settings, aliases_path=opts.aliases)
        path = opts.aliases or app.settings.aliases or DEFAULT_ALIASES
        try:
            table = submitter.alias_table()
        except AliasesError as exc:
            fail(str(exc), EX_CONFIG)
    finally:
        app.close()
    print(f'{path}: {len(table)} aliases')
    return EX_OK


def _verify(opts: SendmailOptions) -> int:
    """-bv: what each recipient resolves to; nothing is sent."""
    from ..submit import Submitter

    recipients = recipient_args(opts.recipients)
    if not recipients:
        fail('-bv needs recipients', EX_USAGE)
    app = load_app(opts.config, {'verbose': opts.verbose}, require_config=False, load_plugins=False)
    try:
        submitter = Submitter(app.settings, aliases_path=opts.aliases, use_aliases=opts.use_aliases)
        worst = EX_OK
        for recipient in recipients:
            # like sendmail -bv: a verdict for every name, not just up to the first bad one
            try:
                resolved = _resolve_or_fail(submitter, [recipient])
            except CLIError as exc:
                print(f'{recipient}... not deliverable: {exc}')
                worst = max(worst, exc.exit_code)
                continue
            print(f'{recipient}... deliverable: {", ".join(resolved)}')
    finally:
        app.close()
    return worst


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version('mailqueue-runner')
    except PackageNotFoundError:
        return 'unknown'


_MODES = {'m': _deliver_stdin, 's': _smtp_session, 'p': _list_queue, 'q': _run_queue, 'i': _check_aliases,
          'v': _verify}


def _body(args: Sequence[str]) -> int:
    opts = parse_args(args, sys.argv[0] if sys.argv else PROG)
    if opts.show_help:
        sys.stdout.write(USAGE)
        return EX_OK
    if opts.show_version:
        print(f'{PROG} (mailqueue-runner) {_version()}')
        return EX_OK
    return _MODES[opts.mode](opts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
