"""Issue 12: the headers MTAs add, on by default, each switchable (config key; --set-*-header wins)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Tuple

import pytest

from schwarz.mailqueue.cli.sendmail_message import edit_message
from schwarz.mailqueue.cli.sendmail_options import parse_args
from schwarz.mailqueue.config import Settings
from schwarz.mailqueue.headers import qualify_address_text
from schwarz.mailqueue.message import get_header, qualify_local_addresses

from helpers import run, script

CRON = b'From: "(Cron Daemon)" <root>\nTo: root\nSubject: Cron <root@host> run-parts\n\nbody\n'


def edit(data: bytes, args: Tuple[str, ...] = (), /, **settings: Any) -> bytes:
    """``data`` as mq-sendmail ``-i [args]`` edits it; ``settings``: values for ``Settings``."""
    return edit_message(data, parse_args(['-i', *args, 'x@example.org']), sender='root@example.org',
                        recipients=['admin@example.org'], hostname=lambda: 'host.local',
                        settings=Settings(default_domain='example.org', **settings))


def test_by_default_date_message_id_and_qualified_addresses_are_added() -> None:
    out = edit(CRON)
    assert re.match(r'\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$', get_header(out, 'Date')[0])
    assert re.match(r'<[0-9a-f]+\.[0-9a-f]{24}@example\.org>$', get_header(out, 'Message-ID')[0])
    assert get_header(out, 'From') == ['"(Cron Daemon)" <root@example.org>']
    assert get_header(out, 'To') == ['root@example.org']
    assert out.endswith(b'Subject: Cron <root@host> run-parts\n\nbody\n')  # the rest untouched


def test_from_is_added_from_the_envelope_sender_when_missing() -> None:
    assert get_header(edit(b'Subject: x\n\nbody\n'), 'From') == ['root@example.org']
    assert get_header(edit(b'Subject: x\n\nbody\n', add_from_header=False), 'From') == []


@pytest.mark.parametrize('key,header', [('add_date_header', 'Date'), ('add_message_id_header', 'Message-ID'),
                                        ('add_from_header', 'From')])
def test_each_default_can_be_switched_off(key: str, header: str) -> None:
    out = edit(b'Subject: x\n\nbody\n', **{key: False})
    assert get_header(out, header) == []
    others = {'Date', 'Message-ID', 'From'} - {header}
    assert all(get_header(out, name) for name in others)


@pytest.mark.parametrize('option,header', [('date', 'Date'), ('msgid', 'Message-ID'), ('from', 'From')])
def test_the_command_line_wins_over_the_configuration(option: str, header: str) -> None:
    off = edit(b'Subject: x\n\nbody\n', (f'--set-{option}-header=off',))
    assert get_header(off, header) == []
    key = {'date': 'add_date_header', 'msgid': 'add_message_id_header', 'from': 'add_from_header'}[option]
    on = edit(b'Subject: x\n\nbody\n', (f'--set-{option}-header=auto',), **{key: False})
    assert get_header(on, header)


def test_present_headers_are_never_replaced() -> None:
    data = b'Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <a@b>\nFrom: me@example.com\n\nbody\n'
    assert edit(data) == data


def test_qualification_can_be_switched_off() -> None:
    out = edit(CRON, qualify_addresses=False)
    assert get_header(out, 'From') == ['"(Cron Daemon)" <root>'] and get_header(out, 'To') == ['root']


def test_qualification_uses_the_host_name_without_a_domain() -> None:
    out = edit_message(b'To: root\n\nbody\n', parse_args(['-i', 'x@example.org']), sender='', recipients=[],
                       hostname=lambda: 'host.local', settings=Settings())
    assert get_header(out, 'To') == ['root@host.local']


@pytest.mark.parametrize('value,expected', [
    (' root', ' root@d.example'),
    (' "(Cron Daemon)" <root>', ' "(Cron Daemon)" <root@d.example>'),
    (' root, admin@x.example, "Doe, J" <jd>', ' root@d.example, admin@x.example, "Doe, J" <jd@d.example>'),
    (' root (the admin)', ' root@d.example (the admin)'),
    (' a@x.example', ' a@x.example'),
    (' undisclosed-recipients:;', ' undisclosed-recipients:;'),
    (' "unbalanced <root>', ' "unbalanced <root>'),
    (' <>', ' <>'),
])
def test_qualify_address_text(value: str, expected: str) -> None:
    assert qualify_address_text(value, 'd.example') == expected


def test_other_fields_stay_byte_identical() -> None:
    data = b'X-Other: root\r\nCc: ops,\r\n dev\r\nSubject: root\r\n\r\nTo: root\r\n'
    out = qualify_local_addresses(data, 'd.example')
    assert out == b'X-Other: root\r\nCc: ops@d.example,\r\n dev@d.example\r\nSubject: root\r\n\r\nTo: root\r\n'


def test_mq_sendmail_adds_them_by_default(tmp_path: Path, smtp_server) -> None:
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nsmtp_hostname = {smtp_server.hostname}\nsmtp_port = {smtp_server.port}\n'
                      f'smtp_tls = none\ndefault_domain = example.org\n')
    result = run([script('mq-sendmail'), '-C', str(config), '-t'], input=CRON)
    assert result.returncode == 0, result.stderr
    data = smtp_server.received[0].data
    for name in (b'Date:', b'Message-ID:', b'From: "(Cron Daemon)" <root@example.org>', b'To: root@example.org'):
        assert name in data
    assert smtp_server.received[0].rcpt_tos == ['root@example.org']
