"""``mq-sendmail -bs``: an SMTP server dialog on stdin/stdout (what Symfony Mailer and others speak).

``StdioSMTPSession`` is the dialog alone (RFC 5321 subset: EHLO, HELO, MAIL, RCPT,
DATA, RSET, NOOP, VRFY, HELP, QUIT); what happens to recipients and messages is
decided by two callbacks. ``serve`` connects them to a ``Submitter``: aliases for
RCPT, the configured chain for DATA. A callback refuses by raising ``SessionReply``
with the reply to send; nothing else crosses between the dialog and the library.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Callable, List, Optional

from ..result import Reply

if TYPE_CHECKING:  # pragma: no cover
    from ..submit import Outcome, Submitter
    from .sendmail_options import SendmailOptions

__all__ = ['SessionReply', 'StdioSMTPSession', 'outcome_reply', 'serve', 'unavailable']

_MAX_COMMAND = 2048
_MAX_RECIPIENTS = 1000
_MAX_ERRORS = 20
# DATA is read in pieces of at most this much: a "line" of 64 MiB costs no more than its bytes
_DATA_CHUNK = 64 * 1024
_DEFAULT_MAX_SIZE = 64 * 1024 * 1024  # (Settings.max_message_size)


class SessionReply(Exception):
    """A refusal from a session callback: ``reply`` is what the client is told (``550 5.1.1 ...``)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class StdioSMTPSession:
    """A minimal SMTP server dialog (RFC 5321 subset) over a pair of byte streams.

    Each accepted message goes to ``deliver(sender, recipients, data)``, which returns
    the final ``Reply`` for the DATA command. ``resolve`` turns one RCPT address into
    the recipient list (aliases). Either refuses by raising ``SessionReply``. A message of
    more than ``max_size`` bytes is refused (552; SIZE in the EHLO reply says so ahead).
    """

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], hostname: str,
                 deliver: Callable[[str, List[str], bytes], Reply],
                 resolve: Callable[[str], List[str]], *, max_size: int = _DEFAULT_MAX_SIZE) -> None:
        self.rfile = rfile
        self.max_size = max_size
        self.wfile = wfile
        self.hostname = hostname
        self.deliver = deliver
        self.resolve = resolve
        self.sender: Optional[str] = None
        self.smtputf8 = False  # MAIL FROM carried SMTPUTF8: non-ASCII addresses are allowed
        self.recipients: List[str] = []
        self.errors = 0
        self.closing = False
        self.crlf = True  # the last command line ended in CRLF: then only CRLF.CRLF ends DATA

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
        """Reply with an error; a client that makes too many without delivering a message in between
        is sent away (it is probably not SMTP)."""
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
            self.crlf = raw.endswith(b'\r\n')
            try:
                line = raw.rstrip(b'\r\n').decode('utf-8')
            except UnicodeDecodeError:  # (RFC 6531: addresses are UTF-8; a guess would be another address)
                self._error(501, '5.5.2 command is not valid UTF-8')
                continue
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
        self.reply(250, f'{self.hostname}\n8BITMIME\nSMTPUTF8\nSIZE {self.max_size}\nENHANCEDSTATUSCODES\nHELP')

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
            name, _, value = param.partition('=')
            name = name.upper()
            if name not in ('SIZE', 'BODY', 'SMTPUTF8'):
                self._error(555, f'5.5.4 unsupported MAIL parameter {param}')
                return
            if name == 'SIZE' and not (value.isascii() and value.isdigit()):
                self._error(501, '5.5.4 SIZE needs a number of bytes')
                return
            if name == 'SIZE' and int(value) > self.max_size:
                self.reply(552, f'5.3.4 message larger than {self.max_size} bytes')
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
        except SessionReply as refusal:
            self._error(*refusal.reply)
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
        data = self._read_data()
        if data is None:
            # Connection lost mid-message: nothing is sent.
            self._reset()
            self.closing = True
            return
        if len(data) > self.max_size:
            self._reset()
            self.reply(552, f'5.3.4 message larger than {self.max_size} bytes; nothing was sent')
            return
        sender, recipients = self.sender, self.recipients
        self._reset()
        try:
            code, text = self.deliver(sender, recipients, data)
        except SessionReply as refusal:
            code, text = refusal.reply
        except Exception as exc:  # the client gets an answer, and the session goes on
            import logging

            logging.getLogger('mailqueue').error('cannot take the message: %s: %s', type(exc).__name__, exc)
            code, text = 451, f'4.3.0 local error ({type(exc).__name__}); nothing was sent'
        if code == 250:
            self.errors = 0
        self.reply(code, text)

    def _read_data(self) -> Optional[bytes]:
        """The message after a 354, dot-unstuffed; None if the client went away before its end.
        Past ``max_size`` the rest is read and dropped: only the length shows it was too large.

        A session that sent DATA with CRLF ends the message only at CRLF.CRLF: a bare LF "\\n.\\n"
        inside the text (an application passing a body through) must not end it, or what follows
        would be read as commands: a second message nobody sent (SMTP smuggling).
        """
        import io

        data = io.BytesIO()  # (its getvalue() hands over the buffer: one copy of the message, not two)
        at_line_start = True
        after_cr = False  # the previous piece ended in CR (a long line's CRLF may fall between two)
        while True:
            piece = self.rfile.readline(_DATA_CHUNK)
            if not piece:
                return None
            if at_line_start and (piece == b'.\r\n' or (piece == b'.\n' and not self.crlf)):
                return data.getvalue()
            if at_line_start and piece.startswith(b'.'):
                piece = piece[1:]  # dot-unstuffing (RFC 5321 4.5.2)
            if data.tell() <= self.max_size:
                data.write(piece)
            at_line_start = piece.endswith(b'\n') and (
                not self.crlf or piece.endswith(b'\r\n') or (piece == b'\n' and after_cr))
            after_cr = piece.endswith(b'\r')

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


def outcome_reply(outcome: Outcome) -> Reply:
    """The DATA reply for a submitted message (one reply for all recipients, as SMTP has it)."""
    from ..submit import STATUS_OK, STATUS_TEMPFAIL

    problems = '; '.join(outcome.problems)
    if outcome.status == STATUS_OK:
        if outcome.queued and not outcome.delivered:
            return Reply(250, '2.0.0 Ok: queued for later delivery')
        return Reply(250, '2.0.0 Ok: delivered' + (' (some recipients queued)' if outcome.queued else ''))
    if outcome.delivered or outcome.queued:
        # Some recipients have it: a failure reply would make the client send it again to them.
        return Reply(250, f'2.0.0 Ok for some recipients only; {problems}')
    if outcome.status == STATUS_TEMPFAIL:
        return Reply(451, f'4.3.0 {problems}')
    return Reply(554, f'5.0.0 {problems}')


def unavailable(wfile: IO[bytes], hostname: str) -> None:
    """Instead of the greeting, when the configuration cannot be loaded: the client tries again later."""
    wfile.write(f'421 4.3.0 {hostname} configuration error, try again later\r\n'.encode())
    wfile.flush()


def serve(submitter: Submitter, opts: SendmailOptions, hostname: str, rfile: IO[bytes], wfile: IO[bytes],
          prog: str) -> None:
    """One session: RCPT through the submitter's aliases, DATA through its chain; problems also on stderr."""
    from ..addresses import InvalidAddressError
    from ..aliases import AliasesError, UnresolvableRecipientError
    from ..config import ConfigError
    from ..submit import summarize
    from .common import print_error
    from .sendmail_message import edit_message

    def resolve(address: str) -> List[str]:
        try:
            return submitter.resolve([address])
        except UnresolvableRecipientError:
            raise SessionReply(Reply(550, f'5.1.1 <{address}>: no such local user or alias')) from None
        except AliasesError as exc:
            print_error(prog, str(exc))
            raise SessionReply(Reply(451, '4.3.0 aliases file problem, try again later')) from None

    def deliver(sender: str, recipients: List[str], data: bytes) -> Reply:
        try:
            envelope_from = submitter.qualify_sender(sender) if sender else ''
        except InvalidAddressError as exc:
            raise SessionReply(Reply(553, f'5.1.7 cannot qualify the sender: {exc}')) from None
        data = edit_message(data, opts, sender=envelope_from, recipients=recipients, hostname=lambda: hostname,
                            settings=submitter.settings)
        try:
            result = submitter.send(data, envelope_from, recipients)
        except ConfigError as exc:
            print_error(prog, str(exc))
            raise SessionReply(Reply(451, '4.3.0 configuration error, try again later')) from None
        outcome = summarize(result, queue_configured=submitter.queue_configured)
        for line in outcome.problems:
            print_error(prog, line)
        return outcome_reply(outcome)

    StdioSMTPSession(rfile, wfile, hostname, deliver, resolve, max_size=submitter.settings.max_message_size).run()
