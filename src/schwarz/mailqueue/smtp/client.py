"""One SMTP connection: connect, TLS, AUTH, and one transaction with per-recipient replies.

The wire protocol is our own small ``wire`` module rather than ``smtplib``
(which would cost a third of ``mq-sendmail``'s start-up); ``ssl`` is imported
only when TLS is used.

The transaction is a strict state machine: every reply is matched to the
command it answers, in order (with PIPELINING, counted against the commands
sent). A reply that cannot answer its command (a 2xx to ``DATA``, a 3xx to
``RCPT``, a surplus line, a reply before the data was sent) is a protocol
error: the connection is dropped, never reused, and every recipient not yet
confirmed by a 250 to the final ``.`` is temporary. A message counts as
delivered only after the reply to its own final ``.``. Each exchange runs under
an overall deadline, so a server that trickles bytes cannot hold us forever.

The dialog is logged on ``mailqueue.smtp`` with AUTH secrets replaced by
``***`` (also where the server echoes them) and the body summarised.
"""

from __future__ import annotations

import enum
import logging
import socket
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..message import dot_stuff, normalize_line_endings
from ..result import Reply, SendResult, describe_failures
from .auth import (
    PASSWORD_MECHANISMS,
    AuthInfo,
    Token,
    TokenSource,
    choose_mechanism,
    password_exchange,
    token_exchange,
)
from .errors import (
    AuthenticationError,
    ConnectError,
    SMTPError,
    TemporaryError,
    TLSError,
)
from .wire import ConnectionClosed, ProtocolError, SMTPWire, is_loopback_address

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    # SSL context per "is the peer loopback?": certificate checks are decided after resolution.
    # For the type checker only: a quoted name in a run-time alias is compiled on every import.
    ContextSource = Union[ssl.SSLContext, Callable[[bool], ssl.SSLContext], None]

__all__ = ['SMTPConnection', 'TLSMode', 'build_ssl_context', 'is_local_host', 'transaction_budget']

# A lost connection shows up as EOF (wire.ConnectionClosed), a reset, a timeout, garbage or a reply
# out of step (wire.ProtocolError): all of them OSErrors.
_DISCONNECTED = (OSError, EOFError)

# Overall time for one transaction: a few round trips at the inactivity timeout, a little per
# recipient (without PIPELINING each costs a round trip), and the upload at a slow link's pace.
_ROUND_TRIPS = 3
_SETUP_ROUND_TRIPS = 4  # greeting, EHLO, STARTTLS + handshake + EHLO, AUTH
_PER_RECIPIENT = 1.0
_MIN_UPLOAD_RATE = 32 * 1024  # bytes per second


class TLSMode(str, enum.Enum):
    IMPLICIT = 'implicit'
    STARTTLS = 'starttls'
    OPPORTUNISTIC = 'opportunistic'
    NONE = 'none'

    @classmethod
    def parse(cls, value: object, port: Optional[int] = None) -> TLSMode:
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
    """A literal loopback address. Names are never trusted by their look (``127.mail.example.com``):
    a connection decides by the address it really reached (``SMTPWire.peer_is_loopback``)."""
    return is_loopback_address(hostname.strip('[]'))


def transaction_budget(timeout: float, size: int, recipients: int) -> float:
    """Seconds one MAIL..final-dot exchange may take in total, whatever the server trickles."""
    return timeout * _ROUND_TRIPS + recipients * min(timeout, _PER_RECIPIENT) + size / _MIN_UPLOAD_RATE


_LINE_LIMIT = 998  # octets without CRLF (RFC 5321 4.5.3.1.6)
_ONE_WRITE = 64 * 1024  # messages up to this size go out with their final dot in one write
def fold_long_lines(data: bytes) -> bytes:
    """Break lines over 998 octets with CRLF SPACE, as Postfix does; other messages stay byte-identical.

    Servers refuse (or truncate) longer lines; a folded header stays one field and
    MIME parts survive. It changes the bytes, but only of a message no server had to accept.
    """
    # (split and len run in C: microseconds even for large messages; a regex scan was not)
    if len(data) <= _LINE_LIMIT or max(map(len, data.split(b'\r\n'))) <= _LINE_LIMIT:
        return data
    out: List[bytes] = []
    for line in data.split(b'\r\n'):
        while len(line) > _LINE_LIMIT:
            out.append(line[:_LINE_LIMIT])
            line = b' ' + line[_LINE_LIMIT:]
        out.append(line)
    return b'\r\n'.join(out)


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


def secret_forms(username: Optional[str], password: Optional[str]) -> List[str]:
    """The password as text and in every encoding we put on the wire (a server may echo any of them)."""
    if not password:
        return []
    user = (username or '').encode('utf-8')
    raw = password.encode('utf-8')
    forms = {password, _b64(raw), _b64(b'\0' + user + b'\0' + raw)}
    forms |= {form.rstrip('=') for form in list(forms)}
    return sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)


class SMTPConnection:
    """A single session with one server. Not thread-safe (but ``abort()`` may come from anywhere)."""

    def __init__(
        self,
        hostname: str,
        port: int = 25,
        *,
        tls: TLSMode = TLSMode.OPPORTUNISTIC,
        ssl_context: ContextSource = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10,
        local_hostname: Optional[str] = None,
        dialog_log: Optional[logging.Logger] = None,
        auth: str = 'auto',
        token_source: Optional[TokenSource] = None,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.tls = TLSMode.parse(tls, port)
        self.ssl_context = ssl_context
        self.username = username
        self._password = password
        self.timeout = timeout
        # socket.getfqdn() may wait for DNS; the plain host name is enough for EHLO.
        self.local_hostname = local_hostname or socket.gethostname() or 'localhost'
        self.log = dialog_log or logging.getLogger('mailqueue.smtp')
        self.auth = auth
        self.token_source = token_source
        #: how this session authenticated (None: no AUTH), for mq-send-test
        self.auth_info: Optional[AuthInfo] = None
        self._wire: Optional[SMTPWire] = None
        self.tls_active = False
        self.transactions = 0

    @property
    def peer(self) -> str:
        return f'{self.hostname}:{self.port}'

    @property
    def is_open(self) -> bool:
        return self._wire is not None

    def _context(self, peer_is_loopback: bool) -> ssl.SSLContext:
        # Built only when TLS is really negotiated: loading the CA store costs ~17 ms, a lot for one
        # mq-sendmail call to a plain local relay. Unverified only for a peer that IS loopback.
        source = self.ssl_context
        if source is None:
            return build_ssl_context(verify=not peer_is_loopback)
        if callable(source):
            return source(peer_is_loopback)
        return source

    def open(self) -> None:
        if self._wire is not None:
            return
        try:
            self._open(refresh_allowed=True)
        except _ReconnectWithNewToken:
            # the server hung up after rejecting the token; a fresh one is fetched: once more
            self._open(refresh_allowed=False)

    def _open(self, refresh_allowed: bool) -> None:
        token: Optional[Token] = None
        if self.username and self.token_source is not None:
            # Before connecting: a slow or dead token endpoint never holds (or fails) a connection,
            # and TokenUnavailable is no reason to pass over this host.
            token = self.token_source.token()
        try:
            chooser = self._context if self.tls == TLSMode.IMPLICIT else None
            wire = self._wire = SMTPWire.connect(self.hostname, self.port, self.timeout, self.log, chooser)
            for secret in secret_forms(self.username, self._password):
                wire.add_secret(secret)
            if self.token_source is not None:
                for secret in self.token_source.secrets():
                    wire.add_secret(secret)
            wire.set_deadline(self.timeout * _SETUP_ROUND_TRIPS)
            reply = wire.read_reply()
            if reply.code != 220:
                raise ConnectError(f'{self.peer} greeted with {reply}', reply)
            self.tls_active = chooser is not None
            self._ehlo()
            if self.tls in (TLSMode.STARTTLS, TLSMode.OPPORTUNISTIC) and not self.tls_active:
                if wire.has('starttls'):
                    self._starttls()
                elif self.tls == TLSMode.STARTTLS:
                    raise TLSError(f'{self.peer} does not offer STARTTLS but TLS is required')
            if self.username:
                self._authenticate(refresh_allowed, token)
            if wire.pending():
                raise ProtocolError(f'{self.peer} sent more replies than commands')
            wire.set_deadline(None)
        except (SMTPError, _ReconnectWithNewToken):
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
        except BaseException:
            self._abort()  # (whatever went wrong, the socket is not left half-way through a dialog)
            raise

    def _ehlo(self) -> None:
        assert self._wire is not None
        reply = self._wire.ehlo(self.local_hostname)
        _expect_classes(reply, 'EHLO', (2, 4, 5))
        if 400 <= reply.code < 500:
            raise ConnectError(f'{self.peer} refused EHLO: {reply}', reply)
        if reply.code >= 500:
            reply = self._wire.command(f'HELO {self.local_hostname}')
            _expect_classes(reply, 'HELO', (2, 4, 5))
            if not 200 <= reply.code < 300:
                raise ConnectError(f'{self.peer} refused HELO: {reply}', reply)

    def _starttls(self) -> None:
        wire = self._wire
        assert wire is not None
        reply = wire.command('STARTTLS')
        if reply.code != 220:
            _expect_classes(reply, 'STARTTLS', (2, 4, 5))
            raise TLSError(f'{self.peer} refused STARTTLS: {reply}', reply)
        # RFC 3207: whatever came before the handshake is forgotten; EHLO again.
        wire.start_tls(self._context(wire.peer_is_loopback), self.hostname)
        self.tls_active = True
        self._ehlo()

    def _authenticate(self, refresh_allowed: bool = True, token: Optional[Token] = None) -> None:
        wire = self._wire
        assert wire is not None
        if not self.tls_active and not wire.peer_is_loopback:
            raise AuthenticationError(
                f'refusing to send credentials to {self.peer} without TLS (set smtp_tls)')
        if not wire.has('auth'):
            raise AuthenticationError(f'{self.peer} does not offer AUTH')
        offered = wire.features['auth'].upper().split()
        username = self.username or ''
        mechanism = choose_mechanism(self.auth, offered, token=self.token_source is not None, peer=self.peer)
        if mechanism in PASSWORD_MECHANISMS:
            if self.token_source is not None:
                raise AuthenticationError(f'smtp_auth = {self.auth} needs a password, not an OAuth2 token')
            reply = password_exchange(wire, mechanism, username, self._password or '')
            self._check_auth_reply(reply, mechanism)
            self.auth_info = AuthInfo(mechanism, username)
            return
        source = self.token_source
        if source is None:
            raise AuthenticationError(f'smtp_auth = {self.auth} needs an OAuth2 token (smtp_oauth2_*)')
        if token is None:
            token = source.token()  # TokenUnavailable / TokenRefused: temporary, the message is queued
        reply = token_exchange(wire, mechanism, username, token.value, self.hostname, self.port)
        refreshed = False
        if reply.code >= 500 and refresh_allowed:
            # Rejected: expired early, revoked, or our clock is off. Refresh once and try again.
            log = logging.getLogger('mailqueue')
            log.info('%s rejected the OAuth2 token (%s); getting a new one', self.peer, reply)
            token = source.token(rejected=token.value)
            refreshed = True
            for secret in source.secrets():
                wire.add_secret(secret)
            wire.set_deadline(self.timeout * 2)  # the time spent at the token endpoint is not the server's
            try:
                if wire.pending():
                    raise ProtocolError(f'{self.peer} sent more replies than commands')
                reply = token_exchange(wire, mechanism, username, token.value, self.hostname, self.port)
            except (ConnectionClosed, ConnectionError):
                raise _ReconnectWithNewToken() from None
        self._check_auth_reply(reply, mechanism)
        self.auth_info = AuthInfo(mechanism, username, token.origin, refreshed)

    def _check_auth_reply(self, reply: Reply, mechanism: str) -> None:
        _expect_classes(reply, 'AUTH', (2, 4, 5))
        if not 200 <= reply.code < 300:
            raise AuthenticationError(f'authentication as {self.username!r} ({mechanism}) failed: {reply}', reply)

    def _abort(self) -> None:
        wire, self._wire = self._wire, None
        self.tls_active = False
        if wire is not None:
            try:
                wire.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Break off from another thread (shutdown): a blocked exchange fails at once; nothing else."""
        wire = self._wire
        if wire is not None:
            wire.abort()

    def close(self) -> None:
        wire = self._wire
        if wire is None:
            return
        try:
            wire.set_deadline(self.timeout)
            wire.command('QUIT')
        except OSError:
            pass
        self._abort()

    def reset(self) -> bool:
        """RSET after a failed transaction; False (and closed) when the connection is unusable."""
        wire = self._wire
        if wire is None:
            return False
        try:
            wire.set_deadline(self.timeout * 2)
            if wire.pending():
                raise ProtocolError(f'{self.peer} sent more replies than commands')
            reply = wire.command('RSET')
            if reply.code != 250 or wire.pending():
                raise ProtocolError(f'{self.peer} answered RSET with {reply}')
            wire.set_deadline(None)
        except _DISCONNECTED:
            self._abort()
            return False
        return True

    # --- the transaction -------------------------------------------------------------------

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        """Run one MAIL/RCPT/DATA transaction.

        Raises ``SMTPError`` only when nothing of this message reached the server
        (before MAIL FROM was answered): the caller may safely retry on a fresh
        connection. Everything after that is reported per recipient in the
        result. With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in
        one write: two round trips per message.
        """
        if self._wire is None:
            self.open()
        wire = self._wire
        assert wire is not None
        try:
            out_of_step = wire.pending()
        except _DISCONNECTED:
            out_of_step = True
        if out_of_step:
            # A reused connection with unread input: the server closed it while idle, or it is out
            # of step. Nothing of this message was sent; the caller retries on a fresh connection.
            self._abort()
            raise ConnectError(f'{self.peer} sent data or closed the connection between messages')
        result = SendResult(transport='smtp', queued=False, host=self.peer)
        smtputf8 = wire.has('smtputf8')
        if not smtputf8:
            # RFC 6531: without SMTPUTF8 a non-ASCII address cannot be transmitted. Only the
            # recipients that need it are refused; the others still get the message.
            unusable = Reply(553, '5.6.7 non-ASCII address but the server does not offer SMTPUTF8')
            if not from_addr.isascii():
                result.refused = {a: unusable.as_tuple() for a in to_addrs}
                result.smtp_response = unusable
                result.error = f'sender {from_addr}: {unusable}'
                return result
            for addr in to_addrs:
                if not addr.isascii():
                    result.refused[addr] = unusable.as_tuple()
            to_addrs = [a for a in to_addrs if a.isascii()]
            if not to_addrs:
                result.smtp_response = unusable
                result.error = _summarise(result)
                return result
        data = fold_long_lines(dot_stuff(normalize_line_endings(msg_bytes)))
        wire.set_deadline(transaction_budget(self.timeout, len(data), len(to_addrs)))
        try:
            return self._transaction(wire, result, from_addr, list(to_addrs), msg_bytes, data, smtputf8)
        finally:
            if self._wire is not None:
                self._wire.set_deadline(None)

    def _transaction(self, wire: SMTPWire, result: SendResult, from_addr: str, to_addrs: List[str],
                     msg_bytes: bytes, data: bytes, smtputf8: bool) -> SendResult:
        mail_options: List[str] = []
        encoding = 'ascii'
        if smtputf8 and (not from_addr.isascii() or not all(a.isascii() for a in to_addrs)):
            mail_options.append('SMTPUTF8')
            encoding = 'utf-8'
        if wire.has('8bitmime') and not msg_bytes.isascii():
            mail_options.append('BODY=8BITMIME')
        if wire.has('size'):
            mail_options.append(f'SIZE={len(data)}')
        # Addresses were validated by the caller (no CR/LF, no angle brackets).
        mail_cmd = f'MAIL FROM:<{from_addr}>' + ''.join(' ' + o for o in mail_options) + '\r\n'
        rcpt_cmds = [f'RCPT TO:<{addr}>\r\n' for addr in to_addrs]
        pipelined = wire.has('pipelining')
        try:
            if pipelined:
                wire.send((mail_cmd + ''.join(rcpt_cmds) + 'DATA\r\n').encode(encoding))
            else:
                wire.send(mail_cmd.encode(encoding))
            mail_reply = wire.read_reply()
        except _DISCONNECTED as exc:
            self._abort()
            raise ConnectError(f'{self.peer} went away before MAIL FROM: {_describe_os_error(exc)}') from None
        self.transactions += 1
        if mail_reply.code == 421:
            self._abort()
            raise TemporaryError(f'{self.peer}: {mail_reply}', mail_reply)
        accepted: List[str] = []
        try:
            _expect_classes(mail_reply, 'MAIL FROM', (2, 4, 5))
            if not self._recipients(wire, result, accepted, to_addrs, rcpt_cmds, mail_reply, pipelined, encoding):
                return result  # 421 to a RCPT: the server is closing
            if pipelined:
                data_reply = wire.read_reply()
            elif accepted and mail_reply.code < 300:
                _in_step(wire, self.peer)
                wire.send(b'DATA\r\n')
                data_reply = wire.read_reply()
            else:
                data_reply = None
            if data_reply is not None and data_reply.code != 354 and not 400 <= data_reply.code < 600:
                # A 2xx to DATA before any data was sent is not a delivery (the antivirus proxy
                # case); nor is any verdict read before it: the replies are out of step
                raise ProtocolError(f'{self.peer} answered DATA with {data_reply}')
        except ProtocolError as exc:
            return self._protocol_error(result, to_addrs, exc)
        except _DISCONNECTED:
            self._abort()
            if mail_reply.code >= 300:
                # a server that refused MAIL FROM and hung up: the refusal stands
                return self._whole_message_refused(result, to_addrs, mail_reply, 'MAIL FROM')
            lost = 'connection lost before DATA' if accepted else 'connection lost during RCPT TO'
            return self._defer_all(result, to_addrs, Reply(451, lost))

        if mail_reply.code >= 300:
            self._finish_unwanted_data(data_reply)
            return self._whole_message_refused(result, to_addrs, mail_reply, 'MAIL FROM')
        if not accepted:
            self._finish_unwanted_data(data_reply)
            self.reset()
            result.error = _summarise(result)
            return result
        assert data_reply is not None
        if data_reply.code != 354:
            if data_reply.code == 421:
                self._abort()
                return self._defer(result, accepted, data_reply)
            self.reset()
            return self._settle(result, accepted, data_reply)
        return self._upload(wire, result, accepted, to_addrs, data)

    def _recipients(self, wire: SMTPWire, result: SendResult, accepted: List[str], to_addrs: Sequence[str],
                    rcpt_cmds: Sequence[str], mail_reply: Reply, pipelined: bool, encoding: str) -> bool:
        """Read one reply per RCPT sent, collecting ``accepted``; False after a 421 (connection gone)."""
        for addr, rcpt_cmd in zip(to_addrs, rcpt_cmds):
            if not pipelined:
                if mail_reply.code >= 300:
                    break
                _in_step(wire, self.peer)  # else a surplus line would be read as this RCPT's verdict
                wire.send(rcpt_cmd.encode(encoding))
            reply = wire.read_reply()
            if reply.code == 421:
                self._abort()
                self._defer_all(result, to_addrs, reply)
                return False
            if mail_reply.code >= 300:
                continue  # answers to RCPT after a failed MAIL are meaningless, but must be counted
            _expect_classes(reply, 'RCPT TO', (2, 4, 5))
            if 200 <= reply.code < 300:
                accepted.append(addr)
            elif reply.code == 552 or reply.is_temporary:
                # RFC 5321 4.5.3.1.10: 552 on RCPT means "too many recipients", retry later.
                result.deferred[addr] = reply.as_tuple()
            else:
                result.refused[addr] = reply.as_tuple()
            result.smtp_response = reply
        return True

    def _upload(self, wire: SMTPWire, result: SendResult, accepted: List[str], to_addrs: Sequence[str],
                data: bytes) -> SendResult:
        """After a 354: the data, then the one reply to the final dot decides."""
        try:
            if wire.pending():
                raise ProtocolError(f'{self.peer} sent more replies than commands (after 354)')
            if len(data) <= _ONE_WRITE:
                # one write: a reply that arrives while it travels cannot be told from the real one
                # anyway; the check after the 354 above catches a surplus line sent with it
                wire.send(data + b'.\r\n', summary=f'<message, {len(data)} bytes> .')
            else:
                wire.send(data, summary=f'<message, {len(data)} bytes>')
                if wire.pending():
                    # Anything that arrives before the final dot was sent cannot be the reply to it.
                    raise ProtocolError(f'{self.peer} replied before the end of the data')
                wire.send(b'.\r\n', summary='.')
            reply = wire.read_reply()
        except ProtocolError as exc:
            return self._protocol_error(result, to_addrs, exc)
        except _DISCONNECTED:
            # The server may or may not have the message; at-least-once means we retry.
            self._abort()
            return self._defer(result, accepted, Reply(451, 'connection lost while sending the message or '
                                                             'waiting for the reply'))
        if reply.code == 421:
            self._abort()
            return self._settle(result, accepted, reply)
        if reply.code != 250 and not 400 <= reply.code < 600:
            return self._protocol_error(result, to_addrs, ProtocolError(
                f'{self.peer} answered the end of data with {reply}'))
        # The verdict stands from here on, whatever the connection does next (SPEC: after the
        # final 250 the message is delivered even if QUIT fails; a hang-up is no reason to resend).
        try:
            out_of_step = wire.pending()
        except _DISCONNECTED:
            self._abort()  # closed right after its reply: nothing more to say on it
        else:
            if out_of_step:
                # A surplus line after the final reply: the stream is out of step, so the
                # connection is never used for another message.
                self.log.warning('%s sent more replies than commands; dropping the connection', self.peer)
                self._abort()
        return self._settle(result, accepted, reply)

    def _protocol_error(self, result: SendResult, recipients: Sequence[str], exc: OSError) -> SendResult:
        """Out of step with the server: drop the connection. Every verdict of this transaction may
        have been read off the wrong reply, so each recipient sent to the server is deferred: none
        counts as delivered, none as refused (only our own SMTPUTF8 refusals, made before, stand)."""
        self.log.warning('protocol error: %s; dropping the connection', exc)
        self._abort()
        reply = Reply(451, f'4.5.0 protocol error: {exc}')
        for addr in recipients:
            result.refused.pop(addr, None)
            result.deferred[addr] = reply.as_tuple()
        result.accepted = []
        result.smtp_response = reply
        result.error = _summarise(result)
        return result

    def _finish_unwanted_data(self, data_reply: Optional[Reply]) -> None:
        """A server that said 354 although nothing was accepted gets an empty message (RFC 2920 3.1)."""
        if data_reply is None or data_reply.code != 354 or self._wire is None:
            return
        try:
            self._wire.send(b'.\r\n')
            self._wire.read_reply()
        except _DISCONNECTED:
            self._abort()

    def _settle(self, result: SendResult, accepted: List[str], reply: Reply) -> SendResult:
        result.smtp_response = reply
        if reply.code == 250:
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
        # keep refusals we made ourselves (SMTPUTF8); the server's own RCPT verdicts are void
        for addr in to_addrs:
            result.refused.pop(addr, None)
        result.deferred.update({a: reply.as_tuple() for a in to_addrs})
        result.smtp_response = reply
        result.error = _summarise(result) or str(reply)
        return result

    def _whole_message_refused(self, result: SendResult, to_addrs: Sequence[str], reply: Reply,
                               stage: str) -> SendResult:
        self.reset()
        bucket = result.refused if reply.is_permanent else result.deferred
        bucket.update({a: reply.as_tuple() for a in to_addrs})
        result.smtp_response = reply
        result.error = f'{stage}: {reply}'
        return result


def _in_step(wire: SMTPWire, peer: str) -> None:
    """Before a command in lockstep: the server has said no more than its replies."""
    if wire.pending():
        raise ProtocolError(f'{peer} sent more replies than commands')


class _ReconnectWithNewToken(Exception):
    """The server closed the connection after rejecting a token; open it again with the new one (once)."""


def _expect_classes(reply: Reply, command: str, classes: Tuple[int, ...]) -> None:
    """A reply whose class cannot answer ``command`` (1xx anywhere, 3xx to RCPT...) means we are out of step."""
    if reply.code // 100 not in classes:
        raise ProtocolError(f'reply {reply} cannot answer {command}')


def _summarise(result: SendResult) -> Optional[str]:
    failures: Dict[str, Tuple[int, str]] = {**result.deferred, **result.refused}
    return describe_failures(failures) if failures else None


def _describe_ssl_error(exc: OSError) -> str:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f'certificate verification failed ({exc.verify_message})'
    return str(getattr(exc, 'reason', None) or exc)


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return 'timed out' if str(exc) in ('', 'timed out') else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

