"""Tests for the fault-injecting SMTP test server, with smtplib as a real client."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import threading
import time
from typing import Iterator, List, Tuple

import pytest

from schwarz.mailqueue.testutils import FaultResult, SMTPTestServer

MSG = b'From: a@example.com\r\nTo: b@example.com\r\nSubject: test\r\n\r\nHello\r\n.leading dot\r\n'


def connect(server: SMTPTestServer, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP(server.hostname, server.port, timeout=timeout)


@pytest.fixture
def tls_auth_server(request: pytest.FixtureRequest) -> Iterator[SMTPTestServer]:
    with SMTPTestServer(tls=request.param, auth={'user': 'secret'}) as server:
        yield server


# --- delivery and bookkeeping ---------------------------------------------------


def test_plain_delivery_is_recorded_with_envelope_and_exact_bytes(smtp_server: SMTPTestServer) -> None:
    data = MSG + 'Umlaut: \u00e4\r\n'.encode()
    with connect(smtp_server) as client:
        refused = client.sendmail('Sender@Example.com', ['b@example.com', 'c@example.com'], data)
    assert refused == {}

    [msg] = smtp_server.received
    assert msg.mail_from == 'Sender@Example.com'
    assert msg.rcpt_tos == ['b@example.com', 'c@example.com']
    assert msg.data == data
    assert msg.mail_options == [f'SIZE={len(data)}']
    assert msg.rcpt_options == []
    assert msg.tls is False
    assert msg.as_message()['Subject'] == 'test'
    assert smtp_server.commands == ['EHLO', 'MAIL', 'RCPT', 'RCPT', 'DATA', 'QUIT']


def test_smtputf8_and_8bitmime_are_advertised_and_usable(smtp_server: SMTPTestServer) -> None:
    with connect(smtp_server) as client:
        client.ehlo()
        assert client.has_extn('smtputf8')
        assert client.has_extn('8bitmime')
        assert not client.has_extn('auth')
        client.sendmail('j\u00f6rg@example.com', ['m\u00fcller@example.com'], b'\xc3\xa4\r\n',
                        mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
    [msg] = smtp_server.received
    assert msg.mail_from == 'j\u00f6rg@example.com'
    assert msg.rcpt_tos == ['m\u00fcller@example.com']
    assert msg.smtp_utf8 is True
    assert 'BODY=8BITMIME' in msg.mail_options


def test_connection_count_counts_each_connection(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.connection_count == 0
    for _ in range(3):
        with connect(smtp_server) as client:
            client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert smtp_server.connection_count == 3
    assert len(smtp_server.received) == 3


def test_connection_count_is_one_for_a_reused_connection(smtp_server: SMTPTestServer) -> None:
    with connect(smtp_server) as client:
        for i in range(3):
            client.sendmail('a@example.com', [f'r{i}@example.com'], MSG)
    assert smtp_server.connection_count == 1
    assert [m.rcpt_tos for m in smtp_server.received] == [['r0@example.com'], ['r1@example.com'], ['r2@example.com']]


def test_wait_for_messages(smtp_server: SMTPTestServer) -> None:
    with pytest.raises(AssertionError, match='expected 1 message'):
        smtp_server.wait_for_messages(1, timeout=0.1)

    def deliver() -> None:
        time.sleep(0.1)
        with connect(smtp_server) as client:
            client.sendmail('a@example.com', ['b@example.com'], MSG)

    thread = threading.Thread(target=deliver)
    thread.start()
    try:
        messages = smtp_server.wait_for_messages(1, timeout=5)
    finally:
        thread.join()
    assert [m.rcpt_tos for m in messages] == [['b@example.com']]


def test_reset_clears_observations_and_faults(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('MAIL', 451)
    smtp_server.disconnect_during_data = True
    with connect(smtp_server) as client:
        client.noop()
    smtp_server.reset()
    assert smtp_server.commands == []
    assert smtp_server.disconnect_during_data is False
    with connect(smtp_server) as client:
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert len(smtp_server.received) == 1
    assert smtp_server.connection_count == 2


def test_settings_for_client() -> None:
    with SMTPTestServer() as server:
        assert server.settings_for_client() == {'smtp_hostname': '127.0.0.1', 'smtp_port': str(server.port)}
        assert server.cert_path is None
    server = SMTPTestServer(tls='implicit', auth={'user': 'secret'})
    try:
        assert server.cert_path is not None and os.path.isfile(server.cert_path)
        server.start()
        assert server.settings_for_client() == {
            'smtp_hostname': '127.0.0.1',
            'smtp_port': str(server.port),
            'smtp_tls': 'implicit',
            'smtp_tls_verify': 'false',
            'smtp_username': 'user',
            'smtp_password': 'secret',
        }
        cert_path = server.cert_path
    finally:
        server.close()
    assert not os.path.exists(cert_path)


@pytest.mark.parametrize('command, code', [('BOGUS', 250), ('MAIL', 199), ('MAIL', 600)])
def test_set_reply_rejects_invalid_arguments(smtp_server: SMTPTestServer, command: str, code: int) -> None:
    with pytest.raises(ValueError):
        smtp_server.set_reply(command, code)


# --- fault injection --------------------------------------------------------------


def test_per_recipient_replies_in_one_transaction(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_recipient_reply('ok@example.com', 250, '2.1.5 fine')
    smtp_server.set_recipient_reply('Later@Example.com', 451, '4.2.0 try later')
    smtp_server.set_recipient_reply('gone@example.com', 550)
    with connect(smtp_server) as client:
        refused = client.sendmail(
            'a@example.com', ['ok@example.com', 'later@example.com', 'GONE@example.com'], MSG)
    assert refused == {
        'later@example.com': (451, b'4.2.0 try later'),
        'GONE@example.com': (550, b'5.0.0 Permanent failure (injected)'),
    }
    [msg] = smtp_server.received
    assert msg.rcpt_tos == ['ok@example.com']


def test_mail_reply_421_is_sent_and_connection_closed(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('MAIL', 421, '4.7.0 busy')
    with connect(smtp_server) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert exc_info.value.smtp_code == 421

    client = connect(smtp_server)
    try:
        client.ehlo()
        assert client.mail('a@example.com') == (421, b'4.7.0 busy')
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()
    assert smtp_server.received == []


def test_reply_can_be_limited_and_cleared(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('MAIL', 451, times=1)
    smtp_server.set_reply('DATA', 554, '5.6.0 rejected\ncontent policy')
    with connect(smtp_server) as client:
        client.ehlo()
        assert client.mail('a@example.com')[0] == 451
        assert client.mail('a@example.com')[0] == 250
        client.rcpt('b@example.com')
        assert client.data(MSG) == (554, b'5.6.0 rejected\ncontent policy')
        smtp_server.clear_reply('DATA')
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert len(smtp_server.received) == 1


def test_disconnect_during_data_records_nothing(smtp_server: SMTPTestServer) -> None:
    smtp_server.disconnect_during_data = True
    with connect(smtp_server) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert smtp_server.received == []
    assert smtp_server.commands[-1] == 'DATA'

    smtp_server.disconnect_during_data = False
    with connect(smtp_server) as client:
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert len(smtp_server.received) == 1


def test_drop_connection_on_command(smtp_server: SMTPTestServer) -> None:
    smtp_server.drop_connection_on('RCPT', times=1)
    with connect(smtp_server) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail('a@example.com', ['b@example.com'], MSG)
    with connect(smtp_server) as client:
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    assert len(smtp_server.received) == 1


def test_greeting_override_rejects_connection(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('CONNECT', 421, 'busy')
    with pytest.raises(smtplib.SMTPConnectError) as exc_info:
        connect(smtp_server)
    assert (exc_info.value.smtp_code, exc_info.value.smtp_error) == (421, b'busy')
    smtp_server.clear_reply('CONNECT')
    with connect(smtp_server) as client:
        assert client.noop()[0] == 250


def test_delay_makes_client_time_out_without_blocking_others(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_delay('MAIL', 3.0)
    slow = connect(smtp_server, timeout=0.5)
    try:
        slow.ehlo()
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected, match='timed out'):
            slow.mail('a@example.com')
        assert time.monotonic() - started < 2.0
        # the delayed session must not hold up other connections
        with connect(smtp_server, timeout=1.0) as other:
            assert other.noop()[0] == 250
    finally:
        slow.close()


def test_data_delay_applies_to_final_reply(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_delay('DATA', 0.3)
    with connect(smtp_server) as client:
        started = time.monotonic()
        client.sendmail('a@example.com', ['b@example.com'], MSG)
        assert time.monotonic() - started >= 0.3


def test_fault_hook(smtp_server: SMTPTestServer) -> None:
    seen: List[Tuple[str, str]] = []

    def hook(command: str, argument: str) -> FaultResult:
        seen.append((command, argument))
        if argument == 'full@example.com':
            return (452, '4.2.2 mailbox full')
        if argument == 'drop@example.com':
            return 'disconnect'
        return None

    smtp_server.fault_hook = hook
    with connect(smtp_server) as client:
        refused = client.sendmail('a@example.com', ['full@example.com', 'b@example.com'], MSG)
    assert refused == {'full@example.com': (452, b'4.2.2 mailbox full')}
    assert seen == [('MAIL', 'a@example.com'), ('RCPT', 'full@example.com'), ('RCPT', 'b@example.com'),
                    ('DATA', '')]
    with connect(smtp_server) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail('drop@example.com', ['b@example.com'], MSG)
    assert [m.rcpt_tos for m in smtp_server.received] == [['b@example.com']]


# --- TLS and AUTH -----------------------------------------------------------------


@pytest.mark.parametrize('tls_auth_server', ['starttls'], indirect=True)
def test_starttls_with_certificate_verification(tls_auth_server: SMTPTestServer) -> None:
    server = tls_auth_server
    assert server.cert_path is not None
    context = ssl.create_default_context(cafile=server.cert_path)
    if hasattr(ssl, 'VERIFY_X509_STRICT'):
        # Python 3.13 enables this by default; the certificate must pass it
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    with connect(server) as client:
        client.ehlo()
        assert client.has_extn('starttls')
        client.starttls(context=context)
        client.ehlo()
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    [msg] = server.received
    assert msg.tls is True

    client = connect(server)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())
    finally:
        client.close()


@pytest.mark.parametrize('tls_auth_server', ['implicit'], indirect=True)
def test_implicit_tls_with_certificate_verification(tls_auth_server: SMTPTestServer) -> None:
    server = tls_auth_server
    context = server.client_ssl_context()
    with smtplib.SMTP_SSL(server.hostname, server.port, context=context, timeout=5) as client:
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    [msg] = server.received
    assert msg.tls is True

    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(server.hostname, server.port, context=ssl.create_default_context(), timeout=5)
    # a plain-text client does not get a greeting on an implicit TLS port
    with socket.create_connection((server.hostname, server.port), timeout=5) as sock:
        sock.sendall(b'EHLO x\r\n')
        try:
            reply = sock.recv(1024)
        except ConnectionResetError:
            reply = b''
        assert not reply.startswith(b'220')


@pytest.mark.parametrize('tls_auth_server', ['starttls'], indirect=True)
def test_auth_success_and_failure(tls_auth_server: SMTPTestServer) -> None:
    server = tls_auth_server
    context = server.client_ssl_context()
    with connect(server) as client:
        client.starttls(context=context)
        client.login('user', 'secret')
        client.sendmail('a@example.com', ['b@example.com'], MSG)
    with connect(server) as client:
        # AUTH works without TLS as well (the client decides whether to send secrets)
        client.ehlo()
        client.user, client.password = 'user', 'secret'
        assert client.auth('LOGIN', client.auth_login)[0] == 235
    with connect(server) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc_info:
            client.login('user', 'wrong')
        assert exc_info.value.smtp_code == 535
    assert server.auth_logins == ['user', 'user']
    assert server.received[0].auth_login == 'user'


def test_auth_required() -> None:
    with SMTPTestServer(auth={'user': 'secret'}, auth_required=True) as server:
        with connect(server) as client:
            client.ehlo()
            assert client.mail('a@example.com')[0] == 530
            client.login('user', 'secret')
            client.sendmail('a@example.com', ['b@example.com'], MSG)
        assert len(server.received) == 1


# --- lifecycle --------------------------------------------------------------------


def test_restart_keeps_the_port() -> None:
    with SMTPTestServer() as server:
        port = server.port
        with connect(server) as client:
            client.sendmail('a@example.com', ['b@example.com'], MSG)
        server.stop()
        assert not server.is_running
        with pytest.raises(OSError):
            connect(server, timeout=1.0)
        server.start()
        assert server.port == port
        with connect(server) as client:
            client.sendmail('a@example.com', ['c@example.com'], MSG)
        assert [m.rcpt_tos for m in server.received] == [['b@example.com'], ['c@example.com']]
        assert server.connection_count == 2


def test_restart_with_tls_keeps_certificate() -> None:
    with SMTPTestServer(tls='implicit') as server:
        cert_path = server.cert_path
        server.stop()
        server.start()
        assert server.cert_path == cert_path
        with smtplib.SMTP_SSL(server.hostname, server.port, context=server.client_ssl_context(),
                              timeout=5) as client:
            assert client.noop()[0] == 250


def test_stop_with_open_connection_is_bounded() -> None:
    server = SMTPTestServer(delays={'NOOP': 30})
    server.start()
    idle = connect(server)
    busy = connect(server, timeout=10)
    busy.putcmd('noop')  # the server is now sleeping in this session
    try:
        idle.ehlo()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5.0
        with pytest.raises(smtplib.SMTPServerDisconnected):
            idle.noop()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            busy.getreply()
    finally:
        idle.close()
        busy.close()
        server.close()


# --- ScriptedSMTPServer ------------------------------------------------------------------------

from schwarz.mailqueue.testutils import (  # noqa: E402
    CLOSE,
    HANG,
    SILENT,
    ConnectionState,
    Script,
    ScriptAction,
    ScriptedSMTPServer,
    Trickle,
    ehlo_reply,
    reply_code,
    smtp_reply,
)


class RawClient:
    """A byte-exact client: what it sends and what it gets back are not interpreted."""

    def __init__(self, server: ScriptedSMTPServer) -> None:
        self.sock = socket.create_connection((server.hostname, server.port), timeout=5)
        self.received = b''

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, end: bytes, timeout: float = 3.0) -> bytes:
        """Read until the bytes received so far end with ``end`` (or the timeout / EOF); return all of them."""
        deadline = time.monotonic() + timeout
        while not self.received.endswith(end) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(4096)
            except OSError:  # a timeout, or a reset from a server that closed with input unread
                break
            if not chunk:
                break
            self.received += chunk
        return self.received

    def close(self) -> None:
        self.sock.close()


def test_scripted_default_dialog_records_commands_and_unstuffed_data() -> None:
    with ScriptedSMTPServer() as srv:
        with smtplib.SMTP(srv.hostname, srv.port, timeout=5) as client:
            assert client.sendmail('a@example.com', ['b@example.com', 'c@example.com'], MSG) == {}
        assert srv.wait_for_disconnect()
        assert srv.verbs() == ['CONNECT', 'EHLO', 'MAIL', 'RCPT', 'RCPT', 'DATA', 'DOT', 'QUIT']
        [transfer] = srv.messages
        assert transfer.data == MSG and transfer.complete and transfer.confirmed and transfer.data_mode
        assert (transfer.mail_from, transfer.rcpt_tos) == ('a@example.com', ['b@example.com', 'c@example.com'])
        assert transfer.accepted_rcpts == transfer.rcpt_tos
        assert srv.connection_count == 1 and srv.settings_for_client()['smtp_port'] == str(srv.port)


def test_scripted_pipelined_commands_get_their_scripted_bytes_in_order() -> None:
    script = Script(
        greeting=smtp_reply(220, 'hi') + b'250 unsolicited\r\n',
        replies={'MAIL': smtp_reply(250, 'one') + smtp_reply(250, 'surplus'),
                 'RCPT': [SILENT, smtp_reply(354, 'out of order')]},
        extensions=['PIPELINING'],
    )
    with ScriptedSMTPServer(script) as srv:
        client = RawClient(srv)
        try:
            assert client.read_until(b'250 unsolicited\r\n') == b'220 hi\r\n250 unsolicited\r\n'
            client.send(b'EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n')
            got = client.read_until(b'<CR><LF>.<CR><LF>\r\n')
            assert got.split(b'250 unsolicited\r\n', 1)[1] == (
                ehlo_reply('PIPELINING') + b'250 one\r\n250 surplus\r\n' + b'354 out of order\r\n'
                + b'354 End data with <CR><LF>.<CR><LF>\r\n')
            client.send(b'..x\r\n.\r\n')
            client.read_until(b'\r\n', timeout=0.5)
        finally:
            client.close()
        assert srv.wait_for_disconnect()
        [transfer] = srv.transfers
        assert transfer.data == b'.x\r\n' and transfer.confirmed
        assert transfer.rcpt_tos == ['b@y', 'c@y'] and transfer.accepted_rcpts == []
        assert [c.reply for c in srv.commands if c.verb == 'RCPT'] == [b'', b'354 out of order\r\n']


def test_scripted_non_354_reply_to_data_means_no_data_mode() -> None:
    with ScriptedSMTPServer(Script(replies={'DATA': 250})) as srv:
        client = RawClient(srv)
        try:
            client.send(b'EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: body\r\n.\r\nQUIT\r\n')
            client.read_until(b'221 2.0.0 Bye\r\n')
        finally:
            client.close()
        assert srv.wait_for_disconnect()
        [transfer] = srv.transfers
        assert (transfer.data_mode, transfer.complete, transfer.data) == (False, False, b'')
        assert srv.messages == []
        assert srv.verbs()[-3:] == ['SUBJECT:', '.', 'QUIT']  # the "body" arrived as commands


def test_scripted_responder_per_connection_and_close() -> None:
    seen: List[Tuple[str, int, int]] = []

    def responder(verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        seen.append((verb, state.connection, state.occurrence))
        if verb == 'NOOP' and state.connection == 0:
            return CLOSE if state.occurrence == 1 else smtp_reply(250, f'noop {arg}')
        return None

    with ScriptedSMTPServer(responder) as srv:
        with smtplib.SMTP(srv.hostname, srv.port, timeout=5) as client:
            assert client.noop() == (250, b'noop')
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        with smtplib.SMTP(srv.hostname, srv.port, timeout=5) as client:
            assert client.noop() == (250, b'2.0.0 Ok')
        assert srv.wait_for_disconnect()
        assert ('NOOP', 0, 1) in seen and ('NOOP', 1, 0) in seen
        srv.reset()
        assert srv.commands == [] and srv.connection_count == 0


def test_scripted_trickle_hang_and_stop_are_bounded() -> None:
    script = Script(greeting=Trickle(smtp_reply(220, 'slow'), interval=0.05), replies={'NOOP': HANG})
    srv = ScriptedSMTPServer(script)
    srv.start()
    try:
        client = RawClient(srv)
        started = time.monotonic()
        assert client.read_until(b'220 slow\r\n') == b'220 slow\r\n'
        assert time.monotonic() - started >= 0.05 * 9
        client.send(b'NOOP\r\nNOOP\r\n')
        deadline = time.monotonic() + 5
        while srv.verbs(0) != ['CONNECT', 'NOOP', 'NOOP'] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.verbs(0) == ['CONNECT', 'NOOP', 'NOOP']
        assert client.read_until(b'\r\n', timeout=0.2) == b'220 slow\r\n'  # hung: no reply
        slow = RawClient(srv)  # mid-trickle when the server stops
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 1.5
        assert not srv.is_running
        assert client.read_until(b'never', timeout=1) == b'220 slow\r\n'  # EOF
        client.close()
        slow.close()
    finally:
        srv.stop()


def test_scripted_auth_login_continuation_lines() -> None:
    with ScriptedSMTPServer(Script(extensions=['AUTH LOGIN PLAIN'])) as srv:
        with smtplib.SMTP(srv.hostname, srv.port, timeout=5) as client:
            client.ehlo()
            client.user, client.password = 'user', 'secret'
            assert client.auth('LOGIN', client.auth_login, initial_response_ok=False)[0] == 235
        assert srv.wait_for_disconnect()
        assert srv.verbs() == ['CONNECT', 'EHLO', 'AUTH', 'AUTH_DATA', 'AUTH_DATA', 'QUIT']


def test_reply_code() -> None:
    assert reply_code(b'250-a\r\n250 b\r\n354 x\r\n') == 250
    assert reply_code(b'250-a\r\n') is None
    assert reply_code(b'250-a\r\n550 b\r\n') is None
    assert reply_code(b'') is None
    assert reply_code(b'250\r\n') == 250
    assert reply_code(b'hello\r\n') is None
    assert reply_code(b'250 ok\n') == 250  # bare LF: lenient, as many clients are
    assert reply_code(b'250 ok') is None  # unfinished
