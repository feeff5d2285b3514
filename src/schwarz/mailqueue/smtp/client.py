"""One SMTP connection: connect, TLS, AUTH, and one transaction with per-recipient replies.

Built on the standard library's ``smtplib`` for the wire protocol, but the
transaction itself (MAIL, RCPT per recipient, DATA) is driven here so that
every recipient gets its own verdict and a dropped connection is never
mistaken for success. The dialog is logged on ``mailqueue.smtp`` with AUTH
secrets replaced by ``***`` and the message body summarised, never logged.
"""

from __future__ import annotations

import base64
import enum
import logging
import smtplib
import socket
import ssl
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..message import dot_stuff, normalize_line_endings
from ..result import Reply, SendResult
from .errors import (
    AuthenticationError,
    ConnectError,
    SMTPError,
    TemporaryError,
    TLSError,
)

__all__ = ['SMTPConnection', 'TLSMode', 'build_ssl_context', 'is_local_host']

LOCAL_HOSTS = frozenset({'localhost', '127.0.0.1', '::1', 'localhost.localdomain', 'ip6-localhost'})
_DISCONNECTED = (smtplib.SMTPServerDisconnected, OSError, EOFError)


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
            raise ValueError(f'unknown TLS mode {value!r} (use implicit, starttls, opportunistic or none)')
        return aliases[text]


def is_local_host(hostname: str) -> bool:
    return hostname.lower() in LOCAL_HOSTS or hostname.startswith('127.')


def build_ssl_context(verify: bool, cafile: Optional[str] = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _DialogLoggingMixin:
    """Logs each command and reply; redacts AUTH and never logs message data."""

    _dialog_log: logging.Logger
    _peer: str
    _redact: bool = False

    def send(self, s: Any) -> None:
        log = self._dialog_log
        if log.isEnabledFor(logging.DEBUG):
            text = s.decode('utf-8', 'replace') if isinstance(s, bytes) else str(s)
            lines = text.rstrip('\r\n').split('\r\n')
            if len(lines) > 1 and not self._redact:
                for line in lines:
                    log.debug('%s > %s', self._peer, line)
                super().send(s)  # type: ignore[misc]
                return
            text = lines[0]
            if self._redact:
                verb, _, rest = text.partition(' ')
                if verb.upper() == 'AUTH':
                    mech, _, secret = rest.partition(' ')
                    text = f'AUTH {mech} ***' if secret else f'AUTH {mech}'
                else:
                    text = '***'
            log.debug('%s > %s', self._peer, text)
        super().send(s)  # type: ignore[misc]

    def getreply(self) -> Tuple[int, bytes]:
        code, msg = super().getreply()  # type: ignore[misc]
        log = self._dialog_log
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s < %s %s', self._peer, code, msg.decode('utf-8', 'replace').replace('\n', ' | '))
        return code, msg

    def auth(self, mechanism: str, authobject: Any, *, initial_response_ok: bool = True) -> Any:
        """smtplib's AUTH exchange, except that credentials are sent as UTF-8 (RFC 4616).

        smtplib encodes them as ASCII, so a password like 'pässwort' raised
        UnicodeEncodeError (a traceback, with part of the password in its text).
        """
        self._redact = True
        try:
            mechanism = mechanism.upper()
            initial = authobject() if initial_response_ok else None
            # smtplib's auth_login() reads this counter to tell the user name from the password.
            if initial is not None:
                code, resp = self.docmd('AUTH', f'{mechanism} {_b64(initial)}')  # type: ignore[attr-defined]
                self._auth_challenge_count = 1
            else:
                code, resp = self.docmd('AUTH', mechanism)  # type: ignore[attr-defined]
                self._auth_challenge_count = 0
            while code == 334:
                self._auth_challenge_count += 1
                if self._auth_challenge_count > 5:
                    raise smtplib.SMTPException('server keeps sending AUTH challenges')
                code, resp = self.docmd(_b64(authobject(base64.decodebytes(resp))))  # type: ignore[attr-defined]
            if code in (235, 503):
                return code, resp
            raise smtplib.SMTPAuthenticationError(code, resp)
        finally:
            self._redact = False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


class _SMTP(_DialogLoggingMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_DialogLoggingMixin, smtplib.SMTP_SSL):
    pass


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
        self._smtp: Optional[smtplib.SMTP] = None
        self.tls_active = False
        self.transactions = 0

    @property
    def peer(self) -> str:
        return f'{self.hostname}:{self.port}'

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    def _context(self) -> ssl.SSLContext:
        # Built (or fetched from the mailer's cache) only when TLS is really negotiated: loading the
        # CA store costs ~17 ms, a lot for one mq-sendmail call to a plain local relay.
        if self.ssl_context is None:
            self.ssl_context = build_ssl_context(verify=not is_local_host(self.hostname))
        elif callable(self.ssl_context):
            self.ssl_context = self.ssl_context()
        return self.ssl_context

    def open(self) -> None:
        if self._smtp is not None:
            return
        smtp: _SMTP | _SMTP_SSL
        try:
            if self.tls == TLSMode.IMPLICIT:
                smtp = _SMTP_SSL(local_hostname=self.local_hostname, timeout=self.timeout,
                                 context=self._context())
            else:
                smtp = _SMTP(local_hostname=self.local_hostname, timeout=self.timeout)
            smtp._dialog_log = self.log
            smtp._peer = self.peer
            # smtplib's SMTP_SSL takes the SNI/verification name from __init__'s host only.
            smtp._host = self.hostname  # type: ignore[union-attr]
            self._smtp = smtp
            code, msg = smtp.connect(self.hostname, self.port)
            if code != 220:
                reply = Reply(code, _decode(msg))
                raise ConnectError(f'{self.peer} greeted with {reply}', reply)
            if smtp.sock is not None:
                # Every logical unit (command batch, message) goes out in one sendall.
                smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.tls_active = self.tls == TLSMode.IMPLICIT
            self._ehlo()
            if self.tls in (TLSMode.STARTTLS, TLSMode.OPPORTUNISTIC) and not self.tls_active:
                if smtp.has_extn('starttls'):
                    self._starttls()
                elif self.tls == TLSMode.STARTTLS:
                    raise TLSError(f'{self.peer} does not offer STARTTLS but TLS is required')
            if self.username:
                self._authenticate()
        except ssl.SSLError as exc:
            self._abort()
            raise TLSError(f'TLS with {self.peer} failed: {_describe_ssl_error(exc)}') from None
        except SMTPError:
            self._abort()
            raise
        except smtplib.SMTPServerDisconnected:
            self._abort()
            raise ConnectError(f'{self.peer} closed the connection during set-up') from None
        except (OSError, smtplib.SMTPException) as exc:
            self._abort()
            raise ConnectError(f'cannot connect to {self.peer}: {_describe_os_error(exc)}') from None

    def _ehlo(self) -> None:
        assert self._smtp is not None
        code, msg = self._smtp.ehlo()
        if not 200 <= code < 300:
            code, msg = self._smtp.helo()
            if not 200 <= code < 300:
                reply = Reply(code, _decode(msg))
                raise ConnectError(f'{self.peer} refused HELO: {reply}', reply)

    def _starttls(self) -> None:
        assert self._smtp is not None
        code, msg = self._smtp.docmd('STARTTLS')
        if code != 220:
            raise TLSError(f'{self.peer} refused STARTTLS: {code} {msg.decode("utf-8", "replace")}')
        sock = self._smtp.sock
        assert sock is not None
        self._smtp.sock = self._context().wrap_socket(sock, server_hostname=self.hostname)
        self._smtp.file = None
        # RFC 3207: forget everything learned before TLS and say EHLO again.
        self._smtp.helo_resp = None
        self._smtp.ehlo_resp = None
        self._smtp.esmtp_features = {}
        self._smtp.does_esmtp = False
        self.tls_active = True
        self._ehlo()

    def _authenticate(self) -> None:
        assert self._smtp is not None
        if not self.tls_active and not is_local_host(self.hostname):
            raise AuthenticationError(
                f'refusing to send credentials to {self.peer} without TLS (set smtp_tls)')
        if not self._smtp.has_extn('auth'):
            raise AuthenticationError(f'{self.peer} does not offer AUTH')
        try:
            self._smtp.login(self.username or '', self._password or '')
        except smtplib.SMTPAuthenticationError as exc:
            reply = Reply(exc.smtp_code, _decode(exc.smtp_error))
            raise AuthenticationError(f'authentication as {self.username!r} failed: {reply}', reply) from None
        except smtplib.SMTPException as exc:
            raise AuthenticationError(f'authentication as {self.username!r} failed: {type(exc).__name__}') \
                from None
        except UnicodeError:
            # CRAM-MD5 (smtplib's first choice when offered) can only use an ASCII password;
            # the exception text would quote part of the password.
            raise AuthenticationError(f'authentication as {self.username!r} failed: the password is not '
                                      'ASCII, which the offered mechanism cannot send') from None

    def _abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        self.tls_active = False
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def close(self) -> None:
        smtp = self._smtp
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        self._abort()

    def reset(self) -> bool:
        """RSET after a failed transaction; False (and closed) when the connection is gone."""
        if self._smtp is None:
            return False
        try:
            code, _ = self._smtp.rset()
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
        if self._smtp is None:
            self.open()
        smtp = self._smtp
        assert smtp is not None
        result = SendResult(transport='smtp', queued=False, host=self.peer)
        data = dot_stuff(normalize_line_endings(msg_bytes))
        mail_options: List[str] = []
        encoding = 'ascii'
        needs_utf8 = not from_addr.isascii() or any(not a.isascii() for a in to_addrs)
        if needs_utf8:
            if not smtp.has_extn('smtputf8'):
                reply = Reply(553, 'non-ASCII address but server does not offer SMTPUTF8')
                result.refused = {a: reply.as_tuple() for a in to_addrs}
                result.smtp_response = reply
                result.error = str(reply)
                return result
            mail_options.append('SMTPUTF8')
            encoding = 'utf-8'
        if smtp.has_extn('8bitmime') and not msg_bytes.isascii():
            mail_options.append('BODY=8BITMIME')
        if smtp.has_extn('size'):
            mail_options.append(f'SIZE={len(data)}')
        # Addresses were validated by the caller; smtplib's mail()/rcpt() would re-parse them with
        # email.utils on every message.
        mail_cmd = f'MAIL FROM:<{from_addr}>' + ''.join(' ' + o for o in mail_options) + '\r\n'
        rcpt_cmds = [f'RCPT TO:<{addr}>\r\n' for addr in to_addrs]
        pipelined = smtp.has_extn('pipelining')
        try:
            if pipelined:
                smtp.send((mail_cmd + ''.join(rcpt_cmds) + 'DATA\r\n').encode(encoding))
            else:
                smtp.send(mail_cmd.encode(encoding))
            code, msg = smtp.getreply()
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
                code, msg = smtp.getreply()
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
                code, msg = smtp.getreply()
            elif accepted:
                smtp.send(b'DATA\r\n')
                code, msg = smtp.getreply()
            else:
                code, msg = 503, b'no valid recipients'
        except _DISCONNECTED:
            self._abort()
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
            sock = smtp.sock
            assert sock is not None
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug('%s > <message, %d bytes>', self.peer, len(data))
            sock.sendall(data + b'.\r\n')
            code, msg = smtp.getreply()
        except _DISCONNECTED:
            # The server may or may not have the message; at-least-once means we retry.
            self._abort()
            return self._defer(result, accepted, Reply(451, 'connection lost after sending the message'))
        reply = Reply(code, _decode(msg))
        if code == 421:
            self._abort()
        return self._settle(result, accepted, reply)

    def _finish_unwanted_data(self, data_reply: Reply) -> None:
        """A server that said 354 although nothing was accepted gets an empty message (RFC 2920 3.1)."""
        if data_reply.code != 354 or self._smtp is None:
            return
        try:
            self._smtp.send(b'.\r\n')
            self._smtp.getreply()
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


def _describe_ssl_error(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f'certificate verification failed ({exc.verify_message})'
    return exc.reason or str(exc)


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return 'timed out'
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

