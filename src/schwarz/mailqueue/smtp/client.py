"""One SMTP connection: connect, TLS, AUTH, and one transaction with per-recipient replies.

The wire protocol is our own small ``wire`` module rather than ``smtplib``
(which would cost a third of ``mq-sendmail``'s start-up); ``ssl`` is imported
only when TLS is used. The transaction (MAIL, RCPT per recipient, DATA) is
driven here so that every recipient gets its own verdict and a dropped
connection is never mistaken for success. The dialog is logged on
``mailqueue.smtp`` with AUTH secrets replaced by ``***`` and the message body
summarised, never logged.
"""

from __future__ import annotations

import enum
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..message import dot_stuff, normalize_line_endings
from ..result import Reply, SendResult
from .errors import (
    AuthenticationError,
    ConnectError,
    SMTPError,
    TemporaryError,
    TLSError,
)
from .wire import SMTPWire

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ['SMTPConnection', 'TLSMode', 'build_ssl_context', 'is_local_host']

LOCAL_HOSTS = frozenset({'localhost', '127.0.0.1', '::1', 'localhost.localdomain', 'ip6-localhost'})
# A lost connection shows up as EOF (wire.ConnectionClosed), a reset, a timeout or garbage
# (wire.ProtocolError): all of them OSErrors.
_DISCONNECTED = (OSError, EOFError)


class TLSMode(str, enum.Enum):
    IMPLICIT = 'implicit'
    STARTTLS = 'starttls'
    OPPORTUNISTIC = 'opportunistic'
    NONE = 'none'

    @classmethod
    def parse(cls, value: Any, port: Optional[int] = None) -> TLSMode:
        """Map config spellings (and ``None`` = choose by port) onto a mode."""
        if isinstance(value, TLSMode):
            return value
        if value is None or value == '':
            return cls.IMPLICIT if port == 465 else cls.OPPORTUNISTIC
        if value is True:
            return cls.STARTTLS
        if value is False:
            return cls.NONE
        text = str(value).strip().lower()
        aliases = {
            'implicit': cls.IMPLICIT, 'ssl': cls.IMPLICIT, 'tls': cls.IMPLICIT, 'smtps': cls.IMPLICIT,
            'starttls': cls.STARTTLS, 'yes': cls.STARTTLS, 'true': cls.STARTTLS, 'on': cls.STARTTLS,
            'required': cls.STARTTLS,
            'opportunistic': cls.OPPORTUNISTIC, 'auto': cls.OPPORTUNISTIC, 'maybe': cls.OPPORTUNISTIC,
            'none': cls.NONE, 'no': cls.NONE, 'false': cls.NONE, 'off': cls.NONE, 'plain': cls.NONE,
        }
        if text not in aliases:
            raise ValueError(f'unknown TLS mode {value!r}; use implicit, starttls, opportunistic or none')
        return aliases[text]


def is_local_host(hostname: str) -> bool:
    return hostname.lower() in LOCAL_HOSTS or hostname.startswith('127.')


def build_ssl_context(verify: bool, cafile: Optional[str] = None) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode('ascii')


class SMTPConnection:
    """A single session with one server. Not thread-safe; ``SMTPMailer`` serialises access."""

    def __init__(
        self,
        hostname: str,
        port: int = 25,
        *,
        tls: TLSMode = TLSMode.OPPORTUNISTIC,
        ssl_context: Union[ssl.SSLContext, Callable[[], ssl.SSLContext], None] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10,
        local_hostname: Optional[str] = None,
        dialog_log: Optional[logging.Logger] = None,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.tls = tls
        self.ssl_context = ssl_context
        self.username = username
        self._password = password
        self.timeout = timeout
        # socket.getfqdn() may wait for DNS; the plain host name is enough for EHLO.
        self.local_hostname = local_hostname or socket.gethostname() or 'localhost'
        self.log = dialog_log or logging.getLogger('mailqueue.smtp')
        self._wire: Optional[SMTPWire] = None
        self.tls_active = False
        self.transactions = 0

    @property
    def peer(self) -> str:
        return f'{self.hostname}:{self.port}'

    @property
    def is_open(self) -> bool:
        return self._wire is not None

    def _context(self) -> ssl.SSLContext:
        # Built (or fetched from the mailer's cache) only when TLS is really negotiated: loading the
        # CA store costs ~17 ms, a lot for one mq-sendmail call to a plain local relay.
        if self.ssl_context is None:
            self.ssl_context = build_ssl_context(verify=not is_local_host(self.hostname))
        elif callable(self.ssl_context):
            self.ssl_context = self.ssl_context()
        return self.ssl_context

    def open(self) -> None:
        if self._wire is not None:
            return
        try:
            context = self._context() if self.tls == TLSMode.IMPLICIT else None
            wire = self._wire = SMTPWire.connect(self.hostname, self.port, self.timeout, self.log, context)
            code, text = wire.read_reply()
            if code != 220:
                reply = Reply(code, text)
                raise ConnectError(f'{self.peer} greeted with {reply}', reply)
            self.tls_active = context is not None
            self._ehlo()
            if self.tls in (TLSMode.STARTTLS, TLSMode.OPPORTUNISTIC) and not self.tls_active:
                if wire.has('starttls'):
                    self._starttls()
                elif self.tls == TLSMode.STARTTLS:
                    raise TLSError(f'{self.peer} does not offer STARTTLS but TLS is required')
            if self.username:
                self._authenticate()
        except SMTPError:
            self._abort()
            raise
        except UnicodeError:  # a host name the IDNA codec rejects
            self._abort()
            raise ConnectError(f'cannot connect to {self.peer}: invalid host name') from None
        except OSError as exc:
            self._abort()
            ssl_module = sys.modules.get('ssl')
            if ssl_module is not None and isinstance(exc, ssl_module.SSLError):
                raise TLSError(f'TLS with {self.peer} failed: {_describe_ssl_error(exc)}') from None
            raise ConnectError(f'cannot connect to {self.peer}: {_describe_os_error(exc)}') from None

    def _ehlo(self) -> None:
        assert self._wire is not None
        code, text = self._wire.ehlo(self.local_hostname)
        if not 200 <= code < 300:
            code, text = self._wire.command(f'HELO {self.local_hostname}')
            if not 200 <= code < 300:
                reply = Reply(code, text)
                raise ConnectError(f'{self.peer} refused HELO: {reply}', reply)

    def _starttls(self) -> None:
        assert self._wire is not None
        code, text = self._wire.command('STARTTLS')
        if code != 220:
            raise TLSError(f'{self.peer} refused STARTTLS: {code} {text}')
        # Anything the server sent after its 220 and before the handshake is dropped with the
        # old reader (no command injection across the TLS boundary); RFC 3207: EHLO again.
        self._wire.start_tls(self._context(), self.hostname)
        self.tls_active = True
        self._ehlo()

    def _authenticate(self) -> None:
        wire = self._wire
        assert wire is not None
        if not self.tls_active and not is_local_host(self.hostname):
            raise AuthenticationError(
                f'refusing to send credentials to {self.peer} without TLS (set smtp_tls)')
        if not wire.has('auth'):
            raise AuthenticationError(f'{self.peer} does not offer AUTH')
        offered = wire.features['auth'].upper().split()
        # RFC 4616: PLAIN carries UTF-8, so any password works; LOGIN as the fallback.
        user = (self.username or '').encode('utf-8')
        password = (self._password or '').encode('utf-8')
        if 'PLAIN' in offered:
            credentials = _b64(b'\0' + user + b'\0' + password)
            code, text = wire.command(f'AUTH PLAIN {credentials}', summary='AUTH PLAIN ***')
            if code == 334:  # a server that wants the credentials after an empty challenge
                code, text = wire.command(credentials, secret=True)
        elif 'LOGIN' in offered:
            code, text = wire.command('AUTH LOGIN')
            if code == 334:
                code, text = wire.command(_b64(user), secret=True)
            if code == 334:
                code, text = wire.command(_b64(password), secret=True)
        else:
            raise AuthenticationError(f'{self.peer} offers no AUTH mechanism we support '
                                      f'(offered: {" ".join(offered) or "none"}; we speak PLAIN and LOGIN)')
        if not 200 <= code < 300:
            reply = Reply(code, text)
            raise AuthenticationError(f'authentication as {self.username!r} failed: {reply}', reply)

    def _abort(self) -> None:
        wire, self._wire = self._wire, None
        self.tls_active = False
        if wire is not None:
            try:
                wire.close()
            except OSError:
                pass

    def close(self) -> None:
        wire = self._wire
        if wire is None:
            return
        try:
            wire.command('QUIT')
        except OSError:
            pass
        self._abort()

    def reset(self) -> bool:
        """RSET after a failed transaction; False (and closed) when the connection is gone."""
        if self._wire is None:
            return False
        try:
            code, _ = self._wire.command('RSET')
        except _DISCONNECTED:
            self._abort()
            return False
        if code != 250:
            self._abort()
            return False
        return True

    # --- the transaction -------------------------------------------------------------------

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        """Run one MAIL/RCPT/DATA transaction. Raises ``ConnectError`` only before MAIL was answered.

        Everything after that is reported per recipient in the result: the caller
        must be able to tell "nothing happened, reconnect and retry" apart from
        "some recipients may already have the message". With PIPELINING (RFC 2920)
        MAIL, every RCPT and DATA go out in one write: two round trips per message.
        """
        if self._wire is None:
            self.open()
        smtp = self._wire
        assert smtp is not None
        result = SendResult(transport='smtp', queued=False, host=self.peer)
        data = dot_stuff(normalize_line_endings(msg_bytes))
        mail_options: List[str] = []
        encoding = 'ascii'
        needs_utf8 = not from_addr.isascii() or any(not a.isascii() for a in to_addrs)
        if needs_utf8:
            if not smtp.has('smtputf8'):
                reply = Reply(553, 'non-ASCII address but server does not offer SMTPUTF8')
                result.refused = {a: reply.as_tuple() for a in to_addrs}
                result.smtp_response = reply
                result.error = str(reply)
                return result
            mail_options.append('SMTPUTF8')
            encoding = 'utf-8'
        if smtp.has('8bitmime') and not msg_bytes.isascii():
            mail_options.append('BODY=8BITMIME')
        if smtp.has('size'):
            mail_options.append(f'SIZE={len(data)}')
        # Addresses were validated by the caller (no CR/LF, no angle brackets).
        mail_cmd = f'MAIL FROM:<{from_addr}>' + ''.join(' ' + o for o in mail_options) + '\r\n'
        rcpt_cmds = [f'RCPT TO:<{addr}>\r\n' for addr in to_addrs]
        pipelined = smtp.has('pipelining')
        try:
            if pipelined:
                smtp.send((mail_cmd + ''.join(rcpt_cmds) + 'DATA\r\n').encode(encoding))
            else:
                smtp.send(mail_cmd.encode(encoding))
            code, msg = smtp.read_reply()
        except _DISCONNECTED as exc:
            self._abort()
            raise ConnectError(f'{self.peer} went away before MAIL FROM: {_describe_os_error(exc)}') from None
        self.transactions += 1
        mail_reply = Reply(code, _decode(msg))
        if code == 421:
            self._abort()
            raise TemporaryError(f'{self.peer}: {mail_reply}', mail_reply)

        accepted: List[str] = []
        try:
            for addr, rcpt_cmd in zip(to_addrs, rcpt_cmds):
                if not pipelined:
                    if not 200 <= mail_reply.code < 300:
                        break
                    smtp.send(rcpt_cmd.encode(encoding))
                code, msg = smtp.read_reply()
                reply = Reply(code, _decode(msg))
                if code == 421:
                    self._abort()
                    return self._defer_all(result, to_addrs, reply)
                if not 200 <= mail_reply.code < 300:
                    continue  # answers to RCPT after a failed MAIL are meaningless
                if 200 <= code < 300:
                    accepted.append(addr)
                elif code == 552 or reply.is_temporary:
                    # RFC 5321 4.5.3.1.10: 552 on RCPT means "too many recipients", retry later.
                    result.deferred[addr] = reply.as_tuple()
                else:
                    result.refused[addr] = reply.as_tuple()
                result.smtp_response = reply
            if pipelined:
                code, msg = smtp.read_reply()
            elif accepted:
                smtp.send(b'DATA\r\n')
                code, msg = smtp.read_reply()
            else:
                code, msg = 503, 'no valid recipients'
        except _DISCONNECTED:
            self._abort()
            if not 200 <= mail_reply.code < 300:
                # a server that refused MAIL FROM and hung up: the refusal stands
                return self._whole_message_refused(result, to_addrs, mail_reply, 'MAIL FROM')
            if accepted or not pipelined:
                return self._defer_all(result, to_addrs, Reply(451, 'connection lost before DATA'))
            return self._defer_all(result, to_addrs, Reply(451, 'connection lost during RCPT TO'))
        data_reply = Reply(code, _decode(msg))

        if not 200 <= mail_reply.code < 300:
            self._finish_unwanted_data(data_reply)
            return self._whole_message_refused(result, to_addrs, mail_reply, 'MAIL FROM')
        if not accepted:
            self._finish_unwanted_data(data_reply)
            self.reset()
            result.error = _summarise(result)
            return result
        if code != 354:
            if code == 421:
                self._abort()
            else:
                self.reset()
            return self._settle(result, accepted, data_reply)
        try:
            smtp.send(data + b'.\r\n', summary=f'<message, {len(data)} bytes>')
            code, msg = smtp.read_reply()
        except _DISCONNECTED:
            # The server may or may not have the message; at-least-once means we retry.
            self._abort()
            return self._defer(result, accepted, Reply(451, 'connection lost while sending the message or '
                                                             'waiting for the reply'))
        reply = Reply(code, _decode(msg))
        if code == 421:
            self._abort()
        return self._settle(result, accepted, reply)

    def _finish_unwanted_data(self, data_reply: Reply) -> None:
        """A server that said 354 although nothing was accepted gets an empty message (RFC 2920 3.1)."""
        if data_reply.code != 354 or self._wire is None:
            return
        try:
            self._wire.send(b'.\r\n')
            self._wire.read_reply()
        except _DISCONNECTED:
            self._abort()

    def _settle(self, result: SendResult, accepted: List[str], reply: Reply) -> SendResult:
        result.smtp_response = reply
        if 200 <= reply.code < 300:
            result.accepted = list(accepted)
        elif reply.is_permanent:
            result.refused.update({a: reply.as_tuple() for a in accepted})
        else:
            result.deferred.update({a: reply.as_tuple() for a in accepted})
        result.error = _summarise(result)
        return result

    def _defer(self, result: SendResult, recipients: Sequence[str], reply: Reply) -> SendResult:
        result.deferred.update({a: reply.as_tuple() for a in recipients})
        result.smtp_response = reply
        result.error = _summarise(result)
        return result

    def _defer_all(self, result: SendResult, to_addrs: Sequence[str], reply: Reply) -> SendResult:
        result.refused.clear()
        result.deferred = {a: reply.as_tuple() for a in to_addrs}
        result.smtp_response = reply
        result.error = str(reply)
        return result

    def _whole_message_refused(self, result: SendResult, to_addrs: Sequence[str], reply: Reply,
                               stage: str) -> SendResult:
        self.reset()
        bucket = result.refused if reply.is_permanent else result.deferred
        bucket.update({a: reply.as_tuple() for a in to_addrs})
        result.smtp_response = reply
        result.error = f'{stage}: {reply}'
        return result


def _summarise(result: SendResult) -> Optional[str]:
    failures: Dict[str, Tuple[int, str]] = {**result.deferred, **result.refused}
    if not failures:
        return None
    return '; '.join(f'{addr}: {code} {text}'.strip() for addr, (code, text) in failures.items())


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return str(value)


def _describe_ssl_error(exc: Any) -> str:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f'certificate verification failed ({exc.verify_message})'
    return exc.reason or str(exc)


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return 'timed out'
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

