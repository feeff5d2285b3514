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

This module needs the test dependencies (aiosmtpd, and cryptography for TLS);
the rest of the package never imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import email
import email.message
import email.policy
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
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
    'FaultHook',
    'FaultResult',
    'ReceivedMessage',
    'ReplySpec',
    'SMTPTestServer',
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
            if not self._owner._auth:
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
        :param replies: command -> reply, as for :meth:`set_reply`.
        :param recipient_replies: address -> reply, as for :meth:`set_recipient_reply`.
        :param delays: command -> seconds, as for :meth:`set_delay`.
        :param drop_on: commands upon which the connection is dropped, see :meth:`drop_connection_on`.
        :param server_name: the name the server uses in its greeting and EHLO reply.
        :param pipelining: advertise PIPELINING (RFC 2920), as real MTAs do.
        """
        if tls is not None and tls not in _TLS_MODES:
            raise ValueError(f'tls must be None, "implicit" or "starttls", not {tls!r}')
        if auth_required and not auth:
            raise ValueError('auth_required needs auth={username: password}')
        self._hostname = hostname
        self._port = port
        self._tls = tls
        self._auth: Dict[str, str] = dict(auth or {})
        self._auth_required = auth_required
        self._server_name = server_name
        self._data_size_limit = data_size_limit
        self._pipelining = pipelining

        self._lock = threading.RLock()
        self._messages_changed = threading.Condition(self._lock)
        self._received: List[ReceivedMessage] = []
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
            auth_exclude_mechanism=None if self._auth else ['LOGIN', 'PLAIN'],
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
            self._commands.clear()
            self._auth_logins.clear()
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


def smtp_server_fixture(**options: Any) -> Iterator[SMTPTestServer]:
    """Generator for a pytest fixture: ``smtp_server = pytest.fixture(smtp_server_fixture)``.

    ``options`` are passed to :class:`SMTPTestServer` (pytest itself passes none).
    """
    with SMTPTestServer(**options) as server:
        yield server
