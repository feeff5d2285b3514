"""``mq-send-test`` end to end: straight over SMTP, never queued, the server's reply on failure."""

from __future__ import annotations

import os
from pathlib import Path

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, script, write_config


def send_test(*args: str) -> list:
    return [script('mq-send-test'), *args]


def test_success_reports_the_servers_answer(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, **{'from': 'ops@site.example'})
    proc = run_tool(send_test('-C', str(config), '--to=alice@example.org'), home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == (f'test message from ops@site.example to alice@example.org accepted by '
                                    f'127.0.0.1:{smtp_server.port}: 250 OK\n')
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('ops@site.example', ['alice@example.org'])
    msg = received.as_message()
    assert msg['Subject'] == 'mq-send-test: test message'
    assert msg['To'] == 'alice@example.org'
    assert msg['Date'] is not None and msg['Message-ID'] is not None
    assert 'mq-send-test' in msg.get_content()


def test_quiet_and_explicit_sender(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(send_test('--config', str(config), '--to', 'root', '--from', 'me@site.example', '--quiet'),
                    home=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b'', b'')
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('me@site.example', ['admin@example.org'])


def test_permanent_refusal_prints_the_exact_reply(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    smtp_server.set_reply('MAIL', 553, '5.7.1 <ops@site.example>: Sender address rejected: not owned by user')
    config = write_config(tmp_path, smtp_server, **{'from': 'ops@site.example'})
    proc = run_tool(send_test('-C', str(config), '--to=alice@example.org'), home=tmp_path)

    assert proc.returncode == 69
    assert proc.stderr.decode() == ('mq-send-test: alice@example.org: refused permanently: 553 5.7.1 '
                                    '<ops@site.example>: Sender address rejected: not owned by user\n')
    assert proc.stdout == b''


def test_temporary_failure_is_never_queued(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    smtp_server.set_reply('RCPT', 450, '4.2.0 greylisted, come back later')
    queue_dir = tmp_path / 'queue'
    config = write_config(tmp_path, smtp_server, queue_dir=str(queue_dir))
    proc = run_tool(send_test('-C', str(config), '--to=alice@example.org'), home=tmp_path)

    assert proc.returncode == 75
    assert proc.stderr.decode() == ('mq-send-test: alice@example.org: temporary failure (not queued): '
                                    '450 4.2.0 greylisted, come back later\n')
    assert not queue_dir.exists() or all(not os.listdir(queue_dir / d) for d in os.listdir(queue_dir))


def test_unreachable_server_exits_75(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    proc = run_tool(send_test('-C', str(config), '--to=alice@example.org'), home=tmp_path)
    assert proc.returncode == 75
    assert 'Connection refused' in proc.stderr.decode()


def test_verbose_shows_the_dialog(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(send_test('-C', str(config), '-v', '--to=alice@example.org'), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '< 250' in proc.stderr.decode() and 'DATA' in proc.stderr.decode()


def test_usage_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    proc = run_tool(send_test('-C', str(config)), home=tmp_path)
    assert (proc.returncode, proc.stderr) == (64, b'mq-send-test: no recipient: use --to ADDRESS '
                                                   b'(or set "from" in the configuration)\n')
    proc = run_tool(send_test('-C', str(config), '--to', 'a@example.org\r\nRCPT TO:<b@example.org>'), home=tmp_path)
    assert proc.returncode == 64
    assert b'line break' in proc.stderr
    proc = run_tool(send_test('--bogus'), home=tmp_path)
    assert proc.returncode == 64
