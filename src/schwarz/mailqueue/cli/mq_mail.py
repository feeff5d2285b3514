"""``mq-mail``: a ``mail``/``mailx`` drop-in for sending (dnf-automatic, logwatch, scripts).

Builds a proper UTF-8 text/plain message (encoded Subject, Date, Message-ID,
MIME headers) from the body on stdin and submits it like ``mq-sendmail``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Sequence, Tuple

from .common import (
    EX_CONFIG,
    EX_NOUSER,
    EX_OK,
    EX_USAGE,
    fail,
    load_app,
    read_input,
    report_outcome,
    run_main,
)
from .parsing import ArgumentParser

__all__ = ['build_parser', 'main']

PROG = 'mq-mail'

DESCRIPTION = """\
Send a text message, read from stdin, to the recipients. The message is
relayed to the SMTP smarthost from the configuration; with queue_dir
configured a temporarily failed message is queued for mq-run. Local names
(without @) are resolved through the aliases file."""

EPILOG = """\
exit status (sysexits): 0 delivered or durably queued, 64 usage (also line
breaks in the subject or an address), 67 unknown local recipient, 69 a
recipient was refused permanently, 75 temporary failure and the message was
not queued, 78 configuration error, 70 internal error.

examples:
  mq-mail --from-address="me@site.example" --subject "subject" root <<< "mail body"
  df -h | mq-mail -s "disk usage on $(hostname)" -c ops@example.com root"""



def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('recipients', nargs='*', metavar='RECIPIENT',
                        help='address or local name (several allowed, also comma separated)')
    parser.add_argument('-s', '--subject', help='subject (any Unicode text; encoded as RFC 2047 when needed)')
    parser.add_argument('-r', '--from-address', dest='from_address', metavar='FROM',
                        help='sender address, optionally "Name <address>" (default: "from" in the '
                             'configuration, else the local user)')
    parser.add_argument('-c', dest='cc', action='append', default=[], metavar='ADDRESS',
                        help='carbon copy (repeatable, comma separated lists allowed)')
    parser.add_argument('-b', dest='bcc', action='append', default=[], metavar='ADDRESS',
                        help='blind carbon copy: envelope only, never in the headers (repeatable)')
    parser.add_argument('-S', dest='variables', action='append', default=[], metavar='VAR[=VALUE]',
                        help='mailx variable; accepted for compatibility, only "from=ADDRESS" is used')
    parser.add_argument('-E', dest='skip_empty', action='store_true',
                        help='do not send anything if the body is empty (or only white space)')
    parser.add_argument('-C', '--config', metavar='FILE',
                        help='configuration file (default: ~/.mailqueue-runner.conf, then '
                             '/etc/mailqueue-runner.conf)')
    parser.add_argument('--aliases', metavar='FILE',
                        help='aliases file (default: "aliases" in the configuration, else /etc/aliases)')
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='show the SMTP dialog (passwords are redacted)')
    return parser


def _addresses(values: Sequence[str], what: str) -> List[str]:
    """Split "a@x, Name <b@y>" lists into bare addresses or local names (the mq-sendmail rules).

    The display names are dropped: the headers are built from the resolved addresses.
    """
    from ..addresses import InvalidAddressError, check_text, parse_address_list

    result: List[str] = []
    for value in values:
        try:
            check_text(value)
            result.extend(str(addr) for addr in parse_address_list(value, allow_local=True))
        except InvalidAddressError as exc:
            fail(f'invalid {what}: {exc}', EX_USAGE)
    return result


def _from_variable(variables: Sequence[str]) -> Optional[str]:
    value = None
    for variable in variables:
        name, has_value, setting = variable.partition('=')
        if name.strip() == 'from' and has_value:
            value = setting
    return value


def _resolve_for_headers(submitter: Any, addresses: Sequence[str]) -> List[str]:
    """Local names become their alias targets, so the headers only carry real addresses."""
    from ..aliases import AliasesError, UnresolvableRecipientError

    result: List[str] = []
    for addr in addresses:
        try:
            resolved = [addr] if '@' in addr else submitter.resolve([addr])
        except UnresolvableRecipientError as exc:
            fail(f'{exc} (add them to the aliases file or set default_domain)', EX_NOUSER)
        except AliasesError as exc:
            fail(str(exc), EX_CONFIG)
        result.extend(a for a in resolved if a not in result)
    return result


# The options that take a value, as mail/mailx parse them (getopt): the next argument is the
# value even when it starts with "-" ("mail -s -- root": the subject is "--"). argparse would take
# such a value for an option (or drop a "--"), so they are taken out before it parses the rest.
_VALUE_OPTIONS = {'-s': 'subject', '--subject': 'subject', '-r': 'from_address', '--from-address': 'from_address',
                  '-c': 'cc', '-b': 'bcc', '-S': 'variables', '-C': 'config', '--config': 'config',
                  '--aliases': 'aliases'}
_REPEATED = ('cc', 'bcc', 'variables')


def _parse(args: List[str]) -> argparse.Namespace:
    """The options; recipients after a "--" that stands where an option could."""
    rest: List[str] = []
    taken: List[Tuple[str, str]] = []
    after_dashes: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == '--':
            after_dashes = args[i + 1:]
            break
        if arg in _VALUE_OPTIONS and i + 1 < len(args):
            taken.append((_VALUE_OPTIONS[arg], args[i + 1]))
            i += 2
            continue
        rest.append(arg)
        i += 1
    opts = build_parser().parse_intermixed_args(rest)
    for dest, value in taken:
        if dest in _REPEATED:
            getattr(opts, dest).append(value)
        else:
            setattr(opts, dest, value)
    opts.recipients = list(opts.recipients) + after_dashes
    return opts


def _body(args: Sequence[str]) -> int:
    from ..addresses import InvalidAddressError, check_text, parse_mailbox
    from ..headers import HeaderValueError, build_text_message, check_header_text

    opts = _parse(list(args))
    to = _addresses(opts.recipients, 'recipient')
    cc = _addresses(opts.cc, 'Cc address')
    bcc = _addresses(opts.bcc, 'Bcc address')
    if not (to or cc or bcc):
        fail('no recipients given', EX_USAGE)
    try:
        if opts.subject is not None:
            check_header_text('subject', opts.subject)
        from_value = opts.from_address if opts.from_address is not None else _from_variable(opts.variables)
        from_name: Optional[str] = None
        from_addr: Optional[str] = None
        if from_value is not None:
            check_text(from_value)
            # "Name <addr>" or an address; a local name is qualified like mq-sendmail -f's
            mailbox = parse_mailbox(from_value, allow_local=True)
            from_name, from_addr = mailbox.display_name, str(mailbox.address)
    except HeaderValueError as exc:
        fail(str(exc), EX_USAGE)
    except InvalidAddressError as exc:
        fail(f'invalid sender: {exc}', EX_USAGE)

    app = load_app(opts.config, {'verbose': opts.verbose})
    try:
        from ..config import ConfigError
        from ..submit import Submitter, summarize

        body = read_input(getattr(sys.stdin, 'buffer', None), app.settings.max_message_size)
        if opts.skip_empty and not body.strip():
            return EX_OK
        with Submitter(app.settings, plugins=app.plugins, app=PROG, aliases_path=opts.aliases) as submitter:
            header_to = _resolve_for_headers(submitter, to)
            header_cc = _resolve_for_headers(submitter, cc)
            envelope_bcc = _resolve_for_headers(submitter, bcc)
            try:
                sender = submitter.qualify_sender(from_addr) if from_addr else submitter.default_sender()
            except InvalidAddressError as exc:
                fail(f'invalid sender: {exc} (use -r with a full address, or set "from")', EX_USAGE)
            message = build_text_message(from_addr=sender, from_name=from_name, to=header_to, cc=header_cc,
                                         subject=opts.subject, body=body)
            envelope_to = header_to + [a for a in header_cc + envelope_bcc if a not in header_to]
            try:
                result = submitter.send(message, sender, envelope_to)
            except ConfigError as exc:
                fail(str(exc), EX_CONFIG)
            outcome = summarize(result, queue_configured=submitter.queue_configured)
    finally:
        app.close()
    return report_outcome(PROG, outcome)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
