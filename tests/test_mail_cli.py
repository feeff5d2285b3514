"""``mq-mail`` end to end: the installed script composing and sending text messages."""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import re
import sys
from datetime import datetime, timezone
from email.parser import BytesParser
from pathlib import Path
from typing import Sequence

import pytest

from schwarz.mailqueue.testutils import ReceivedMessage, SMTPTestServer
from test_cli_helpers import run_tool, script, write_config


def mail(*args: str) -> list:
    return [script('mq-mail'), *args]


def headers_and_body(received: ReceivedMessage) -> tuple:
    head, _, body = received.data.partition(b'\r\n\r\n')
    return head.decode('ascii').split('\r\n'), body


def header(lines: Sequence[str], name: str) -> str:
    """The value of one header field, unfolded."""
    text = '\r\n'.join(lines)
    match = re.search(rf'^{name}: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)', text, re.MULTILINE | re.IGNORECASE)
    assert match is not None, (name, lines)
    return re.sub(r'\r\n[ \t]', ' ', match.group(1))


def test_utf8_message_with_encoded_subject_date_and_message_id(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    subject = 'Größenwarnung: Festplatte /var zu 93 % voll – bitte prüfen, bevor es zu spät ist ✓'
    body = 'Grüße aus dem Rechenzentrum\n\nZeile 2\n'.encode()
    before = datetime.now(timezone.utc).replace(microsecond=0)
    proc = run_tool(mail('-C', str(config), '-s', subject, '-r', 'Überwachung <monitor@site.example>',
                         'alice@example.org', 'bob@example.org'), input=body, home=tmp_path)
    after = datetime.now(timezone.utc)

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b'', b'')
    [received] = smtp_server.received
    assert received.mail_from == 'monitor@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org']
    lines, raw_body = headers_and_body(received)
    # every header line is 7-bit and short; non-ASCII text travels as RFC 2047 encoded words
    assert all(line.isascii() and len(line) <= 78 for line in lines), lines
    assert str(email.header.make_header(email.header.decode_header(header(lines, 'Subject')))) == subject
    assert str(email.header.make_header(email.header.decode_header(header(lines, 'From')))) == \
        'Überwachung <monitor@site.example>'
    assert header(lines, 'To') == 'alice@example.org, bob@example.org'
    assert header(lines, 'MIME-Version') == '1.0'
    assert header(lines, 'Content-Type') == 'text/plain; charset=utf-8'
    assert header(lines, 'Content-Transfer-Encoding') == '8bit'
    assert re.fullmatch(r'<[0-9a-f]+\.[0-9a-f]{24}@site\.example>', header(lines, 'Message-ID'))
    date = email.utils.parsedate_to_datetime(header(lines, 'Date'))
    assert before <= date <= after
    assert raw_body == body.replace(b'\n', b'\r\n')
    parsed = BytesParser(policy=email.policy.default).parsebytes(received.data)
    assert parsed.get_content().replace('\r\n', '\n') == body.decode()
    assert parsed.defects == []


def test_cc_bcc_and_several_recipients(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, **{'from': 'robot@site.example'})
    argv = mail('-C', str(config), '-s', 'report', '-c', 'carol@example.org,dave@example.org', '-b', 'eve@example.org',
                'alice@example.org, bob@example.org', 'team')
    proc = run_tool(argv, input=b'numbers\n', home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.mail_from == 'robot@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org', 'carol@example.org', 'dave@example.org',
                                 'eve@example.org']
    lines, _ = headers_and_body(received)
    # "team" is an alias for alice and bob, who are already listed
    assert header(lines, 'To') == 'alice@example.org, bob@example.org'
    assert header(lines, 'Cc') == 'carol@example.org, dave@example.org'
    assert b'eve@example.org' not in received.data
    assert not any(line.lower().startswith('bcc') for line in lines)


def test_dnf_automatic_invocation_with_glued_S_and_empty_body(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    # dnf-automatic's command_email emitter: mail -Ssendwait -s {subject} -r {email_from} {email_to}
    argv = mail('-C', str(config), '-Ssendwait', '-s', 'Updates available', '-r', 'root@host.example', 'root')
    proc = run_tool(argv, input=b'', home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('root@host.example', ['admin@example.org'])
    lines, body = headers_and_body(received)
    assert header(lines, 'Subject') == 'Updates available'
    assert header(lines, 'Content-Transfer-Encoding') == '7bit'
    assert body == b''


def test_E_skips_an_empty_message(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(mail('-C', str(config), '-E', '-s', 'nothing', 'alice@example.org'), input=b'', home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert smtp_server.commands == []


def test_long_lines_and_nul_bytes_become_quoted_printable(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    body = ('ä' * 1200 + '\n').encode() + b'nul:\x00:\n'
    proc = run_tool(mail('-C', str(config), '-s', 'long', 'alice@example.org'), input=body, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    lines, raw_body = headers_and_body(received)
    assert header(lines, 'Content-Transfer-Encoding') == 'quoted-printable'
    assert max(len(line) for line in raw_body.split(b'\r\n')) <= 76
    parsed = BytesParser(policy=email.policy.default).parsebytes(received.data)
    assert parsed.get_content().replace('\r\n', '\n') == body.decode()


@pytest.mark.parametrize('args, fragment', [
    (['-s', 'Hi\nBcc: victim@example.org', 'alice@example.org'], 'line break'),
    (['-s', 'Hi\rX-Injected: 1', 'alice@example.org'], 'line break'),
    (['-r', 'me@site.example\nBcc: victim@example.org', 'alice@example.org'], 'line break'),
    (['-c', 'carol@example.org\r\nBcc: victim@example.org', 'alice@example.org'], 'line break'),
    (['alice@example.org\nBcc: victim@example.org'], 'line break'),
    (['-s', 'no recipients'], 'no recipients'),
    (['-a', 'file.pdf', 'alice@example.org'], 'unrecognized arguments'),
    (['--', '-oi@example.org'], 'starts with "-"'),
])
def test_header_injection_and_usage_errors_exit_64_and_send_nothing(
        smtp_server: SMTPTestServer, tmp_path: Path, args: list, fragment: str) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(mail('-C', str(config), *args), input=b'body\n', home=tmp_path)
    assert proc.returncode == 64
    text = proc.stderr.decode()
    assert text.startswith('mq-mail: ') and text.count('\n') == 1 and fragment in text, text
    assert smtp_server.commands == []


def test_exit_codes_for_refusal_and_temporary_failure(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    smtp_server.set_recipient_reply('gone@example.org', 550, '5.1.1 no such user')
    proc = run_tool(mail('-C', str(config), '-s', 'x', 'gone@example.org'), input=b'x\n', home=tmp_path)
    assert proc.returncode == 69
    assert proc.stderr == b'mq-mail: gone@example.org: refused permanently: 550 5.1.1 no such user\n'

    smtp_server.set_reply('DATA', 451, '4.3.0 try later', times=1)
    proc = run_tool(mail('-C', str(config), '-s', 'x', 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert proc.returncode == 75
    assert b'NOT queued (no queue_dir configured): 451 4.3.0 try later' in proc.stderr

    proc = run_tool(mail('-C', str(config), '-s', 'x', 'nosuchuser'), input=b'x\n', home=tmp_path)
    assert proc.returncode == 67
    assert smtp_server.received == []


def test_missing_config_exits_78(tmp_path: Path) -> None:
    proc = run_tool(mail('-C', str(tmp_path / 'missing.conf'), 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert proc.returncode == 78
    assert proc.stderr.decode() == f'mq-mail: {tmp_path / "missing.conf"}: file not found\n'


def test_python_dash_m_and_help(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool([sys.executable, '-m', 'schwarz.mailqueue.mq_mail', '--config', str(config), '--subject', 'm',
                     'alice@example.org'], input=b'x\n', home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(smtp_server.received) == 1
    proc = run_tool(mail('--help'), home=tmp_path)
    assert proc.returncode == 0
    # Python 3.13's argparse writes "-s, --subject SUBJECT" where older ones write "-s SUBJECT, --subject SUBJECT"
    for option in (r'-s( SUBJECT)?, --subject SUBJECT', r'-r( FROM)?, --from-address FROM', r'-c ADDRESS',
                   r'-b ADDRESS', r'-S VAR\[=VALUE\]', r'-E', r'-C( FILE)?, --config FILE', r'--aliases FILE',
                   r'-v, --verbose'):
        assert re.search(option, proc.stdout.decode()), option


@pytest.mark.parametrize('args', [
    ['bob"@partner.example'],
    ['alice@example.org', 'a@b@c'],
    ['alice@example.org, a@b..c'],
    ['-c', '@example.org', 'alice@example.org'],
    ['-b', 'a@[1.2.3.4', 'alice@example.org'],
    ['-r', 'bob"@partner.example', 'alice@example.org'],
    ['al\tice@example.org'],
    ['John Smith'],
])
def test_malformed_addresses_exit_64_and_send_nothing(smtp_server: SMTPTestServer, tmp_path: Path,
                                                      args: list) -> None:
    config = write_config(tmp_path, smtp_server, default_domain='site.example')
    proc = run_tool(mail('-C', str(config), '-s', 'x', *args), input=b'body\n', home=tmp_path)
    assert proc.returncode == 64
    text = proc.stderr.decode()
    assert text.startswith('mq-mail: ') and text.count('\n') == 1 and 'malformed address' in text, text
    assert smtp_server.commands == []


def test_sender_and_recipients_in_header_syntax(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(mail('-C', str(config), '-s', 'x', '-r', 'Backup Job <backup@site.example>',
                         '-c', '"john smith"@example.org', 'Alice <alice@example.org>, root'),
                    input=b'body\n', home=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.mail_from == 'backup@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'admin@example.org', '"john smith"@example.org']
    lines, _ = headers_and_body(received)
    assert header(lines, 'From') == 'Backup Job <backup@site.example>'
    assert header(lines, 'Cc') == '"john smith"@example.org'
