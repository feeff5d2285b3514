"""``mq-sendmail`` installed as ``sendmail``, driven exactly the way real callers invoke it (SPEC 6.1).

Each test runs the installed console script through a symlink named
``sendmail`` against the SMTP test server and checks the envelope, the exact
bytes received and the exit status.
"""

from __future__ import annotations

from pathlib import Path

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, sendmail_link, write_config


def crlf(text: str) -> bytes:
    return text.replace('\n', '\r\n').encode('utf-8')


def test_php_mail_uses_t_and_i(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', **{'from': 'www-data@site.example'})
    # PHP's mail() writes To:/Subject: plus the extra headers, LF line endings, and the body as given.
    message = ('To: alice@example.org, Bob <bob@example.org>\n'
               'Subject: Order 42\n'
               'X-PHP-Originating-Script: 33:shop.php\n'
               'From: shop@site.example\n'
               '\n'
               'Thanks for your order.\n'
               '.\n'
               '..leading dots stay as they are\n')
    proc = run_tool([sendmail_link(tmp_path), '-t', '-i'], input=message.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.mail_from == 'www-data@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org']
    assert received.data == crlf(message)


def test_cronie(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', **{'from': 'cron@host.example'})
    message = ('From: "(Cron Daemon)" <root>\n'
               'To: root\n'
               'Subject: Cron <root@host> /usr/local/bin/backup\n'
               'MIME-Version: 1.0\n'
               'Content-Type: text/plain; charset=UTF-8\n'
               'Auto-Submitted: auto-generated\n'
               'Precedence: bulk\n'
               'X-Cron-Env: <SHELL=/bin/sh>\n'
               '\n'
               'backup done\n')
    argv = [sendmail_link(tmp_path), '-FCronDaemon', '-i', '-odi', '-oem', '-oi', '-t', '-f', 'root']
    proc = run_tool(argv, input=message.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    # "-f root" is a local name: without default_domain the configured "from" is the sender.
    assert received.mail_from == 'cron@host.example'
    # "To: root" goes through the aliases file.
    assert received.rcpt_tos == ['admin@example.org']
    assert received.data == crlf(message)


def test_debian_cron(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', default_domain='host.example')
    message = ('From: root (Cron Daemon)\n'
               'To: root\n'
               'Subject: Cron <root@host> run-parts --report /etc/cron.daily\n'
               'Content-Type: text/plain; charset=UTF-8\n'
               'Content-Transfer-Encoding: 8bit\n'
               '\n'
               '/etc/cron.daily/logrotate: Größe überschritten\n')
    argv = [sendmail_link(tmp_path), '-FCronDaemon', '-i', '-B8BITMIME', '-oem', 'root']
    proc = run_tool(argv, input=message.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    # No -f: the invoking user, qualified with default_domain.
    assert received.mail_from == 'tester@host.example'
    assert received.rcpt_tos == ['admin@example.org']
    assert received.data == crlf(message)
    assert 'BODY=8BITMIME' in received.mail_options


def test_mutt(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', **{'from': 'me@site.example'})
    # mutt with $write_bcc passes the Bcc: header and expects sendmail to strip it.
    message = ('Date: Tue, 3 Mar 2026 10:00:00 +0100\n'
               'From: Me <me@site.example>\n'
               'To: alice@example.org\n'
               'Cc: bob@example.org\n'
               'Bcc: carol@example.org\n'
               'Subject: minutes\n'
               'Message-ID: <20260303090000.GA1@site.example>\n'
               'MIME-Version: 1.0\n'
               'Content-Type: text/plain; charset=us-ascii\n'
               '\n'
               'see attached\n'
               '.\n'
               'still the body\n')
    argv = [sendmail_link(tmp_path), '-oem', '-oi', '--', 'alice@example.org', 'bob@example.org',
            'carol@example.org']
    proc = run_tool(argv, input=message.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.mail_from == 'me@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org', 'carol@example.org']
    assert received.data == crlf(message.replace('Bcc: carol@example.org\n', ''))


def test_git_send_email(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf')
    patch = ('From: Dev Eloper <dev@example.org>\n'
             'To: list@example.org\n'
             'Cc: maintainer@example.org\n'
             'Subject: [PATCH] drop the trailing dot\n'
             'Date: Tue, 3 Mar 2026 10:00:00 +0000\n'
             'Message-Id: <20260303100000.1-dev@example.org>\n'
             'X-Mailer: git-send-email 2.43.0\n'
             'MIME-Version: 1.0\n'
             'Content-Transfer-Encoding: 8bit\n'
             '\n'
             '---\n'
             ' README | 2 +-\n'
             '\n'
             'diff --git a/README b/README\n'
             '@@ -1,2 +1,2 @@\n'
             ' text\n'
             '-.\n'
             '+.x\n'
             '.\n'
             '-- \n'
             '2.43.0\n')
    argv = [sendmail_link(tmp_path), '-i', '-f', 'dev@example.org', 'list@example.org', 'maintainer@example.org']
    proc = run_tool(argv, input=patch.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.mail_from == 'dev@example.org'
    assert received.rcpt_tos == ['list@example.org', 'maintainer@example.org']
    assert received.data == crlf(patch)


def test_s_nail_and_bsd_mailx(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf')
    message = ('Date: Tue, 03 Mar 2026 10:00:00 +0100\n'
               'To: alice@example.org\n'
               'Subject: disk usage\n'
               'Message-ID: <20260303090000.abc@host.example>\n'
               'User-Agent: s-nail v14.9.24\n'
               'MIME-Version: 1.0\n'
               'Content-Type: text/plain; charset=utf-8\n'
               'Content-Transfer-Encoding: 8bit\n'
               'From: Ops Robot <ops@host.example>\n'
               '\n'
               '/var 93%\n')
    argv = [sendmail_link(tmp_path), '-i', '-f', 'ops@host.example', '-F', 'Ops Robot', '--', 'alice@example.org']
    proc = run_tool(argv, input=message.encode(), home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.mail_from == 'ops@host.example'
    assert received.rcpt_tos == ['alice@example.org']
    assert received.data == crlf(message)
