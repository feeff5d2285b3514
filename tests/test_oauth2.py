"""OAuth2 (issue 13): XOAUTH2 and OAUTHBEARER against the test server, tokens from a token endpoint on
127.0.0.1 (success, invalid_grant, slow, HTTP 500, a token the server rejects once, expiry during a
daemon run) or from a command. Mail is delivered or queued, never lost; no token, client secret or
refresh token appears in a log record, an error text, a queue entry or mq-queue's output."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from schwarz.mailqueue.bootstrap import build_runner, build_smtp_transport, build_transports
from schwarz.mailqueue.config import ConfigError, parse_config_text, settings_from_mapping
from schwarz.mailqueue.handler import MessageHandler
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.smtp.auth import (
    CommandTokenSource,
    OAuth2TokenSource,
    choose_mechanism,
    oauthbearer_response,
    xoauth2_response,
)
from schwarz.mailqueue.smtp.errors import AuthenticationError, TokenRefused, TokenUnavailable, is_unreachable_error
from schwarz.mailqueue.smtp.token_cache import TokenCache
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import OAuth2TestEndpoint, SMTPTestServer
from test_cli_helpers import run_tool, script, write_config

from helpers import Logs

USER = 'mailbox@example.com'
SECRET = 'client-secret-Zq8vX2'
REFRESH = 'refresh-token-Kd93Lw'
MSG = b'From: mailbox@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n'


@pytest.fixture
def server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer(oauth_tokens={}) as srv:
        yield srv


@pytest.fixture
def endpoint(server: SMTPTestServer) -> Iterator[OAuth2TestEndpoint]:
    with OAuth2TestEndpoint(server, USER, client_secret=SECRET) as ep:
        yield ep


def oauth_values(server: SMTPTestServer, endpoint: OAuth2TestEndpoint, **extra: str) -> Dict[str, str]:
    values = {
        'smtp_hostname': server.hostname, 'smtp_port': str(server.port), 'smtp_tls': 'none',
        'smtp_username': USER, 'smtp_oauth2_token_url': endpoint.url, 'smtp_oauth2_client_id': endpoint.client_id,
        'smtp_oauth2_scope': 'https://outlook.office365.com/.default', 'smtp_timeout': '5',
    }
    if endpoint.refresh_token is not None:
        values['smtp_oauth2_refresh_token'] = endpoint.refresh_token
    if endpoint.client_secret is not None:
        values['smtp_oauth2_client_secret'] = endpoint.client_secret
    values.update(extra)
    return values


def secret_texts(endpoint: OAuth2TestEndpoint, *extra: str) -> List[str]:
    """Every secret and the encodings it might travel in."""
    values = [SECRET, REFRESH, *endpoint.issued, *extra]
    if endpoint.refresh_token:
        values.append(endpoint.refresh_token)
    forms = []
    for value in values:
        forms += [value, base64.b64encode(value.encode()).decode().rstrip('=')]
    for token in endpoint.issued:
        forms += [xoauth2_response(USER, token).rstrip('='), oauthbearer_response(USER, token, '127.0.0.1', 25)[:40]]
    return forms


def assert_no_secret(text: str, secrets: List[str]) -> None:
    for secret in secrets:
        assert secret not in text, f'a secret leaked: {secret[:12]}...'


# --- SASL encodings and the choice of mechanism ---------------------------------------------------

def test_xoauth2_and_oauthbearer_initial_responses() -> None:
    assert base64.b64decode(xoauth2_response('a@b', 'T')) == b'user=a@b\x01auth=Bearer T\x01\x01'
    assert base64.b64decode(oauthbearer_response('a,=b@c', 'T', 'smtp.example', 587)) == (
        b'n,a=a=2C=3Db@c,\x01host=smtp.example\x01port=587\x01auth=Bearer T\x01\x01')


def test_auto_prefers_xoauth2_with_a_token_and_plain_with_a_password() -> None:
    assert choose_mechanism('auto', ['PLAIN', 'LOGIN', 'XOAUTH2', 'OAUTHBEARER'], token=True, peer='p') == 'XOAUTH2'
    assert choose_mechanism('auto', ['OAUTHBEARER', 'PLAIN'], token=True, peer='p') == 'OAUTHBEARER'
    assert choose_mechanism('auto', ['LOGIN', 'XOAUTH2'], token=False, peer='p') == 'LOGIN'
    with pytest.raises(AuthenticationError, match='offered: LOGIN PLAIN'):
        choose_mechanism('auto', ['LOGIN', 'PLAIN'], token=True, peer='p')
    with pytest.raises(AuthenticationError, match='does not offer AUTH OAUTHBEARER'):
        choose_mechanism('oauthbearer', ['XOAUTH2'], token=True, peer='p')


# --- the test server's AUTH --------------------------------------------------------------------------

@pytest.mark.parametrize('mechanism', ['xoauth2', 'oauthbearer'])
def test_both_mechanisms_against_the_test_server(server: SMTPTestServer, mechanism: str) -> None:
    server.add_oauth_token(USER, 'good-token')
    source = CommandTokenSource('echo good-token')
    from schwarz.mailqueue.smtp.transport import SMTPMailer

    with SMTPMailer(server.hostname, server.port, tls='none', username=USER, auth=mechanism,
                    token_source=source) as mailer:
        result = mailer.send(USER, ['b@example.org'], MSG)
    assert result, result
    assert server.auth_attempts == [(mechanism.upper(), USER, True)]
    assert server.received[0].auth_login == USER
    assert mailer.describe_auth() == f'{mechanism.upper()} as {USER}; token from smtp_oauth2_token_command'


def test_the_test_server_still_speaks_plain_and_login_alongside() -> None:
    with SMTPTestServer(auth={'u': 'p'}, oauth_tokens={'u': 't'}) as srv:
        from schwarz.mailqueue.smtp.transport import SMTPMailer

        with SMTPMailer(srv.hostname, srv.port, tls='none', username='u', password='p') as mailer:
            assert mailer.send('a@x', ['b@x'], MSG)
        assert mailer.describe_auth() == 'PLAIN as u'
    with SMTPTestServer(auth={'u': 'p'}) as srv:  # without oauth_tokens: no OAuth mechanisms offered
        with SMTPMailer(srv.hostname, srv.port, tls='none', username='u', token_source=CommandTokenSource('echo t'),
                        ) as mailer:
            result = mailer.send('a@x', ['b@x'], MSG)
        assert not result and 'offered: LOGIN PLAIN' in (result.error or '')


def test_a_rejected_token_gets_the_error_challenge_and_535(server: SMTPTestServer) -> None:
    from schwarz.mailqueue.smtp.transport import SMTPMailer

    with SMTPMailer(server.hostname, server.port, tls='none', username=USER,
                    token_source=CommandTokenSource('echo not-valid')) as mailer:
        result = mailer.send(USER, ['b@example.org'], MSG)
    assert not result and result.connection_failed
    assert '535' in (result.error or '') and 'token status 401' in (result.error or '')
    # rejected once, a new token fetched (the command ran again), rejected again: no more tries
    assert [accepted for _, _, accepted in server.auth_attempts] == [False, False]
    assert server.received == []


# --- the token endpoint --------------------------------------------------------------------------------

def test_client_credentials_token_is_fetched_cached_0600_and_reused(server: SMTPTestServer,
                                                                     endpoint: OAuth2TestEndpoint,
                                                                     tmp_path: Path) -> None:
    cache = tmp_path / 'tokens.json'
    settings = settings_from_mapping(oauth_values(server, endpoint, smtp_oauth2_token_cache=str(cache)))
    with build_smtp_transport(settings) as mailer:
        assert mailer.send(USER, ['b@example.org'], MSG)
        assert 'token from the token endpoint http://127.0.0.1' in (mailer.describe_auth() or '')
    assert endpoint.requests[0]['grant_type'] == 'client_credentials'
    assert endpoint.requests[0]['scope'] == 'https://outlook.office365.com/.default'
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    # another process (a new transport) takes the token from the cache: no second request
    with build_smtp_transport(settings) as mailer:
        assert mailer.send(USER, ['b@example.org'], MSG)
        assert f'token from the token cache {cache}' in (mailer.describe_auth() or '')
    assert len(endpoint.requests) == 1 and len(server.received) == 2


def test_token_is_refreshed_shortly_before_it_expires(server: SMTPTestServer, endpoint: OAuth2TestEndpoint,
                                                      tmp_path: Path) -> None:
    now = [1_000_000.0]
    settings = settings_from_mapping(oauth_values(server, endpoint,
                                                  smtp_oauth2_token_cache=str(tmp_path / 't.json')))
    transport = build_smtp_transport(settings, token_clock=lambda: now[0])
    assert isinstance(transport, SMTPMailer)  # no accounts: a single mailer
    source = transport.token_source
    assert source is not None  # OAuth2 configured
    first = source.token()
    now[0] += 3600 - 200
    assert source.token() is first
    now[0] += 100  # 100 s before expiry: too close
    assert source.token().value != first.value
    assert len(endpoint.issued) == 2


def test_refresh_token_grant_persists_a_rotated_refresh_token(server: SMTPTestServer, tmp_path: Path) -> None:
    cache = tmp_path / 'tokens.json'
    with OAuth2TestEndpoint(server, USER, client_secret=SECRET, refresh_token=REFRESH,
                            rotate_refresh_tokens=True) as endpoint:
        settings = settings_from_mapping(oauth_values(server, endpoint, smtp_oauth2_token_cache=str(cache)))
        now = [1_000_000.0]
        with build_smtp_transport(settings, token_clock=lambda: now[0]) as mailer:
            assert mailer.send(USER, ['b@example.org'], MSG)
        assert endpoint.requests[-1]['grant_type'] == 'refresh_token'
        assert endpoint.requests[-1]['refresh_token'] == REFRESH
        rotated = endpoint.refresh_token
        assert rotated is not None and rotated != REFRESH and rotated in cache.read_text()
        # later (the access token expired), another process: only the rotated refresh token works now
        now[0] += 7200
        with build_smtp_transport(settings, token_clock=lambda: now[0]) as mailer:
            assert mailer.send(USER, ['b@example.org'], MSG)
        assert endpoint.requests[-1]['refresh_token'] == rotated
        assert len(server.received) == 2


def test_a_refused_rotated_refresh_token_falls_back_to_the_configured_one(server: SMTPTestServer,
                                                                         tmp_path: Path) -> None:
    cache = TokenCache(str(tmp_path / 'tokens.json'))
    with OAuth2TestEndpoint(server, USER, client_secret=SECRET, refresh_token=REFRESH) as endpoint:
        source = OAuth2TokenSource(endpoint.url, endpoint.client_id, client_secret=SECRET, refresh_token=REFRESH,
                                   cache=cache, username=USER)
        key = source.cache_key
        from schwarz.mailqueue.smtp.auth import _fingerprint

        cache.store({key: {'refresh_token': 'stale-rotated', 'refresh_token_of': _fingerprint(REFRESH)}})
        assert source.token().value in endpoint.issued
        assert [r['refresh_token'] for r in endpoint.requests] == ['stale-rotated', REFRESH]


@pytest.mark.parametrize('fault', ['invalid_grant', 'http_500', 'slow', 'down'])
def test_token_endpoint_trouble_queues_the_message(server: SMTPTestServer, endpoint: OAuth2TestEndpoint,
                                                   tmp_path: Path, fault: str, logs: Logs) -> None:
    values = oauth_values(server, endpoint, queue_dir=str(tmp_path / 'queue'), smtp_timeout='1')
    if fault == 'invalid_grant':
        endpoint.fail_with(400, 'invalid_grant')
    elif fault == 'http_500':
        endpoint.fail_with(500)
    elif fault == 'slow':
        endpoint.delay = 3
    else:
        values['smtp_oauth2_token_url'] = f'http://127.0.0.1:{_closed_port()}/token'
    settings = settings_from_mapping(values)
    handler = MessageHandler(build_transports(settings))
    started = time.monotonic()
    result = handler.send_message(MSG, sender=USER, recipients=['b@example.org'])
    assert time.monotonic() - started < 5
    handler.close()
    assert result and result.queued and result.queued_to == ['b@example.org']
    assert server.received == [] and server.connection_count == 0  # no connection held while waiting
    [entry] = list(MaildirQueue(str(tmp_path / 'queue')).entries())
    assert entry.meta is not None
    error = entry.meta.last_error or ''
    expected = {'invalid_grant': 'refused: invalid_grant', 'http_500': 'answered HTTP 500',
                'slow': 'timed out', 'down': 'unreachable'}[fault]
    assert expected in error, error
    # a refused grant needs the operator; an endpoint that is down is like a host that is down
    assert is_unreachable_error(error) == (fault != 'invalid_grant')
    assert_no_secret(error + '\n'.join(logs.lines), secret_texts(endpoint))


def test_token_errors_are_temporary_and_say_nothing_secret(tmp_path: Path) -> None:
    with OAuth2TestEndpoint(client_secret=SECRET, refresh_token=REFRESH) as endpoint:
        source = OAuth2TokenSource(endpoint.url, endpoint.client_id, client_secret=SECRET,
                                   refresh_token='wrong-' + REFRESH, username=USER)
        with pytest.raises(TokenRefused) as refused:
            source.token()
        assert refused.value.temporary and 'invalid_grant' in str(refused.value)
        # an endpoint that echoes the secret in its error text: scrubbed
        endpoint.fail_with(400, f'invalid_client {SECRET}')
        source = OAuth2TokenSource(endpoint.url, endpoint.client_id, client_secret=SECRET, username=USER)
        with pytest.raises(TokenRefused) as echoed:
            source.token()
        assert SECRET not in str(echoed.value) and '***' in str(echoed.value)
        for text in (repr(source), repr(source._client_secret), str(echoed.value)):
            assert SECRET not in text and REFRESH not in text
        endpoint.fail_with(503)
        with pytest.raises(TokenUnavailable):
            source.token()


def test_a_token_rejected_once_by_the_server_is_refreshed_and_the_mail_delivered(
        server: SMTPTestServer, endpoint: OAuth2TestEndpoint, tmp_path: Path, logs: Logs) -> None:
    settings = settings_from_mapping(oauth_values(server, endpoint,
                                                  smtp_oauth2_token_cache=str(tmp_path / 'tokens.json')))
    with build_smtp_transport(settings) as mailer:
        assert mailer.send(USER, ['b@example.org'], MSG)
    first = endpoint.issued[0]
    server.revoke_oauth_token(first)  # revoked (or expired early): the cache does not know
    with build_smtp_transport(settings) as mailer:
        result = mailer.send(USER, ['b@example.org'], MSG)
        assert result, result
        assert 'after the server rejected the previous one' in (mailer.describe_auth() or '')
    assert [ok for _, _, ok in server.auth_attempts] == [True, False, True]
    assert len(endpoint.issued) == 2 and len(server.received) == 2
    assert any('rejected the OAuth2 token' in line for line in logs.lines)
    assert_no_secret('\n'.join(logs.lines), secret_texts(endpoint))


def test_concurrent_workers_share_one_token(server: SMTPTestServer, endpoint: OAuth2TestEndpoint) -> None:
    settings = settings_from_mapping(oauth_values(server, endpoint))
    mailer = build_smtp_transport(settings)
    clones = [mailer.clone() for _ in range(4)]
    threads = [threading.Thread(target=c.send, args=(USER, ['b@example.org'], MSG)) for c in clones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for clone in clones:
        clone.close()
    assert len(server.received) == 4 and len(endpoint.issued) == 1


def test_an_unwritable_cache_only_warns(server: SMTPTestServer, endpoint: OAuth2TestEndpoint, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / 'not-a-directory').write_text('')  # unwritable even for root
    cache = str(tmp_path / 'not-a-directory' / 'tokens.json')
    settings = settings_from_mapping(oauth_values(server, endpoint, smtp_oauth2_token_cache=cache))
    with build_smtp_transport(settings) as mailer:
        assert mailer.send(USER, ['b@example.org'], MSG)
    assert 'tokens are kept in memory only' in caplog.text


# --- expiry during a daemon run ------------------------------------------------------------------------

def test_token_expiry_during_a_daemon_run(server: SMTPTestServer, tmp_path: Path, logs: Logs) -> None:
    """The daemon keeps running while the token expires: the next connection gets a new one."""
    now = [2_000_000.0]
    with OAuth2TestEndpoint(server, USER, client_secret=SECRET, expires_in=600) as endpoint:
        queue_dir = tmp_path / 'queue'
        settings = settings_from_mapping(oauth_values(server, endpoint, queue_dir=str(queue_dir)))
        store = MaildirQueue(str(queue_dir))
        runner = build_runner(settings, store, workers=1, token_clock=lambda: now[0])
        daemon = threading.Thread(target=runner.run_forever, kwargs={'poll_interval': 0.05,
                                                                     'full_scan_interval': 0.2})
        daemon.start()
        try:
            store.enqueue(MSG, USER, ['first@example.org'])
            server.wait_for_messages(1, timeout=10)
            # the token expires (the server no longer takes it), and the idle connection is gone
            now[0] += 900
            server.revoke_oauth_token(endpoint.issued[0])
            for mailer in [runner.mailer]:
                mailer.close()  # type: ignore[union-attr]
            store.enqueue(MSG, USER, ['second@example.org'])
            server.wait_for_messages(2, timeout=10)
        finally:
            runner.stop()
            daemon.join(10)
    assert [m.rcpt_tos for m in server.received] == [['first@example.org'], ['second@example.org']]
    # a new token was fetched because the cached one had expired, not after a rejection
    assert len(endpoint.issued) == 2 and all(ok for _, _, ok in server.auth_attempts)
    assert list(store.entries()) == []
    assert_no_secret('\n'.join(logs.lines), secret_texts(endpoint))


# --- the token command ---------------------------------------------------------------------------------

def test_token_command_gets_no_stdin_and_its_failure_queues(server: SMTPTestServer, tmp_path: Path,
                                                            logs: Logs) -> None:
    server.add_oauth_token(USER, 'cmd-token-123')
    # "cat" would hang (or eat mq-sendmail's message) if stdin were not /dev/null
    command = 'cat >/dev/null; echo cmd-token-123'
    values = {'smtp_hostname': server.hostname, 'smtp_port': str(server.port), 'smtp_tls': 'none',
              'smtp_username': USER, 'smtp_oauth2_token_command': command, 'queue_dir': str(tmp_path / 'q')}
    handler = MessageHandler(build_transports(settings_from_mapping(values)))
    result = handler.send_message(MSG, sender=USER, recipients=['b@example.org'])
    assert result is not None and result.accepted == ['b@example.org']
    handler.close()
    values['smtp_oauth2_token_command'] = 'echo cmd-token-123 >&2; exit 3'
    handler = MessageHandler(build_transports(settings_from_mapping(values)))
    result = handler.send_message(MSG, sender=USER, recipients=['b@example.org'])
    handler.close()
    assert result is not None and result.queued
    assert 'smtp_oauth2_token_command exited with status 3' in (result.error or '')
    assert_no_secret('\n'.join(logs.lines) + (result.error or ''), ['cmd-token-123'])


# --- configuration ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('text, message', [
    ('smtp_username = u\nsmtp_oauth2_token_url = http://login.example/token\nsmtp_oauth2_client_id = c\n'
     'smtp_oauth2_client_secret = s\n', 'must use https://'),
    ('smtp_username = u\nsmtp_oauth2_token_url = https://login.example/token\nsmtp_oauth2_client_secret = s\n',
     'smtp_oauth2_client_id: not set'),
    ('smtp_username = u\nsmtp_oauth2_token_url = https://login.example/token\nsmtp_oauth2_client_id = c\n',
     'set smtp_oauth2_client_secret'),
    ('smtp_username = u\nsmtp_password = p\nsmtp_oauth2_token_command = t\n', 'a password or OAuth2'),
    ('smtp_oauth2_token_command = t\n', 'smtp_username: not set'),
    ('smtp_username = u\nsmtp_auth = xoauth2\nsmtp_password = p\n', 'needs a token'),
    ('smtp_username = u\nsmtp_auth = plain\nsmtp_oauth2_token_command = t\n', 'plain needs a password'),
    ('smtp_username = u\nsmtp_auth = cram-md5\n', 'expected auto, plain'),
    ('smtp_oauth2_client_id = c\n', 'needs smtp_oauth2_token_url'),
    ('smtp_username = u\nsmtp_oauth2_token_command = t\nsmtp_oauth2_token_url = https://l.example/t\n'
     'smtp_oauth2_client_id = c\nsmtp_oauth2_client_secret = s\n', 'not both'),
])
def test_oauth2_configuration_mistakes_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_text('[mqrunner]\n' + text, 'mq.conf')


def test_secrets_stay_out_of_reprs() -> None:
    settings = parse_config_text(f'[mqrunner]\nsmtp_username = u\nsmtp_oauth2_token_url = https://l.example/t\n'
                                 f'smtp_oauth2_client_id = c\nsmtp_oauth2_client_secret = {SECRET}\n'
                                 f'smtp_oauth2_refresh_token = {REFRESH}\n', 'mq.conf')
    assert SECRET not in repr(settings) and REFRESH not in repr(settings)
    mailer = build_smtp_transport(settings)
    assert isinstance(mailer, SMTPMailer)  # no accounts: a single mailer
    for text in (repr(mailer), repr(mailer.token_source)):
        assert SECRET not in text and REFRESH not in text


def test_a_config_with_a_client_secret_readable_by_others_draws_a_warning(tmp_path: Path) -> None:
    from schwarz.mailqueue.config import load_config

    path = tmp_path / 'mq.conf'
    path.write_text(f'[mqrunner]\nsmtp_username = u\nsmtp_oauth2_token_url = https://l.example/t\n'
                    f'smtp_oauth2_client_id = c\nsmtp_oauth2_client_secret = {SECRET}\n')
    path.chmod(0o644)
    assert any('readable by other users' in w for w in load_config(str(path)).warnings)


# --- the command-line tools ------------------------------------------------------------------------------

def test_mq_send_test_reports_mechanism_and_token_origin(server: SMTPTestServer, endpoint: OAuth2TestEndpoint,
                                                         tmp_path: Path) -> None:
    values = oauth_values(server, endpoint, smtp_oauth2_token_cache=str(tmp_path / 'tokens.json'))
    values.pop('smtp_port')
    values['smtp_hostname'] = f'{server.hostname}:{server.port}'
    config = write_config(tmp_path, None, **values, **{'from': USER})
    proc = run_tool([script('mq-send-test'), '-C', str(config), '--to', 'b@example.org'], home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert f'authenticated with XOAUTH2 as {USER}; token from the token endpoint {endpoint.url} ' \
           f'(client-credentials grant)' in out
    proc = run_tool([script('mq-send-test'), '-C', str(config), '--to', 'b@example.org'], home=tmp_path)
    assert f'token from the token cache {tmp_path / "tokens.json"}' in proc.stdout.decode()
    endpoint.fail_with(400, 'invalid_grant')
    (tmp_path / 'tokens.json').unlink()
    proc = run_tool([script('mq-send-test'), '-C', str(config), '--to', 'b@example.org'], home=tmp_path)
    assert proc.returncode == 75
    assert 'refused: invalid_grant' in proc.stderr.decode()
    assert 'OAuth2 tokens come from the token endpoint' in proc.stderr.decode()
    assert_no_secret(out + proc.stdout.decode() + proc.stderr.decode(), secret_texts(endpoint))


def test_nothing_secret_in_logs_queue_or_mq_queue_output(server: SMTPTestServer, tmp_path: Path) -> None:
    """mq-sendmail with -v (the SMTP dialog) while the server rejects a token and the endpoint fails,
    then mq-queue list/show and mq-run -v: no token, client secret or refresh token anywhere."""
    queue_dir = tmp_path / 'queue'
    with OAuth2TestEndpoint(server, USER, client_secret=SECRET, refresh_token=REFRESH,
                            rotate_refresh_tokens=True) as endpoint:
        config = write_config(tmp_path, server, **oauth_values(server, endpoint, queue_dir=str(queue_dir)),
                              **{'from': USER})
        outputs: List[str] = []

        def tool(*argv: str, input: bytes = b'') -> None:
            proc = run_tool(list(argv), input=input, home=tmp_path)
            outputs.append(proc.stdout.decode('utf-8', 'replace') + proc.stderr.decode('utf-8', 'replace'))
            assert proc.returncode == 0, outputs[-1]

        sendmail = script('mq-sendmail')
        tool(sendmail, '-v', '-C', str(config), '-f', USER, 'b@example.org', input=MSG)  # delivered
        server.revoke_oauth_token(endpoint.issued[-1])
        tool(sendmail, '-v', '-C', str(config), '-f', USER, 'c@example.org', input=MSG)  # refreshed, delivered
        server.revoke_oauth_token(endpoint.issued[-1])
        endpoint.fail_with(500)
        tool(sendmail, '-v', '-C', str(config), '-f', USER, 'd@example.org', input=MSG)  # queued
        endpoint.fail_with(400, 'invalid_grant')
        tool(sendmail, '-v', '-C', str(config), '-f', USER, 'e@example.org', input=MSG)  # queued
        tool(script('mq-queue'), '-C', str(config), 'list')
        for msg_id in os.listdir(queue_dir / 'new'):
            tool(script('mq-queue'), '-C', str(config), 'show', msg_id)
        endpoint.clear_failure()
        tool(script('mq-run'), '-v', '-C', str(config), '--force')
        everything = '\n'.join(outputs)
        queue_files = b''.join(p.read_bytes() for p in queue_dir.rglob('*') if p.is_file()
                               and p.name != 'oauth2-token-cache.json').decode('utf-8', 'replace')
        assert 'AUTH XOAUTH2 ***' in everything  # the dialog was logged
        assert 'answered HTTP 500' in everything and 'invalid_grant' in everything
        assert len(server.received) == 4, everything  # queued ones delivered by mq-run after all
        assert_no_secret(everything + queue_files, secret_texts(endpoint))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])
