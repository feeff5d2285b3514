"""SMTP AUTH: the SASL mechanisms (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER) and where OAuth2 tokens come from.

Tokens come from one of two sources:

- ``CommandTokenSource``: ``smtp_oauth2_token_command`` prints a bearer token
  (msmtp's ``passwordeval`` convention). It runs with stdin from /dev/null and
  its output never reaches a log; it runs again when the server rejects a token.
- ``OAuth2TokenSource``: we ask the token endpoint ourselves with a plain
  RFC 6749 POST (standard library only): the client-credentials grant
  (Microsoft 365, ``SMTP.SendAsApp``) or the refresh-token grant (Google).
  Tokens are cached (``TokenCache``, a 0600 file) until shortly before they
  expire; a refresh token the endpoint rotates is stored there at once.

A token endpoint that is down, slow or answers 5xx raises ``TokenUnavailable``;
one that refuses the grant raises ``TokenRefused``. Both are temporary for the
message: it is queued, never lost.

Secrets (tokens, client secret, refresh tokens) never appear in a log record,
an exception text or a repr: ``secrets()`` lists what the wire must scrub, and
every text taken from the token endpoint is scrubbed before we use it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..result import Reply
from .errors import AuthenticationError, TokenRefused, TokenUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from .token_cache import TokenCache
    from .wire import SMTPWire

__all__ = [
    'AUTH_SETTINGS',
    'PASSWORD_MECHANISMS',
    'TOKEN_MECHANISMS',
    'AuthInfo',
    'CommandTokenSource',
    'OAuth2TokenSource',
    'Token',
    'TokenSource',
    'choose_mechanism',
    'oauthbearer_response',
    'xoauth2_response',
]

log = logging.getLogger('mailqueue')

AUTH_SETTINGS = ('auto', 'plain', 'login', 'xoauth2', 'oauthbearer')
PASSWORD_MECHANISMS = ('PLAIN', 'LOGIN')
TOKEN_MECHANISMS = ('XOAUTH2', 'OAUTHBEARER')

# A token is used until this long before it expires (at most a quarter of its lifetime).
EXPIRY_MARGIN = 120.0
# Without expires_in in the endpoint's answer, assume this lifetime (a rejection refreshes anyway).
DEFAULT_LIFETIME = 3600.0
# A token from the command is run again after this long (the command does its own caching).
COMMAND_TOKEN_REUSE = 300.0
_MAX_RESPONSE = 256 * 1024
_COMMAND_TIMEOUT = 60.0


# base64, hashlib and json are imported where used: a plain password delivery (mq-sendmail's
# start-up) needs none of them.


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode('ascii')


def _fingerprint(*parts: str) -> str:
    import hashlib

    return hashlib.sha256('\0'.join(parts).encode('utf-8')).hexdigest()[:32]


class Token:
    """An access token; ``origin`` says where it came from (for ``mq-send-test``). Never in a repr."""

    __slots__ = ('value', 'expires_at', 'obtained_at', 'origin')

    def __init__(self, value: str, expires_at: Optional[float], obtained_at: float, origin: str) -> None:
        self.value = value
        self.expires_at = expires_at
        self.obtained_at = obtained_at
        self.origin = origin

    def __repr__(self) -> str:
        return f'<Token from {self.origin}, expires_at={self.expires_at!r}>'

    def usable(self, now: float) -> bool:
        if self.expires_at is None:
            return True
        lifetime = max(0.0, self.expires_at - self.obtained_at)
        return now < self.expires_at - min(EXPIRY_MARGIN, lifetime / 4)


class AuthInfo:
    """How a session authenticated: mechanism, user, and where the token came from (None for passwords)."""

    __slots__ = ('mechanism', 'username', 'token_origin', 'refreshed')

    def __init__(self, mechanism: str, username: str, token_origin: Optional[str] = None,
                 refreshed: bool = False) -> None:
        self.mechanism = mechanism
        self.username = username
        self.token_origin = token_origin
        self.refreshed = refreshed

    def __repr__(self) -> str:
        return f'AuthInfo({self.mechanism!r}, {self.username!r}, token_origin={self.token_origin!r})'

    def describe(self) -> str:
        text = f'{self.mechanism} as {self.username}'
        if self.token_origin:
            text += f'; token from {self.token_origin}'
            if self.refreshed:
                text += ', fetched after the server rejected the previous one'
        return text


class TokenSource:
    """Base class: thread-safe ``token()``, ``secrets()`` to scrub, ``describe()`` for humans."""

    kind = 'token'

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._token: Optional[Token] = None
        self._secrets: List[str] = []
        self._secrets_lock = threading.Lock()  # not _lock: secrets() is called while a token is fetched

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.describe()}>'

    def describe(self) -> str:
        raise NotImplementedError

    def _remember_secret(self, value: Optional[str]) -> None:
        if not value:
            return
        from urllib.parse import quote, quote_plus

        # also as it went over the wire in a form body (an endpoint may echo that): 1//0a+b -> 1%2F%2F0a%2Bb
        forms = [value] + [form for form in (quote(value, safe=''), quote_plus(value)) if form != value]
        with self._secrets_lock:
            for form in forms:
                if form not in self._secrets:
                    self._secrets.append(form)
            del self._secrets[:-60]  # the old ones are useless by now

    def secrets(self) -> List[str]:
        """Every secret this source knows (tokens handed out, client secret, refresh tokens)."""
        with self._secrets_lock:
            return list(self._secrets)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets(), key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, '***')
        return text

    def token(self, rejected: Optional[str] = None) -> Token:
        """A usable token; ``rejected``: the server refused this one, get another (once).

        When another thread already replaced the rejected token, its replacement is returned.
        """
        with self._lock:
            now = self.clock()
            current = self._token
            if current is not None and current.value != rejected and current.usable(now):
                return current
            token = self._fetch(now, rejected)
            self._token = token
            self._remember_secret(token.value)
            return token

    def _fetch(self, now: float, rejected: Optional[str]) -> Token:
        raise NotImplementedError


def _run_secret_command(command: str, key: str) -> str:
    """Run a ``..._command`` (``secret_command``); its first line, or ``TokenUnavailable``."""
    from ..secret_command import CommandFailed, command_output

    try:
        text = command_output(command, _COMMAND_TIMEOUT).decode('utf-8', 'replace').strip()
    except CommandFailed as exc:
        raise TokenUnavailable(f'{key} {exc}') from None
    value = text.splitlines()[0].strip() if text else ''
    if not value:
        raise TokenUnavailable(f'{key} printed nothing')
    return value


class CommandTokenSource(TokenSource):
    """``smtp_oauth2_token_command``: a command that prints a bearer token."""

    kind = 'command'

    def __init__(self, command: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._command = command

    def describe(self) -> str:
        return 'smtp_oauth2_token_command'

    def _fetch(self, now: float, rejected: Optional[str]) -> Token:
        value = _run_secret_command(self._command, 'smtp_oauth2_token_command')
        if any(ord(ch) < 33 or ord(ch) > 126 for ch in value):
            raise TokenUnavailable('smtp_oauth2_token_command printed something that is not a bearer token')
        return Token(value, now + COMMAND_TOKEN_REUSE, now, 'smtp_oauth2_token_command')


class _Secret:
    """A configured secret or the command that prints it (run when first needed)."""

    def __init__(self, value: Optional[str], command: Optional[str], key: str) -> None:
        self._value = value
        self._command = command
        self.key = key

    def __repr__(self) -> str:
        return f'<secret {self.key}>'

    @property
    def configured(self) -> bool:
        return bool(self._value or self._command)

    def get(self) -> Optional[str]:
        if self._value is None and self._command:
            self._value = _run_secret_command(self._command, f'{self.key}_command')
        return self._value


class OAuth2TokenSource(TokenSource):
    """Tokens from an RFC 6749 token endpoint: client-credentials or refresh-token grant, cached."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        client_secret: Optional[str] = None,
        client_secret_command: Optional[str] = None,
        scope: Optional[str] = None,
        refresh_token: Optional[str] = None,
        refresh_token_command: Optional[str] = None,
        cache: Optional[TokenCache] = None,
        timeout: float = 10.0,
        username: str = '',
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self.timeout = timeout
        self.cache = cache
        self._client_secret = _Secret(client_secret, client_secret_command, 'smtp_oauth2_client_secret')
        self._refresh_token = _Secret(refresh_token, refresh_token_command, 'smtp_oauth2_refresh_token')
        self.grant = 'refresh_token' if self._refresh_token.configured else 'client_credentials'
        self.kind = self.grant
        # the cache entry when there is no cache file (or it cannot be written): rotation survives in memory
        self._entry: Dict[str, Any] = {}
        if self.grant == 'client_credentials' and not self._client_secret.configured:
            raise ValueError('the client-credentials grant needs smtp_oauth2_client_secret (or ..._command)')
        # one cache entry per endpoint, client, scope, grant and mailbox
        self.cache_key = _fingerprint(token_url, client_id, scope or '', self.grant, username)
        self._remember_secret(client_secret)
        self._remember_secret(refresh_token)

    def describe(self) -> str:
        grant = 'refresh-token grant' if self.grant == 'refresh_token' else 'client-credentials grant'
        return f'token endpoint {_shown_url(self.token_url)} ({grant})'

    # --- fetching ---------------------------------------------------------------------------

    def _fetch(self, now: float, rejected: Optional[str]) -> Token:
        cache = self.cache
        if cache is None:
            try:
                token, self._entry = self._from_endpoint(self._entry)
            except _RotatedOnly as exc:
                self._entry = exc.entry
                self._check_kept(False)
                raise
            self._check_kept(False)
            return token
        with cache.locked():
            entries = cache.load()
            entry = entries.get(self.cache_key) or self._entry
            cached = self._cached_token(entry)
            if cached is not None and cached.value != rejected and cached.usable(self.clock()):
                self._remember_secret(entry.get('refresh_token'))
                return cached
            fresh: Optional[Dict[str, Any]] = None
            try:
                token, fresh = self._from_endpoint(entry)
            except _RotatedOnly as exc:
                fresh = exc.entry  # (only the rotated refresh token: stored all the same)
                raise
            finally:
                if fresh is not None:
                    self._entry = fresh
                    entries = cache.load()  # unchanged under our lock, unless the lock could not be had
                    entries[self.cache_key] = fresh
                    self._check_kept(cache.store(entries))
            return token

    def _check_kept(self, stored: bool) -> None:
        """A refresh token the endpoint rotated must survive this process, or the next one is locked out."""
        rotated = self._entry.get('refresh_token')
        if rotated and not stored and rotated != self._refresh_token.get():
            log.error('the token endpoint replaced the refresh token, but the new one cannot be stored (set '
                      'smtp_oauth2_token_cache to a file this user can write): other processes will be refused '
                      'with invalid_grant')

    def _cached_token(self, entry: Dict[str, Any]) -> Optional[Token]:
        value, expires, obtained = entry.get('access_token'), entry.get('expires_at'), entry.get('obtained_at')
        if not isinstance(value, str) or not value or not isinstance(expires, (int, float)):
            return None
        if not isinstance(obtained, (int, float)):
            obtained = expires - DEFAULT_LIFETIME
        where = f'the token cache {self.cache.path}' if self.cache is not None else f'the {self.describe()}'
        return Token(value, float(expires), float(obtained), where)

    def _refresh_tokens(self, entry: Dict[str, Any], configured: Optional[str]) -> List[str]:
        """Refresh tokens to try, best first: one the endpoint rotated (for this configured one), then ours."""
        tokens: List[str] = []
        rotated = entry.get('refresh_token')
        if isinstance(rotated, str) and rotated and entry.get('refresh_token_of') == _fingerprint(configured or ''):
            tokens.append(rotated)
            self._remember_secret(rotated)
        if configured and configured not in tokens:
            tokens.append(configured)
            self._remember_secret(configured)
        return tokens

    def _from_endpoint(self, entry: Dict[str, Any]) -> Tuple[Token, Dict[str, Any]]:
        """A new token from the endpoint, and the cache entry that records it (and a rotated refresh token)."""
        fields: Dict[str, str] = {'grant_type': self.grant, 'client_id': self.client_id}
        secret = self._client_secret.get()
        if secret:
            self._remember_secret(secret)
            fields['client_secret'] = secret
        if self.scope:
            fields['scope'] = self.scope
        used: Optional[str] = None
        configured: Optional[str] = None
        if self.grant == 'client_credentials':
            answer = self._post(fields)
        else:
            configured = self._refresh_token.get()
            candidates = self._refresh_tokens(entry, configured)
            answer = {}
            for index, refresh in enumerate(candidates):
                try:
                    answer = self._post({**fields, 'refresh_token': refresh})
                except TokenRefused:
                    if index + 1 == len(candidates):
                        raise
                    # the rotated one was refused; the configured one may still work
                    log.warning('OAuth2: the stored (rotated) refresh token was refused; trying the configured one')
                    continue
                used = refresh
                break
        new_entry: Dict[str, Any] = {}
        if self.grant == 'refresh_token':
            rotated = answer.get('refresh_token')
            if isinstance(rotated, str) and rotated:
                keep: Optional[str] = rotated  # the endpoint rotated it: from now on only this one may work
            else:
                keep = used if used != configured else None
            if keep:
                self._remember_secret(keep)
                new_entry['refresh_token'] = keep
                new_entry['refresh_token_of'] = _fingerprint(configured or '')
        try:
            token = self._token_from(answer, self.clock())
        except TokenUnavailable as exc:
            if new_entry:  # the old refresh token may be dead already: the new one must not be lost
                raise _RotatedOnly(str(exc), new_entry) from None
            raise
        new_entry.update(access_token=token.value, expires_at=token.expires_at, obtained_at=token.obtained_at)
        return token, new_entry

    def _token_from(self, answer: Dict[str, Any], now: float) -> Token:
        value = answer.get('access_token')
        if not isinstance(value, str) or not value or any(ord(ch) < 33 or ord(ch) > 126 for ch in value):
            raise TokenUnavailable(f'{self.describe()}: answer without a usable access_token')
        self._remember_secret(value)
        token_type = answer.get('token_type')
        if isinstance(token_type, str) and token_type.lower() != 'bearer':
            raise TokenUnavailable(f'{self.describe()}: token_type {token_type[:20]!r}, not Bearer')
        lifetime = answer.get('expires_in', DEFAULT_LIFETIME)
        try:
            seconds = float(lifetime)
        except (TypeError, ValueError):
            seconds = DEFAULT_LIFETIME
        if not 0 < seconds < 10 * 365 * 86400:
            seconds = DEFAULT_LIFETIME
        return Token(value, now + seconds, now, f'the {self.describe()}')

    def _post(self, fields: Dict[str, str]) -> Dict[str, Any]:
        """One POST to the token endpoint: the JSON answer, ``TokenRefused`` or ``TokenUnavailable``."""
        import json

        try:
            status, body = _http_post(self.token_url, fields, self.timeout, self.describe())
        except TokenUnavailable as exc:
            raise TokenUnavailable(self.scrub(str(exc))) from None
        try:
            answer = json.loads(body.decode('utf-8')) if body else None
        except (ValueError, RecursionError):  # (RecursionError: "[[[[..." from a hostile endpoint)
            answer = None
        if status == 200 and isinstance(answer, dict):
            return answer
        what = self.describe()
        if isinstance(answer, dict) and isinstance(answer.get('error'), str):
            error = _safe_text(self.scrub(answer['error']), 40)
            description = answer.get('error_description')
            detail = f': {_safe_text(self.scrub(description), 200)}' if isinstance(description, str) else ''
            if status in (400, 401, 403) and error != 'temporarily_unavailable':
                raise TokenRefused(f'{what} refused: {error}{detail}')
            raise TokenUnavailable(f'{what} answered HTTP {status}: {error}{detail}')
        if status in (400, 401, 403):
            raise TokenRefused(f'{what} refused the request: HTTP {status}')
        raise TokenUnavailable(f'{what} answered HTTP {status}' + ('' if status != 200 else ' without JSON'))


def _shown_url(url: str) -> str:
    """The URL for messages: no query, no user info."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ''
        if ':' in host:
            host = f'[{host}]'
        port = f':{parts.port}' if parts.port else ''
        return f'{parts.scheme}://{host}{port}{parts.path}'
    except ValueError:
        return '<invalid URL>'


def _safe_text(text: str, limit: int) -> str:
    text = ''.join(ch if ch.isprintable() else ' ' for ch in text).strip()
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _http_post(url: str, fields: Dict[str, str], timeout: float, what: str) -> Tuple[int, bytes]:
    """POST a form; ``(status, body)`` for any HTTP answer, ``TokenUnavailable`` when there is none in time."""
    import http.client
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        # a token request is never repeated elsewhere: the body holds the secrets
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = urllib.parse.urlencode(fields).encode('ascii')
    request = urllib.request.Request(url, data=data, method='POST', headers={
        'Content-Type': 'application/x-www-form-urlencoded', 'Accept': 'application/json',
        'User-Agent': 'mailqueue-runner'})
    deadline = time.monotonic() + 3 * timeout
    timers: List[threading.Timer] = []

    def bounded(connection_class: Any) -> Any:
        class Bounded(connection_class):
            # every read and write of this connection ends at the deadline, however slowly the
            # endpoint trickles (a timeout per read would let it go on for ever)
            def connect(self) -> None:
                super().connect()
                timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut, (self.sock,))
                timer.daemon = True
                timers.append(timer)
                timer.start()
        return Bounded

    class BoundedHTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(bounded(http_class), req, **kwargs)

    class BoundedHTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(bounded(http_class), req, **kwargs)

    opener = urllib.request.build_opener(NoRedirect, BoundedHTTP, BoundedHTTPS)

    def read_body(response: Any) -> bytes:
        body = bytearray()
        while len(body) <= _MAX_RESPONSE:
            if time.monotonic() > deadline:
                raise TimeoutError('the answer took too long')
            chunk = response.read(16384)
            if not chunk:
                break
            body += chunk
        if time.monotonic() > deadline:
            raise TimeoutError('the answer took too long')  # (cut off at the deadline: not all of it)
        if len(body) > _MAX_RESPONSE:
            raise TokenUnavailable(f'{what}: answer too large')
        return bytes(body)

    try:
        try:
            with opener.open(request, timeout=timeout) as response:
                return int(response.status or 0), read_body(response)
        except urllib.error.HTTPError as exc:
            try:
                body = read_body(exc) if exc.fp is not None else b''
            finally:
                exc.close()
            return int(exc.code), body
    except TokenUnavailable:
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        shown = 'timed out' if isinstance(reason, socket.timeout) else (
            getattr(reason, 'strerror', None) or str(reason))
        raise TokenUnavailable(f'{what} unreachable: {_safe_text(str(shown), 120)}') from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() > deadline or isinstance(exc, socket.timeout):
            shown = 'timed out'
        elif isinstance(exc, OSError):
            shown = exc.strerror or type(exc).__name__
        else:  # what a malformed answer says may quote the server, which may quote our request
            shown = f'malformed answer ({type(exc).__name__})'
        raise TokenUnavailable(f'{what} failed: {_safe_text(str(shown), 120)}') from None
    finally:
        for timer in timers:
            timer.cancel()


def _cut(sock: Any) -> None:
    """End a connection's reads and writes at once (from a timer thread)."""
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


class _RotatedOnly(TokenUnavailable):
    """The endpoint rotated the refresh token but its answer is unusable otherwise: ``entry`` keeps
    the new refresh token (the old one may be dead already)."""

    def __init__(self, message: str, entry: Dict[str, Any]) -> None:
        super().__init__(message)
        self.entry = entry


# --- SASL ---------------------------------------------------------------------------------------


def _saslname(username: str) -> str:
    return username.replace('=', '=3D').replace(',', '=2C')


def xoauth2_response(username: str, token: str) -> str:
    """The base64 initial response of XOAUTH2 (Google's and Microsoft's mechanism)."""
    return _b64(f'user={username}\x01auth=Bearer {token}\x01\x01'.encode())


def oauthbearer_response(username: str, token: str, host: str, port: int) -> str:
    """The base64 initial response of OAUTHBEARER (RFC 7628)."""
    return _b64(f'n,a={_saslname(username)},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01'.encode())


def token_secret_forms(username: str, token: str, host: str, port: int) -> List[str]:
    """The token and the encodings it travels in (a server may echo any of them)."""
    forms = {token, _b64(token.encode()), xoauth2_response(username, token),
             oauthbearer_response(username, token, host, port)}
    forms |= {form.rstrip('=') for form in list(forms)}
    return sorted(forms, key=len, reverse=True)


def choose_mechanism(setting: str, offered: Sequence[str], *, token: bool, peer: str) -> str:
    """The mechanism to use, or ``AuthenticationError`` naming what the server offers."""
    offered_upper = [m.upper() for m in offered]
    if setting != 'auto':
        wanted = setting.upper()
        if wanted not in offered_upper:
            raise AuthenticationError(f'{peer} does not offer AUTH {wanted} (smtp_auth = {setting}; offered: '
                                      f'{" ".join(offered_upper) or "none"})')
        return wanted
    preference = TOKEN_MECHANISMS if token else PASSWORD_MECHANISMS
    for mechanism in preference:
        if mechanism in offered_upper:
            return mechanism
    we_speak = ' and '.join(preference)
    hint = '' if token else ' (for OAuth2 set smtp_oauth2_*)'
    raise AuthenticationError(f'{peer} offers no AUTH mechanism we can use with these credentials '
                              f'(offered: {" ".join(offered_upper) or "none"}; we would use {we_speak}){hint}')


def password_exchange(wire: SMTPWire, mechanism: str, username: str, password: str) -> Reply:
    user = username.encode('utf-8')
    secret = password.encode('utf-8')
    if mechanism == 'PLAIN':
        # RFC 4616: PLAIN carries UTF-8, so any password works
        credentials = _b64(b'\0' + user + b'\0' + secret)
        reply = wire.command(f'AUTH PLAIN {credentials}', summary='AUTH PLAIN ***')
        if reply.code == 334:  # a server that wants the credentials after an empty challenge
            reply = wire.command(credentials, secret=True)
        return reply
    reply = wire.command('AUTH LOGIN')
    if reply.code == 334:
        reply = wire.command(_b64(user), secret=True)
    if reply.code == 334:
        reply = wire.command(_b64(secret), secret=True)
    return reply


def token_exchange(wire: SMTPWire, mechanism: str, username: str, token: str, host: str, port: int) -> Reply:
    """One XOAUTH2/OAUTHBEARER exchange; the final reply (a failure's error challenge is answered)."""
    from .wire import ProtocolError

    for form in token_secret_forms(username, token, host, port):
        wire.add_secret(form)
    if mechanism == 'XOAUTH2':
        response = xoauth2_response(username, token)
    else:
        response = oauthbearer_response(username, token, host, port)
    reply = wire.command(f'AUTH {mechanism} {response}', summary=f'AUTH {mechanism} ***')
    if reply.code == 334 and not reply.message.strip():
        # an empty challenge: the server wants the initial response on its own line
        reply = wire.command(response, secret=True)
    if reply.code == 334:
        # The error challenge (base64 JSON: status, schemes, scope). XOAUTH2 answers with an empty
        # line, OAUTHBEARER with %x01 (RFC 7628 3.2.3); the server then sends its final failure.
        detail = _error_challenge(reply.message)
        reply = wire.command('' if mechanism == 'XOAUTH2' else _b64(b'\x01'), summary='(end of failed AUTH)')
        if reply.code == 334:
            raise ProtocolError(f'AUTH {mechanism}: a second challenge after the error challenge')
        if detail and not 200 <= reply.code < 300:
            reply = Reply(reply.code, f'{reply.message} ({detail})'.strip())
    return reply


def _error_challenge(message: str) -> str:
    """What an OAuth error challenge says (``status=401``), short and without anything secret."""
    import base64
    import json

    text = message.strip()
    if len(text) > 4096:
        return ''  # a real one is a short JSON object; a huge one is not worth parsing
    try:
        data = json.loads(base64.b64decode(text, validate=True).decode('utf-8'))
    except (ValueError, UnicodeDecodeError, RecursionError):  # (RecursionError: "[[[[...")
        return ''
    if not isinstance(data, dict):
        return ''
    status = data.get('status')
    return f'token status {_safe_text(str(status), 20)}' if status is not None else ''
