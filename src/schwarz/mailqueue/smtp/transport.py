"""``SMTPMailer``: the SMTP transport. Keeps one connection open across messages.

A connection that the server closed while idle is replaced transparently:
if it fails before MAIL FROM was answered nothing was transmitted, so the
transaction is retried once on a fresh connection. Once the server has seen
a recipient, no automatic retry happens here: the queue decides.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from ..result import Reply, SendResult
from .client import SMTPConnection, TLSMode, build_ssl_context
from .errors import ConnectError, SMTPError

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ['SMTPMailer']


class SMTPMailer:
    """SMTP transport; ``send()`` returns a per-recipient ``SendResult`` and never raises for SMTP trouble.

    ``tls_verify=None`` verifies certificates for every peer except one whose address
    (after resolution, as connected) is loopback.
    Thread-safe: concurrent ``send()`` calls are serialised on the one connection
    (use ``clone()`` for one mailer per worker thread to deliver in parallel).
    """

    transport_name = 'smtp'

    def __init__(
        self,
        hostname: str = 'localhost',
        port: int = 25,
        tls: Any = None,
        tls_verify: Optional[bool] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10,
        smtp_log: Optional[logging.Logger] = None,
        *,
        cafile: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        local_hostname: Optional[str] = None,
        max_idle: float = 60.0,
        max_messages_per_connection: int = 1000,
    ) -> None:
        self.hostname = hostname
        self.port = int(port)
        self.tls = TLSMode.parse(tls, self.port)
        self.tls_verify = tls_verify
        self.username = username or None
        self._password = password
        self.timeout = float(timeout)
        self.smtp_log = smtp_log or logging.getLogger('mailqueue.smtp')
        self.cafile = cafile
        self.local_hostname = local_hostname
        self.max_idle = max_idle
        self.max_messages_per_connection = max_messages_per_connection
        self._ssl_context = ssl_context
        self._contexts: Dict[bool, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._conn: Optional[SMTPConnection] = None
        self._last_used = 0.0
        self._aborted = False
        self.connections_opened = 0

    def __repr__(self) -> str:
        # The password stays out of reprs, tracebacks and logs.
        return f'SMTPMailer({self.hostname!r}, {self.port}, tls={self.tls.value!r}, username={self.username!r})'

    @property
    def host(self) -> str:
        return f'{self.hostname}:{self.port}'

    def context_for(self, peer_is_loopback: bool) -> ssl.SSLContext:
        """The SSL context for a connected peer; built once per verification setting and shared by clones."""
        if self._ssl_context is not None:
            return self._ssl_context
        verify = self.tls_verify if self.tls_verify is not None else not peer_is_loopback
        context = self._contexts.get(verify)
        if context is None:
            context = self._contexts[verify] = build_ssl_context(verify, self.cafile)
        return context

    def clone(self) -> SMTPMailer:
        """A mailer with the same settings and SSL context but its own connection."""
        twin = SMTPMailer(
            self.hostname, self.port, tls=self.tls, tls_verify=self.tls_verify, username=self.username,
            password=self._password, timeout=self.timeout, smtp_log=self.smtp_log, cafile=self.cafile,
            ssl_context=self._ssl_context, local_hostname=self.local_hostname, max_idle=self.max_idle,
            max_messages_per_connection=self.max_messages_per_connection,
        )
        twin._contexts = self._contexts  # loading the CA store once is enough
        return twin

    def _new_connection(self) -> SMTPConnection:
        conn = SMTPConnection(
            self.hostname, self.port, tls=self.tls, ssl_context=self.context_for, username=self.username,
            password=self._password, timeout=self.timeout, local_hostname=self.local_hostname,
            dialog_log=self.smtp_log,
        )
        conn.open()
        self.connections_opened += 1
        return conn

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        to_addrs = list(to_addrs)
        with self._lock:
            return self._send_locked(from_addr, to_addrs, msg_bytes)

    def _send_locked(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        if self._aborted:
            return _failed_result(self.host, to_addrs, ConnectError('shutting down; not connecting again'))
        conn = self._conn
        if conn is not None and (
            time.monotonic() - self._last_used > self.max_idle
            or conn.transactions >= self.max_messages_per_connection
        ):
            conn.close()
            conn = self._conn = None
        for attempt in (1, 2):
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._conn = self._new_connection()
                result = conn.send(from_addr, to_addrs, msg_bytes)
            except SMTPError as exc:
                self._conn = conn = None
                if reused and attempt == 1 and not self._aborted:
                    continue
                return _failed_result(self.host, to_addrs, exc)
            self._last_used = time.monotonic()
            if not conn.is_open:
                self._conn = None
            return result
        raise AssertionError('unreachable')  # pragma: no cover

    def abort(self) -> None:
        """From another thread, at shutdown: break off the exchange in progress and open no new one.

        The interrupted message is reported as temporarily failed (so it stays queued); whether the
        server already had it is the same question as for any connection lost after the data.
        """
        self._aborted = True
        conn = self._conn
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SMTPMailer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _failed_result(host: str, to_addrs: Sequence[str], exc: SMTPError) -> SendResult:
    reply = exc.reply if exc.reply is not None else Reply(451, str(exc))
    result = SendResult(transport='smtp', queued=False, host=host, smtp_response=reply, error=str(exc),
                        connection_failed=True)
    bucket = result.deferred if exc.temporary else result.refused
    bucket.update({addr: (reply.code, str(exc)) for addr in to_addrs})
    return result
