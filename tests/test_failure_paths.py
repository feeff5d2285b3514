"""Failure paths found in review: each test failed before its fix.

A plugin that raises, a queue that cannot be rewritten after a partial delivery, a claim taken away
by the time-limit fallback, a slow upload, a server that refuses MAIL FROM and hangs up.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from datetime import timedelta

import pytest

from schwarz.mailqueue import MQSignal, SMTPMailer, enqueue_message, send_all_queued_messages
from schwarz.mailqueue.handler import MessageHandler
from schwarz.mailqueue.queue import maildir
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: x\r\n\r\nbody\r\n'
DUE_NOW = RetryPolicy(min_delay=timedelta(0), max_delay=timedelta(0))


def mailer(server: SMTPTestServer) -> SMTPMailer:
    return SMTPMailer(server.hostname, server.port, tls='none', timeout=5)


def test_a_raising_plugin_does_not_make_a_delivered_message_go_out_again(smtp_server, tmp_path) -> None:
    from schwarz.puzzle_plugins import SignalRegistry

    registry = SignalRegistry()

    def on_success(sender, msg, send_result):
        raise RuntimeError('plugin bug (its database is down)')

    registry.connect(MQSignal.delivery_successful, on_success)
    queue_dir = str(tmp_path / 'q')
    enqueue_message(MSG, queue_dir, 'a@example.org', ['b@example.org'])
    for _ in range(3):
        send_all_queued_messages(queue_dir, mailer=mailer(smtp_server), plugins=registry)
    assert len(smtp_server.received) == 1
    assert os.listdir(os.path.join(queue_dir, 'new')) == []


def test_partial_delivery_with_a_full_disk_never_resends_to_the_delivered(smtp_server, tmp_path,
                                                                          monkeypatch) -> None:
    """The disk fills up between the delivery to b@ and the rewrite of the file for c@ (451)."""
    queue_dir = str(tmp_path / 'q')
    enqueue_message(MSG, queue_dir, 'a@example.org', ['b@example.org', 'c@example.org'])
    smtp_server.set_recipient_reply('c@example.org', 451, 'later')
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(maildir.os, 'write', full_disk)
    send_all_queued_messages(queue_dir, mailer=mailer(smtp_server), policy=DUE_NOW)
    monkeypatch.setattr(maildir.os, 'write', real_write)
    smtp_server.clear_faults()
    send_all_queued_messages(queue_dir, mailer=mailer(smtp_server), policy=DUE_NOW)
    deliveries = [rcpt for m in smtp_server.received for rcpt in m.rcpt_tos]
    assert deliveries.count('b@example.org') == 1
    # parked for an operator, not lost: the message waits in hold/
    queue = MaildirQueue(queue_dir)
    assert list(queue.iter_ids('hold')) and list(queue.iter_ids('cur')) == []


def test_conservative_sending_never_leaves_the_message_claimed(tmp_path) -> None:
    from schwarz.puzzle_plugins import SignalRegistry

    registry = SignalRegistry()

    def on_failure(sender, msg, send_result):
        raise ConnectionError('monitoring webhook unreachable')

    registry.connect(MQSignal.delivery_failed, on_failure)
    server = SMTPTestServer(replies={'RCPT': 451})
    with server:
        queue_dir = str(tmp_path / 'q')
        md_msg = enqueue_message(MSG, queue_dir, sender='a@example.org', recipients=('b@example.org',),
                                 in_progress=True, return_msg=True)
        result = MessageHandler([mailer(server)], plugins=registry).send_message(md_msg)
    assert result is not None and result.queued
    assert not md_msg.is_claimed
    assert os.listdir(os.path.join(queue_dir, 'cur')) == []
    assert os.listdir(os.path.join(queue_dir, 'new')) == [md_msg.msg_id]


def test_stale_claim_timeout_never_takes_a_live_claim(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    runner_a = MaildirQueue(queue_dir, stale_after=timedelta(minutes=30))
    runner_b = MaildirQueue(queue_dir, stale_after=timedelta(minutes=30))
    msg_id = str(runner_a.enqueue(MSG, 'a@example.org', ['b@example.org']))
    an_hour_ago = time.time() - 3600  # queued long ago, say in backoff
    os.utime(os.path.join(queue_dir, 'new', msg_id), (an_hour_ago, an_hour_ago))
    mine = runner_a.claim(msg_id)
    assert mine is not None
    assert runner_b.recover_stale() == 0
    runner_a.complete(mine)
    assert runner_b.claim(msg_id) is None


def test_queued_recipients_are_the_truth(smtp_server, tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    md_msg = enqueue_message(MSG, queue_dir, sender='foo@site.example',
                             recipients=('bar@site.example', 'baz@site.example'), in_progress=True,
                             return_msg=True)
    result = MessageHandler([mailer(smtp_server)]).send_message(md_msg, sender='foo@site.example',
                                                                recipient='bar@site.example')
    assert result
    assert sorted(smtp_server.received[0].rcpt_tos) == ['bar@site.example', 'baz@site.example']


def test_an_address_with_a_comma_is_refused_before_anything_is_sent(smtp_server) -> None:
    with pytest.raises(ValueError):
        MessageHandler([mailer(smtp_server)]).send_message(MSG, sender='a@x',
                                                           recipients=['ok@example.org', '"x,y"@example.org'])
    assert smtp_server.received == []


def _scripted(handler, receive_buffer: int = 0) -> int:
    listener = socket.socket()
    if receive_buffer:
        # small, so that little of the message sits in kernel buffers when the client stops sending
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            handler(conn, conn.makefile('rb'))
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return port


@pytest.mark.parametrize('pipelining', [False, True])
def test_mail_from_refused_then_hang_up_stays_permanent(pipelining: bool) -> None:
    def handler(conn, reader) -> None:
        conn.sendall(b'220 x ESMTP\r\n')
        while True:
            line = reader.readline().upper()
            if not line:
                return
            if line.startswith(b'EHLO'):
                conn.sendall(b'250-x\r\n250 ' + (b'PIPELINING' if pipelining else b'8BITMIME') + b'\r\n')
            elif line.startswith(b'MAIL'):
                conn.sendall(b'554 5.7.1 sender blocked\r\n')
                return

    port = _scripted(handler)
    result = SMTPMailer('127.0.0.1', port, tls='none', timeout=3).send('a@example.org', ['b@example.org'], b'x\r\n')
    assert result.refused == {'b@example.org': (554, '5.7.1 sender blocked')} and not result.deferred


def test_the_timeout_is_for_inactivity_not_for_the_whole_upload() -> None:
    """A server that reads steadily but slowly: the upload takes longer than the timeout."""
    received = []

    def handler(conn, reader) -> None:
        def reply(text: bytes) -> None:
            conn.sendall(text + b'\r\n')
        reply(b'220 slow ESMTP')
        while True:
            line = reader.readline()
            if not line:
                return
            command = line.strip().upper()
            if command.startswith(b'EHLO'):
                reply(b'250-slow')
                reply(b'250 8BITMIME')
            elif command == b'DATA':
                reply(b'354 go ahead')
                tail = b''
                while tail != b'\r\n.\r\n':
                    chunk = reader.read1(65536)
                    if not chunk:
                        return
                    tail = (tail + chunk)[-5:]
                    time.sleep(0.02)
                received.append(True)
                reply(b'250 queued')
            elif command == b'QUIT':
                reply(b'221 bye')
                return
            else:
                reply(b'250 OK')

    port = _scripted(handler, receive_buffer=65536)
    # ~12 MB at ~3 MB/s: about 4 s to upload, with a 2.5 s timeout
    message = b'Subject: big\r\n\r\n' + (b'x' * 76 + b'\r\n') * 160_000
    result = SMTPMailer('127.0.0.1', port, tls='none', timeout=2.5).send('a@example.org', ['b@example.org'],
                                                                       message)
    assert result.accepted == ['b@example.org'] and received == [True]
