"""Every name mailqueue-runner 1.0.0 exported from ``schwarz.mailqueue`` still imports (issue 14).

Names with a 2.x equivalent import silently; the ones 2.x replaced import with a
DeprecationWarning that names the replacement, pointing at the importing line. The
1.0.0 way of using ``testutils.SMTPTestServer`` in users' own tests works too.
"""

from __future__ import annotations

import io
import os
import smtplib
import subprocess
import sys
import warnings
from pathlib import Path
from typing import List

import pytest

import schwarz.mailqueue
from schwarz.mailqueue import compat

NAMES_1_0_0 = [
    'BaseMsg', 'DebugMailer', 'InMemoryMsg', 'MQAction', 'MQSignal', 'MaildirBackend', 'MessageHandler', 'MsgInfo',
    'PluginLoader', 'SMTPMailer', 'SendResult', 'TLSMode', 'Transport', 'autogenerate_headers',
    'create_maildir_directories', 'default_tls_mode', 'default_tls_verify', 'dt_now', 'enqueue_message',
    'guess_config_path', 'init_app', 'init_smtp_mailer', 'lock_file', 'move_message', 'parse_list_str',
    'parse_message_envelope', 'registry', 'required_tls_mode', 'send_all_queued_messages',
    'serialize_message_with_queue_data',
]
DEPRECATED = sorted(compat.DEPRECATED)
CURRENT = [name for name in NAMES_1_0_0 if name not in compat.DEPRECATED]


def import_name(name: str) -> List[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        namespace: dict = {}
        exec(compile(f'from schwarz.mailqueue import {name}', __file__, 'exec'), namespace)
    assert name in namespace
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_lists_cover_every_1_0_0_name() -> None:
    assert set(DEPRECATED) <= set(NAMES_1_0_0)
    assert len(NAMES_1_0_0) == len(set(NAMES_1_0_0)) == 30


@pytest.mark.parametrize('name', CURRENT)
def test_a_current_name_imports_without_a_warning(name: str) -> None:
    assert import_name(name) == []
    assert name in schwarz.mailqueue.__all__


@pytest.mark.parametrize('name', DEPRECATED)
def test_a_replaced_name_imports_with_a_warning_naming_the_replacement(name: str) -> None:
    caught = import_name(name)
    assert caught, f'{name}: no DeprecationWarning'
    for warning in caught:
        text = str(warning.message)
        assert f'schwarz.mailqueue.{name} is deprecated' in text
        assert compat.DEPRECATED[name] in text
        assert warning.filename == __file__  # the warning points at the importing line
    assert name not in schwarz.mailqueue.__all__  # a star import stays quiet


def test_a_star_import_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('error', DeprecationWarning)
        exec('from schwarz.mailqueue import *', {})


def test_deprecated_names_fail_under_warnings_as_errors() -> None:
    """What a user running their tests with -W error sees: the replacement, at their import line."""
    code = 'from schwarz.mailqueue import dt_now'
    result = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-c', code], capture_output=True)
    assert result.returncode != 0
    assert b'datetime.now(timezone.utc)' in result.stderr
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(ImportError):
        exec('from schwarz.mailqueue import no_such_name', {})


# --- the replaced names still do their job -------------------------------------------------------


def test_the_replaced_helpers_work(tmp_path: Path) -> None:
    from datetime import datetime

    from schwarz.mailqueue import MessageHandler, TLSMode, enqueue_message

    assert compat.dt_now().tzinfo is not None
    assert abs((compat.dt_now() - datetime.now().astimezone()).total_seconds()) < 5
    assert compat.required_tls_mode(465) is TLSMode.IMPLICIT and compat.required_tls_mode(587) is TLSMode.STARTTLS
    assert compat.default_tls_mode(465) is TLSMode.IMPLICIT
    assert compat.default_tls_mode(25) is TLSMode.OPPORTUNISTIC
    assert compat.default_tls_verify('localhost') is False and compat.default_tls_verify('127.0.0.1') is False
    assert compat.default_tls_verify('smtp.example.com') is True
    assert compat.parse_list_str('a, b ,c') == ['a', 'b', 'c']

    headers = compat.autogenerate_headers({'Subject': 'x'}, True, True, True, True, 'me@example.org',
                                          ['a@example.org', 'b@example.org'])
    lines = headers.split(b'\r\n')
    assert lines[-1] == b'' and [line.split(b':')[0] for line in lines[:-1]] == [b'Date', b'From', b'To',
                                                                                  b'Message-ID']
    assert b'@example.org>' in lines[3]
    assert compat.autogenerate_headers({'Date': 'x', 'From': 'y'}, True, True, False, False, 'me@example.org',
                                       []) == b''

    queue_dir = str(tmp_path / 'q')
    assert compat.create_maildir_directories(queue_dir) == os.path.join(queue_dir, 'new')
    assert {'new', 'cur', 'tmp'} <= set(os.listdir(queue_dir))
    msg_id = str(enqueue_message(b'Subject: x\r\n\r\nbody\r\n', queue_dir, 'a@example.org', ['b@example.org']))
    held = compat.move_message(os.path.join(queue_dir, 'new', msg_id), 'hold', open_file=False)
    assert held == os.path.join(queue_dir, 'hold', msg_id) and os.path.exists(held)
    assert compat.move_message(os.path.join(queue_dir, 'new', msg_id), 'failed', open_file=False) is None  # gone
    with pytest.raises(NotImplementedError, match='claim'):
        compat.move_message(held, 'cur')
    with pytest.raises(NotImplementedError, match='claim'):
        compat.lock_file(held)

    info = compat.MsgInfo('a@example.org', ('b@example.org',), io.BytesIO(b'Message-ID: <m@x>\r\n\r\nhi'))
    assert (info.msg_id, info.msg_bytes, info.retries) == ('m@x', b'Message-ID: <m@x>\r\n\r\nhi', 0)
    in_memory = compat.InMemoryMsg('a@example.org', ['b@example.org'], b'Subject: x\r\n\r\nbody\r\n')
    assert in_memory.msg_bytes.startswith(b'Subject')
    from schwarz.mailqueue import DebugMailer

    mailer = DebugMailer()
    assert MessageHandler([mailer]).send_message(in_memory, sender=in_memory.from_addr,
                                                 recipients=in_memory.to_addrs)
    assert mailer.sent_mails[0][1] == ['b@example.org']
    loader = compat.PluginLoader
    assert loader is None or loader.__name__ == 'PluginLoader'


# --- testutils.SMTPTestServer the 1.0.0 way -------------------------------------------------------


def test_smtp_test_server_the_1_0_0_way() -> None:
    from schwarz.mailqueue.testutils import SMTPTestServer

    server = SMTPTestServer(auth={'joe': 'secret'})
    server.start()
    try:
        with smtplib.SMTP(server.hostname, server.port, timeout=5) as client:
            client.login('joe', 'secret')
            client.sendmail('from@example.org', ['to@example.org', 'cc@example.org'], b'Subject: hi\r\n\r\nbody\r\n')
        with smtplib.SMTP(server.hostname, server.port, timeout=5) as client:
            client.sendmail('anon@example.org', ['to@example.org'], b'Subject: 2\r\n\r\nbody\r\n')
        first = server.received_messages.get(timeout=5)
        second = server.received_messages.get(timeout=5)
        assert server.received_messages.qsize() == 0
    finally:
        server.stop()
    assert (first.smtp_from, first.smtp_to, first.username) == ('from@example.org',
                                                                ['to@example.org', 'cc@example.org'], 'joe')
    assert first.msg_bytes == b'Subject: hi\r\n\r\nbody\r\n'
    assert (second.smtp_from, second.username) == ('anon@example.org', None)


def test_reset_empties_received_messages(smtp_server: object) -> None:
    from schwarz.mailqueue.testutils import SMTPTestServer

    assert isinstance(smtp_server, SMTPTestServer)
    with smtplib.SMTP(smtp_server.hostname, smtp_server.port, timeout=5) as client:
        client.sendmail('a@example.org', ['b@example.org'], b'Subject: x\r\n\r\nbody\r\n')
    smtp_server.wait_for_messages(1)
    smtp_server.reset()
    assert smtp_server.received_messages.empty()


def test_enqueue_message_takes_the_queue_args_of_1x_and_no_others(tmp_path: Path) -> None:
    """1.x passed ``**queue_args`` on to serialize_message_with_queue_data: queue_date, last and
    retries become the queue file's X-Queue-Date, X-Last-Attempt and X-Retries."""
    from datetime import datetime, timezone

    from schwarz.mailqueue import enqueue_message, parse_message_envelope

    queue_dir = str(tmp_path / 'q')
    queued = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
    last = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)
    msg_id = enqueue_message(b'Subject: x\r\n\r\nbody\r\n', queue_dir, 'a@example.org', ['b@example.org'],
                             queue_date=queued, last=last, retries=3)
    with open(os.path.join(queue_dir, 'new', msg_id), 'rb') as fp:
        head = fp.read().split(b'\n\n', 1)[0]
        fp.seek(0)
        envelope = parse_message_envelope(fp)
    assert b'X-Retries: 3' in head and b'X-Last-Attempt:' in head and b'X-Queue-Next-Attempt' not in head, head
    assert (envelope.retries, envelope.last_delivery_attempt, envelope.queue_date) == (3, last, queued)
    with pytest.raises(TypeError, match="'retry'"):
        enqueue_message(b'Subject: x\r\n\r\n', queue_dir, 'a@example.org', ['b@example.org'], retry=3)
    for bad in ({'retries': '3'}, {'last': '2026-11-01'}, {'retries': -1}):
        with pytest.raises(ValueError):
            enqueue_message(b'Subject: x\r\n\r\n', queue_dir, 'a@example.org', ['b@example.org'], **bad)
    assert sorted(os.listdir(os.path.join(queue_dir, 'new'))) == [msg_id]  # nothing else written
