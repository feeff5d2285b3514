"""Content the RFCs forbid on the wire: what we do with it (docs/reliability.md, "Content")."""

from __future__ import annotations

from schwarz.mailqueue import SMTPMailer
from schwarz.mailqueue.smtp.client import fold_long_lines
from schwarz.mailqueue.testutils import SMTPTestServer


def _send(server: SMTPTestServer, body: bytes):
    with SMTPMailer(server.hostname, server.port, tls='none', timeout=5) as mailer:
        return mailer.send('a@x', ['b@x'], body)


def test_nul_bytes_pass_unchanged(smtp_server: SMTPTestServer) -> None:
    msg = b'Subject: nul\r\n\r\na\x00b\r\n'
    assert _send(smtp_server, msg)
    assert smtp_server.received[-1].data == msg


def test_8bit_data_is_sent_unchanged_and_declared_when_the_server_offers_8bitmime(smtp_server) -> None:
    msg = 'Subject: =?utf-8?q?x?=\r\n\r\nGrüße\r\n'.encode()
    assert _send(smtp_server, msg)
    received = smtp_server.received[-1]
    assert received.data == msg and 'BODY=8BITMIME' in received.mail_options


def test_lines_over_998_octets_are_folded_not_refused(smtp_server: SMTPTestServer) -> None:
    long_header = b'X-Long: ' + b'h' * 1500
    long_body = b'y' * 2500
    msg = long_header + b'\r\nSubject: long\r\n\r\n' + long_body + b'\r\nend\r\n'
    result = _send(smtp_server, msg)
    assert result, result  # aiosmtpd refuses lines over 1000 octets with 500
    data = smtp_server.received[-1].data
    assert max(len(line) for line in data.split(b'\r\n')) <= 998
    # unfolding (dropping CRLF SPACE) gives back every byte that was sent
    assert data.replace(b'\r\n ', b'') == msg
    assert smtp_server.received[-1].as_message()['Subject'] == 'long'


def test_messages_without_long_lines_stay_byte_identical() -> None:
    msg = b'Subject: x\r\n\r\n' + (b'z' * 998 + b'\r\n') * 3
    assert fold_long_lines(msg) is msg
