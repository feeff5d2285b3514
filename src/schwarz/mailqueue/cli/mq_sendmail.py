"""``mq-sendmail``: a ``/usr/sbin/sendmail`` drop-in that relays to one SMTP smarthost.

Accepts what real callers pass (cron, PHP ``mail()``, mutt, git send-email,
mailx, Symfony's ``-bs``), reads the message from stdin, applies only the
header edits asked for (plus removing ``Bcc:``), and submits it through the
library (SMTP, then the queue when ``queue_dir`` is set).

Options are parsed by hand: sendmail glues values to letters (``-FCronDaemon``,
``-odi``, ``-B8BITMIME``) in ways ``argparse`` does not model, and this module
runs once per cron mail, so its imports are kept to a minimum; everything
heavier is imported when it is needed.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Callable, List, Optional, Sequence, Tuple

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

__all__ = ['SendmailOptions', 'StdioSMTPSession', 'edit_message', 'main', 'parse_args', 'read_message']

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
        self.set_date = False
        self.set_msgid = False
        self.set_from = False
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
                # "-h" alone is help; sendmail's hop count only ever comes glued here (-h17).
                if pos == len(arg):
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
    return opts


# --- the message --------------------------------------------------------------------------


def read_message(stream: Optional[IO[bytes]], ignore_dots: bool) -> bytes:
    """The message from stdin; without ``ignore_dots`` a line with a single ``.`` ends it."""
    if stream is None:
        return b''
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line in (b'.\n', b'.\r\n', b'.'):
            break
        lines.append(line)
    return b''.join(lines)


def edit_message(data: bytes, opts: SendmailOptions, *, sender: str, recipients: Sequence[str],
                 hostname: Callable[[], str]) -> bytes:
    """The edits we ever make: close the header block, drop Bcc, add the headers asked for."""
    from ..headers import (
        domain_of,
        ensure_header_separator,
        format_address,
        format_address_list,
        format_date,
        make_message_id,
        prepend_header,
    )
    from ..message import get_header, remove_headers, split_header_block

    header_block, _ = split_header_block(data)
    data = ensure_header_separator(data, len(header_block))
    lowered = header_block.lower()
    if b'bcc' in lowered and (get_header(data, 'Bcc') or get_header(data, 'Resent-Bcc')):
        data = remove_headers(data, ('Bcc', 'Resent-Bcc'))
    if opts.set_to and recipients and not get_header(data, 'To'):
        data = prepend_header(data, 'To', format_address_list(list(recipients), name_length=4))
    if opts.set_from and not get_header(data, 'From'):
        from_value = format_address(opts.full_name, sender or 'MAILER-DAEMON', name_length=6)
        data = prepend_header(data, 'From', from_value)
    if opts.set_msgid and not get_header(data, 'Message-ID'):
        data = prepend_header(data, 'Message-ID', make_message_id(domain_of(sender) or hostname()))
    if opts.set_date and not get_header(data, 'Date'):
        data = prepend_header(data, 'Date', format_date())
    return data


def _hostname() -> str:
    import socket

    return socket.gethostname() or 'localhost'


def _check_sender(value: str) -> str:
    """``-f`` value: ``<>``/empty is the null sender; else one address (``a@b``, ``<a@b>``,
    ``Name <a@b>``) or a local name that is qualified later."""
    from ..addresses import InvalidAddressError, check_text, parse_mailbox

    try:
        check_text(value)
        text = value.strip(' ')
        if text in ('', '<>'):
            return ''
        return str(parse_mailbox(text, allow_local=True).address)
    except InvalidAddressError as exc:
        fail(f'invalid sender (-f/-r): {exc}', EX_USAGE)


def _split_recipient_args(args: Sequence[str]) -> List[str]:
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


def _header_recipients(data: bytes) -> List[str]:
    """-t: addresses from To/Cc/Bcc; bad ones are bad message data (65)."""
    from ..message import InvalidAddressError, extract_recipients

    try:
        return extract_recipients(data)
    except InvalidAddressError as exc:
        fail(f'invalid recipient in the message headers: {exc}', EX_DATAERR)


def _header_sender(data: bytes) -> Optional[str]:
    """--read-envelope-from: the first address in From:; a malformed From: is bad data (65)."""
    from ..addresses import InvalidAddressError, parse_address_list
    from ..message import get_header

    for value in get_header(data, 'From'):
        try:
            addresses = parse_address_list(value, allow_local=True)
        except InvalidAddressError as exc:
            fail(f'invalid From: address for --read-envelope-from: {exc}', EX_DATAERR)
        if addresses:
            return str(addresses[0])
    return None


# --- delivery -----------------------------------------------------------------------------


def _submitter(app: Any, opts: SendmailOptions) -> Any:
    from ..submit import Submitter

    return Submitter(app.settings, plugins=app.plugins, app=PROG, aliases_path=opts.aliases,
                     use_aliases=opts.use_aliases)


def _resolve_or_fail(submitter: Any, recipients: Sequence[str]) -> List[str]:
    try:
        resolved: List[str] = submitter.resolve(recipients)
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


def _send(submitter: Any, data: bytes, sender: str, recipients: Sequence[str]) -> Any:
    """Send; configuration trouble found only now (password command) is still a 78."""
    from ..config import ConfigError

    try:
        return submitter.send(data, sender, recipients)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)


def _report(result: Any, submitter: Any) -> int:
    from ..submit import summarize

    return report_outcome(PROG, summarize(result, queue_configured=submitter.queue_configured))


def _choose_sender(opts: SendmailOptions, submitter: Any, data: bytes) -> str:
    from ..addresses import InvalidAddressError

    try:
        if opts.sender is not None:
            sender = _check_sender(opts.sender)
            return str(submitter.qualify_sender(sender)) if sender else ''
        if opts.read_envelope_from:
            header_from = _header_sender(data)
            if header_from:
                return str(submitter.qualify_sender(header_from))
        return str(submitter.default_sender())
    except InvalidAddressError as exc:
        # a local name that qualification could not turn into a valid address (say, the host name)
        fail(f'invalid sender: {exc} (use -f with a full address, or set "from")', EX_USAGE)


def _deliver_stdin(opts: SendmailOptions) -> int:
    from ..headers import HeaderValueError, check_header_text

    if opts.full_name is not None:
        try:
            check_header_text('full name (-F)', opts.full_name)
        except HeaderValueError as exc:
            fail(str(exc), EX_USAGE)
    if opts.sender is not None:
        _check_sender(opts.sender)
    cli_recipients = _split_recipient_args(opts.recipients)
    if not cli_recipients and not opts.extract_recipients:
        fail('no recipients given (name them as arguments or use -t)', EX_USAGE)
    app = load_app(opts.config, {'verbose': opts.verbose})
    try:
        data = read_message(getattr(sys.stdin, 'buffer', None), opts.ignore_dots)
        recipients = list(cli_recipients)
        if opts.extract_recipients:
            recipients += [addr for addr in _header_recipients(data) if addr not in recipients]
            if not recipients:
                fail('no recipients found in the To:, Cc: or Bcc: headers (-t)', EX_DATAERR)
        with _submitter(app, opts) as submitter:
            resolved = _resolve_or_fail(submitter, recipients)
            sender = _choose_sender(opts, submitter, data)
            data = edit_message(data, opts, sender=sender, recipients=resolved, hostname=_hostname)
            result = _send(submitter, data, sender, resolved)
            return _report(result, submitter)
    finally:
        app.close()


# --- -bs: SMTP on stdin/stdout ------------------------------------------------------------

_MAX_COMMAND = 2048
_MAX_RECIPIENTS = 1000
_MAX_ERRORS = 20


class StdioSMTPSession:
    """A minimal SMTP server dialog (RFC 5321 subset) over a pair of byte streams.

    Each accepted message goes to ``deliver(sender, recipients, data)``, which
    returns the final reply ``(code, text)`` for the DATA command. ``resolve``
    turns one RCPT address into the recipient list (aliases) or raises
    ``ValueError`` with the reply ``(code, text)`` as its arguments.
    """

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], hostname: str,
                 deliver: Callable[[str, List[str], bytes], Tuple[int, str]],
                 resolve: Callable[[str], List[str]]) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.hostname = hostname
        self.deliver = deliver
        self.resolve = resolve
        self.sender: Optional[str] = None
        self.smtputf8 = False  # MAIL FROM carried SMTPUTF8: non-ASCII addresses are allowed
        self.recipients: List[str] = []
        self.errors = 0
        self.closing = False

    def reply(self, code: int, text: str) -> None:
        lines = text.replace('\r', '').split('\n')
        out = ''.join(f'{code}-{line}\r\n' for line in lines[:-1]) + f'{code} {lines[-1]}\r\n'
        self.wfile.write(out.encode('utf-8', 'replace'))
        self.wfile.flush()

    def _reset(self) -> None:
        self.sender = None
        self.smtputf8 = False
        self.recipients = []

    def _error(self, code: int, text: str) -> None:
        """Reply with an error; a client that makes too many is sent away (it is probably not SMTP)."""
        self.errors += 1
        if self.errors > _MAX_ERRORS:
            self.reply(421, f'4.7.0 {self.hostname} too many errors, closing')
            self.closing = True
            return
        self.reply(code, text)

    def run(self) -> None:
        self.reply(220, f'{self.hostname} ESMTP mq-sendmail ready')
        while not self.closing:
            raw = self.rfile.readline(_MAX_COMMAND + 2)
            if not raw:
                return  # client went away
            if not raw.endswith(b'\n'):
                # Overlong line: skip the rest of it so its tail is not read as a command.
                while raw and not raw.endswith(b'\n'):
                    raw = self.rfile.readline(_MAX_COMMAND)
                self._error(500, '5.5.2 line too long')
                continue
            line = raw.rstrip(b'\r\n').decode('utf-8', 'replace')
            verb, _, argument = line.partition(' ')
            verb = verb.upper()
            handler = getattr(self, f'smtp_{verb}', None) if verb.isalpha() else None
            if handler is None:
                self._error(500, '5.5.2 command not recognized')
                continue
            handler(argument.strip())

    # --- commands ---

    def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            self._error(501, '5.5.4 EHLO needs a domain')
            return
        self._reset()
        self.reply(250, f'{self.hostname}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nHELP')

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self._error(501, '5.5.4 HELO needs a domain')
            return
        self._reset()
        self.reply(250, self.hostname)

    def smtp_MAIL(self, arg: str) -> None:
        from ..addresses import InvalidAddressError, parse_smtp_path

        if self.sender is not None:
            self._error(503, '5.5.1 nested MAIL command')
            return
        if arg[:5].upper() != 'FROM:':
            self._error(501, '5.5.4 syntax: MAIL FROM:<address>')
            return
        try:
            # a local name is qualified like -f's; "<>" is the null sender
            address, params = parse_smtp_path(arg[5:], allow_null=True, allow_local=True)
        except InvalidAddressError as exc:
            self._error(553, f'5.1.7 bad sender address: {exc}')
            return
        smtputf8 = False
        for param in params.split():
            name = param.partition('=')[0].upper()
            if name not in ('SIZE', 'BODY', 'SMTPUTF8'):
                self._error(555, f'5.5.4 unsupported MAIL parameter {param}')
                return
            smtputf8 = smtputf8 or name == 'SMTPUTF8'
        if address.needs_smtputf8 and not smtputf8:
            self._error(553, '5.6.7 a non-ASCII sender address needs the SMTPUTF8 parameter')
            return
        self.sender = str(address)
        self.smtputf8 = smtputf8
        self.reply(250, '2.1.0 Ok')

    def smtp_RCPT(self, arg: str) -> None:
        from ..addresses import InvalidAddressError, parse_smtp_path

        if self.sender is None:
            self._error(503, '5.5.1 need MAIL before RCPT')
            return
        if arg[:3].upper() != 'TO:':
            self._error(501, '5.5.4 syntax: RCPT TO:<address>')
            return
        try:
            # local names (RCPT TO:<root>) go through the aliases, as on the command line
            address, params = parse_smtp_path(arg[3:], allow_local=True)
        except InvalidAddressError as exc:
            self._error(553, f'5.1.3 bad recipient address: {exc}')
            return
        if params:
            self._error(555, f'5.5.4 unsupported RCPT parameters {params}')
            return
        if address.needs_smtputf8 and not self.smtputf8:
            self._error(553, '5.6.7 a non-ASCII recipient address needs SMTPUTF8 in MAIL FROM')
            return
        if len(self.recipients) >= _MAX_RECIPIENTS:
            self.reply(452, '4.5.3 too many recipients')
            return
        try:
            resolved = self.resolve(str(address))
        except ValueError as exc:
            code, text = exc.args
            self._error(code, text)
            return
        for addr in resolved:
            if addr not in self.recipients:
                self.recipients.append(addr)
        self.reply(250, '2.1.5 Ok')

    def smtp_DATA(self, arg: str) -> None:
        if self.sender is None:
            self._error(503, '5.5.1 need MAIL command')
            return
        if not self.recipients:
            self._error(554, '5.5.1 no valid recipients')
            return
        self.reply(354, 'End data with <CR><LF>.<CR><LF>')
        lines = []
        while True:
            line = self.rfile.readline()
            if not line:
                # Connection lost mid-message: nothing is sent.
                self._reset()
                self.closing = True
                return
            if line in (b'.\r\n', b'.\n'):
                break
            if line.startswith(b'.'):
                line = line[1:]  # dot-unstuffing (RFC 5321 4.5.2)
            lines.append(line)
        sender, recipients = self.sender, self.recipients
        self._reset()
        code, text = self.deliver(sender, recipients, b''.join(lines))
        self.reply(code, text)

    def smtp_RSET(self, arg: str) -> None:
        self._reset()
        self.reply(250, '2.0.0 Ok')

    def smtp_NOOP(self, arg: str) -> None:
        self.reply(250, '2.0.0 Ok')

    def smtp_VRFY(self, arg: str) -> None:
        self.reply(252, '2.5.2 cannot verify, but will accept the message and attempt delivery')

    def smtp_HELP(self, arg: str) -> None:
        self.reply(214, '2.0.0 commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT')

    def smtp_QUIT(self, arg: str) -> None:
        self.reply(221, f'2.0.0 {self.hostname} closing connection')
        self.closing = True


def _bs_reply(outcome: Any) -> Tuple[int, str]:
    """The DATA reply for a submitted message (one reply for all recipients, as SMTP has it)."""
    from ..submit import STATUS_OK, STATUS_TEMPFAIL

    problems = '; '.join(outcome.problems)
    if outcome.status == STATUS_OK:
        if outcome.queued and not outcome.delivered:
            return 250, '2.0.0 Ok: queued for later delivery'
        return 250, '2.0.0 Ok: delivered' + (' (some recipients queued)' if outcome.queued else '')
    if outcome.delivered or outcome.queued:
        # Some recipients have it: a failure reply would make the client send it again to them.
        return 250, f'2.0.0 Ok for some recipients only; {problems}'
    if outcome.status == STATUS_TEMPFAIL:
        return 451, f'4.3.0 {problems}'
    return 554, f'5.0.0 {problems}'


def _smtp_session(opts: SendmailOptions) -> int:
    from ..addresses import InvalidAddressError
    from ..aliases import AliasesError, UnresolvableRecipientError
    from ..config import ConfigError
    from ..submit import summarize

    hostname = _hostname()
    stdout = sys.stdout.buffer
    try:
        app = load_app(opts.config, {'verbose': opts.verbose})
    except Exception:
        stdout.write(f'421 4.3.0 {hostname} configuration error, try again later\r\n'.encode())
        stdout.flush()
        raise
    try:
        with _submitter(app, opts) as submitter:
            def resolve(address: str) -> List[str]:
                try:
                    resolved: List[str] = submitter.resolve([address])
                    return resolved
                except UnresolvableRecipientError:
                    raise ValueError(550, f'5.1.1 <{address}>: no such local user or alias') from None
                except AliasesError as exc:
                    print(f'{PROG}: {exc}', file=sys.stderr)
                    raise ValueError(451, '4.3.0 aliases file problem, try again later') from None

            def deliver(sender: str, recipients: List[str], data: bytes) -> Tuple[int, str]:
                try:
                    envelope_from = submitter.qualify_sender(sender) if sender else ''
                except InvalidAddressError as exc:
                    return 553, f'5.1.7 cannot qualify the sender: {exc}'
                data = edit_message(data, opts, sender=envelope_from, recipients=recipients,
                                    hostname=lambda: hostname)
                try:
                    result = submitter.send(data, envelope_from, recipients)
                except ConfigError as exc:
                    print(f'{PROG}: {exc}', file=sys.stderr)
                    return 451, '4.3.0 configuration error, try again later'
                outcome = summarize(result, queue_configured=submitter.queue_configured)
                for line in outcome.problems:
                    print(f'{PROG}: {line}', file=sys.stderr)
                return _bs_reply(outcome)

            session = StdioSMTPSession(sys.stdin.buffer, stdout, hostname, deliver, resolve)
            session.run()
    finally:
        app.close()
    return EX_OK


# --- other modes --------------------------------------------------------------------------


def _list_queue(opts: SendmailOptions) -> int:
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
    if not settings.queue_dir:
        print('no queue_dir configured: messages are never queued')
        return EX_OK
    from .mq_queue import list_queue

    return int(list_queue(settings.queue_dir, sys.stdout, policy=policy, prog=PROG))


def _run_queue(opts: SendmailOptions) -> int:
    from ..config import ConfigError, guess_config_path
    from ..queue_runner import one_shot_queue_run

    path = guess_config_path(opts.config)
    if path is None:
        load_app(None)  # reports the missing configuration the same way as every other mode
    options = {'verbose': opts.verbose} if opts.verbose else {'quiet': True}
    try:
        one_shot_queue_run(None, path, options=options)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    return EX_OK


def _check_aliases(opts: SendmailOptions) -> int:
    from ..aliases import AliasesError
    from ..submit import DEFAULT_ALIASES, Submitter

    app = load_app(opts.config, {'verbose': opts.verbose}, require_config=False, load_plugins=False)
    try:
        submitter = Submitter(app.settings, aliases_path=opts.aliases)
        path = opts.aliases or app.settings.aliases or DEFAULT_ALIASES
        try:
            table = submitter._alias_table()
        except AliasesError as exc:
            fail(str(exc), EX_CONFIG)
    finally:
        app.close()
    print(f'{path}: {len(table)} aliases')
    return EX_OK


def _verify(opts: SendmailOptions) -> int:
    from ..submit import Submitter

    recipients = _split_recipient_args(opts.recipients)
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


def _body(args: Sequence[str]) -> int:
    opts = parse_args(args, sys.argv[0] if sys.argv else PROG)
    if opts.show_help:
        sys.stdout.write(USAGE)
        return EX_OK
    if opts.show_version:
        print(f'{PROG} (mailqueue-runner) {_version()}')
        return EX_OK
    if opts.mode == 's':
        return _smtp_session(opts)
    if opts.mode == 'p':
        return _list_queue(opts)
    if opts.mode == 'q':
        return _run_queue(opts)
    if opts.mode == 'i':
        return _check_aliases(opts)
    if opts.mode == 'v':
        return _verify(opts)
    return _deliver_stdin(opts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
