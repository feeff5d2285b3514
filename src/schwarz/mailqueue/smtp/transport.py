"""``SMTPMailer``: the SMTP transport. Keeps one connection open across messages.

A connection that the server closed while idle is replaced transparently:
if it fails before MAIL FROM was answered nothing was transmitted, so the
transaction is retried once on a fresh connection. Once the server has seen
a recipient, no automatic retry happens here: the queue decides.

Several smarthosts (``smtp_hostname = a:587, b:587``): a connection-level
failure (refused, timed out, TLS handshake, no greeting) moves on to the next
host, and the failed one rests for a while (``HostHealth``, shared by clones).
Failover happens only while a connection is being opened, so one message is
never sent to two hosts; a server's verdict on a message (4xx/5xx) is final
for that attempt.

Rate: every message waits for its slot (``RateLimiter``, shared by clones). A
"slow down" reply (421, 4.7.x "too many") pauses the account; a ``patient``
mailer (the runner's) then waits and tries the same message again rather than
spending one of its attempts.

``AccountRouter`` picks one of several such mailers (accounts) by the envelope
sender.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..result import Reply, SendResult
from .auth import AuthInfo, TokenSource
from .client import SMTPConnection, TLSMode, build_ssl_context
from .errors import UNREACHABLE, ConnectError, SMTPError, TemporaryError, TLSError, is_rate_reply, is_unreachable
from .hosts import Host, HostHealth, format_host, parse_hosts
from .ratelimit import RateLimiter

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ['AccountRouter', 'SMTPMailer', 'is_rate_limited']

log = logging.getLogger('mailqueue')

# A patient mailer tries one message at most this many times after "slow down" replies.
_RATE_ROUNDS = 3


class SMTPMailer:
    """SMTP transport; ``send()`` returns a per-recipient ``SendResult`` and never raises for SMTP trouble.

    ``hostname`` may list several hosts (``'a.example:587, b.example'``; ``port`` is the default
    port); they are tried in order when a connection cannot be opened.
    ``tls_verify=None`` verifies certificates for every peer except one whose address
    (after resolution, as connected) is loopback.
    ``auth`` (``auto``, ``plain``, ``login``, ``xoauth2``, ``oauthbearer``) with a ``token_source``
    authenticates with OAuth2 instead of a password.
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
        hosts: Optional[Sequence[Host]] = None,
        auth: str = 'auto',
        token_source: Optional[TokenSource] = None,
        rate_limiter: Optional[RateLimiter] = None,
        host_health: Optional[HostHealth] = None,
        patient: bool = False,
        name: Optional[str] = None,
    ) -> None:
        self.port = int(port)
        if hosts is None:
            hosts = parse_hosts(hostname, self.port) if (',' in hostname or ' ' in hostname.strip()) else [
                (hostname.strip('[]') if hostname.startswith('[') else hostname, self.port)]
        self.hosts: List[Host] = list(hosts)
        self.hostname, self.port = self.hosts[0]
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
        self.auth = auth
        self.token_source = token_source
        self.rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter(None)
        self.health = host_health if host_health is not None else HostHealth()
        self.patient = patient
        #: the account this mailer serves (None: the [mqrunner] settings)
        self.name = name
        self._ssl_context = ssl_context
        self._contexts: Dict[bool, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._conn: Optional[SMTPConnection] = None
        self._last_used = 0.0
        self._aborted = False
        self._stop = threading.Event()
        self.connections_opened = 0
        #: how the last connection authenticated (mq-send-test reports it); None without AUTH
        self.last_auth: Optional[AuthInfo] = None
        #: the host of the last connection ('host:port')
        self.last_host: Optional[str] = None

    def __repr__(self) -> str:
        # The password and tokens stay out of reprs, tracebacks and logs.
        extra = f', auth={self.auth!r}' if self.token_source is not None or self.auth != 'auto' else ''
        hosts = ', '.join(format_host(h) for h in self.hosts[1:])
        more = f', failover=[{hosts}]' if hosts else ''
        return (f'SMTPMailer({self.hostname!r}, {self.port}, tls={self.tls.value!r}, '
                f'username={self.username!r}{extra}{more})')

    @property
    def host(self) -> str:
        return self.last_host or format_host(self.hosts[0])

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
        """A mailer with the same settings, SSL context, token source, rate limit and host health,
        but its own connection."""
        twin = SMTPMailer(
            self.hostname, self.port, tls=self.tls, tls_verify=self.tls_verify, username=self.username,
            password=self._password, timeout=self.timeout, smtp_log=self.smtp_log, cafile=self.cafile,
            ssl_context=self._ssl_context, local_hostname=self.local_hostname, max_idle=self.max_idle,
            max_messages_per_connection=self.max_messages_per_connection, hosts=self.hosts, auth=self.auth,
            token_source=self.token_source, rate_limiter=self.rate_limiter, host_health=self.health,
            patient=self.patient, name=self.name,
        )
        twin._contexts = self._contexts  # loading the CA store once is enough
        return twin

    def _connect(self, host: Host) -> SMTPConnection:
        conn = SMTPConnection(
            host[0], host[1], tls=self.tls, ssl_context=self.context_for, username=self.username,
            password=self._password, timeout=self.timeout, local_hostname=self.local_hostname,
            dialog_log=self.smtp_log, auth=self.auth, token_source=self.token_source,
        )
        conn.open()
        return conn

    def _new_connection(self) -> SMTPConnection:
        """A connection to the first host that works; connection-level failures move on to the next.

        Only ``ConnectError`` and ``TLSError`` (refused, timed out, no greeting, TLS) fail over:
        refused credentials or a missing token would fail the same way everywhere.
        """
        failures: List[SMTPError] = []
        for host in self.health.order(self.hosts):
            if self._aborted:
                break
            try:
                conn = self._connect(host)
            except (ConnectError, TLSError) as exc:
                self.health.failed(host)
                failures.append(exc)
                continue
            except SMTPError as exc:
                if failures:  # (the error raised names only this host: the others' must not vanish)
                    log.warning('%s; the next smarthost, %s, failed too: %s', '; '.join(str(f) for f in failures),
                                format_host(host), exc)
                raise
            if failures:
                # said once the failover worked; when every host fails, the error names them all
                log.warning('%s; using the next smarthost, %s', '; '.join(str(f) for f in failures),
                            format_host(host))
            if self.health.succeeded(host) and len(self.hosts) > 1:
                log.info('smarthost %s is reachable again', format_host(host))
            self.connections_opened += 1
            self.last_auth = conn.auth_info
            self.last_host = format_host(host)
            return conn
        if len(failures) == 1:
            raise failures[0]
        if not failures:
            raise ConnectError('shutting down; not connecting again')
        raise ConnectError(f'tried {len(failures)} hosts: ' + '; '.join(str(f) for f in failures))

    def probe(self, from_addr: str = '') -> bool:
        """Can a connection be opened (and authenticated) now? Keeps it for the next message."""
        with self._lock:
            if self._aborted:
                return False
            if self._conn is not None and self._conn.is_open:
                return True
            try:
                self._conn = self._new_connection()
            except SMTPError as exc:
                log.debug('probe: %s', exc)
                return False
            self._last_used = time.monotonic()
            return True

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        to_addrs = list(to_addrs)
        rounds = _RATE_ROUNDS if self.patient else 1
        result: Optional[SendResult] = None
        paused = self.rate_limiter.paused_for()
        if paused > 0 and not self.patient:
            # The server asked us to slow down a moment ago. A caller that cannot wait (mq-sendmail, a
            # web request) is not held up for minutes: the message goes to the queue at once.
            return _failed_result(self.host, to_addrs, TemporaryError(
                f'{self.host} asked to slow down; sending paused for {paused:.0f}s more'))
        for attempt in range(1, rounds + 1):
            if not self.rate_limiter.acquire(self._stop):
                return _failed_result(self.host, to_addrs, ConnectError('shutting down; not sending'))
            with self._lock:
                result = self._send_locked(from_addr, to_addrs, msg_bytes)
            if not is_rate_limited(result):
                if not result.connection_failed:
                    self.rate_limiter.relax()
                return result
            pause = self.rate_limiter.slow_down()
            who = f'account {self.name}' if self.name else 'the smarthost'
            if attempt < rounds and not self._aborted:
                log.warning('%s asked us to slow down (%s); pausing %s for %.0fs, then trying again',
                            result.host, result.smtp_response, who, pause)
            else:
                log.warning('%s asked us to slow down (%s); pausing %s for %.0fs', result.host,
                            result.smtp_response, who, pause)
                break
        assert result is not None
        return result

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
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def describe_auth(self) -> Optional[str]:
        """How the last connection authenticated (mechanism, user, token origin); None without AUTH."""
        return self.last_auth.describe() if self.last_auth is not None else None

    def __enter__(self) -> SMTPMailer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def is_rate_limited(result: SendResult) -> bool:
    """Did the server ask us to slow down, for the whole message (nothing accepted, nothing refused)?"""
    if result.accepted or result.refused or not result.deferred:
        return False
    for code, text in set(result.deferred.values()):
        if text.startswith(UNREACHABLE):
            # a greeting of "421 too many connections" asks us to slow down too; other failures to
            # connect do not (they fail over, and the runner stops its pass)
            if not (code == 421 and 'too many' in text.lower()):
                return False
        elif not is_rate_reply(code, text):
            return False
    return True


class AccountRouter:
    """Several accounts (``[account:NAME]``), each an ``SMTPMailer``, chosen by the envelope sender.

    ``accounts``: ``(name, match_from, mailer)``; ``match_from`` holds addresses and
    ``@domain``s (lower case). An exact address wins over a domain; a sender that matches
    nothing (and the empty sender) goes through ``default``. ``clone()`` clones every
    mailer, so each runner worker keeps one connection per account: a pool per account.
    """

    transport_name = 'smtp'

    def __init__(self, default: SMTPMailer, accounts: Sequence[Tuple[str, Sequence[str], SMTPMailer]]) -> None:
        self.default = default
        self.accounts = [(name, tuple(match), mailer) for name, match, mailer in accounts]
        self._by_address: Dict[str, str] = {}
        self._by_domain: Dict[str, str] = {}
        self._mailers: Dict[str, SMTPMailer] = {}
        for name, match, mailer in self.accounts:
            self._mailers[name] = mailer
            for entry in match:
                if entry.startswith('@'):
                    self._by_domain.setdefault(entry[1:].lower(), name)
                else:
                    self._by_address.setdefault(entry.lower(), name)
        self._last: SMTPMailer = default

    def __repr__(self) -> str:
        return f'AccountRouter(default={self.default!r}, accounts={[n for n, _, _ in self.accounts]!r})'

    @property
    def host(self) -> str:
        return self._last.host

    def account_for(self, from_addr: str) -> Optional[str]:
        """The account name for this sender, None for the default ([mqrunner]) settings."""
        if not from_addr:
            return None
        address = from_addr.lower()
        name = self._by_address.get(address)
        if name is None and '@' in address:
            name = self._by_domain.get(address.rsplit('@', 1)[1])
        return name

    def account_names(self) -> List[Optional[str]]:
        return [None] + [name for name, _, _ in self.accounts]

    def mailer_for(self, from_addr: str) -> SMTPMailer:
        name = self.account_for(from_addr)
        return self.default if name is None else self._mailers[name]

    def mailers(self) -> List[SMTPMailer]:
        return [self.default] + [mailer for _, _, mailer in self.accounts]

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        mailer = self._last = self.mailer_for(from_addr)
        return mailer.send(from_addr, to_addrs, msg_bytes)

    def probe(self, from_addr: str = '') -> bool:
        return self.mailer_for(from_addr).probe(from_addr)

    def clone(self) -> AccountRouter:
        twin = AccountRouter(self.default.clone(), [(n, m, mailer.clone()) for n, m, mailer in self.accounts])
        return twin

    def describe_auth(self) -> Optional[str]:
        return self._last.describe_auth()

    @property
    def last_auth(self) -> Optional[AuthInfo]:
        return self._last.last_auth

    def abort(self) -> None:
        for mailer in self.mailers():
            mailer.abort()

    def close(self) -> None:
        for mailer in self.mailers():
            mailer.close()

    def __enter__(self) -> AccountRouter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _failed_result(host: str, to_addrs: Sequence[str], exc: SMTPError) -> SendResult:
    reply = exc.reply if exc.reply is not None else Reply(451, str(exc))
    # "the smarthost was unreachable" is recorded recognisably: when it is back, such messages
    # are due at once instead of waiting out their backoff (see errors.is_unreachable_error)
    text = f'{UNREACHABLE}{exc}' if is_unreachable(exc) else str(exc)
    result = SendResult(transport='smtp', queued=False, host=host, smtp_response=reply, error=text,
                        connection_failed=True)
    bucket = result.deferred if exc.temporary else result.refused
    bucket.update({addr: (reply.code, text) for addr in to_addrs})
    return result
