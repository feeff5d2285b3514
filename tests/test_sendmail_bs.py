"""``sendmail -bs`` (Symfony/Laravel): an SMTP dialog on stdin/stdout, driven by Python's smtplib.

smtplib talks to the ``mq-sendmail`` process through its stdin/stdout pipes
(as PHP's ``proc_open`` does) via a tiny socket-like adapter; the messages
must arrive at the SMTP test server through the normal submission path.
"""

from __future__ import annotations

import smtplib
import subprocess
import threading
from pathlib import Path
from typing import IO, Iterator

import pytest

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import BIN_DIR, TIMEOUT, sendmail_link, write_config


class PipeSocket:
    """What smtplib needs from a socket, backed by a child process's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def sendall(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def makefile(self, mode: str) -> IO[bytes]:
        assert mode == 'rb' and self.proc.stdout is not None
        return self.proc.stdout

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()


class PipeSMTP(smtplib.SMTP):
    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__()
        self.sock = PipeSocket(proc)  # type: ignore[assignment]
        self.file = None
        code, greeting = self.getreply()
        assert code == 220, greeting


@pytest.fixture
def sendmail_bs(smtp_server: SMTPTestServer, tmp_path: Path) -> Iterator[subprocess.Popen]:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf')
    env = {'PATH': f'{BIN_DIR}:/usr/bin:/bin', 'HOME': str(tmp_path), 'LOGNAME': 'tester'}
    proc = subprocess.Popen([sendmail_link(tmp_path), '-bs'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    # A hung dialog must not hang the test run: the watchdog ends the child, reads then see EOF.
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_symfony_sendmail_bs_delivers_through_smtplib(smtp_server: SMTPTestServer,
                                                      sendmail_bs: subprocess.Popen) -> None:
    message = (b'From: shop@site.example\r\n'
               b'To: alice@example.org\r\n'
               b'Subject: Order 42\r\n'
               b'\r\n'
               b'Thanks!\r\n'
               b'.\r\n'
               b'..two dots\r\n'
               b'.one dot\r\n')
    client = PipeSMTP(sendmail_bs)
    code, _ = client.ehlo('app.example')
    assert code == 250
    assert client.has_extn('8bitmime')
    refused = client.sendmail('shop@site.example', ['alice@example.org', 'bob@example.org'], message)
    assert refused == {}
    code, text = client.quit()
    assert code == 221
    assert sendmail_bs.wait(timeout=TIMEOUT) == 0

    [received] = smtp_server.received
    assert received.mail_from == 'shop@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org']
    # smtplib dot-stuffed; -bs unstuffed; the client library stuffed again for the smarthost.
    assert received.data == message


def test_bs_session_with_several_messages_rset_noop_and_aliases(smtp_server: SMTPTestServer,
                                                                sendmail_bs: subprocess.Popen) -> None:
    client = PipeSMTP(sendmail_bs)
    client.ehlo('app.example')
    assert client.noop()[0] == 250
    # an aborted transaction leaves nothing behind
    assert client.mail('x@site.example')[0] == 250
    assert client.rcpt('y@example.org')[0] == 250
    assert client.rset()[0] == 250
    client.sendmail('a@site.example', ['team'], b'Subject: one\r\n\r\nfirst\r\n')
    client.sendmail('', ['postmaster'], b'Subject: two\r\n\r\nsecond\r\n')
    client.quit()
    assert sendmail_bs.wait(timeout=TIMEOUT) == 0

    received = smtp_server.received
    # the null sender (bounces) is passed on; the test server records it as '<>'
    assert [(m.mail_from, m.rcpt_tos, m.data) for m in received] == [
        ('a@site.example', ['alice@example.org', 'bob@example.org'], b'Subject: one\r\n\r\nfirst\r\n'),
        ('<>', ['admin@example.org'], b'Subject: two\r\n\r\nsecond\r\n'),
    ]
    # one smarthost connection for the whole session
    assert smtp_server.connection_count == 1


def test_bs_reports_refusals_with_smtp_replies(smtp_server: SMTPTestServer, sendmail_bs: subprocess.Popen) -> None:
    smtp_server.set_recipient_reply('gone@example.org', 550, '5.1.1 <gone@example.org>: user unknown')
    client = PipeSMTP(sendmail_bs)
    client.ehlo('app.example')
    # unknown local name: refused at RCPT time, before any data is sent
    assert client.mail('a@site.example')[0] == 250
    code, text = client.rcpt('nosuchuser')
    assert code == 550
    assert b'nosuchuser' in text
    code, _ = client.rcpt('alice@example.org')
    assert code == 250
    code, text = client.rcpt('bad address@x')
    assert code == 553
    code, _ = client.data(b'Subject: ok\r\n\r\nbody\r\n')
    assert code == 250
    # the smarthost refuses the only recipient: the DATA reply says so, with the server's text
    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        client.sendmail('a@site.example', ['gone@example.org'], b'Subject: x\r\n\r\nbody\r\n')
    assert excinfo.value.smtp_code == 554
    assert b'550 5.1.1 <gone@example.org>: user unknown' in excinfo.value.smtp_error
    # protocol errors
    assert client.docmd('DATA')[0] == 503
    assert client.docmd('BDAT 10')[0] == 500
    assert client.docmd('RCPT TO:<a@example.org>')[0] == 503
    client.quit()
    assert sendmail_bs.wait(timeout=TIMEOUT) == 0

    assert [(m.rcpt_tos, m.data) for m in smtp_server.received] == [
        (['alice@example.org'], b'Subject: ok\r\n\r\nbody\r\n'),
    ]
    assert sendmail_bs.stderr is not None
    assert b'gone@example.org: refused permanently: 550' in sendmail_bs.stderr.read()


def test_bs_client_vanishing_mid_data_sends_nothing(smtp_server: SMTPTestServer,
                                                    sendmail_bs: subprocess.Popen) -> None:
    client = PipeSMTP(sendmail_bs)
    client.ehlo('app.example')
    client.mail('a@site.example')
    client.rcpt('alice@example.org')
    assert client.docmd('DATA')[0] == 354
    client.send(b'Subject: half\r\n\r\nhalf a message\r\n')
    client.close()
    assert sendmail_bs.wait(timeout=TIMEOUT) == 0
    assert smtp_server.received == []

