"""OAuth2 under attack: a hostile token endpoint, token command and SMTP server, and a careless operator.

Every test here is a defect found by probing: it states what docs/oauth2.md, SPEC section 12 or the
module docstrings promise (secrets never in an error text or log, a misbehaving endpoint is a bounded
temporary failure, a rotated refresh token is never lost, an unusable cache is not fatal) and shows
where that does not hold. Only 127.0.0.1 is used; every test is bounded to a few seconds.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from schwarz.mailqueue.smtp import auth as auth_module
from schwarz.mailqueue.smtp.auth import CommandTokenSource, OAuth2TokenSource, Token
from schwarz.mailqueue.smtp.errors import TokenRefused, TokenUnavailable
from schwarz.mailqueue.smtp.token_cache import TokenCache
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import Script, ScriptedSMTPServer, SMTPTestServer, smtp_reply
from test_cli_helpers import run_tool, script, write_config

from helpers import Logs

SECRET = 'client-secret-Zq8vX2'
# Google's refresh tokens look like this ("1//0..."): slashes, so the form body carries it %-encoded
GOOGLE_REFRESH = '1//0gRefresh+Token/Kd93Lw'
USER = 'mailbox@example.com'
MSG = b'From: mailbox@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n'

Handler = Callable[[http.server.BaseHTTPRequestHandler, bytes], None]


class HostileEndpoint:
    """A token endpoint on 127.0.0.1 whose every answer is written by ``handler(request, body)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: List[Dict[str, str]] = []
        self.stop = threading.Event()
        outer = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                outer.requests.append(dict(urllib.parse.parse_qsl(body.decode('ascii'))))
                try:
                    outer.handler(self, body)
                except OSError:
                    pass  # the client gave up

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/token'
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        daemon=True)

    def __enter__(self) -> HostileEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(request: http.server.BaseHTTPRequestHandler, status: int, payload: object) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request.send_response(status)
    request.send_header('Content-Type', 'application/json')
    request.send_header('Content-Length', str(len(data)))
    request.end_headers()
    request.wfile.write(data)


def in_thread(call: Callable[[], Token], limit: float) -> Tuple[bool, object]:
    """``(finished, token or exception)``: the call, given at most ``limit`` seconds."""
    outcome: List[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: B036 (the test inspects whatever it was)
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


# --- a hostile token endpoint -------------------------------------------------------------------------

def test_an_endpoint_that_echoes_the_request_as_its_status_line_does_not_leak_the_client_secret() -> None:
    """A non-HTTP answer (here: the request body sent back as the first line) becomes
    http.client.BadStatusLine, whose text is the line the server sent; _http_post puts str(exc) into
    TokenUnavailable unscrubbed, so the client secret lands in the error, the log and the queue."""

    def echo(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        request.wfile.write(body + b'\r\n\r\n')

    with HostileEndpoint(echo) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', client_secret=SECRET, timeout=2, username=USER)
        with pytest.raises(TokenUnavailable) as failure:
            source.token()
    assert SECRET not in str(failure.value), str(failure.value)


def test_a_url_encoded_refresh_token_echoed_by_the_endpoint_is_scrubbed() -> None:
    """The endpoint echoes the form it received in error_description: the client secret is
    scrubbed, but the refresh token travelled %-encoded (1%2F%2F0...) and stays readable."""

    def refuse(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        answer(request, 400, {'error': 'invalid_grant', 'error_description': 'bad request: ' + body.decode()})

    with HostileEndpoint(refuse) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', client_secret=SECRET, refresh_token=GOOGLE_REFRESH,
                                   timeout=2, username=USER)
        with pytest.raises(TokenRefused) as refused:
            source.token()
    text = str(refused.value)
    assert SECRET not in text  # (this part holds)
    assert urllib.parse.quote(GOOGLE_REFRESH, safe='') not in text, text
    assert urllib.parse.quote_plus(GOOGLE_REFRESH) not in text, text


def test_deeply_nested_json_from_the_endpoint_is_a_temporary_failure_not_a_traceback(tmp_path: Path) -> None:
    """200 with '[[[[...' (well under the 256 KiB limit): json.loads raises RecursionError, which
    _post does not catch (only ValueError). mq-sendmail queues the message but prints
    'unexpected error in the smtp transport' with a traceback; mq-run does the same on every pass."""

    def nested(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        answer(request, 200, b'[' * 100_000)

    with HostileEndpoint(nested) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', client_secret=SECRET, timeout=2, username=USER)
        finished, outcome = in_thread(source.token, 5)
        assert finished
        assert isinstance(outcome, TokenUnavailable), repr(outcome)

        with SMTPTestServer(oauth_tokens={}) as server:
            config = write_config(tmp_path, server, smtp_username=USER, smtp_oauth2_token_url=endpoint.url,
                                  smtp_oauth2_client_id='cid', smtp_oauth2_client_secret=SECRET, smtp_tls='none',
                                  queue_dir=str(tmp_path / 'queue'), **{'from': USER})
            proc = run_tool([script('mq-sendmail'), '-C', str(config), '-f', USER, 'b@example.org'], input=MSG,
                            home=tmp_path)
    stderr = proc.stderr.decode('utf-8', 'replace')
    assert proc.returncode == 0, stderr
    assert 'Traceback' not in stderr, stderr[:400]


@pytest.mark.parametrize('where', ['headers', 'body'])
def test_a_trickling_endpoint_is_given_up_within_the_deadline(where: str) -> None:
    """One byte every 0.3 s (each wait shorter than the 1 s timeout): _http_post's deadline
    (3 x timeout) is only checked between 16 KiB reads, and not at all while the headers arrive, so
    token() (and with it mq-sendmail, which fetches the token before connecting) hangs for as long
    as the endpoint likes. Promised: 'a token endpoint that is down, slow ... is a temporary failure'."""

    def trickle(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if where == 'headers':
            request.wfile.write(b'HTTP/1.0 200 OK\r\n')
            line = b'X-Slow: yes\r\n'
        else:
            request.send_response(200)
            request.send_header('Content-Type', 'application/json')
            request.send_header('Content-Length', '200')
            request.end_headers()
            line = b' '
        for _ in range(200):
            if endpoint.stop.is_set():
                return
            request.wfile.write(line)
            request.wfile.flush()
            time.sleep(0.3)

    with HostileEndpoint(trickle) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', client_secret=SECRET, timeout=1, username=USER)
        started = time.monotonic()
        finished, outcome = in_thread(source.token, 5)
        assert finished, f'token() still waiting after {time.monotonic() - started:.1f}s (timeout=1)'
        assert isinstance(outcome, TokenUnavailable), repr(outcome)


def test_a_rotated_refresh_token_is_kept_even_when_the_rest_of_the_answer_is_unusable(tmp_path: Path) -> None:
    """The endpoint rotates the refresh token (the old one dies at once) but its access_token is
    unusable (or token_type is not Bearer). _from_endpoint raises in _token_from before the new
    refresh token reaches the cache entry, so it is thrown away: from then on every request
    (this process, every other one) is refused with invalid_grant until a human consents again.
    Promised (token_cache.py): 'a rotated refresh token is never lost once the endpoint's answer was read'."""
    state: Dict[str, str] = {'valid': 'R0'}
    count = [0]

    def rotating(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        fields = dict(urllib.parse.parse_qsl(body.decode()))
        if fields.get('refresh_token') != state['valid']:
            answer(request, 400, {'error': 'invalid_grant'})
            return
        count[0] += 1
        state['valid'] = new = f'R{count[0]}-rotated'
        token = 'not a token' if count[0] == 1 else f'access-{count[0]}'
        answer(request, 200, {'access_token': token, 'token_type': 'Bearer', 'expires_in': 3600,
                              'refresh_token': new})

    cache = TokenCache(str(tmp_path / 'tokens.json'))
    with HostileEndpoint(rotating) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', refresh_token='R0', cache=cache, timeout=2, username=USER)
        with pytest.raises(TokenUnavailable):
            source.token()  # the endpoint's fault this once: temporary
        # the next attempt (same process or another one) must use the rotated refresh token
        later = OAuth2TokenSource(endpoint.url, 'cid', refresh_token='R0', cache=cache, timeout=2, username=USER)
        try:
            token: Optional[Token] = later.token()
        except TokenRefused:
            token = None
        sent = [r.get('refresh_token') for r in endpoint.requests]
    assert token is not None and token.value == 'access-2', f'refresh tokens sent: {sent}'


# --- a careless operator: the token cache --------------------------------------------------------------

def test_a_corrupt_token_cache_is_ignored_not_fatal(tmp_path: Path) -> None:
    """A cache file of '[[[[...' (200 KB, under the 1 MiB limit): TokenCache.load catches only
    OSError and ValueError, json.loads raises RecursionError, and every token() fails with it, so
    no mail goes out (each attempt: 'unexpected error', a traceback) until somebody deletes the file.
    Promised: 'A cache that cannot be read ... is not fatal'; load(): 'an empty dict when ... unusable'."""
    path = tmp_path / 'tokens.json'
    path.write_bytes(b'[' * 200_000)
    os.chmod(path, 0o600)

    def good(request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        answer(request, 200, {'access_token': 'fresh-access-token', 'token_type': 'Bearer', 'expires_in': 3600})

    with HostileEndpoint(good) as endpoint:
        source = OAuth2TokenSource(endpoint.url, 'cid', client_secret=SECRET, cache=TokenCache(str(path)),
                                   timeout=2, username=USER)
        finished, outcome = in_thread(source.token, 5)
    assert finished
    assert isinstance(outcome, Token) and outcome.value == 'fresh-access-token', repr(outcome)


# --- a hostile token command ---------------------------------------------------------------------------

def test_a_token_command_that_leaves_a_background_child_is_not_reported_as_hanging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command prints its token and exits 0 at once, but a child it started in the background
    keeps stdout open: subprocess.run waits for EOF on the pipe, and after _COMMAND_TIMEOUT (60 s;
    1 s here) the good token is thrown away as 'did not finish'. Every message waits the full
    minute and is then queued."""
    monkeypatch.setattr(auth_module, '_COMMAND_TIMEOUT', 1)
    source = CommandTokenSource('echo token-from-helper; sleep 3 &')
    finished, outcome = in_thread(source.token, 5)
    assert finished
    assert isinstance(outcome, Token) and outcome.value == 'token-from-helper', repr(outcome)


# --- a hostile SMTP server -----------------------------------------------------------------------------

def test_an_smtp_server_echoing_the_base64_token_in_its_535_does_not_leak_it(logs: Logs) -> None:
    """535 with the token base64-encoded (as it is inside the SASL response). For passwords,
    secret_forms() scrubs base64(password); token_secret_forms() has only the raw token and the whole
    XOAUTH2/OAUTHBEARER responses, so base64(token) goes into the AuthenticationError, the result
    (the queue's last error, mq-queue list) and the log. tests/test_oauth2.py's own secret_texts()
    counts base64(token) as a secret form."""
    token = 'ya29.a0AccessTokenSecretValue123'
    encoded = base64.b64encode(token.encode()).decode()

    def responder(verb: str, arg: str, state: object) -> Optional[bytes]:
        if verb == 'AUTH':
            return smtp_reply(535, f'5.7.8 Username and Password not accepted: {encoded}')
        return None

    with ScriptedSMTPServer(Script(responder=responder, extensions=('AUTH XOAUTH2',))) as server:
        mailer = SMTPMailer(server.hostname, server.port, tls='none', timeout=2, username=USER,
                            token_source=CommandTokenSource(f'echo {token}'))
        result = mailer.send(USER, ['b@example.org'], MSG)
        mailer.close()
    assert not result.accepted
    everything = '\n'.join([result.error or '', repr(result.deferred), repr(result.refused), *logs.lines])
    assert encoded.rstrip('=') not in everything, everything[:300]


def test_a_password_command_follows_the_same_rules_as_a_token_command() -> None:
    """docs/oauth2.md: the `..._command` settings of passwords follow the token command's rules: done
    when the command exits (a background child keeping the pipe open is not waited for), output
    capped."""
    from schwarz.mailqueue.config import ConfigError, settings_from_mapping

    started = time.monotonic()
    settings = settings_from_mapping({'smtp_password_command': 'echo pass-from-helper; sleep 3 &'})
    assert settings.password() == 'pass-from-helper'
    assert time.monotonic() - started < 2.5
    flood = settings_from_mapping({'smtp_password_command': 'yes'})
    with pytest.raises(ConfigError, match='more than 64 KiB'):
        flood.password()
