"""``mq-send-test``: check the SMTP settings by sending a test message directly (never queued)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from .common import (
    EX_CONFIG,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    fail,
    load_app,
    print_error,
    run_main,
)
from .parsing import ArgumentParser

__all__ = ['build_parser', 'main']

PROG = 'mq-send-test'

DESCRIPTION = """\
Send a short test message straight to the SMTP smarthost from the
configuration, bypassing the queue, and report the result: the host that
accepted it, the account (with [account:NAME] sections), and how it
authenticated (mechanism, user, and for OAuth2 where the token came from:
the token endpoint, the token cache or smtp_oauth2_token_command). On failure
the server's reply is printed exactly as received."""

EPILOG = """\
exit status (sysexits): 0 the server accepted the message, 64 usage,
67 unknown local recipient, 69 refused permanently, 75 temporary failure
(nothing is queued), 78 configuration error, 70 internal error.

example:
  mq-send-test --to=recipient@site.example"""



def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--to', metavar='ADDRESS',
                        help='recipient (default: "from" in the configuration)')
    parser.add_argument('--from', dest='from_addr', metavar='ADDRESS',
                        help='sender (default: "from" in the configuration, else the local user)')
    parser.add_argument('-C', '--config', metavar='FILE',
                        help='configuration file (default: ~/.mailqueue-runner.conf, then '
                             '/etc/mailqueue-runner.conf)')
    parser.add_argument('-q', '--quiet', action='store_true', help='print nothing on success')
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='show the SMTP dialog (passwords are redacted)')
    return parser


def _address(value: str, what: str) -> str:
    from ..addresses import InvalidAddressError, address_argument

    try:
        # a local name is resolved through the aliases (--to) or qualified (--from), as by mq-sendmail
        return address_argument(value)
    except InvalidAddressError as exc:
        fail(f'invalid {what}: {exc}', EX_USAGE)


def _body(args: Sequence[str]) -> int:
    import socket

    from ..headers import build_text_message, format_date

    opts = build_parser().parse_args(list(args))
    to = _address(opts.to, '--to address') if opts.to is not None else None
    from_addr = _address(opts.from_addr, '--from address') if opts.from_addr is not None else None
    app = load_app(opts.config, {'verbose': opts.verbose, 'quiet': opts.quiet})
    try:
        from ..aliases import AliasesError, UnresolvableRecipientError
        from ..config import ConfigError
        from ..submit import Submitter

        settings = app.settings
        if to is None:
            if not settings.from_addr:
                fail('no recipient: use --to ADDRESS (or set "from" in the configuration)', EX_USAGE)
            to = settings.from_addr
        host = settings.smtp_hostname or 'localhost'
        if settings.smtp_port and ',' not in host and ':' not in host:
            host = f'{host}:{settings.smtp_port}'
        auth_used: Optional[str] = None
        token_from: Optional[str] = None
        account: Optional[str] = None
        with Submitter(settings, plugins=app.plugins, app=PROG, queue=False) as submitter:
            try:
                sender = submitter.qualify_sender(from_addr) if from_addr else submitter.default_sender()
            except ValueError as exc:  # InvalidAddressError: LOGNAME or the host name make no address
                fail(f'invalid sender: {exc} (use --from with a full address, or set "from")', EX_USAGE)
            now = format_date()
            body = (f'This is a test message sent by mq-send-test (mailqueue-runner)\n'
                    f'from host {socket.gethostname()} via {host} at {now}.\n').encode()
            message = build_text_message(from_addr=sender, to=[to], subject='mq-send-test: test message',
                                         body=body, date=now)
            try:
                result = submitter.send(message, sender, [to])
                smtp = submitter.handler().transports[0]
            except UnresolvableRecipientError as exc:
                fail(f'{exc} (add them to the aliases file or set default_domain)', EX_NOUSER)
            except (ConfigError, AliasesError) as exc:
                fail(str(exc), EX_CONFIG)
            # how it authenticated (mechanism, user, where the token came from), for the report
            account_for = getattr(smtp, 'account_for', None)
            account = account_for(sender) if callable(account_for) else None
            mailer = smtp.mailer_for(sender) if hasattr(smtp, 'mailer_for') else smtp
            describe = getattr(mailer, 'describe_auth', None)
            auth_used = describe() if callable(describe) else None
            source = getattr(mailer, 'token_source', None)
            token_from = source.describe() if source is not None else None
    finally:
        app.close()
    failures: List[str] = []
    for addr, (code, text) in result.refused.items():
        failures.append(f'{addr}: refused permanently: {code} {text}'.rstrip())
    for addr, (code, text) in result.deferred.items():
        failures.append(f'{addr}: temporary failure (not queued): {code} {text}'.rstrip())
    for line in failures:
        print_error(PROG, line)  # the server's reply, control characters made harmless
    if failures and token_from and not auth_used:
        print_error(PROG, f'OAuth2 tokens come from the {token_from}')
    if result.deferred:
        return EX_TEMPFAIL
    if result.refused:
        return EX_UNAVAILABLE
    if not opts.quiet:
        from ..humanize import error_line

        reply = result.smtp_response
        print(error_line(f'test message from {sender} to {to} accepted by {result.host}'
                         + (f': {reply.code} {reply.message}' if reply is not None else '')))
        if account:
            print(error_line(f'account: {account} (match_from)'))
        if auth_used:
            print(error_line(f'authenticated with {auth_used}'))
    return EX_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
