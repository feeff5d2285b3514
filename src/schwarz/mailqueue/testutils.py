"""A fault-injecting SMTP server for tests, built on aiosmtpd.

The server runs its own asyncio event loop in a background thread and listens
on 127.0.0.1 (a free port is picked on the first start and kept across
restarts). Everything it receives is recorded, and replies can be replaced,
delayed or turned into dropped connections while it runs::

    with SMTPTestServer() as server:
        server.set_recipient_reply('full@example.com', 452)
        server.disconnect_during_data = True
        ...  # point the code under test at server.settings_for_client()
        assert server.received == []

``ScriptedSMTPServer`` (at the end) is the opposite: a raw server (plain sockets
and threads) that answers every command with exactly the bytes a test scripts,
including surplus, missing, out-of-order, trickled or no replies at all::

    script = Script(replies={'DOT': smtp_reply(250, 'Ok') + smtp_reply(250, 'surplus')})
    with ScriptedSMTPServer(script) as srv:
        ...
        assert len(srv.confirmed) == ...

``SMTPTestServer(oauth_tokens={'user@example.com': 'token'})`` offers AUTH XOAUTH2 and
OAUTHBEARER (with the error challenge of a rejected token), and ``OAuth2TestEndpoint``
is an RFC 6749 token endpoint on 127.0.0.1 that issues the tokens such a server accepts::

    with SMTPTestServer(oauth_tokens={}) as server, OAuth2TestEndpoint(server, 'me@example.com') as endpoint:
        ...  # smtp_oauth2_token_url = endpoint.url, smtp_oauth2_client_id = endpoint.client_id, ...

This module needs the test dependencies (aiosmtpd, and cryptography for TLS);
the rest of the package never imports it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import datetime
import email
import email.message
import email.policy
import ipaddress
import json
import logging
import os
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import (
    Any,
    AnyStr,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)

__all__ = [
    'CLOSE',
    'HANG',
    'SILENT',
    'Close',
    'ConnectionState',
    'FaultHook',
    'FaultResult',
    'Hang',
    'OAuth2TestEndpoint',
    'ReceivedMessage',
    'ReplySpec',
    'Responder',
    'SMTPTestServer',
    'Script',
    'ScriptAction',
    'ScriptedCommand',
    'ScriptedSMTPServer',
    'ScriptedTransfer',
    'Trickle',
    'ehlo_reply',
    'reply_code',
    'smtp_reply',
    'smtp_server_fixture',
]

log = logging.getLogger(__name__)

ReplySpec = Union[int, Tuple[int, str]]
"""A reply given as a bare code (a default text is used) or as ``(code, text)``."""

FaultResult = Union[None, str, int, Tuple[int, str]]
"""What a fault hook returns: ``None`` (normal), ``'disconnect'``, a code or ``(code, text)``."""

FaultHook = Callable[[str, str], FaultResult]
"""Called as ``hook(command, argument)`` before each MAIL/RCPT/DATA reply."""

DISCONNECT = 'disconnect'

# Commands whose reply is replaced inside an aiosmtpd handler hook, so that the
# SMTP state (sender, recipients, HELO name) stays consistent with the reply.
_HOOKED_COMMANDS = frozenset({'EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'AUTH', 'QUIT', 'VRFY'})
_KNOWN_COMMANDS = _HOOKED_COMMANDS | {'CONNECT', 'STARTTLS', 'HELP', 'EXPN'}
_TLS_MODES = ('implicit', 'starttls')
_SHUTDOWN_STEP_TIMEOUT = 1.0
_START_TIMEOUT = 5.0


@dataclass(frozen=True)
class ReceivedMessage:
    """One message whose DATA phase completed and was accepted."""

    mail_from: str
    rcpt_tos: List[str]
    data: bytes
    """The DATA payload exactly as received, after removing the dot-stuffing."""
    mail_options: List[str] = field(default_factory=list)
    rcpt_options: List[str] = field(default_factory=list)
    smtp_utf8: bool = False
    tls: bool = False
    auth_login: Optional[str] = None

    def as_message(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    # The attribute names of mailqueue-runner 1.0.0's test server (users' own tests read them).
    @property
    def smtp_from(self) -> str:
        return self.mail_from

    @property
    def smtp_to(self) -> List[str]:
        return self.rcpt_tos

    @property
    def username(self) -> Optional[str]:
        return self.auth_login

    @property
    def msg_bytes(self) -> bytes:
        return self.data


@dataclass
class _Rule:
    value: Any
    remaining: Optional[int] = None


def _default_text(code: int) -> str:
    if code < 300:
        return '2.0.0 OK'
    if code < 400:
        return 'Go ahead'
    if code == 421:
        return '4.3.2 Service not available, closing transmission channel (injected)'
    if code < 500:
        return '4.3.0 Temporary failure (injected)'
    return '5.0.0 Permanent failure (injected)'


def _reply(code: int, message: Optional[str] = None) -> Tuple[int, str]:
    if isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f'SMTP reply code must be an int in 200..599, not {code!r}')
    return code, (_default_text(code) if message is None else message)


def _reply_from_spec(spec: ReplySpec) -> Tuple[int, str]:
    if isinstance(spec, tuple):
        return _reply(*spec)
    return _reply(spec)


def _format_reply(reply: Tuple[int, str]) -> str:
    code, text = reply
    lines = text.splitlines() or ['']
    parts = [f'{code}-{line}' for line in lines[:-1]]
    parts.append(f'{code} {lines[-1]}')
    return '\r\n'.join(parts)


def _is_success(reply: Tuple[int, str]) -> bool:
    return 200 <= reply[0] < 300


def _check_command(command: str, allowed: Iterable[str] = _KNOWN_COMMANDS) -> str:
    verb = command.strip().upper()
    if verb not in allowed:
        raise ValueError(f'unsupported SMTP command {command!r} (use one of {", ".join(sorted(allowed))})')
    return verb


def _check_times(times: Optional[int]) -> Optional[int]:
    if times is not None and times < 1:
        raise ValueError(f'times must be None (always) or >= 1, not {times!r}')
    return times


def _create_self_signed_certificate(directory: str) -> Tuple[str, str]:
    """Write a certificate for 'localhost'/127.0.0.1/::1 and its key; return both paths."""
    # imported here so that servers without TLS work without cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    # The certificate is its own CA (clients trust it via cafile), and carries
    # the extensions that OpenSSL's strict X.509 mode (Python 3.13+) insists on.
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName('localhost'),
                x509.IPAddress(ipaddress.ip_address('127.0.0.1')),
                x509.IPAddress(ipaddress.ip_address('::1')),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, 'cert.pem')
    key_path = os.path.join(directory, 'key.pem')
    with open(cert_path, 'wb') as fp:
        fp.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as fp:
        fp.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    return cert_path, key_path


class _QuietSession(Session):
    # aiosmtpd logs a deprecation warning (visible on stderr without any
    # logging config) whenever it stores the login after a successful AUTH.
    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


_Command = Callable[[Optional[str]], Awaitable[None]]


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP protocol (one instance per connection) plus fault injection."""

    def __init__(self, owner: SMTPTestServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._mq_owner = owner
        self._mq_greeting: Optional[str] = None
        self._mq_close_after_reply = False
        self._smtp_methods = {
            verb: self._mq_wrap(verb, method) for verb, method in self._smtp_methods.items()
        }

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # called a second time (with the TLS transport) after STARTTLS
        if self.transport is None:
            self._mq_owner._connection_made(self)
            sock = transport.get_extra_info('socket')
            if sock is not None:
                # Replies to pipelined commands must not wait for the client's delayed ACK
                # (Nagle): real MTAs flush them promptly, so the test server does too.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def connection_lost(self, error: Optional[Exception]) -> None:
        self._mq_owner._connection_lost(self)
        super().connection_lost(error)

    async def check_auth_needed(self, caller_method: str) -> bool:
        # aiosmtpd warns on every connection if auth_required is set without
        # requiring TLS, so the requirement is enforced here instead.
        assert self.session is not None
        if self._mq_owner._auth_required and not self.session.authenticated:
            await self.push('530 5.7.0 Authentication required')
            return True
        return False

    async def push(self, status: AnyStr) -> None:
        if self._mq_greeting is not None:
            greeting, self._mq_greeting = self._mq_greeting, None
            await super().push(greeting)
        else:
            await super().push(status)
        if self._mq_close_after_reply:
            self._mq_close_after_reply = False
            self._mq_disconnect(graceful=True)

    async def _handle_client(self) -> None:
        owner = self._mq_owner
        delay = owner._delay_for('CONNECT')
        if delay:
            await asyncio.sleep(delay)
        if owner._take_drop('CONNECT'):
            self._mq_abort()
            return
        reply = owner._take_reply('CONNECT')
        if reply is not None:
            if not _is_success(reply):
                try:
                    await SMTP.push(self, _format_reply(reply))
                except ConnectionError:
                    pass
                if self.transport is not None:
                    self.transport.close()
                return
            self._mq_greeting = _format_reply(reply)
        await super()._handle_client()

    def _mq_wrap(self, verb: str, method: _Command) -> _Command:
        owner = self._mq_owner

        async def dispatch(arg: Optional[str]) -> None:
            owner._record_command(verb)
            if owner._take_drop(verb):
                self._mq_disconnect(graceful=False)
            if verb != 'DATA':
                # DATA is delayed before its final reply, see _Handler.handle_DATA
                delay = owner._delay_for(verb)
                if delay:
                    await asyncio.sleep(delay)
                if verb not in _HOOKED_COMMANDS:
                    reply = owner._take_reply(verb)
                    if reply is not None:
                        await self.push(self._mq_status(reply))
                        return
            await method(arg)

        return dispatch

    def _mq_status(self, reply: Tuple[int, str]) -> str:
        """Format an injected reply; a 421 closes the connection after it is sent."""
        if reply[0] == 421:
            self._mq_close_after_reply = True
        return _format_reply(reply)

    def _mq_abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    def _mq_disconnect(self, graceful: bool) -> NoReturn:
        if graceful:
            if self.transport is not None:
                self.transport.close()
        else:
            self._mq_abort()
        # aiosmtpd treats a cancelled session task as a lost connection, quietly
        raise asyncio.CancelledError()


class _Handler:
    """aiosmtpd handler hooks; names starting with ``auth_`` would become AUTH mechanisms."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self._owner = owner

    async def handle_EHLO(
        self, server: _FaultySMTP, session: Session, envelope: Envelope, hostname: str, responses: List[str],
    ) -> List[str]:
        reply = self._owner._take_reply('EHLO')
        if reply is None:
            session.host_name = hostname
            if not (self._owner._auth or self._owner._oauth):
                responses = [line for line in responses if not line[4:].upper().startswith('AUTH')]
            if self._owner._pipelining and len(responses) > 1:
                responses = [responses[0], '250-PIPELINING', *responses[1:]]
            return responses
        if _is_success(reply):
            session.host_name = hostname
        return [server._mq_status(reply)]

    async def handle_HELO(
        self, server: _FaultySMTP, session: Session, envelope: Envelope, hostname: str,
    ) -> Any:
        reply = self._owner._take_reply('HELO')
        if reply is None:
            return MISSING
        if _is_success(reply):
            session.host_name = hostname
        return server._mq_status(reply)

    async def handle_MAIL(
        self, server: _FaultySMTP, session: Session, envelope: Envelope,
        address: str, mail_options: List[str],
    ) -> Any:
        reply = self._fault(server, 'MAIL', address) or self._owner._take_reply('MAIL')
        if reply is None:
            return MISSING
        if _is_success(reply):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return server._mq_status(reply)

    async def handle_RCPT(
        self, server: _FaultySMTP, session: Session, envelope: Envelope,
        address: str, rcpt_options: List[str],
    ) -> Any:
        owner = self._owner
        reply = (
            self._fault(server, 'RCPT', address)
            or owner._take_recipient_reply(address)
            or owner._take_reply('RCPT')
        )
        if reply is None:
            return MISSING
        if _is_success(reply):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return server._mq_status(reply)

    async def handle_DATA(self, server: _FaultySMTP, session: Session, envelope: Envelope) -> Any:
        owner = self._owner
        delay = owner._delay_for('DATA')
        if delay:
            await asyncio.sleep(delay)
        reply = self._fault(server, 'DATA', '')
        if owner._take_disconnect_during_data():
            server._mq_disconnect(graceful=False)
        if reply is None:
            reply = owner._take_reply('DATA')
        if reply is None or _is_success(reply):
            owner._record_message(session, envelope)
        return MISSING if reply is None else server._mq_status(reply)

    async def handle_AUTH(
        self, server: _FaultySMTP, session: Session, envelope: Envelope, args: List[str],
    ) -> Any:
        reply = self._owner._take_reply('AUTH')
        if reply is None:
            return MISSING
        if _is_success(reply):
            session.authenticated = True
        return server._mq_status(reply)

    # AUTH mechanisms of their own (aiosmtpd offers every auth_* method of the handler; the
    # server excludes these two unless it was given oauth_tokens)
    async def auth_XOAUTH2(self, server: _FaultySMTP, args: List[str]) -> AuthResult:
        return await self._owner._oauth_exchange(server, 'XOAUTH2', args)

    async def auth_OAUTHBEARER(self, server: _FaultySMTP, args: List[str]) -> AuthResult:
        return await self._owner._oauth_exchange(server, 'OAUTHBEARER', args)

    async def handle_RSET(self, server: _FaultySMTP, session: Session, envelope: Envelope) -> Any:
        return self._simple(server, 'RSET')

    async def handle_NOOP(self, server: _FaultySMTP, session: Session, envelope: Envelope, arg: str) -> Any:
        return self._simple(server, 'NOOP')

    async def handle_QUIT(self, server: _FaultySMTP, session: Session, envelope: Envelope) -> Any:
        return self._simple(server, 'QUIT')

    async def handle_VRFY(
        self, server: _FaultySMTP, session: Session, envelope: Envelope, address: str,
    ) -> Any:
        return self._simple(server, 'VRFY')

    async def handle_exception(self, error: Exception) -> str:
        if not isinstance(error, TLSSetupException):
            log.error('SMTPTestServer: exception in SMTP session', exc_info=error)
        return f'500 Error: ({error.__class__.__name__}) {error}'

    def _simple(self, server: _FaultySMTP, verb: str) -> Any:
        reply = self._owner._take_reply(verb)
        return MISSING if reply is None else server._mq_status(reply)

    def _fault(self, server: _FaultySMTP, command: str, argument: str) -> Optional[Tuple[int, str]]:
        result = self._owner._call_fault_hook(command, argument)
        if result == DISCONNECT:
            server._mq_disconnect(graceful=False)
        assert not isinstance(result, str)
        return result


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
    # Clients failing the TLS handshake or vanishing are what tests provoke;
    # asyncio would report them (in debug mode) as errors on stderr.
    if isinstance(context.get('exception'), (ssl.SSLError, ConnectionError)):
        log.debug('SMTPTestServer: %s', context.get('message'), exc_info=context.get('exception'))
        return
    loop.default_exception_handler(context)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_loop_exception_handler)
    try:
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class SMTPTestServer:
    """An SMTP server on 127.0.0.1 for tests, with fault injection.

    All fault settings can be given to the constructor and changed at any time
    while the server runs; the changes apply to the next matching command.
    Replies are given as a code plus optional text (multi-line text becomes a
    multi-line reply). An injected 421 closes the connection after the reply.

    ``times`` (where accepted) limits a fault to the next N occurrences,
    ``None`` means until it is cleared.
    """

    def __init__(
        self,
        *,
        hostname: str = '127.0.0.1',
        port: int = 0,
        tls: Optional[str] = None,
        auth: Optional[Mapping[str, str]] = None,
        auth_required: bool = False,
        oauth_tokens: Optional[Mapping[str, Union[str, Iterable[str]]]] = None,
        replies: Optional[Mapping[str, ReplySpec]] = None,
        recipient_replies: Optional[Mapping[str, ReplySpec]] = None,
        delays: Optional[Mapping[str, float]] = None,
        drop_on: Iterable[str] = (),
        disconnect_during_data: bool = False,
        fault_hook: Optional[FaultHook] = None,
        server_name: str = 'localhost',
        data_size_limit: Optional[int] = 32 * 1024 * 1024,
        pipelining: bool = True,
    ) -> None:
        """
        :param tls: ``None``, ``'starttls'`` (advertise STARTTLS) or ``'implicit'``
            (TLS from the first byte); both use a fresh self-signed certificate
            found at :attr:`cert_path`.
        :param auth: username -> password; enables AUTH PLAIN and LOGIN (also
            without TLS), any other credentials get 535.
        :param auth_required: answer MAIL/RCPT/DATA with 530 until AUTH succeeded.
        :param oauth_tokens: username -> valid bearer token(s); enables AUTH XOAUTH2 and
            OAUTHBEARER (also without TLS). A rejected token gets the error challenge
            (``334`` with base64 JSON) and then 535, as Gmail and Exchange Online do.
            ``{}`` offers the mechanisms with no valid token yet (see :meth:`add_oauth_token`).
        :param replies: command -> reply, as for :meth:`set_reply`.
        :param recipient_replies: address -> reply, as for :meth:`set_recipient_reply`.
        :param delays: command -> seconds, as for :meth:`set_delay`.
        :param drop_on: commands upon which the connection is dropped, see :meth:`drop_connection_on`.
        :param server_name: the name the server uses in its greeting and EHLO reply.
        :param pipelining: advertise PIPELINING (RFC 2920), as real MTAs do.
        """
        if tls is not None and tls not in _TLS_MODES:
            raise ValueError(f'tls must be None, "implicit" or "starttls", not {tls!r}')
        if auth_required and not auth and oauth_tokens is None:
            raise ValueError('auth_required needs auth={username: password} or oauth_tokens')
        self._hostname = hostname
        self._port = port
        self._tls = tls
        self._auth: Dict[str, str] = dict(auth or {})
        self._auth_required = auth_required
        self._oauth = oauth_tokens is not None
        self._oauth_tokens: Dict[str, Set[str]] = {}
        for user, tokens in (oauth_tokens or {}).items():
            self._oauth_tokens[user] = {tokens} if isinstance(tokens, str) else set(tokens)
        self._auth_attempts: List[Tuple[str, str, bool]] = []
        self._server_name = server_name
        self._data_size_limit = data_size_limit
        self._pipelining = pipelining

        self._lock = threading.RLock()
        self._messages_changed = threading.Condition(self._lock)
        self._received: List[ReceivedMessage] = []
        self.received_messages: queue.Queue[ReceivedMessage] = queue.Queue()
        """Every accepted message, in order, as in mailqueue-runner 1.0.0 (``.get(timeout=...)``);
        ``reset()`` empties it. ``received`` / ``wait_for_messages()`` are the newer way."""
        self._commands: List[str] = []
        self._auth_logins: List[str] = []
        self._connection_count = 0

        self._replies: Dict[str, _Rule] = {}
        self._recipient_replies: Dict[str, _Rule] = {}
        self._drops: Dict[str, _Rule] = {}
        self._delays: Dict[str, float] = {}
        self._disconnect_data: Optional[_Rule] = None
        self.fault_hook: Optional[FaultHook] = fault_hook
        """``hook(command, argument)`` called before each MAIL/RCPT/DATA reply
        (argument: the address, or ``''`` for DATA) in the server thread; it
        returns ``None`` for normal behaviour, ``(code, text)`` (or a bare
        code) to replace the reply, or ``'disconnect'`` to drop the connection."""

        for command, spec in (replies or {}).items():
            self.set_reply(command, *_reply_from_spec(spec))
        for address, spec in (recipient_replies or {}).items():
            self.set_recipient_reply(address, *_reply_from_spec(spec))
        for command, seconds in (delays or {}).items():
            self.set_delay(command, seconds)
        for command in drop_on:
            self.drop_connection_on(command)
        self.disconnect_during_data = disconnect_during_data

        self._handler = _Handler(self)
        self._protocols: Set[_FaultySMTP] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.AbstractServer] = None

        self._cert_path: Optional[str] = None
        self._key_path: Optional[str] = None
        self._server_ssl_context: Optional[ssl.SSLContext] = None
        self._cert_cleanup: Optional[weakref.finalize] = None
        if tls is not None:
            self._create_certificate()

    def __repr__(self) -> str:
        state = 'running' if self.is_running else 'stopped'
        return f'<SMTPTestServer {self._hostname}:{self._port} tls={self._tls} {state}>'

    # ----- lifecycle -------------------------------------------------------

    def __enter__(self) -> SMTPTestServer:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Start listening; after a :meth:`stop` the server comes back on the same port."""
        if self._loop is not None:
            raise RuntimeError('SMTPTestServer is already running')
        if self._tls is not None and self._cert_path is None:
            self._create_certificate()
        family = socket.AF_INET6 if ':' in self._hostname else socket.AF_INET
        sock = socket.create_server((self._hostname, self._port), family=family)
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name=f'SMTPTestServer-{self._port}', daemon=True)
        thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(sock), loop)
        try:
            self._server = future.result(timeout=_START_TIMEOUT)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT)
            sock.close()
            raise
        self._loop = loop
        self._thread = thread

    def stop(self) -> None:
        """Stop listening and close all open connections (bounded in time); idempotent."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._server = None
        try:
            if server is not None and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(server), loop)
                try:
                    future.result(timeout=3 * _SHUTDOWN_STEP_TIMEOUT)
                except concurrent.futures.TimeoutError:
                    future.cancel()
        finally:
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:
                    # the loop closed in the meantime
                    pass
            thread.join(2 * _SHUTDOWN_STEP_TIMEOUT)
            self._protocols.clear()

    def close(self) -> None:
        """Stop the server and delete the TLS certificate files."""
        self.stop()
        if self._cert_cleanup is not None:
            self._cert_cleanup()
        self._cert_cleanup = None
        self._cert_path = self._key_path = None
        self._server_ssl_context = None

    async def _listen(self, sock: socket.socket) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        implicit_tls = self._server_ssl_context if self._tls == 'implicit' else None
        return await loop.create_server(
            lambda: self._create_protocol(loop),
            sock=sock,
            ssl=implicit_tls,
            ssl_handshake_timeout=5.0 if implicit_tls else None,
        )

    async def _shutdown(self, server: asyncio.AbstractServer) -> None:
        server.close()
        abort_clients = getattr(server, 'abort_clients', None)  # Python 3.13+
        if abort_clients is not None:
            abort_clients()
        for protocol in list(self._protocols):
            protocol._mq_abort()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_SHUTDOWN_STEP_TIMEOUT)
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=_SHUTDOWN_STEP_TIMEOUT)
        except asyncio.TimeoutError:
            pass

    def _create_protocol(self, loop: asyncio.AbstractEventLoop) -> _FaultySMTP:
        return _FaultySMTP(
            self,
            self._handler,
            loop=loop,
            hostname=self._server_name,
            data_size_limit=self._data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=self._server_ssl_context if self._tls == 'starttls' else None,
            require_starttls=False,
            auth_required=False,
            auth_require_tls=False,
            authenticator=self._authenticate if self._auth else None,
            auth_exclude_mechanism=([] if self._auth else ['LOGIN', 'PLAIN'])
            + ([] if self._oauth else ['XOAUTH2', 'OAUTHBEARER']),
        )

    def _create_certificate(self) -> None:
        directory = tempfile.mkdtemp(prefix='mq-smtp-test-')
        self._cert_cleanup = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self._cert_path, self._key_path = _create_self_signed_certificate(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_path, self._key_path)
        self._server_ssl_context = context

    # ----- connection details ------------------------------------------------

    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def port(self) -> int:
        """The listening port (0 until the first :meth:`start` when no port was given)."""
        return self._port

    @property
    def tls(self) -> Optional[str]:
        return self._tls

    @property
    def cert_path(self) -> Optional[str]:
        """PEM file of the server certificate (``None`` without TLS); use it as ``cafile``."""
        return self._cert_path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against :attr:`cert_path`."""
        if self._cert_path is None:
            raise RuntimeError('this SMTPTestServer does not use TLS')
        return ssl.create_default_context(cafile=self._cert_path)

    def settings_for_client(self) -> Dict[str, str]:
        """Settings (as config strings) to deliver to this server."""
        settings = {'smtp_hostname': self._hostname, 'smtp_port': str(self._port)}
        if self._tls is not None:
            settings['smtp_tls'] = self._tls
            settings['smtp_tls_verify'] = 'false'
        if self._auth:
            username, password = next(iter(self._auth.items()))
            settings['smtp_username'] = username
            settings['smtp_password'] = password
        return settings

    # ----- observations ------------------------------------------------------

    @property
    def received(self) -> List[ReceivedMessage]:
        """A snapshot of the accepted messages, oldest first."""
        with self._lock:
            return list(self._received)

    @property
    def commands(self) -> List[str]:
        """A snapshot of the recognised command verbs received, in order (all connections)."""
        with self._lock:
            return list(self._commands)

    @property
    def auth_logins(self) -> List[str]:
        """Usernames of successful AUTH exchanges, in order."""
        with self._lock:
            return list(self._auth_logins)

    @property
    def auth_attempts(self) -> List[Tuple[str, str, bool]]:
        """Every XOAUTH2/OAUTHBEARER attempt: ``(mechanism, username, accepted)``, in order."""
        with self._lock:
            return list(self._auth_attempts)

    def add_oauth_token(self, username: str, token: str) -> None:
        """Accept ``token`` for ``username`` from now on (XOAUTH2 and OAUTHBEARER)."""
        with self._lock:
            self._oauth_tokens.setdefault(username, set()).add(token)

    def revoke_oauth_token(self, token: str) -> None:
        """Reject ``token`` from now on, for every user (an expired or revoked token)."""
        with self._lock:
            for tokens in self._oauth_tokens.values():
                tokens.discard(token)

    @property
    def connection_count(self) -> int:
        """Connections accepted since creation (with implicit TLS: after the handshake)."""
        with self._lock:
            return self._connection_count

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> List[ReceivedMessage]:
        """Block until at least ``n`` messages were received and return all of them."""
        with self._messages_changed:
            if not self._messages_changed.wait_for(lambda: len(self._received) >= n, timeout):
                raise AssertionError(
                    f'expected {n} message(s) within {timeout} s, received {len(self._received)}')
            return list(self._received)

    def reset(self) -> None:
        """Forget received messages, commands and logins, and clear all faults."""
        with self._lock:
            self._received.clear()
            while not self.received_messages.empty():
                self.received_messages.get_nowait()
            self._commands.clear()
            self._auth_logins.clear()
            self._auth_attempts.clear()
        self.clear_faults()

    # ----- fault injection ---------------------------------------------------

    def clear_faults(self) -> None:
        with self._lock:
            self._replies.clear()
            self._recipient_replies.clear()
            self._drops.clear()
            self._delays.clear()
            self._disconnect_data = None
            self.fault_hook = None

    def set_reply(self, command: str, code: int, message: Optional[str] = None, *,
                  times: Optional[int] = None) -> None:
        """Answer ``command`` with ``code`` instead of the normal reply.

        ``command`` is an SMTP verb ('EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA'
        (the reply after the data), 'RSET', 'NOOP', 'AUTH', 'QUIT', 'VRFY',
        'STARTTLS', 'HELP') or 'CONNECT' for the greeting (a non-2xx greeting
        closes the connection). A 2xx reply to MAIL/RCPT/DATA/HELO/EHLO/AUTH
        also performs the command (sender/recipient accepted, message recorded).
        """
        verb = _check_command(command)
        rule = _Rule(_reply(code, message), _check_times(times))
        with self._lock:
            self._replies[verb] = rule

    def clear_reply(self, command: str) -> None:
        with self._lock:
            self._replies.pop(_check_command(command), None)

    def set_recipient_reply(self, address: str, code: int, message: Optional[str] = None, *,
                            times: Optional[int] = None) -> None:
        """Answer ``RCPT TO`` for ``address`` (case-insensitive) with ``code``.

        A 2xx code accepts the recipient; anything else rejects only this one.
        """
        rule = _Rule(_reply(code, message), _check_times(times))
        with self._lock:
            self._recipient_replies[address.lower()] = rule

    def clear_recipient_reply(self, address: str) -> None:
        with self._lock:
            self._recipient_replies.pop(address.lower(), None)

    def set_delay(self, command: str, seconds: Optional[float]) -> None:
        """Wait ``seconds`` before answering ``command`` (DATA: before the final reply).

        Only the affected connection waits. ``None`` or 0 removes the delay.
        """
        verb = _check_command(command)
        with self._lock:
            if seconds:
                self._delays[verb] = float(seconds)
            else:
                self._delays.pop(verb, None)

    def drop_connection_on(self, command: str, *, times: Optional[int] = None) -> None:
        """Close the connection, without any reply, as soon as ``command`` arrives.

        'CONNECT' drops new connections before the greeting.
        """
        verb = _check_command(command)
        rule = _Rule(True, _check_times(times))
        with self._lock:
            self._drops[verb] = rule

    def clear_drop(self, command: str) -> None:
        with self._lock:
            self._drops.pop(_check_command(command), None)

    @property
    def disconnect_during_data(self) -> bool:
        """If true, the server reads the message data and then drops the
        connection without the final reply and without recording the message."""
        with self._lock:
            return self._disconnect_data is not None

    @disconnect_during_data.setter
    def disconnect_during_data(self, enabled: bool) -> None:
        self.set_disconnect_during_data(enabled)

    def set_disconnect_during_data(self, enabled: bool = True, *, times: Optional[int] = None) -> None:
        rule = _Rule(True, _check_times(times)) if enabled else None
        with self._lock:
            self._disconnect_data = rule

    # ----- called from the server thread -------------------------------------

    def _take(self, table: Dict[str, _Rule], key: str) -> Any:
        with self._lock:
            rule = table.get(key)
            if rule is None:
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del table[key]
            return rule.value

    def _take_reply(self, verb: str) -> Optional[Tuple[int, str]]:
        reply: Optional[Tuple[int, str]] = self._take(self._replies, verb)
        return reply

    def _take_recipient_reply(self, address: str) -> Optional[Tuple[int, str]]:
        reply: Optional[Tuple[int, str]] = self._take(self._recipient_replies, address.lower())
        return reply

    def _take_drop(self, verb: str) -> bool:
        return bool(self._take(self._drops, verb))

    def _take_disconnect_during_data(self) -> bool:
        with self._lock:
            rule = self._disconnect_data
            if rule is None:
                return False
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._disconnect_data = None
            return True

    def _delay_for(self, verb: str) -> float:
        with self._lock:
            return self._delays.get(verb, 0.0)

    def _call_fault_hook(self, command: str, argument: str) -> Union[None, str, Tuple[int, str]]:
        hook = self.fault_hook
        if hook is None:
            return None
        result = hook(command, argument)
        if result is None or result == DISCONNECT:
            return result
        if isinstance(result, (int, tuple)):
            return _reply_from_spec(result)
        raise TypeError(f'fault_hook must return None, "disconnect", a code or (code, text), not {result!r}')

    def _record_command(self, verb: str) -> None:
        with self._lock:
            self._commands.append(verb)

    def _connection_made(self, protocol: _FaultySMTP) -> None:
        self._protocols.add(protocol)
        with self._lock:
            self._connection_count += 1

    def _connection_lost(self, protocol: _FaultySMTP) -> None:
        self._protocols.discard(protocol)

    def _record_message(self, session: Session, envelope: Envelope) -> None:
        auth_data = session.auth_data
        login = auth_data.login if isinstance(auth_data, LoginPassword) else None
        message = ReceivedMessage(
            mail_from=envelope.mail_from or '',
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b'',
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            smtp_utf8=envelope.smtp_utf8,
            tls=session.ssl is not None or self._tls == 'implicit',
            auth_login=login.decode('utf-8', 'replace') if login is not None else None,
        )
        with self._messages_changed:
            self._received.append(message)
            self.received_messages.put(message)
            self._messages_changed.notify_all()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            username = auth_data.login.decode('utf-8', 'surrogateescape')
            password = auth_data.password.decode('utf-8', 'surrogateescape')
            if username in self._auth and self._auth[username] == password:
                with self._lock:
                    self._auth_logins.append(username)
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


    async def _oauth_exchange(self, server: _FaultySMTP, mechanism: str, args: List[str]) -> AuthResult:
        """One XOAUTH2/OAUTHBEARER exchange, server side (the error challenge on a bad token)."""
        if len(args) == 1:
            blob = await server.challenge_auth('', encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
            assert isinstance(blob, bytes)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push('501 5.5.2 Cannot decode base64')
                return AuthResult(success=False, handled=True)
        username, token = _parse_oauth_response(mechanism, blob)
        with self._lock:
            valid = username is not None and token is not None and token in self._oauth_tokens.get(username, ())
            self._auth_attempts.append((mechanism, username or '', valid))
            if valid:
                assert username is not None
                self._auth_logins.append(username)
        if valid:
            assert username is not None
            return AuthResult(success=True, auth_data=LoginPassword(username.encode('utf-8'), b''))
        if username is None:
            await server.push('501 5.5.2 Malformed initial response')
            return AuthResult(success=False, handled=True)
        # RFC 7628 3.2.2 / Google's XOAUTH2: an error challenge, the client's dummy answer, then 535
        error = json.dumps({'status': '401', 'schemes': 'bearer', 'scope': 'https://mail.example/'})
        answer = await server.challenge_auth(error.encode(), encode_to_b64=True)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message='535 5.7.8 Username and token not accepted')


def _parse_oauth_response(mechanism: str, blob: bytes) -> Tuple[Optional[str], Optional[str]]:
    """``(username, token)`` from an XOAUTH2 or OAUTHBEARER initial response; Nones when malformed."""
    try:
        text = blob.decode('utf-8')
    except UnicodeDecodeError:
        return None, None
    username: Optional[str] = None
    if mechanism == 'OAUTHBEARER':
        header, sep, text = text.partition('\x01')
        if not sep or not header.startswith('n,') and not header.startswith('y,'):
            return None, None
        for part in header.split(',')[1:]:
            if part.startswith('a='):
                username = part[2:].replace('=2C', ',').replace('=3D', '=')
        text = '\x01' + text
    fields: Dict[str, str] = {}
    for part in text.split('\x01'):
        key, sep, value = part.partition('=')
        if sep:
            fields[key] = value
    if mechanism == 'XOAUTH2':
        username = fields.get('user')
    auth = fields.get('auth', '')
    if not auth.lower().startswith('bearer ') or not text.endswith('\x01\x01'):
        return username, None
    return username, auth[7:]


def smtp_server_fixture(**options: Any) -> Iterator[SMTPTestServer]:
    """Generator for a pytest fixture: ``smtp_server = pytest.fixture(smtp_server_fixture)``.

    ``options`` are passed to :class:`SMTPTestServer` (pytest itself passes none).
    """
    with SMTPTestServer(**options) as server:
        yield server


# =============================================================================================
# ScriptedSMTPServer: a raw SMTP server whose every reply byte is scripted (stdlib only)
# =============================================================================================
#
# SMTPTestServer above is a well-behaved server with faults injected; this one is the opposite:
# it speaks just enough SMTP to follow the client (commands, DATA mode with dot-unstuffing, AUTH
# continuation lines) and sends, for every command, exactly the bytes the test script says:
# surplus lines, nothing at all, replies that do not fit, a reply trickled one byte at a time,
# a hang or a hang-up. It records what it received, so a test can tell "the server received
# the body" from "the client never sent it".

SCRIPTED_VERBS = ('CONNECT', 'EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA', 'DOT', 'RSET', 'QUIT', 'AUTH',
                  'AUTH_DATA', 'NOOP', 'STARTTLS', 'VRFY')
"""Verbs a script can answer. ``CONNECT`` is the greeting, ``DOT`` the final ``.`` after the
data, ``AUTH_DATA`` a line the client sends after a ``334`` challenge; any other command line
arrives with its first word (upper-cased) as the verb."""

_SCRIPTED_POLL = 0.05  # every blocking socket operation wakes up this often to check for stop()
_SCRIPTED_WRITE_TIMEOUT = 1.0
_SCRIPTED_STOP_BUDGET = 1.0
_SCRIPTED_MAX_LINE = 1 << 20


def smtp_reply(code: int, *lines: str) -> bytes:
    """One reply as raw bytes: ``smtp_reply(250, 'a', 'b') == b'250-a\\r\\n250 b\\r\\n'``.

    Without ``lines`` a generic text is used. Any code (even 0 or 999) is allowed: this is
    for scripting misbehaving servers.
    """
    texts = list(lines) or [_scripted_text(code)]
    parts = [f'{code:03d}-{text}\r\n' for text in texts[:-1]]
    parts.append(f'{code:03d} {texts[-1]}\r\n')
    return ''.join(parts).encode('utf-8')


def ehlo_reply(*extensions: str, name: str = 'scripted.test') -> bytes:
    """The reply to EHLO offering ``extensions`` (e.g. ``'PIPELINING'``, ``'AUTH PLAIN LOGIN'``)."""
    return smtp_reply(250, name, *extensions)


def reply_code(data: bytes) -> Optional[int]:
    """The code of the first complete reply in ``data``; ``None`` if there is none or it is malformed.

    "Complete" means up to and including its final line (``ddd`` followed by a space or the end
    of the line); every line of a multi-line reply must carry the same code. Lines may end with
    CRLF or a bare LF (lenient, as many clients are); an unfinished last line does not count.
    """
    code: Optional[int] = None
    for line in _reply_lines(data):
        head = line[:3]
        if len(head) < 3 or not head.isdigit() or line[3:4] not in (b'', b' ', b'-'):
            return None
        if code is not None and int(head) != code:
            return None
        code = int(head)
        if line[3:4] != b'-':
            return code
    return None


def _reply_lines(data: bytes) -> List[bytes]:
    """The finished lines of ``data`` without their line ends."""
    pieces = data.split(b'\n')[:-1]  # the last piece is an unfinished line (or empty)
    return [piece[:-1] if piece.endswith(b'\r') else piece for piece in pieces]


def _final_reply_code(data: bytes) -> Optional[int]:
    """The code of the last final line in ``data`` (decides whether the server enters DATA mode)."""
    for line in reversed(_reply_lines(data)):
        head = line[:3]
        if len(head) == 3 and head.isdigit() and line[3:4] in (b'', b' '):
            return int(head)
    return None


def _scripted_text(code: int) -> str:
    if code == 354:
        return 'End data with <CR><LF>.<CR><LF>'
    if 200 <= code < 300:
        return '2.0.0 Ok'
    if 400 <= code < 500:
        return '4.0.0 Try again later (scripted)'
    if 500 <= code < 600:
        return '5.0.0 Refused (scripted)'
    return 'Scripted reply'


@dataclass(frozen=True)
class Trickle:
    """Send ``data`` one byte at a time, waiting ``interval`` seconds before each byte."""

    data: Union[int, str, bytes]
    interval: float = 1.0


@dataclass(frozen=True)
class Hang:
    """Send ``data`` (may be empty), then never reply again on this connection.

    The connection stays open (until the client closes it, it is idle for ``idle_timeout`` or
    the server stops); what the client sends is still read and recorded, and a ``354`` in
    ``data`` still switches to DATA mode, so ``Hang(b'354 go\\r\\n')`` to DATA receives the
    message and then never answers the final dot.
    """

    data: Union[int, str, bytes] = b''


@dataclass(frozen=True)
class Close:
    """Send ``data`` (may be empty), then close the connection."""

    data: Union[int, str, bytes] = b''


HANG = Hang()
CLOSE = Close()
SILENT = b''
"""Send nothing in reply to this command (a missing reply); the dialog goes on."""

ScriptAction = Union[None, int, str, bytes, Trickle, Hang, Close]
"""What to do for one command. ``None``: the script's next rule or the default reply;
an ``int``: that code with a generic text; ``str``/``bytes``: exactly these bytes (``str`` is
UTF-8 encoded, nothing is appended, so several lines, partial lines or ``b''`` are possible);
:class:`Trickle`, :class:`Hang`, :class:`Close`."""


@dataclass
class ConnectionState:
    """What one connection has seen so far; passed to a responder (which may keep its own data in ``user``)."""

    connection: int
    """0-based index of this connection since the server started (or was reset)."""
    occurrence: int = 0
    """0-based index of the current command among the commands with the same verb on this connection."""
    history: List[str] = field(default_factory=list)
    """Verbs received on this connection, the current one included (``CONNECT`` first)."""
    counts: Dict[str, int] = field(default_factory=dict)
    mail_from: Optional[str] = None
    rcpt_tos: List[str] = field(default_factory=list)
    accepted_rcpts: List[str] = field(default_factory=list)
    """Recipients of the current transaction whose RCPT the server answered with 2xx."""
    in_data: bool = False
    hung: bool = False
    expect_auth_data: bool = False
    auth_arg: str = ''
    """The argument of the last AUTH command (mechanism and initial response)."""
    auth_lines: int = 0
    """AUTH_DATA lines received since that AUTH command (the current one included)."""
    messages: int = 0
    """Messages whose data was received completely on this connection."""
    user: Dict[str, Any] = field(default_factory=dict)

    def count(self, verb: str) -> int:
        """How many commands with ``verb`` arrived on this connection (the current one included)."""
        return self.counts.get(verb.upper(), 0)


Responder = Callable[[str, str, ConnectionState], ScriptAction]
"""``responder(verb, arg, state) -> action``; returning ``None`` falls back to the script's rules."""


@dataclass
class Script:
    """How one connection behaves.

    For each command the server asks, in order: the ``responder`` (if any); ``replies[verb]``
    (a single action for every occurrence, or a list/tuple used one per occurrence on the
    connection, falling back to the default once exhausted); for ``CONNECT`` the ``greeting``;
    then the default reply (a well-behaved server offering ``extensions``).
    """

    replies: Mapping[str, Any] = field(default_factory=dict)
    greeting: ScriptAction = None
    extensions: Sequence[str] = ('PIPELINING', '8BITMIME', 'SMTPUTF8')
    responder: Optional[Responder] = None
    name: str = 'scripted.test'

    def __post_init__(self) -> None:
        # verbs are matched upper-case ('data' would otherwise be silently ignored)
        self.replies = {str(verb).upper(): rule for verb, rule in self.replies.items()}

    def default_action(self, verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        if verb == 'CONNECT':
            return smtp_reply(220, f'{self.name} ESMTP scripted')
        if verb == 'EHLO':
            return ehlo_reply(*self.extensions, name=self.name)
        if verb == 'HELO':
            return smtp_reply(250, self.name)
        if verb == 'MAIL':
            return smtp_reply(250, '2.1.0 Ok')
        if verb == 'RCPT':
            return smtp_reply(250, '2.1.5 Ok')
        if verb == 'DATA':
            return smtp_reply(354, 'End data with <CR><LF>.<CR><LF>')
        if verb == 'DOT':
            return smtp_reply(250, f'2.0.0 Ok: queued as S{state.connection}M{state.messages}')
        if verb in ('RSET', 'NOOP'):
            return smtp_reply(250, '2.0.0 Ok')
        if verb == 'QUIT':
            return Close(smtp_reply(221, '2.0.0 Bye'))
        if verb == 'STARTTLS':
            return smtp_reply(454, '4.7.0 TLS not available (scripted server)')
        if verb == 'VRFY':
            return smtp_reply(252, '2.0.0 Cannot VRFY user')
        if verb == 'AUTH':
            words = arg.split()
            mechanism = words[0].upper() if words else ''
            if mechanism == 'LOGIN':
                return smtp_reply(334, 'VXNlcm5hbWU6' if len(words) == 1 else 'UGFzc3dvcmQ6')
            if mechanism == 'PLAIN' and len(words) == 1:
                return b'334 \r\n'
            return smtp_reply(235, '2.7.0 Authentication successful')
        if verb == 'AUTH_DATA':
            words = state.auth_arg.split()
            if words and words[0].upper() == 'LOGIN' and len(words) == 1 and state.auth_lines == 1:
                return smtp_reply(334, 'UGFzc3dvcmQ6')  # got the user name, now the password
            return smtp_reply(235, '2.7.0 Authentication successful')
        return smtp_reply(500, '5.5.2 Error: command not recognized')

    def action_for(self, verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        if self.responder is not None:
            action = self.responder(verb, arg, state)
            if action is not None:
                return action
        if verb in self.replies:
            rule = self.replies[verb]
            if isinstance(rule, (list, tuple)):
                if state.occurrence < len(rule) and rule[state.occurrence] is not None:
                    return rule[state.occurrence]
            elif rule is not None:
                return rule
        if verb == 'CONNECT' and self.greeting is not None:
            return self.greeting
        return self.default_action(verb, arg, state)


def _action_bytes(value: Union[int, str, bytes]) -> bytes:
    if isinstance(value, bool):
        raise TypeError('a reply must be an int code, str or bytes, not a bool')
    if isinstance(value, int):
        return smtp_reply(value)
    if isinstance(value, str):
        return value.encode('utf-8')
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f'a reply must be an int code, str or bytes, not {value!r}')


def _envelope_path(arg: str) -> str:
    """``'FROM:<a@b> SIZE=1'`` -> ``'a@b'`` (the text between the first ``<`` and the next ``>``)."""
    start = arg.find('<')
    end = arg.find('>', start + 1)
    if start >= 0 and end > start:
        return arg[start + 1:end]
    _, _, rest = arg.partition(':')
    return rest.strip().split(' ')[0] if rest else arg.strip()


@dataclass
class ScriptedCommand:
    """One command line received (or the greeting, verb ``CONNECT``, or the final dot, verb ``DOT``)."""

    connection: int
    verb: str
    arg: str
    line: bytes
    """The raw line as received, CRLF included (empty for ``CONNECT``)."""
    reply: bytes = b''
    """The bytes the server wrote in reply (so far, for a trickled reply)."""


@dataclass
class ScriptedTransfer:
    """One DATA command and what followed it."""

    connection: int
    mail_from: Optional[str]
    rcpt_tos: List[str]
    """Every RCPT of the transaction, whatever the server answered."""
    accepted_rcpts: List[str]
    """The recipients whose RCPT the server answered with a 2xx reply."""
    data_reply: bytes
    """What the server sent in reply to DATA."""
    data_mode: bool
    """True if that reply ended with a 354 line, so the server read the data that followed."""
    data: bytes
    """The data received (dot-unstuffed, CRLFs as sent), up to but excluding the final dot."""
    complete: bool
    """True if the final dot arrived; False if the client never sent data or the connection ended mid-data."""
    dot_reply: bytes
    """What the server sent in reply to the final dot (``b''`` if nothing)."""

    @property
    def dot_code(self) -> Optional[int]:
        return reply_code(self.dot_reply)

    @property
    def confirmed(self) -> bool:
        """The server received the whole message and answered the final dot with 250."""
        return self.complete and self.dot_code == 250


class _Transfer:
    def __init__(self, connection: int, state: ConnectionState, data_command: ScriptedCommand) -> None:
        self.connection = connection
        self.mail_from = state.mail_from
        self.rcpt_tos = list(state.rcpt_tos)
        self.accepted_rcpts = list(state.accepted_rcpts)
        self.data_command = data_command
        self.data_mode = False
        self.data = bytearray()
        self.complete = False
        self.dot_command: Optional[ScriptedCommand] = None

    def snapshot(self) -> ScriptedTransfer:
        return ScriptedTransfer(
            connection=self.connection, mail_from=self.mail_from, rcpt_tos=list(self.rcpt_tos),
            accepted_rcpts=list(self.accepted_rcpts), data_reply=self.data_command.reply,
            data_mode=self.data_mode, data=bytes(self.data), complete=self.complete,
            dot_reply=self.dot_command.reply if self.dot_command is not None else b'',
        )


class _ScriptedConnection:
    def __init__(self, index: int, sock: socket.socket, script: Script) -> None:
        self.index = index
        self.sock = sock
        self.script = script
        self.state = ConnectionState(connection=index)
        self.buffer = bytearray()
        self.abort = threading.Event()
        self.transfer: Optional[_Transfer] = None
        self.thread: Optional[threading.Thread] = None


class _ConnectionEnded(Exception):
    pass


ScriptSpec = Union[None, Script, Sequence[Script], Responder]
"""A :class:`Script` for every connection, a list (connection ``i`` uses ``scripts[i]``, the
last one for all later connections) or a bare responder callable."""


class ScriptedSMTPServer:
    """A raw SMTP server on 127.0.0.1 that answers exactly as scripted; see :class:`Script`.

    ::

        script = Script(replies={'DATA': smtp_reply(250, 'Ok')}, extensions=['PIPELINING'])
        with ScriptedSMTPServer(script) as srv:
            result = SMTPMailer(srv.hostname, srv.port, tls='none', timeout=1).send(...)
            srv.wait_for_disconnect()
            assert srv.messages == []          # no complete data arrived
            assert srv.verbs() == ['CONNECT', 'EHLO', 'MAIL', 'RCPT', 'DATA', ...]

    Each connection is served by its own thread, reading lines one by one from a buffer (so
    pipelined commands are answered one by one, in order). Every socket operation has a
    timeout; :meth:`stop` closes everything within about a second. A connection with no
    input for ``idle_timeout`` seconds is closed.
    """

    def __init__(self, script: ScriptSpec = None, *, hostname: str = '127.0.0.1', port: int = 0,
                 idle_timeout: float = 10.0) -> None:
        self._hostname = hostname
        self._port = port
        self.idle_timeout = idle_timeout
        self._scripts = self._normalise(script)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._connections: List[_ScriptedConnection] = []
        self._commands: List[ScriptedCommand] = []
        self._transfers: List[_Transfer] = []
        self._connection_count = 0
        self.errors: List[str] = []
        """Unexpected exceptions in the server threads (a responder that raised, ...)."""

    @staticmethod
    def _normalise(script: ScriptSpec) -> List[Script]:
        if script is None:
            return [Script()]
        if isinstance(script, Script):
            return [script]
        if callable(script):
            return [Script(responder=script)]
        scripts = list(script)
        if not scripts or not all(isinstance(s, Script) for s in scripts):
            raise TypeError('script must be a Script, a non-empty sequence of Scripts or a responder callable')
        return scripts

    def __repr__(self) -> str:
        return f'<ScriptedSMTPServer {self._hostname}:{self._port} running={self.is_running}>'

    def __enter__(self) -> ScriptedSMTPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- life cycle --------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        if self._listener is not None:
            return
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._hostname, self._port))
            listener.listen(32)
            listener.settimeout(_SCRIPTED_POLL)
        except BaseException:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                  name=f'ScriptedSMTPServer-{self._port}', daemon=True)
        self._accept_thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop listening and close every connection (within about a second); idempotent."""
        listener, accept_thread = self._listener, self._accept_thread
        if listener is None:
            return
        self._listener = self._accept_thread = None
        self._stopping.set()
        deadline = time.monotonic() + _SCRIPTED_STOP_BUDGET
        if accept_thread is not None:
            accept_thread.join(max(0.0, deadline - time.monotonic()))
        listener.close()
        self.drop_connections(wait=max(0.0, deadline - time.monotonic()))

    def drop_connections(self, wait: float = 1.0) -> None:
        """Close every open connection (the server keeps listening); wait up to ``wait`` s for their threads."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.abort.set()
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        for conn in connections:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))

    def reset(self, script: ScriptSpec = None) -> None:
        """Drop open connections, forget everything recorded, restart connection numbering at 0.

        With ``script``, later connections follow that script instead.
        """
        self.drop_connections()
        with self._lock:
            if script is not None:
                self._scripts = self._normalise(script)
            self._commands.clear()
            self._transfers.clear()
            self._connection_count = 0
            self.errors.clear()

    def set_script(self, script: ScriptSpec) -> None:
        """Use ``script`` for connections accepted from now on."""
        scripts = self._normalise(script)
        with self._lock:
            self._scripts = scripts

    def wait_for_disconnect(self, timeout: float = 2.0) -> bool:
        """Wait until no connection is open (the client hung up); False if one is still open after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._connections, timeout)

    # ----- connection details ------------------------------------------------

    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def port(self) -> int:
        """The listening port (0 before the first :meth:`start` when none was given)."""
        return self._port

    def settings_for_client(self) -> Dict[str, str]:
        return {'smtp_hostname': self._hostname, 'smtp_port': str(self._port), 'smtp_tls': 'none'}

    # ----- observations ------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections accepted since the start (or the last :meth:`reset`)."""
        with self._lock:
            return self._connection_count

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def commands(self) -> List[ScriptedCommand]:
        """Every command received (``CONNECT`` for each greeting, ``DOT`` for each final dot), in order."""
        with self._lock:
            return [dataclasses.replace(command) for command in self._commands]

    def verbs(self, connection: Optional[int] = None) -> List[str]:
        """The verbs of :attr:`commands` (of one connection if given)."""
        return [c.verb for c in self.commands if connection is None or c.connection == connection]

    @property
    def transfers(self) -> List[ScriptedTransfer]:
        """One entry per DATA command received, whatever the server answered."""
        with self._lock:
            return [transfer.snapshot() for transfer in self._transfers]

    @property
    def messages(self) -> List[ScriptedTransfer]:
        """The transfers whose data arrived completely (final dot received), whatever the reply to the dot."""
        return [transfer for transfer in self.transfers if transfer.complete]

    @property
    def confirmed(self) -> List[ScriptedTransfer]:
        """The messages the server received and answered with 250 to the final dot."""
        return [transfer for transfer in self.transfers if transfer.confirmed]

    # ----- server threads ----------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(_SCRIPTED_POLL)
                continue
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                index = self._connection_count
                self._connection_count += 1
                scripts = self._scripts
                conn = _ScriptedConnection(index, sock, scripts[min(index, len(scripts) - 1)])
                self._connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,),
                                      name=f'ScriptedSMTPServer-{self._port}-conn{index}', daemon=True)
            conn.thread = thread
            thread.start()

    def _serve(self, conn: _ScriptedConnection) -> None:
        try:
            conn.sock.settimeout(_SCRIPTED_POLL)
            if self._command(conn, 'CONNECT', '', b''):
                while True:
                    line = self._read_line(conn)
                    if line is None or not self._handle_line(conn, line):
                        break
        except (_ConnectionEnded, OSError):
            pass
        except Exception as exc:  # a responder that raised: visible to the test, never a hang
            log.exception('ScriptedSMTPServer: connection %d failed', conn.index)
            with self._lock:
                self.errors.append(f'connection {conn.index}: {type(exc).__name__}: {exc}')
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            with self._idle:
                if conn in self._connections:
                    self._connections.remove(conn)
                self._idle.notify_all()

    def _read_line(self, conn: _ScriptedConnection) -> Optional[bytes]:
        buffer = conn.buffer
        idle_deadline = time.monotonic() + self.idle_timeout
        while True:
            end = buffer.find(b'\n')
            if end >= 0:
                line = bytes(buffer[:end + 1])
                del buffer[:end + 1]
                return line
            if len(buffer) > _SCRIPTED_MAX_LINE:
                line = bytes(buffer)
                buffer.clear()
                return line
            if conn.abort.is_set() or self._stopping.is_set():
                return None
            try:
                chunk = conn.sock.recv(65536)
            except socket.timeout:
                if time.monotonic() > idle_deadline:
                    return None
                continue
            except OSError:
                return None
            if not chunk:
                # EOF: a partial line left over is part of the data (mid-DATA hang-up) or dropped
                if buffer and conn.state.in_data and conn.transfer is not None:
                    with self._lock:
                        conn.transfer.data += buffer
                buffer.clear()
                return None
            buffer += chunk
            idle_deadline = time.monotonic() + self.idle_timeout

    def _handle_line(self, conn: _ScriptedConnection, line: bytes) -> bool:
        state = conn.state
        if state.in_data:
            transfer = conn.transfer
            assert transfer is not None
            if line == b'.\r\n':
                state.in_data = False
                with self._lock:
                    transfer.complete = True
                state.messages += 1
                return self._command(conn, 'DOT', '', line)
            with self._lock:
                transfer.data += line[1:] if line.startswith(b'.') else line
            return True
        text = line.rstrip(b'\r\n').decode('utf-8', 'replace')
        if state.expect_auth_data:
            return self._command(conn, 'AUTH_DATA', text, line)
        verb, _, arg = text.partition(' ')
        return self._command(conn, verb.upper(), arg.rstrip(), line)

    def _command(self, conn: _ScriptedConnection, verb: str, arg: str, line: bytes) -> bool:
        """Record one command, reply as scripted; False when the connection is to be closed."""
        state = conn.state
        state.occurrence = state.counts.get(verb, 0)
        state.counts[verb] = state.occurrence + 1
        state.history.append(verb)
        record = ScriptedCommand(conn.index, verb, arg, line)
        transfer: Optional[_Transfer] = None
        with self._lock:
            self._commands.append(record)
            if verb == 'DATA':
                transfer = _Transfer(conn.index, state, record)
                self._transfers.append(transfer)
            elif verb == 'DOT' and conn.transfer is not None:
                conn.transfer.dot_command = record
        if verb == 'MAIL':
            state.mail_from = _envelope_path(arg)
            state.rcpt_tos, state.accepted_rcpts = [], []
        elif verb == 'RCPT':
            state.rcpt_tos.append(_envelope_path(arg))
        elif verb in ('RSET', 'EHLO', 'HELO', 'DOT'):
            state.mail_from, state.rcpt_tos, state.accepted_rcpts = None, [], []
        elif verb == 'AUTH':
            state.auth_arg, state.auth_lines = arg, 0
        elif verb == 'AUTH_DATA':
            state.auth_lines += 1
        if verb != 'AUTH_DATA':
            state.expect_auth_data = False
        if state.hung:
            return True
        action = conn.script.action_for(verb, arg, state)
        keep_open = self._perform(conn, action, record)
        sent = record.reply
        if verb == 'RCPT':
            code = reply_code(sent)
            if code is not None and 200 <= code < 300:
                state.accepted_rcpts.append(_envelope_path(arg))
        elif verb == 'DATA' and transfer is not None:
            conn.transfer = transfer
            if _final_reply_code(sent) == 354:
                with self._lock:
                    transfer.data_mode = True
                state.in_data = True
        elif verb in ('AUTH', 'AUTH_DATA'):
            state.expect_auth_data = _final_reply_code(sent) == 334
        return keep_open

    def _perform(self, conn: _ScriptedConnection, action: ScriptAction, record: ScriptedCommand) -> bool:
        if action is None:  # pragma: no cover - action_for always ends with a default
            return True
        if isinstance(action, Trickle):
            data = _action_bytes(action.data)
            for index in range(len(data)):
                if conn.abort.wait(action.interval) or self._stopping.is_set():
                    raise _ConnectionEnded()
                self._write(conn, record, data[index:index + 1])
            return True
        if isinstance(action, Hang):
            self._write(conn, record, _action_bytes(action.data))
            conn.state.hung = True
            return True
        if isinstance(action, Close):
            self._write(conn, record, _action_bytes(action.data))
            return False
        self._write(conn, record, _action_bytes(action))
        return True

    def _write(self, conn: _ScriptedConnection, record: ScriptedCommand, data: bytes) -> None:
        if not data:
            return
        # recorded before it is written: once the client has read it, the record is there
        with self._lock:
            record.reply += data
        conn.sock.settimeout(_SCRIPTED_WRITE_TIMEOUT)
        try:
            conn.sock.sendall(data)
        finally:
            conn.sock.settimeout(_SCRIPTED_POLL)


# =============================================================================================
# OAuth2TestEndpoint: an RFC 6749 token endpoint on 127.0.0.1 (stdlib only)
# =============================================================================================


class OAuth2TestEndpoint:
    """A token endpoint for tests: client-credentials and refresh-token grants, with faults.

    Each token it issues is a fresh random string, and is made valid on the linked
    ``SMTPTestServer`` for ``username`` (so the server accepts exactly the tokens the
    endpoint handed out). Faults: :meth:`fail_with` (an HTTP status, optionally with an
    OAuth ``error`` such as ``invalid_grant``), :attr:`delay` (a slow endpoint), and
    ``rotate_refresh_tokens`` (every refresh answer carries a new refresh token and
    the old one stops working, as Microsoft's and some other endpoints do).

    ``requests`` records the form fields of every request; it holds the secrets, so
    only tests look at it.
    """

    def __init__(
        self,
        smtp_server: Optional[SMTPTestServer] = None,
        username: str = 'user@example.com',
        *,
        client_id: str = 'test-client',
        client_secret: Optional[str] = 'test-client-secret',
        refresh_token: Optional[str] = None,
        rotate_refresh_tokens: bool = False,
        expires_in: Optional[int] = 3600,
        scope: Optional[str] = None,
    ) -> None:
        self.smtp_server = smtp_server
        self.username = username
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.expires_in = expires_in
        self.scope = scope
        self.delay = 0.0
        self.issued: List[str] = []
        self.requests: List[Dict[str, str]] = []
        self._failure: Optional[Tuple[int, Optional[str], Optional[int]]] = None
        self._lock = threading.Lock()
        self._httpd: Any = None
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f'<OAuth2TestEndpoint {self.url if self._httpd else "stopped"}>'

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError('OAuth2TestEndpoint is not running')
        return f'http://127.0.0.1:{self._httpd.server_address[1]}/token'

    def fail_with(self, status: int, error: Optional[str] = None, *, times: Optional[int] = None) -> None:
        """Answer the next ``times`` requests (all, with None) with ``status`` (and an OAuth ``error``)."""
        with self._lock:
            self._failure = (status, error, times)

    def clear_failure(self) -> None:
        with self._lock:
            self._failure = None

    @property
    def token_count(self) -> int:
        with self._lock:
            return len(self.issued)

    def start(self) -> None:
        import http.server

        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length).decode('utf-8', 'replace')
                status, answer = endpoint._answer(body)
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header('Content-Type', 'application/json')
                    self.send_header('Content-Length', str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting (a "slow endpoint" test)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self._httpd = Server(('127.0.0.1', 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='OAuth2TestEndpoint', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OAuth2TestEndpoint:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _answer(self, body: str) -> Tuple[int, Dict[str, Any]]:
        from urllib.parse import parse_qsl

        fields = dict(parse_qsl(body, keep_blank_values=True))
        with self._lock:
            self.requests.append(fields)
            if self._failure is not None:
                status, error, times = self._failure
                if times is not None:
                    times -= 1
                    self._failure = (status, error, times) if times > 0 else None
                return status, ({'error': error, 'error_description': f'test endpoint says {error}'}
                                if error else {})
            if fields.get('client_id') != self.client_id:
                return 401, {'error': 'invalid_client'}
            grant = fields.get('grant_type')
            if grant == 'client_credentials':
                if self.client_secret is None or fields.get('client_secret') != self.client_secret:
                    return 401, {'error': 'invalid_client', 'error_description': 'bad client secret'}
            elif grant == 'refresh_token':
                if self.client_secret is not None and fields.get('client_secret') != self.client_secret:
                    return 401, {'error': 'invalid_client'}
                if self.refresh_token is None or fields.get('refresh_token') != self.refresh_token:
                    return 400, {'error': 'invalid_grant', 'error_description': 'Token has been expired or revoked.'}
            else:
                return 400, {'error': 'unsupported_grant_type'}
            token = 'tok-' + os.urandom(12).hex()
            self.issued.append(token)
            answer: Dict[str, Any] = {'access_token': token, 'token_type': 'Bearer'}
            if self.expires_in is not None:
                answer['expires_in'] = self.expires_in
            if self.scope:
                answer['scope'] = self.scope
            if grant == 'refresh_token' and self.rotate_refresh_tokens:
                self.refresh_token = 'refresh-' + os.urandom(12).hex()
                answer['refresh_token'] = self.refresh_token
        if self.smtp_server is not None:
            self.smtp_server.add_oauth_token(self.username, token)
        return 200, answer
