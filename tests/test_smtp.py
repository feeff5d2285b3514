"""SMTPMailer against a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import threading
from typing import Iterator

import pytest

from schwarz.mailqueue import SMTPMailer, init_smtp_mailer
from schwarz.mailqueue.config import ConfigError
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'From: a@x\r\nTo: b@x\r\nSubject: hi\r\n\r\nbody\r\n'


@pytest.fixture(params=[True, False], ids=['pipelining', 'no-pipelining'])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SMTPTestServer]:
    """Every transaction test runs with and without PIPELINING (RFC 2920)."""
    with SMTPTestServer(pipelining=request.param) as server:
        yield server


def mailer_for(server: SMTPTestServer, **kwargs) -> SMTPMailer:
    kwargs.setdefault('tls', 'none')
    kwargs.setdefault('timeout', 5)
    return SMTPMailer(server.hostname, server.port, **kwargs)


def test_delivers_and_reports_per_recipient(smtp_server: SMTPTestServer) -> None:
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['b@x', 'c@x'], MSG)
    assert result and result.accepted == ['b@x', 'c@x']
    assert result.smtp_response is not None and result.smtp_response.code == 250
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos, received.data) == ('a@x', ['b@x', 'c@x'], MSG)


def test_bare_line_endings_and_leading_dots_arrive_normalised(smtp_server: SMTPTestServer) -> None:
    with mailer_for(smtp_server) as mailer:
        assert mailer.send('a@x', ['b@x'], b'Subject: x\n\n.line\rbare cr\n.\nend')
    assert smtp_server.received[0].data == b'Subject: x\r\n\r\n.line\r\nbare cr\r\n.\r\nend\r\n'


def test_partial_refusal_250_451_550(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_recipient_reply('later@x', 451, 'try later')
    smtp_server.set_recipient_reply('nobody@x', 550, 'no such user')
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['ok@x', 'later@x', 'nobody@x'], MSG)
    assert not result
    assert result.accepted == ['ok@x']
    assert result.deferred == {'later@x': (451, 'try later')}
    assert result.refused == {'nobody@x': (550, 'no such user')}
    assert [m.rcpt_tos for m in smtp_server.received] == [['ok@x']]


@pytest.mark.parametrize('command', ['MAIL', 'DATA'])
def test_whole_message_5xx_is_permanent_and_4xx_temporary(smtp_server: SMTPTestServer, command: str) -> None:
    with mailer_for(smtp_server) as mailer:
        smtp_server.set_reply(command, 554, 'go away')
        result = mailer.send('a@x', ['b@x'], MSG)
        assert result.refused == {'b@x': (554, 'go away')} and not result.deferred
        smtp_server.set_reply(command, 452, 'full')
        result = mailer.send('a@x', ['b@x'], MSG)
        assert result.deferred == {'b@x': (452, 'full')} and not result.refused
        smtp_server.clear_reply(command)
        assert mailer.send('a@x', ['b@x'], MSG)  # the connection is still usable
    assert len(smtp_server.received) == 1


def test_552_on_rcpt_means_too_many_recipients_try_later(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_recipient_reply('many@x', 552, 'too many recipients')
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['b@x', 'many@x'], MSG)
    assert result.accepted == ['b@x'] and 'many@x' in result.deferred


def test_421_is_temporary(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('RCPT', 421, 'shutting down')
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['b@x', 'c@x'], MSG)
    assert set(result.deferred) == {'b@x', 'c@x'} and not result.refused and not result.accepted
    assert smtp_server.received == []


def test_disconnect_mid_data_is_temporary(smtp_server: SMTPTestServer) -> None:
    smtp_server.disconnect_during_data = True
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['b@x'], MSG)
        assert result.deferred['b@x'][0] == 451 and not result.refused
        smtp_server.disconnect_during_data = False
        assert mailer.send('a@x', ['b@x'], MSG)  # reconnects by itself


def test_server_down_is_temporary_connection_failure() -> None:
    server = SMTPTestServer()
    server.start()
    port = server.port
    server.stop()
    result = SMTPMailer('127.0.0.1', port, tls='none', timeout=2).send('a@x', ['b@x'], MSG)
    assert result.connection_failed and set(result.deferred) == {'b@x'}
    assert 'Connection refused' in (result.error or '')


def test_timeout_is_temporary(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_delay('DATA', 3)
    with mailer_for(smtp_server, timeout=0.5) as mailer:
        result = mailer.send('a@x', ['b@x'], MSG)
    assert set(result.deferred) == {'b@x'} and not result.accepted


def test_pipelining_sends_mail_rcpt_data_in_one_batch(smtp_server: SMTPTestServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger='mailqueue.smtp')
    with mailer_for(smtp_server) as mailer:
        assert mailer.send('a@x', ['b@x', 'c@x'], MSG)
    dialog = [r.getMessage().split(' ', 1)[1] for r in caplog.records]
    start = next(i for i, line in enumerate(dialog) if line.startswith('> MAIL FROM:<a@x>'))
    transaction = dialog[start:start + 8]
    if smtp_server._pipelining:
        assert [line[:6] for line in transaction[:4]] == ['> MAIL', '> RCPT', '> RCPT', '> DATA']
        assert transaction[4:7] == ['< 250 OK', '< 250 OK', '< 250 OK']
    else:
        assert [line[:6] for line in transaction[:4]] == ['> MAIL', '< 250 ', '> RCPT', '< 250 ']
    assert len(smtp_server.received) == 1


def test_mail_refused_with_pipelined_rcpts(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('MAIL', 550, 'sender rejected')
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['b@x', 'c@x'], MSG)
        assert result.refused == {'b@x': (550, 'sender rejected'), 'c@x': (550, 'sender rejected')}
        smtp_server.clear_reply('MAIL')
        assert mailer.send('a@x', ['b@x'], MSG)  # the session is still in a clean state
    assert [m.rcpt_tos for m in smtp_server.received] == [['b@x']]


def test_all_recipients_refused_then_next_message_works(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_recipient_reply('x@x', 550, 'no')
    smtp_server.set_recipient_reply('y@x', 450, 'later')
    with mailer_for(smtp_server) as mailer:
        result = mailer.send('a@x', ['x@x', 'y@x'], MSG)
        assert result.refused == {'x@x': (550, 'no')} and result.deferred == {'y@x': (450, 'later')}
        assert mailer.send('a@x', ['b@x'], MSG)
    assert [m.rcpt_tos for m in smtp_server.received] == [['b@x']]
    assert smtp_server.connection_count == 1


def test_one_connection_for_many_messages(smtp_server: SMTPTestServer) -> None:
    with mailer_for(smtp_server) as mailer:
        for n in range(50):
            assert mailer.send('a@x', [f'r{n}@x'], MSG)
    assert len(smtp_server.received) == 50
    assert smtp_server.connection_count == 1


def test_reconnects_when_idle_connection_was_closed(smtp_server: SMTPTestServer) -> None:
    with mailer_for(smtp_server) as mailer:
        assert mailer.send('a@x', ['b@x'], MSG)
        smtp_server.stop()  # drops the idle connection
        smtp_server.start()
        assert mailer.send('a@x', ['c@x'], MSG)
    assert [m.rcpt_tos for m in smtp_server.received][-1] == ['c@x']
    assert smtp_server.connection_count == 2


def test_thread_safe_sends_share_one_mailer(smtp_server: SMTPTestServer) -> None:
    results = []
    with mailer_for(smtp_server) as mailer:
        def work(n: int) -> None:
            for i in range(10):
                results.append(bool(mailer.send('a@x', [f'{n}-{i}@x'], MSG)))
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [True] * 40 and len(smtp_server.received) == 40


@pytest.mark.parametrize('mode', ['starttls', 'implicit'])
def test_tls_verification_fails_for_self_signed_unless_disabled(mode: str) -> None:
    with SMTPTestServer(tls=mode) as server:
        result = SMTPMailer('127.0.0.1', server.port, tls=mode, tls_verify=True, timeout=5).send('a@x', ['b@x'], MSG)
        assert set(result.deferred) == {'b@x'} and 'certificate verification failed' in (result.error or '')
        assert server.received == []
        with SMTPMailer('127.0.0.1', server.port, tls=mode, tls_verify=False, timeout=5) as mailer:
            assert mailer.send('a@x', ['b@x'], MSG)
        with SMTPMailer('localhost', server.port, tls=mode, cafile=server.cert_path, tls_verify=True,
                        timeout=5) as mailer:
            assert mailer.send('a@x', ['c@x'], MSG)
        assert len(server.received) == 2


def test_starttls_required_but_not_offered(smtp_server: SMTPTestServer) -> None:
    result = mailer_for(smtp_server, tls='starttls').send('a@x', ['b@x'], MSG)
    assert 'does not offer STARTTLS' in (result.error or '') and smtp_server.received == []


def test_tls_verification_default_on_for_remote_hosts() -> None:
    import ssl

    # None = automatic: decided per connection by the address really reached
    assert SMTPMailer('smtp.example.com', 587).tls_verify is None
    assert SMTPMailer('smtp.example.com', 587).context_for(False).verify_mode == ssl.CERT_REQUIRED
    assert SMTPMailer('127.0.0.1', 25).context_for(True).verify_mode == ssl.CERT_NONE


def test_auth_success_and_failure_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = 'S3cr3t%pass'
    caplog.set_level(logging.DEBUG)
    with SMTPTestServer(auth={'user': secret}, auth_required=True) as server:
        with SMTPMailer('127.0.0.1', server.port, tls='none', username='user', password=secret) as mailer:
            assert mailer.send('a@x', ['b@x'], MSG)
        bad = SMTPMailer('127.0.0.1', server.port, tls='none', username='user', password='wrong' + secret)
        result = bad.send('a@x', ['b@x'], MSG)
        assert not result and 'authentication' in (result.error or '') and '535' in (result.error or '')
        assert server.auth_logins == ['user'] and len(server.received) == 1
    dialog = [r for r in caplog.records if r.name == 'mailqueue.smtp']
    assert any('AUTH' in r.getMessage() for r in dialog)
    import base64
    encoded = [secret, base64.b64encode(secret.encode()).decode(),
               base64.b64encode(b'\0user\0' + secret.encode()).decode()]
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert not any(e in text for e in encoded), record.getMessage()
    assert secret not in repr(bad)


def test_no_auth_in_clear_text_to_remote_host() -> None:
    """A session without TLS to a host that is not loopback never sends AUTH.

    The connected address decides "remote"; the socket is a real one to the test server (which offers AUTH),
    marked as reaching a non-loopback peer.
    """
    import logging as logging_module

    from schwarz.mailqueue.smtp.client import SMTPConnection, TLSMode, is_local_host
    from schwarz.mailqueue.smtp.errors import AuthenticationError
    from schwarz.mailqueue.smtp.wire import SMTPWire
    assert not is_local_host('smtp.example.com') and not is_local_host('127.mail.example.com')
    assert is_local_host('127.0.0.2') and is_local_host('::1') and is_local_host('[::1]')
    with SMTPTestServer(auth={'u': 'p'}) as server:
        conn = SMTPConnection('smtp.example.com', 25, username='u', password='p', tls=TLSMode.NONE)
        wire = SMTPWire.connect('127.0.0.1', server.port, 5, logging_module.getLogger('mailqueue.smtp'))
        assert wire.read_reply()[0] == 220
        # Tests may talk only to 127.0.0.1: the one thing simulated is a peer address that is not loopback.
        wire.peer_is_loopback = False
        conn._wire = wire
        conn._ehlo()
        assert wire.has('auth')
        with pytest.raises(AuthenticationError, match='without TLS'):
            conn._authenticate()
        conn.close()
        assert 'AUTH' not in server.commands and server.auth_logins == []


def test_init_smtp_mailer_from_settings(smtp_server: SMTPTestServer) -> None:
    mailer = init_smtp_mailer({'smtp_hostname': '127.0.0.1', 'smtp_port': str(smtp_server.port), 'smtp_tls': 'no'})
    assert mailer.send('a@x', ['b@x'], MSG)
    with pytest.raises(ConfigError, match='smtp_hostnme'):
        init_smtp_mailer({'smtp_hostnme': 'x'})
    with pytest.raises(ConfigError, match='smtp_port'):
        init_smtp_mailer({'smtp_port': 'abc'})


def test_failures_sharing_a_reply_are_described_once_and_the_description_is_bounded() -> None:
    from schwarz.mailqueue.result import FAILURES_TEXT_LIMIT, REPLY_TEXT_LIMIT, Reply, describe_failures

    assert describe_failures({'a@x.org': (450, 'busy'), 'b@x.org': (450, 'busy'), 'c@x.org': (550, 'no')}) \
        == 'a@x.org, b@x.org: 450 busy; c@x.org: 550 no'
    huge = Reply(450, 'x' * 100_000)
    assert len(huge.as_tuple()[1]) < REPLY_TEXT_LIMIT + 50 and str(huge).startswith('450 xxx')
    many = {f'r{i}@x.org': (450 + i % 50, huge.as_tuple()[1]) for i in range(1000)}
    text = describe_failures(many)
    assert len(text) < FAILURES_TEXT_LIMIT + REPLY_TEXT_LIMIT + 100
    assert text.endswith('more recipient(s)') and 'r0@x.org' in text
