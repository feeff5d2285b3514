"""MessageHandler: transport chain, per-recipient fallback, logs, README examples."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Dict, List

import pytest

from schwarz.mailqueue import (
    DebugMailer,
    MaildirBackend,
    MessageHandler,
    SMTPMailer,
    enqueue_message,
    send_all_queued_messages,
)
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'From: a@x\r\nTo: b@x\r\nMessage-ID: <m1@x>\r\nSubject: hi\r\n\r\nbody\r\n'


def listing(queue_dir: str, state: str) -> list[str]:
    path = os.path.join(queue_dir, state)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def smtp(server: SMTPTestServer) -> SMTPMailer:
    return SMTPMailer(server.hostname, server.port, tls='none', timeout=5)


def test_delivered_directly_nothing_queued(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    handler = MessageHandler([smtp(smtp_server), MaildirBackend(queue_dir)])
    result = handler.send_message(MSG, sender='a@x', recipient='b@x')
    assert result and result.queued is False and result.transport == 'smtp'
    assert result.host == f'127.0.0.1:{smtp_server.port}'
    assert listing(queue_dir, 'new') == []
    assert len(smtp_server.received) == 1


def test_queued_when_server_down(tmp_path) -> None:
    server = SMTPTestServer()
    server.start()
    server.stop()
    queue_dir = str(tmp_path / 'q')
    handler = MessageHandler([smtp(server), MaildirBackend(queue_dir)])
    result = handler.send_message(MSG, sender='a@x', recipients=['b@x', 'c@x'])
    assert result and result.queued is True and result.transport == 'maildir'
    [name] = listing(queue_dir, 'new')
    meta, body = MaildirQueue(queue_dir).read_message('new', name)
    assert meta.to_addrs == ['b@x', 'c@x'] and body == MSG
    # why it is waiting is visible at once, the attempt is counted; the first mq-run still tries it right away
    assert 'Connection refused' in (meta.last_error or '') and meta.retries == 1
    from schwarz.mailqueue.queue.contract import is_due
    from schwarz.mailqueue.queue.schedule import RetryPolicy

    assert is_due(meta, RetryPolicy(), datetime.now(timezone.utc))


def test_partial_refusal_nobody_gets_duplicates_nothing_lost(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    smtp_server.set_recipient_reply('later@x', 451, 'greylisted')
    smtp_server.set_recipient_reply('nobody@x', 550, 'no such user')
    handler = MessageHandler([smtp(smtp_server), MaildirBackend(queue_dir)])
    result = handler.send_message(MSG, sender='a@x', recipients=['ok@x', 'later@x', 'nobody@x'])
    assert result is not None and not result  # a permanent refusal makes the result falsy
    assert result.accepted == ['ok@x']
    assert result.queued_to == ['later@x']
    assert result.refused == {'nobody@x': (550, 'no such user')}
    queue = MaildirQueue(queue_dir)
    [queued] = listing(queue_dir, 'new')
    assert queue.read_meta('new', queued).to_addrs == ['later@x']
    [failed] = listing(queue_dir, 'failed')
    failed_meta = queue.read_meta('failed', failed)
    assert failed_meta.to_addrs == ['nobody@x'] and '550 no such user' in (failed_meta.failed_reason or '')

    smtp_server.clear_faults()
    stats = send_all_queued_messages(queue_dir, mailer=smtp(smtp_server), policy=None, force=True)
    assert stats.sent == 1
    deliveries = [rcpt for m in smtp_server.received for rcpt in m.rcpt_tos]
    assert sorted(deliveries) == ['later@x', 'ok@x']  # each exactly once; nobody@x never
    assert listing(queue_dir, 'new') == [] and listing(queue_dir, 'cur') == []


def test_delivery_log_lines_are_logfmt(smtp_server: SMTPTestServer, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger='mailqueue')
    smtp_server.set_recipient_reply('later@x', 451, 'greylisted')
    handler = MessageHandler([smtp(smtp_server), MaildirBackend(str(tmp_path / 'q'))], app='tests')
    handler.send_message(MSG, sender='a@x', recipients=['ok@x', 'later@x'])
    lines: Dict[str, List[str]] = {r.name: [] for r in caplog.records}
    for record in caplog.records:
        lines[record.name].append(record.getMessage())
    [sent, deferred] = lines['mailqueue.delivery_log']
    assert sent.startswith('status=sent to=ok@x msgid=<m1@x> via=smtp:127.0.0.1:')
    assert 'app=tests' in sent and 'smtp="250 OK"' in sent
    assert deferred.startswith('status=deferred to=later@x') and 'smtp="451 greylisted"' in deferred
    [queued] = lines['mailqueue.queue_log']
    assert queued.startswith('status=queued to=later@x') and 'via=maildir' in queued


def test_debug_mailer_then_queue() -> None:
    mailer = DebugMailer()
    assert MessageHandler([mailer]).send_message(MSG, sender='a@x', recipient='b@x')
    assert mailer.sent_mails == [('a@x', ['b@x'], MSG)]
    failing = DebugMailer(simulate_failed_sending=True)
    result = MessageHandler([failing]).send_message(MSG, sender='a@x', recipient='b@x')
    assert result is not None and not result and set(result.deferred) == {'b@x'}


def test_bad_addresses_are_refused_before_sending() -> None:
    mailer = DebugMailer()
    with pytest.raises(ValueError):
        MessageHandler([mailer]).send_message(MSG, sender='a@x', recipient='b@x\r\nRCPT TO:<evil@x>')
    assert mailer.sent_mails == []


def test_message_sources(tmp_path) -> None:
    from email.message import EmailMessage
    mailer = DebugMailer()
    handler = MessageHandler([mailer])
    email_msg = EmailMessage()
    email_msg['Subject'] = 'x'
    email_msg.set_content('body')
    path = tmp_path / 'm.eml'
    path.write_bytes(MSG)
    with open(path, 'rb') as fp:
        assert handler.send_message(fp, sender='a@x', recipient='b@x')
    assert handler.send_message(email_msg, sender='a@x', recipient='b@x')
    assert mailer.sent_mails[0][2] == MSG and b'Subject: x' in mailer.sent_mails[1][2]


def test_readme_python_usage_example(smtp_server: SMTPTestServer, tmp_path) -> None:
    """The README's "Usage (mail submission/Python integration)" example, with its placeholders filled.

    The README's `msg = b'…'` is not valid Python (non-ASCII bytes literal) and the last line refers to
    `send_result`; we bind it to the returned value, as the README clearly intends.
    """
    from schwarz.mailqueue import MaildirBackend, MessageHandler, init_smtp_mailer
    settings = {'smtp_hostname': '127.0.0.1', 'smtp_port': smtp_server.port, 'smtp_tls': 'no'}
    transports = [
        init_smtp_mailer(settings),
        MaildirBackend(str(tmp_path / 'queue-dir')),
    ]
    handler = MessageHandler(transports)
    msg = MSG
    was_sent = handler.send_message(msg, sender='foo@site.example', recipient='bar@site.example')
    send_result = was_sent
    was_queued = (getattr(send_result, 'queued', None) is not False)
    assert was_sent and not was_queued
    assert smtp_server.received[0].rcpt_tos == ['bar@site.example']


def test_readme_conservative_sending(smtp_server: SMTPTestServer, tmp_path) -> None:
    path_maildir = str(tmp_path / 'queue')
    md_msg = enqueue_message(MSG, path_maildir,
        sender      = 'foo@site.example',
        recipients  = ('bar@site.example',),
        in_progress = True,
        return_msg  = True,
    )
    assert listing(path_maildir, 'cur') == [md_msg.msg_id]
    handler = MessageHandler(transports=[smtp(smtp_server)])
    was_sent = handler.send_message(md_msg, sender='foo@site.example', recipient='bar@site.example')
    assert was_sent and was_sent.transport == 'smtp'
    assert listing(path_maildir, 'cur') == [] and listing(path_maildir, 'new') == []
    assert len(smtp_server.received) == 1


def test_conservative_sending_server_down_keeps_message_queued(tmp_path) -> None:
    server = SMTPTestServer()
    server.start()
    server.stop()
    path_maildir = str(tmp_path / 'queue')
    md_msg = enqueue_message(MSG, path_maildir, sender='foo@site.example', recipients=('bar@site.example',),
                             in_progress=True, return_msg=True)
    handler = MessageHandler(transports=[smtp(server), MaildirBackend(path_maildir)])
    result = handler.send_message(md_msg, sender='foo@site.example', recipient='bar@site.example')
    assert result and result.queued is True
    [name] = listing(path_maildir, 'new')
    assert name == md_msg.msg_id  # the same file, not a second copy
    meta = MaildirQueue(path_maildir).read_meta('new', name)
    assert meta.retries == 1 and meta.last_delivery_attempt is not None
    assert 'Connection refused' in (meta.last_error or '')


def test_plugin_discard_on_failed_delivery(tmp_path) -> None:
    from schwarz.mailqueue import MQAction, MQSignal
    from schwarz.puzzle_plugins import SignalRegistry, connect_signals
    registry = SignalRegistry()
    calls = []

    def delivery_failed(_sender, msg, send_result):
        calls.append((msg.retries, bool(send_result)))
        return MQAction.DISCARD if msg.retries >= 1 else None

    connect_signals({MQSignal.delivery_failed: delivery_failed}, registry)
    queue_dir = str(tmp_path / 'q')
    queue = MaildirQueue(queue_dir)
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x']))
    handler = MessageHandler([DebugMailer(simulate_failed_sending=True)], plugins=registry)
    first = handler.send_message(queue.claim(msg_id))
    assert first is not None and first.queued and listing(queue_dir, 'new') == [msg_id]
    second = handler.send_message(queue.claim(msg_id))
    assert second is not None and second.discarded
    assert listing(queue_dir, 'new') == [] and calls == [(0, False), (1, False)]


def test_a_crashing_transport_does_not_lose_the_message(tmp_path, caplog) -> None:
    def broken(from_addr, to_addrs, msg_bytes):
        raise RuntimeError('bug in a transport')

    queue_dir = str(tmp_path / 'q')
    handler = MessageHandler([DebugMailer(send_callback=broken), MaildirBackend(queue_dir)])
    result = handler.send_message(MSG, sender='a@x', recipient='b@x')
    assert result and result.queued is True
    [name] = listing(queue_dir, 'new')
    assert 'internal error in the debug transport: RuntimeError' in \
        (MaildirQueue(queue_dir).read_meta('new', name).last_error or '')
    assert any('bug in a transport' in r.getMessage() or r.exc_info for r in caplog.records)


def test_a_crash_at_the_deferral_after_a_partial_refusal_forgets_no_refusal(smtp_server: SMTPTestServer,
                                                                            tmp_path) -> None:
    """The dead letter for the refused recipients is written before the deferral drops them from the
    queue file: a process that dies at the deferral (here: it is stopped right there) keeps the record."""
    queue_dir = str(tmp_path / 'q')
    queue = MaildirQueue(queue_dir)
    queue.enqueue(MSG, 'a@x', ['ok@x', 'later@x', 'nobody@x'])
    smtp_server.set_recipient_reply('later@x', 451, 'greylisted')
    smtp_server.set_recipient_reply('nobody@x', 550, 'no such user')

    class Died(BaseException):
        pass

    def die(*args, **kwargs) -> None:
        raise Died()  # where a SIGKILL could land

    store = MaildirQueue(queue_dir)
    store.defer = die  # type: ignore[method-assign]
    msg = store.claim(next(iter(store.ids()))[1])
    assert msg is not None
    try:
        MessageHandler([smtp(smtp_server)]).send_message(msg)
    except Died:
        pass
    else:
        raise AssertionError('the deferral was not reached')
    [failed] = listing(queue_dir, 'failed')
    assert queue.read_meta('failed', failed).to_addrs == ['nobody@x']  # the refusal is on record
