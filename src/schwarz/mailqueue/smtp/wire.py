"""The SMTP line protocol over one socket: write commands, read (multi-line) replies.

Deliberately small and free of ``smtplib``: that module drags in ``email``,
``hmac`` and ``ssl`` at import time, a third of ``mq-sendmail``'s start-up.
``ssl`` is imported here only when TLS is actually used.

Three things this layer guarantees to the client above it:

- *Bounded time.* Every read and write is limited by the inactivity timeout
  and by an optional overall deadline (``set_deadline``), so a server that
  trickles one byte per second cannot hold us beyond the deadline.
- *No hidden input.* Replies are read from our own buffer, so ``pending()``
  can tell whether the server sent something nobody asked for (a surplus
  reply line would otherwise be taken as the answer to the next command).
- *No secrets out.* Secrets registered with ``add_secret`` are replaced by
  ``***`` in every reply before it is logged or returned, whatever the server
  echoes; commands carrying them are logged as summaries.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Union

from ..result import Reply

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    # For the type checker only: a quoted name in a run-time alias is compiled on every import.
    ContextChooser = Callable[[bool], ssl.SSLContext]

__all__ = ['ConnectionClosed', 'DeadlineExceeded', 'ProtocolError', 'SMTPWire', 'connect_any', 'is_loopback_address']

_MAX_LINE = 8192
_MAX_REPLY_LINES = 1000
_CHUNK = 1 << 16
_IPV4_MAPPED = b'\0' * 10 + b'\xff\xff'
_IPV6_LOOPBACK = b'\0' * 15 + b'\1'


class ConnectionClosed(OSError):
    """The server closed the connection (EOF where a reply was expected)."""


class ProtocolError(OSError):
    """The server sent something that is not the reply we wait for; the connection is unusable."""


class DeadlineExceeded(socket.timeout):
    """The overall deadline of the current exchange passed (the server was too slow in total)."""


def is_loopback_address(address: str) -> bool:
    """True for a literal loopback IP (``127.0.0.0/8``, ``::1``, IPv4-mapped loopback); never for a name.

    ``inet_pton`` rather than ``ipaddress``, whose import costs every mq-sendmail call about a
    millisecond: this runs for each connection. Both refuse the same spellings (``127.1``, leading zeros).
    """
    text = address.split('%', 1)[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):  # not this family; NUL or non-ASCII text
            continue
        if packed[:12] == _IPV4_MAPPED:
            packed = packed[12:]
        return packed[0] == 127 if len(packed) == 4 else packed == _IPV6_LOOPBACK
    return False


class AllAddressesFailed(OSError):
    """No address of a host name accepted the connection; ``str()`` names each address and why."""


def _describe(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return 'timed out'
    return exc.strerror or str(exc) or type(exc).__name__


def resolve(hostname: str, port: int) -> List[tuple]:
    """Every address of ``hostname``: IPv6 first, then IPv4, each in the resolver's order (SPEC §12)."""
    infos = socket.getaddrinfo(hostname.strip('[]'), port, 0, socket.SOCK_STREAM)
    return ([i for i in infos if i[0] == socket.AF_INET6]
            + [i for i in infos if i[0] != socket.AF_INET6])


def connect_any(hostname: str, port: int, timeout: float, log: logging.Logger) -> socket.socket:
    """A TCP connection to the first address of ``hostname`` that accepts one.

    Every address is tried (each within ``timeout``) before the host counts as down, so a
    name with a dead IPv6 and a working IPv4 address (or the reverse) still works.
    ``socket.create_connection`` loops the same way; ours tries IPv6 first whatever the
    resolver's order, logs each failed address and names them all in the error.
    """
    failures: List[str] = []
    for family, kind, proto, _, address in resolve(hostname, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            shown = f'[{address[0]}]:{address[1]}' if family == socket.AF_INET6 else f'{address[0]}:{address[1]}'
            failures.append(f'{shown} {_describe(exc)}')
            log.debug('%s:%s: %s: %s', hostname, port, shown, _describe(exc))
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(failures) == 1:
        raise AllAddressesFailed(failures[0].split(' ', 1)[1])
    raise AllAddressesFailed('; '.join(failures) or 'no address')


class SMTPWire:
    """One connected socket speaking SMTP. Not thread-safe, except ``abort()``."""

    def __init__(self, sock: socket.socket, peer: str, log: logging.Logger, timeout: Optional[float] = None) -> None:
        self.sock = sock
        self.peer = peer
        self.log = log
        self.timeout = timeout if timeout is not None else (sock.gettimeout() or 60.0)
        self.features: Dict[str, str] = {}
        self.deadline: Optional[float] = None
        self._buffer = bytearray()
        # settimeout() and poll objects cost a system call each: only when something changes
        self._sock_timeout: Optional[float] = None
        self._poller: Optional[select.poll] = None
        self._secrets: List[str] = []
        try:
            self.peer_is_loopback = is_loopback_address(sock.getpeername()[0])
        except (OSError, IndexError, TypeError):
            self.peer_is_loopback = False

    @classmethod
    def connect(cls, hostname: str, port: int, timeout: float, log: logging.Logger,
                ssl_context: Union[ssl.SSLContext, ContextChooser, None] = None) -> SMTPWire:
        """Connect (every address of ``hostname`` in turn, see ``connect_any``) and optionally start implicit TLS.

        ``ssl_context`` may be a callable that gets "is the connected peer a loopback
        address?" and returns the context: certificate checks are decided by the
        address we really reached, never by how the host name looks.
        """
        sock = connect_any(hostname, port, timeout, log)
        try:
            # Each logical unit (a command batch, a whole message) goes out in one sendall.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wire = cls(sock, f'{hostname}:{port}', log, timeout)
            if ssl_context is not None:
                context = ssl_context(wire.peer_is_loopback) if callable(ssl_context) else ssl_context
                wire.sock = context.wrap_socket(sock, server_hostname=hostname)
        except BaseException:
            sock.close()
            raise
        return wire

    # --- secrets and deadlines --------------------------------------------------------------

    def add_secret(self, secret: str) -> None:
        """Never log or return ``secret`` as part of a reply (longest first, so no fragments remain)."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, '***')
        return text

    def set_deadline(self, seconds: Optional[float]) -> None:
        """Bound the total time of the exchanges from now on (``None``: only the inactivity timeout)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def _io_timeout(self) -> float:
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f'{self.peer} did not finish in time')
        return min(self.timeout, remaining)

    def _set_timeout(self, value: Optional[float]) -> None:
        if value != self._sock_timeout:
            self.sock.settimeout(value)
            self._sock_timeout = value

    # --- writing ----------------------------------------------------------------------------

    def send(self, data: bytes, *, secret: bool = False, summary: Optional[str] = None) -> None:
        """Write raw bytes. ``secret``: log as ``***``; ``summary``: log this instead of the data."""
        if self.log.isEnabledFor(logging.DEBUG):
            if summary is not None:
                self.log.debug('%s > %s', self.peer, summary)
            elif secret:
                self.log.debug('%s > ***', self.peer)
            else:
                for line in data.decode('utf-8', 'replace').rstrip('\r\n').split('\r\n'):
                    self.log.debug('%s > %s', self.peer, self.scrub(line))
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            # sendall's timeout covers the whole chunk; both limits apply per chunk
            self._set_timeout(self._io_timeout())
            self.sock.sendall(view[start:start + _CHUNK])

    # --- reading ----------------------------------------------------------------------------

    def _fill(self) -> None:
        self._set_timeout(self._io_timeout())
        chunk = self.sock.recv(_CHUNK)
        if not chunk:
            raise ConnectionClosed(f'{self.peer} closed the connection')
        self._buffer += chunk

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b'\n')
            if end >= 0:
                if end > _MAX_LINE:
                    raise ProtocolError(f'{self.peer} sent an overlong reply')
                line = bytes(self._buffer[:end + 1])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > _MAX_LINE:
                raise ProtocolError(f'{self.peer} sent an overlong reply')
            self._fill()

    def pending(self) -> bool:
        """Did the server send anything we have not read yet? Never blocks.

        Raises ``ConnectionClosed`` when the server has closed the connection, so a
        caller can tell "it went away" from "it is out of step".
        """
        if self._buffer:
            return True
        pending_tls = getattr(self.sock, 'pending', None)
        if not (pending_tls is not None and pending_tls()):
            try:
                # poll, not select: select() fails for descriptors above 1023 (busy runners)
                if self._poller is None:
                    self._poller = select.poll()
                    self._poller.register(self.sock, select.POLLIN | select.POLLPRI)
                if not self._poller.poll(0):
                    return False
            except (OSError, ValueError):
                return True  # a socket we cannot look at is not one to trust with more commands
        try:
            self._set_timeout(0.0)
            chunk = self.sock.recv(_CHUNK)
        except OSError as exc:
            if isinstance(exc, BlockingIOError) or type(exc).__name__ == 'SSLWantReadError':
                return False  # readable, but not a whole TLS record yet: nothing to read
            raise
        if not chunk:
            raise ConnectionClosed(f'{self.peer} closed the connection')
        self._buffer += chunk
        return True

    def read_reply(self) -> Reply:
        """One reply; multi-line replies are joined with newlines (without their codes)."""
        lines: List[str] = []
        code = 0
        while True:
            raw = self._read_line()
            if len(lines) >= _MAX_REPLY_LINES:
                raise ProtocolError(f'{self.peer} sent an overlong reply')
            line = raw.rstrip(b'\r\n')
            head = line[:3]
            if len(head) < 3 or not head.isdigit() or (len(line) > 3 and line[3:4] not in (b' ', b'-')):
                shown = self.scrub(line.decode('utf-8', 'replace'))[:60]
                raise ProtocolError(f'{self.peer} sent a malformed reply: {shown!r}')
            this_code = int(head)
            if this_code < 100:
                raise ProtocolError(f'{self.peer} sent reply code {head.decode()}')
            if lines and this_code != code:
                raise ProtocolError(f'{self.peer} changed the reply code inside a multi-line reply')
            code = this_code
            lines.append(line[4:].decode('utf-8', 'replace'))
            if line[3:4] != b'-':
                break
        text = self.scrub('\n'.join(lines))
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug('%s < %s %s', self.peer, code, text.replace('\n', ' | '))
        return Reply(code, text)

    def command(self, line: str, *, encoding: str = 'ascii', secret: bool = False,
                summary: Optional[str] = None) -> Reply:
        self.send(line.encode(encoding) + b'\r\n', secret=secret, summary=summary)
        return self.read_reply()

    # --- session helpers --------------------------------------------------------------------

    def ehlo(self, local_hostname: str) -> Reply:
        """EHLO, remembering the offered extensions (lower-case keyword -> parameters)."""
        reply = self.command(f'EHLO {local_hostname}')
        self.features = {}
        if 200 <= reply.code < 300:
            for entry in reply.message.split('\n')[1:]:
                keyword, _, params = entry.strip().partition(' ')
                keyword = keyword.lower()
                if keyword.startswith('auth='):
                    # the pre-RFC 2554 form some servers still send (AUTH=LOGIN PLAIN): the same offer
                    params = ' '.join(filter(None, (self.features.get('auth', ''), keyword[5:], params)))
                    keyword = 'auth'
                elif keyword == 'auth' and 'auth' in self.features:
                    params = ' '.join(filter(None, (self.features['auth'], params)))
                if keyword:
                    self.features[keyword] = params
        return reply

    def has(self, extension: str) -> bool:
        return extension.lower() in self.features

    def start_tls(self, context: ssl.SSLContext, hostname: str) -> None:
        """Wrap the socket after a 220 to STARTTLS; everything learned before is forgotten."""
        if self.pending():
            # Bytes sent before the handshake would be read as if they came over TLS (CVE-2011-0411).
            raise ProtocolError(f'{self.peer} sent data after its reply to STARTTLS')
        self.sock.settimeout(self._io_timeout())
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self._sock_timeout = None  # a new socket object: set its timeout (and poll it) afresh
        self._poller = None
        self.features = {}

    def abort(self) -> None:
        """Break off from another thread: blocked reads and writes return at once with an error."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
