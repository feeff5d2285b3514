"""The README's command-line examples, run by a real shell against the SMTP test server.

The configuration is found the documented way (``~/.mailqueue-runner.conf``,
with ``HOME`` pointing at a temporary directory), so the commands run exactly
as printed. ``root`` is resolved through an aliases file named in that
configuration (never the host's /etc/aliases).
"""

from __future__ import annotations

import email.utils
import re
from pathlib import Path

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, write_config

REPO_README = Path(__file__).resolve().parent.parent / 'README.md'

# The product README (spec/mailqueue-runner-README.md) prints these as "... root <<<MAIL" followed
# by the message and a closing MAIL line: a here-document. It is run here as one ("<<MAIL"), since
# bash reads "<<<MAIL" as a here-string holding just the word MAIL.
SPEC_SENDMAIL_EXAMPLE = """\
mq-sendmail --set-date-header --set-msgid-header root <<MAIL
Subject: Test email
From: me@site.example
MIME-Version: 1.0
Content-Transfer-Encoding: 8bit
Content-Type: text/plain; charset=UTF-8

mail body
MAIL
"""

SPEC_MAIL_EXAMPLE = """\
mq-mail --from-address="me@site.example" --subject "subject" root <<MAIL
mail body
MAIL
"""


def bash(script: str, home: Path) -> bytes:
    proc = run_tool(['bash', '-e', '-c', script], home=home, cwd=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b''
    return proc.stdout


def user_config(home: Path, server: SMTPTestServer) -> None:
    write_config(home, server, name='.mailqueue-runner.conf', **{'from': 'me@site.example'})


def test_spec_readme_mq_sendmail_example(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    user_config(tmp_path, smtp_server)
    bash(SPEC_SENDMAIL_EXAMPLE, tmp_path)

    [received] = smtp_server.received
    assert received.mail_from == 'me@site.example'
    assert received.rcpt_tos == ['admin@example.org']
    date_line, msgid_line, rest = received.data.split(b'\r\n', 2)
    assert date_line.startswith(b'Date: ')
    assert email.utils.parsedate_to_datetime(date_line[6:].decode()) is not None
    assert re.fullmatch(rb'Message-ID: <[0-9a-f]+\.[0-9a-f]{24}@site\.example>', msgid_line)
    message = SPEC_SENDMAIL_EXAMPLE.split('\n', 1)[1].rsplit('MAIL\n', 1)[0]
    assert rest == message.replace('\n', '\r\n').encode()


def test_spec_readme_mq_mail_example(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    user_config(tmp_path, smtp_server)
    bash(SPEC_MAIL_EXAMPLE, tmp_path)

    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('me@site.example', ['admin@example.org'])
    msg = received.as_message()
    assert (msg['From'], msg['To'], msg['Subject']) == ('me@site.example', 'admin@example.org', 'subject')
    assert msg.get_content().replace('\r\n', '\n') == 'mail body\n'


def test_repo_readme_command_lines(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    readme = REPO_README.read_text()
    commands = [
        'mq-sendmail --set-date-header --set-msgid-header root < message.eml',
        'mq-mail --from-address=me@site.example --subject "subject" root <<< "mail body"',
        'mq-send-test --to=recipient@site.example',
    ]
    for command in commands:
        assert command in readme, command
    user_config(tmp_path, smtp_server)
    (tmp_path / 'message.eml').write_bytes(b'Subject: from a file\nFrom: me@site.example\n\nbody\n')
    output = bash('\n'.join(commands), tmp_path)

    first, second, third = smtp_server.received
    assert first.rcpt_tos == second.rcpt_tos == ['admin@example.org']
    assert first.data.endswith(b'\r\nSubject: from a file\r\nFrom: me@site.example\r\n\r\nbody\r\n')
    assert second.as_message().get_content().replace('\r\n', '\n') == 'mail body\n'
    assert third.rcpt_tos == ['recipient@site.example']
    assert output.decode().startswith('test message from me@site.example to recipient@site.example accepted')


def test_root_without_an_alias_goes_to_the_from_domain(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    """The README's config block sets `from = user@host.example`; with no alias for root, root is
    root@host.example (like nullmailer's defaulthost), not an error."""
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', aliases='',
                 **{'from': 'user@host.example'})
    bash(SPEC_MAIL_EXAMPLE, tmp_path)
    [received] = smtp_server.received
    assert received.rcpt_tos == ['root@host.example']


def test_local_name_without_alias_or_domain_is_an_error(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    write_config(tmp_path, smtp_server, name='.mailqueue-runner.conf', aliases='')
    proc = run_tool(['bash', '-c', SPEC_MAIL_EXAMPLE], home=tmp_path, cwd=tmp_path)
    assert proc.returncode == 67 and b'root' in proc.stderr and smtp_server.received == []
