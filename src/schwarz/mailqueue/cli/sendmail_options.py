"""``mq-sendmail``'s command line: sendmail options parsed by hand, and the address arguments checked.

sendmail glues values to letters (``-FCronDaemon``, ``-odi``, ``-B8BITMIME``)
in ways ``argparse`` does not model, and ``mq-sendmail`` runs once per cron mail,
so this module imports nothing beyond the standard library's basics. Everything
wrong on the command line is a ``CLIError`` with exit code 64.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from .common import EX_USAGE, fail

__all__ = ['PROG', 'USAGE', 'SendmailOptions', 'check_sender', 'parse_args', 'recipient_args']

PROG = 'mq-sendmail'

USAGE = """\
usage: mq-sendmail [options] [--] [recipient ...]
       mq-sendmail -t [options] [recipient ...]
       mq-sendmail -bs | -bp | -q | -bi | -bv recipient ...

A sendmail-compatible front end to mailqueue-runner: reads a message on stdin
and relays it to the configured SMTP smarthost; with queue_dir configured a
temporarily failed message is queued for mq-run.

Message and envelope:
  -t                     also take recipients from the To:, Cc: and Bcc: headers
                         (Bcc: is never transmitted, with or without -t)
  -f ADDR, -r ADDR       envelope sender (a local name is qualified; "<>" = null sender)
  -F NAME                full name of the sender (used for --set-from-header)
  -i, -oi                a line with a single "." does not end the message
                         (without it, it does, as in classic sendmail)
  -n                     do not use the aliases file
  --read-envelope-from   take the envelope sender from the From: header
  --set-date-header      add a Date: header if the message has none
  --set-msgid-header     add a Message-ID: header if the message has none
  --set-from-header      add a From: header (sender, -F name) if the message has none
  --set-to-header        add a To: header (the recipients) if the message has none
  --aliases FILE         aliases file for local names (default: config "aliases",
                         else /etc/aliases)

Modes:
  -bm                    deliver the message on stdin (default)
  -bs                    speak SMTP on stdin/stdout (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT)
  -bp                    list the queue (as "mq-queue list"); also when called as "mailq"
  -q[INTERVAL]           run the queue once (as "mq-run"); INTERVAL is ignored
  -bi                    check the aliases file; also when called as "newaliases"
  -bv                    show what the recipients resolve to, send nothing

General:
  -C FILE, --config FILE configuration file (default: ~/.mailqueue-runner.conf,
                         then /etc/mailqueue-runner.conf)
  -v, --verbose          show the SMTP dialog (passwords are redacted)
  -h, --help             show this help;  --version  show the version
  --                     end of options: everything after it is a recipient

Accepted for compatibility and ignored: -o* (other than -oi, e.g. -odi -oem),
-O OPTION=VALUE (except IgnoreDots), -B TYPE, -N DSN, -R RET, -V ENVID, -L TAG,
-hHOPS, -p PROTOCOL, -A X, -d X, -c, -G, -I, -m, -U.

Exit status (sysexits): 0 delivered or durably queued, 64 usage (also header
injection in arguments), 65 bad message data (e.g. -t without recipients),
67 unknown local recipient, 69 a recipient was refused permanently, 75 temporary
failure and the message was not queued (no queue_dir, disk full), 78
configuration error, 70 internal error.
"""

# Letters that take a value, glued (-FCronDaemon) or as the next argument (-F CronDaemon).
_WITH_VALUE = frozenset('fFrCBNRVLoOpAdb')
# Letters without a value; they may be clustered (-ti).
_FLAGS = frozenset('tivnmUGcI')
_SET_HEADER_OPTIONS = {
    'set-date-header': 'set_date',
    'set-msgid-header': 'set_msgid',
    'set-from-header': 'set_from',
    'set-to-header': 'set_to',
}


class SendmailOptions:
    """The parsed command line."""

    def __init__(self) -> None:
        self.mode = 'm'
        self.extract_recipients = False
        self.ignore_dots = False
        self.sender: Optional[str] = None
        self.full_name: Optional[str] = None
        self.config: Optional[str] = None
        self.aliases: Optional[str] = None
        self.use_aliases = True
        self.verbose = 0
        self.read_envelope_from = False
        self.set_date: Optional[bool] = None  # None: the configuration decides (add_*_header)
        self.set_msgid: Optional[bool] = None  # None: the configuration decides (add_*_header)
        self.set_from: Optional[bool] = None  # None: the configuration decides (add_*_header)
        self.set_to = False
        self.recipients: List[str] = []
        self.show_help = False
        self.show_version = False


def _set_header_value(option: str, value: str) -> bool:
    # msmtp spells these --set-date-header[=auto|off]; "on"/"yes" are accepted too.
    text = value.lower()
    if text in ('', 'auto', 'on', 'yes', 'true', '1'):
        return True
    if text in ('off', 'no', 'false', '0'):
        return False
    fail(f'invalid value for --{option}: {value!r} (use auto or off)', EX_USAGE)


def _apply_letter(opts: SendmailOptions, letter: str, value: str) -> None:
    if letter in 'fr':
        opts.sender = value
    elif letter == 'F':
        opts.full_name = value
    elif letter == 'C':
        opts.config = value
    elif letter == 'b':
        if value not in ('m', 's', 'p', 'i', 'v'):
            fail(f'unsupported mode -b{value} (supported: -bm, -bs, -bp, -bi, -bv)', EX_USAGE)
        opts.mode = value
    elif letter == 'o':
        # -oi is the only -o option that changes anything here; -odi, -oem ... are accepted.
        if value == 'i':
            opts.ignore_dots = True
    elif letter == 'O':
        name, _, setting = value.partition('=')
        if name.strip().lower() == 'ignoredots' and setting.strip().lower() in ('', 't', 'true', 'yes', 'on'):
            opts.ignore_dots = True
    # -B, -N, -R, -V, -L, -p, -A, -d, -X, -h: accepted and ignored (the SMTP client decides
    # on BODY=8BITMIME itself; DSN, syslog tags, hop counts mean nothing to a relay-only client).


def parse_args(args: Sequence[str], prog_name: str = PROG) -> SendmailOptions:
    """Parse sendmail options. Raises ``CLIError`` (64) for anything unknown or incomplete.

    Option processing stops at ``--`` and at the first non-option argument
    (classic sendmail): whatever follows is a recipient, so an address can
    never be mistaken for an option.
    """
    opts = SendmailOptions()
    base = os.path.basename(prog_name)
    if base == 'mailq':
        opts.mode = 'p'
    elif base == 'newaliases':
        opts.mode = 'i'
    index = 0
    count = len(args)
    while index < count:
        arg = args[index]
        index += 1
        if arg == '--':
            opts.recipients.extend(args[index:])
            break
        if arg.startswith('--'):
            name, has_value, value = arg[2:].partition('=')
            if name in ('config', 'aliases'):
                if not has_value:
                    if index >= count:
                        fail(f'option --{name} needs a value', EX_USAGE)
                    value = args[index]
                    index += 1
                setattr(opts, name, value)
            elif name in _SET_HEADER_OPTIONS:
                setattr(opts, _SET_HEADER_OPTIONS[name], _set_header_value(name, value))
            elif has_value:
                fail(f'option --{name} takes no value', EX_USAGE)
            elif name == 'read-envelope-from':
                opts.read_envelope_from = True
            elif name == 'verbose':
                opts.verbose += 1
            elif name == 'help':
                opts.show_help = True
            elif name == 'version':
                opts.show_version = True
            else:
                fail(f'unknown option --{name} (see --help)', EX_USAGE)
            continue
        if not arg.startswith('-') or arg == '-':
            opts.recipients.extend(args[index - 1:])
            break
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            pos += 1
            if letter in _FLAGS:
                if letter == 't':
                    opts.extract_recipients = True
                elif letter == 'i':
                    opts.ignore_dots = True
                elif letter == 'v':
                    opts.verbose += 1
                elif letter == 'n':
                    opts.use_aliases = False
                continue
            if letter == 'q':
                # -q, -q30m, -qR...: run the queue once; the rest of the word is ignored.
                opts.mode = 'q'
                break
            if letter == 'h':
                # "-h" alone is help; sendmail's hop count (-h17, -h 17) is ignored
                if pos == len(arg):
                    if index < count and args[index].isascii() and args[index].isdigit():
                        index += 1
                    else:
                        opts.show_help = True
                break
            if letter in _WITH_VALUE:
                value = arg[pos:]
                if not value:
                    if index >= count:
                        fail(f'option -{letter} needs a value', EX_USAGE)
                    value = args[index]
                    index += 1
                _apply_letter(opts, letter, value)
                break
            fail(f'unknown option -{letter} (see --help)', EX_USAGE)
    if (opts.show_help or opts.show_version) and (opts.recipients or opts.extract_recipients):
        # help and exit 0 would drop the message the caller meant to send
        what = '--version' if opts.show_version else 'help (-h, --help)'
        fail(f'{what} takes no recipients and no -t (sendmail\'s hop count goes with its number: -h 17)',
             EX_USAGE)
    return opts


def check_sender(value: str) -> str:
    """``-f`` value: ``<>``/empty is the null sender; else one address (``a@b``, ``<a@b>``,
    ``Name <a@b>``) or a local name that is qualified later."""
    from ..addresses import InvalidAddressError, address_argument

    try:
        return address_argument(value, allow_null=True)
    except InvalidAddressError as exc:
        fail(f'invalid sender (-f/-r): {exc}', EX_USAGE)


def recipient_args(args: Sequence[str]) -> List[str]:
    """Recipients from the command line, each a valid address or local name; ``CLIError`` (64) if not.

    mutt and mailx pass ``Name <a@b>`` and ``a@b, c@d`` as arguments, so each argument is
    read as an address list, with the parser used for ``To:`` headers (never guessing).
    A TAB or line break is refused even where header syntax would take it for white space:
    no caller puts one in an argument by intent.
    """
    from ..addresses import InvalidAddressError, check_text, parse_address_list

    result: List[str] = []
    for arg in args:
        try:
            check_text(arg)
            result.extend(str(addr) for addr in parse_address_list(arg, allow_local=True))
        except InvalidAddressError as exc:
            fail(f'invalid recipient: {exc}', EX_USAGE)
    return result
