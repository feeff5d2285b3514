"""``mq-sendmail -bs`` against hostile or sloppy SMTP clients (smuggling, errors, bytes, memory).

Each test feeds a whole client dialog to the process's stdin (as a pipelining client
that does not wait for replies would) and checks the replies on stdout and what
arrived at the test smarthost.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, script, write_config

SHORT = 10.0
WITH_FROM = {'add_from_header': 'yes'}


def _session(tmp_path: Path, server: Optional[SMTPTestServer], dialog: bytes, *args: str,
             config: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    cfg = write_config(tmp_path, server, **(config or {}))
    return run_tool([script('mq-sendmail'), '-C', str(cfg), '-bs', *args], input=dialog, home=tmp_path,
                    timeout=SHORT)


def _replies(proc: subprocess.CompletedProcess) -> List[str]:
    """The final line of each reply (multi-line EHLO replies count once)."""
    lines = proc.stdout.decode('utf-8', 'replace').splitlines()
    return [line for line in lines if len(line) > 3 and line[3] == ' ']


def test_bare_lf_dot_inside_a_crlf_message_does_not_end_data_smtp_smuggling(
        smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # The client speaks CRLF and dot-stuffs only "\r\n." (Symfony's SmtpTransport does exactly
    # that); a body it was handed contains a bare-LF "\n.\n" followed by SMTP commands.
    body = (b'Subject: newsletter\r\n\r\n'
            b'user supplied text\n.\n'
            b'MAIL FROM:<ceo@example.org>\r\n'
            b'RCPT TO:<victim@example.org>\r\n'
            b'DATA\r\n'
            b'Subject: forged\r\n\r\n'
            b'pay the invoice\r\n')
    dialog = (b'EHLO client\r\nMAIL FROM:<shop@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n'
              + body + b'.\r\nQUIT\r\n')
    proc = _session(tmp_path, smtp_server, dialog)
    received = smtp_server.received
    injected = [m for m in received if 'victim@example.org' in m.smtp_to]
    assert not injected, f'smuggled message delivered: {[m.msg_bytes for m in injected]}'
    assert len(received) == 1, (_replies(proc), [m.msg_bytes for m in received])
    assert received[0].smtp_to == ['alice@example.org']


def test_error_limit_does_not_cut_off_a_long_session_that_delivers_mail(
        smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # A mailer sending 21 messages in one session, each with one unknown local recipient:
    # every message is delivered to its valid recipient, so the client is not misbehaving.
    dialog = b'EHLO client\r\n'
    for n in range(21):
        dialog += (b'MAIL FROM:<shop@example.org>\r\nRCPT TO:<nosuchuser>\r\nRCPT TO:<bob@example.org>\r\n'
                   b'DATA\r\nSubject: %d\r\n\r\nbody\r\n.\r\n' % n)
    dialog += b'QUIT\r\n'
    proc = _session(tmp_path, smtp_server, dialog)
    replies = _replies(proc)
    assert not [r for r in replies if r.startswith('421')], replies
    assert len(smtp_server.received) == 21


def test_full_name_with_line_break_is_not_an_internal_error(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # -bm refuses this -F with exit 64; -bs accepts the whole message and then dies with 70 and no reply.
    dialog = (b'EHLO client\r\nMAIL FROM:<shop@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n'
              b'Subject: no From header\r\n\r\nbody\r\n.\r\nQUIT\r\n')
    proc = _session(tmp_path, smtp_server, dialog, '-F', 'Joe\nBcc: evil@example.org', config=WITH_FROM)
    stderr = proc.stderr.decode('utf-8', 'replace')
    assert proc.returncode != 70 and 'internal error' not in stderr, (proc.returncode, stderr, _replies(proc))
    assert not [m for m in smtp_server.received if b'evil@example.org' in m.msg_bytes]


@pytest.mark.parametrize('mail, rcpt', [
    (b'MAIL FROM:<shop@example.org> SMTPUTF8', b'RCPT TO:<j\xf6rg@example.org>'),
    (b'MAIL FROM:<j\xf6rg@example.org> SMTPUTF8', b'RCPT TO:<alice@example.org>'),
], ids=['latin1-recipient', 'latin1-sender'])
def test_invalid_utf8_address_is_refused_not_mangled(smtp_server: SMTPTestServer, tmp_path: Path,
                                                     mail: bytes, rcpt: bytes) -> None:
    # Latin-1 bytes are not UTF-8 (RFC 6531): the address must be refused, never replaced by
    # U+FFFD and used (the message would go to, or bounce to, an address nobody asked for).
    dialog = (b'EHLO client\r\n' + mail + b'\r\n' + rcpt + b'\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n')
    proc = _session(tmp_path, smtp_server, dialog)
    for message in smtp_server.received:
        assert '\ufffd' not in message.smtp_from, (message.smtp_from, _replies(proc))
        assert not [r for r in message.smtp_to if '\ufffd' in r], (message.smtp_to, _replies(proc))


def _peak_rss_kib(pid: int) -> int:
    with open(f'/proc/{pid}/status') as fp:
        for line in fp:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError('no VmHWM')


def test_memory_for_one_message_is_bounded(tmp_path: Path) -> None:
    # A 64 MiB "line" without any line break (RFC 5321 allows 1000 octets): the smarthost is down
    # and nothing is queued, so the reply is 451; what matters is how much the process held meanwhile.
    size = 64 * 1024 * 1024
    cfg = write_config(tmp_path, None)
    proc = subprocess.Popen([script('mq-sendmail'), '-C', str(cfg), '-bs'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={'HOME': str(tmp_path), 'LOGNAME': 'tester', 'LANG': 'C.UTF-8'})
    watchdog = threading.Timer(SHORT, proc.kill)
    watchdog.start()
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(b'EHLO client\r\nMAIL FROM:<shop@example.org>\r\nRCPT TO:<alice@example.org>\r\n'
                             b'DATA\r\nSubject: big\r\n\r\n')
            chunk = b'x' * (1024 * 1024)
            for _ in range(size // len(chunk)):
                proc.stdin.write(chunk)
            proc.stdin.write(b'\r\n.\r\n')
            proc.stdin.flush()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        final = ''
        seen_354 = False
        while True:
            line = proc.stdout.readline().decode('ascii', 'replace')
            assert line, 'session ended without a reply to the end of DATA'
            seen_354 = seen_354 or line.startswith('354')
            if seen_354 and not line.startswith('354') and line[3:4] == ' ':
                final = line
                break
        peak_mib = _peak_rss_kib(proc.pid) / 1024
        proc.stdin.write(b'QUIT\r\n')
        proc.stdin.close()
        proc.wait(timeout=SHORT)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=SHORT)
        writer.join(timeout=SHORT)
        proc.stdout.close()
    assert final[:1] in ('4', '5'), final
    # the message read, and the edited copy that goes out: two copies (three before: a list of
    # pieces, their join, the edit), plus the interpreter
    assert peak_mib < 2 * size / 2**20 + 30, f'peak RSS {peak_mib:.0f} MiB for a {size // 2**20} MiB message'


def test_a_line_whose_crlf_falls_between_two_reads_still_ends_the_message(smtp_server: SMTPTestServer,
                                                                           tmp_path: Path) -> None:
    # DATA is read in pieces of 64 KiB: a line of 65 535 bytes is read as "...\r" and "\n". That is
    # still a CRLF line end: the "..dot" line after it is unstuffed and ".\r\n" ends the message.
    long_line = b'x' * 65535
    body = b'Subject: long\r\n\r\n' + long_line + b'\r\n..dot\r\n'
    dialog = (b'EHLO client\r\nMAIL FROM:<shop@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n'
              + body + b'.\r\nQUIT\r\n')
    proc = _session(tmp_path, smtp_server, dialog)
    assert [r[:3] for r in _replies(proc)] == ['220', '250', '250', '250', '354', '250', '221'], _replies(proc)
    [received] = smtp_server.received
    # (the smarthost gets the long line folded, as every line over 998 octets)
    assert received.msg_bytes.endswith(b'xxxx\r\n.dot\r\n') and received.msg_bytes.count(b'x') == 65535


# --- max_message_size ----------------------------------------------------------------------


def test_a_message_over_max_message_size_is_refused_and_the_session_goes_on(smtp_server: SMTPTestServer,
                                                                           tmp_path: Path) -> None:
    big = b'Subject: big\r\n\r\n' + b'x' * 3000 + b'\r\n'
    small = b'Subject: small\r\n\r\nhi\r\n'
    dialog = (b'EHLO c\r\n'
              b'MAIL FROM:<a@example.org> SIZE=5000\r\n'  # announced too large: refused before DATA
              b'MAIL FROM:<a@example.org> SIZE=x\r\n'
              b'MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n' + big + b'.\r\n'
              b'MAIL FROM:<a@example.org> SIZE=40\r\nRCPT TO:<b@example.org>\r\nDATA\r\n' + small + b'.\r\n'
              b'QUIT\r\n')
    proc = _session(tmp_path, smtp_server, dialog, config={'max_message_size': '2k'})
    assert b'250-SIZE 2048\r\n' in proc.stdout, proc.stdout
    replies = _replies(proc)
    assert [line[:3] for line in replies] == ['220', '250', '552', '501', '250', '250', '354', '552',
                                              '250', '250', '354', '250', '221'], replies
    assert [msg.as_message()['Subject'] for msg in smtp_server.received] == ['small']


@pytest.mark.parametrize('tool', ['mq-sendmail', 'mq-sendmail -i', 'mq-mail'])
def test_endless_stdin_is_refused_with_65_after_max_message_size(smtp_server: SMTPTestServer, tmp_path: Path,
                                                                tool: str) -> None:
    config = write_config(tmp_path, smtp_server, max_message_size='1M')
    name, *options = tool.split()
    argv = [script(name), '-C', str(config), *options] + (['-s', 'x'] if name == 'mq-mail' else []) + ['b@example.org']
    # an endless line and endless lines: the tool stops reading past the limit, not at memory's end
    for source in ('yes', 'cat /dev/zero'):
        with subprocess.Popen(['sh', '-c', source], stdout=subprocess.PIPE) as feeder:
            proc = subprocess.run(argv, stdin=feeder.stdout, capture_output=True, timeout=60)
            feeder.kill()
        assert proc.returncode == 65, proc.stderr
        assert proc.stderr.decode().strip() == f'{name}: message larger than max_message_size (1.0M); nothing was sent'
    assert smtp_server.received == []
