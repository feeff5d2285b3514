"""The SMTP line protocol over one socket: write commands, read (multi-line) replies.

Deliberately small and free of ``smtplib``: that module drags in ``email``,
``hmac`` and ``ssl`` at import time, a third of ``mq-sendmail``'s start-up.
``ssl`` is imported here only when TLS is actually used. Every line written or
read can be logged; a caller marks secrets so they are logged as ``***``.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ['ConnectionClosed', 'ProtocolError', 'SMTPWire']

_MAX_LINE = 8192
_MAX_REPLY_LINES = 1000


class ConnectionClosed(OSError):
    """The server closed the connection (EOF where a reply was expected)."""


class ProtocolError(OSError):
    """The server sent something that is not an SMTP reply; the connection is unusable."""


class SMTPWire:
    """One connected socket speaking SMTP. Not thread-safe."""

    def __init__(self, sock: socket.socket, peer: str, log: logging.Logger) -> None:
        self.sock = sock
        self.peer = peer
        self.log = log
        self._reader = sock.makefile('rb')
        self.features: Dict[str, str] = {}

    @classmethod
    def connect(cls, hostname: str, port: int, timeout: float, log: logging.Logger,
                ssl_context: Optional[ssl.SSLContext] = None) -> SMTPWire:
        sock = socket.create_connection((hostname, port), timeout=timeout)
        try:
            # Each logical unit (a command batch, a whole message) goes out in one sendall.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=hostname)
        except BaseException:
            sock.close()
            raise
        return cls(sock, f'{hostname}:{port}', log)

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
                    self.log.debug('%s > %s', self.peer, line)
        view = memoryview(data)
        for start in range(0, len(view), 1 << 16):
            self.sock.sendall(view[start:start + (1 << 16)])  # timeout per chunk = inactivity timeout

    # --- reading ----------------------------------------------------------------------------

    def read_reply(self) -> Tuple[int, str]:
        """One reply; multi-line replies are joined with newlines (without their codes)."""
        lines: List[str] = []
        code = 0
        while True:
            raw = self._reader.readline(_MAX_LINE + 1)
            if not raw:
                raise ConnectionClosed(f'{self.peer} closed the connection')
            if len(raw) > _MAX_LINE or len(lines) >= _MAX_REPLY_LINES:
                raise ProtocolError(f'{self.peer} sent an overlong reply')
            line = raw.rstrip(b'\r\n')
            head = line[:3]
            if len(head) < 3 or not head.isdigit() or (len(line) > 3 and line[3:4] not in (b' ', b'-')):
                raise ProtocolError(f'{self.peer} sent a malformed reply: {line[:60]!r}')
            this_code = int(head)
            if lines and this_code != code:
                raise ProtocolError(f'{self.peer} changed the reply code inside a multi-line reply')
            code = this_code
            lines.append(line[4:].decode('utf-8', 'replace'))
            if line[3:4] != b'-':
                break
        text = '\n'.join(lines)
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug('%s < %s %s', self.peer, code, text.replace('\n', ' | '))
        return code, text

    def command(self, line: str, *, encoding: str = 'ascii', secret: bool = False,
                summary: Optional[str] = None) -> Tuple[int, str]:
        self.send(line.encode(encoding) + b'\r\n', secret=secret, summary=summary)
        return self.read_reply()

    # --- session helpers --------------------------------------------------------------------

    def ehlo(self, local_hostname: str) -> Tuple[int, str]:
        """EHLO, remembering the offered extensions (lower-case keyword -> parameters)."""
        code, text = self.command(f'EHLO {local_hostname}')
        self.features = {}
        if 200 <= code < 300:
            for entry in text.split('\n')[1:]:
                keyword, _, params = entry.strip().partition(' ')
                if keyword:
                    self.features[keyword.lower()] = params
        return code, text

    def has(self, extension: str) -> bool:
        return extension.lower() in self.features

    def start_tls(self, context: ssl.SSLContext, hostname: str) -> None:
        """Wrap the socket after a 220 to STARTTLS; everything learned before is forgotten."""
        self._reader.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self._reader = self.sock.makefile('rb')
        self.features = {}

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self.sock.close()
