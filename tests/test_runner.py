"""The queue runner: schedule, dead letters, partial delivery, workers, aborting on a dead server."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import Optional

from schwarz.mailqueue import SMTPMailer
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.runner import CLAIM_BATCH, ClaimPace, QueueRunner, send_all_queued_messages
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: queued\r\n\r\nbody\r\n'


def mailer(server: SMTPTestServer) -> SMTPMailer:
    return SMTPMailer(server.hostname, server.port, tls='none', timeout=5)


def names(queue: MaildirQueue, state: str) -> list[str]:
    return sorted(queue.iter_ids(state))


def failed_once(queue: MaildirQueue, minutes_ago: float, retries: int = 1, to=('b@x',),
                queue_age: timedelta = timedelta(minutes=30)) -> str:
    now = datetime.now(timezone.utc)
    msg_id = str(queue.enqueue(MSG, 'a@x', list(to), queue_date=now - queue_age))
    msg = queue.claim(msg_id)
    assert msg is not None
    msg.meta.retries = retries - 1
    queue.defer(msg, list(to), '451 earlier failure', now - timedelta(minutes=minutes_ago))
    return msg_id


def test_backoff_honoured_and_force_overrides(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = failed_once(queue, minutes_ago=1)
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert (stats.not_due, stats.sent) == (1, 0) and smtp_server.received == []
    assert names(queue, 'new') == [msg_id]
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server), force=True)
    assert stats.sent == 1 and len(smtp_server.received) == 1
    assert names(queue, 'new') == []


def test_due_after_backoff_elapsed(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    failed_once(queue, minutes_ago=6, retries=1)   # 5 min backoff elapsed
    failed_once(queue, minutes_ago=6, retries=2)   # 10 min backoff not yet
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert (stats.sent, stats.not_due) == (1, 1)


def test_permanent_refusal_of_queued_message_goes_to_failed(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['gone@x']))
    smtp_server.set_recipient_reply('gone@x', 550, 'mailbox unavailable')
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert stats.failed == 1
    assert names(queue, 'failed') == [msg_id] and names(queue, 'new') == []
    meta = queue.read_meta('failed', msg_id)
    assert meta.failed_reason == 'gone@x: 550 mailbox unavailable'
    # never retried, not even with --force
    send_all_queued_messages(queue.path, mailer=mailer(smtp_server), force=True)
    assert smtp_server.received == []


def test_expired_message_goes_to_failed_without_attempt(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = failed_once(queue, minutes_ago=300, retries=9, queue_age=timedelta(days=6))
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert stats.failed == 1 and smtp_server.received == []
    assert 'expired' in (queue.read_meta('failed', msg_id).failed_reason or '')


def test_max_attempts_gives_up_after_last_failure(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = failed_once(queue, minutes_ago=60, retries=2)
    smtp_server.set_reply('RCPT', 451, 'still not')
    policy = RetryPolicy(max_attempts=3)
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server), policy=policy)
    assert (stats.failed, stats.deferred) == (1, 0)
    reason = queue.read_meta('failed', msg_id).failed_reason or ''
    assert 'gave up after 3 attempts' in reason and '451 still not' in reason


def test_partial_delivery_rewrites_recipients(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['ok@x', 'later@x', 'gone@x']))
    smtp_server.set_recipient_reply('later@x', 452, 'over quota')
    smtp_server.set_recipient_reply('gone@x', 550, 'no such user')
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert stats.deferred == 1
    meta = queue.read_meta('new', msg_id)
    assert meta.to_addrs == ['later@x'] and meta.retries == 1 and '452 over quota' in (meta.last_error or '')
    [failed_copy] = names(queue, 'failed')
    assert queue.read_meta('failed', failed_copy).to_addrs == ['gone@x']
    smtp_server.clear_faults()
    send_all_queued_messages(queue.path, mailer=mailer(smtp_server), force=True)
    assert [m.rcpt_tos for m in smtp_server.received] == [['ok@x'], ['later@x']]
    assert names(queue, 'new') == []


def test_workers_each_reuse_one_connection(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    for n in range(200):
        queue.enqueue(MSG, 'a@x', [f'r{n}@x'])
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server), workers=4)
    assert stats.sent == 200 and len(smtp_server.received) == 200
    assert smtp_server.connection_count <= 4
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(f'r{n}@x' for n in range(200))


def test_dead_server_aborts_pass_without_touching_the_rest(tmp_path) -> None:
    server = SMTPTestServer()
    server.start()
    server.stop()
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    for n in range(50):
        queue.enqueue(MSG, 'a@x', [f'r{n}@x'])
    stats = send_all_queued_messages(queue.path, mailer=mailer(server))
    assert stats.aborted and stats.deferred <= 3
    retried = [m for m in (queue.read_meta('new', i) for i in queue.iter_ids('new')) if m.retries]
    assert len(retried) == stats.deferred and len(names(queue, 'new')) == 50


def test_rate_limit_spaces_messages(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    for n in range(6):
        queue.enqueue(MSG, 'a@x', [f'r{n}@x'])
    runner = QueueRunner(queue, mailer=mailer(smtp_server), workers=3, rate_limit=20)
    started = time.monotonic()
    assert runner.run_once().sent == 6
    assert time.monotonic() - started >= 5 / 20 * 0.9


def test_queue_of_corrupt_and_good_files_goes_on(smtp_server: SMTPTestServer, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    (tmp_path / 'q' / 'new' / 'junk').write_bytes(b'\x00\x01 not a queue file')
    queue.enqueue(MSG, 'a@x', ['b@x'])
    stats = send_all_queued_messages(queue.path, mailer=mailer(smtp_server))
    assert (stats.sent, stats.corrupt) == (1, 1)
    assert names(queue, 'failed') == ['junk']
    assert os.listdir(os.path.join(queue.path, 'cur')) == []


class _BrokenPolicy(RetryPolicy):
    def give_up_reason(self, queue_date: Optional[datetime], retries: int, now: datetime) -> Optional[str]:
        raise RuntimeError('bug in a policy')


def _pass_within(runner: QueueRunner, seconds: float):
    """``run_once()`` in a thread that must end within ``seconds`` (a hung pass fails the test)."""
    import threading

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run_once()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), 'the pass hung'
    return outcome[0]


def test_unexpected_error_neither_hangs_the_pass_nor_loses_the_message(smtp_server, tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    ids = [str(queue.enqueue(MSG, 'a@x', [f'r{n}@x'])) for n in range(5)]
    stats = _pass_within(QueueRunner(queue, mailer=mailer(smtp_server), policy=_BrokenPolicy(), workers=2), 20)
    assert stats.skipped == 5
    assert sorted(names(queue, 'new')) == sorted(ids) and names(queue, 'cur') == []
    assert smtp_server.received == []


def test_a_failing_release_after_an_unexpected_error_does_not_hang_the_pass(smtp_server, tmp_path,
                                                                           monkeypatch) -> None:
    """The file system refuses to give the message back (EROFS): still no worker dies."""
    import errno

    queue = MaildirQueue(str(tmp_path / 'q'))
    for n in range(5):
        queue.enqueue(MSG, 'a@x', [f'r{n}@x'])

    def read_only(msg) -> None:
        raise OSError(errno.EROFS, 'Read-only file system')

    monkeypatch.setattr(queue, 'release', read_only)
    stats = _pass_within(QueueRunner(queue, mailer=mailer(smtp_server), policy=_BrokenPolicy(), workers=1), 20)
    assert stats.skipped == 5
    assert len(names(queue, 'new')) + len(names(queue, 'cur')) == 5  # nothing lost; the next pass recovers


def test_claims_follow_the_pace_of_delivery() -> None:
    never = lambda: False  # noqa: E731
    pace = ClaimPace(workers=2)
    assert pace.next_claim(never) == 4  # nothing delivered yet: one per worker and one ready for each
    pace.taken(4)
    for _ in range(20):
        pace.record(0.002)  # a fast smarthost: one statement per CLAIM_BATCH messages
    assert pace.next_claim(never) == CLAIM_BATCH  # while the workers still have 4
    pace.taken(CLAIM_BATCH)
    for _ in range(CLAIM_BATCH):
        pace.done()
    assert pace.next_claim(never) == CLAIM_BATCH
    pace.taken(CLAIM_BATCH)
    for _ in range(60):
        pace.record(2.0)  # now slow: nothing more until a worker is ready for it
    assert pace.next_claim(lambda: True) == 0  # (waiting; a stopping runner is not kept waiting)
    for _ in range(CLAIM_BATCH + 2):
        pace.done()
    assert pace.in_hand == 2 and pace.next_claim(never) == 2


def test_a_runner_against_a_slow_smarthost_leaves_the_rest_for_other_runners(
        smtp_server: SMTPTestServer, tmp_path, monkeypatch) -> None:
    import threading

    from schwarz.mailqueue import runner
    from schwarz.mailqueue.queue.contract import CLAIMED

    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    for n in range(6):
        queue.enqueue(MSG, 'a@x', [f'r{n}@x'])
    smtp_server.set_delay('DATA', 0.25)
    monkeypatch.setattr(runner, 'CLAIM_AHEAD', 0.2)  # less than one delivery ahead (it is 1 s: 4 of these)
    claimed: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            claimed.append(queue.stats()[CLAIMED].count)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        stats = QueueRunner(MaildirQueue(queue.path), mailer=mailer(smtp_server), workers=1).run_once()
    finally:
        done.set()
        watcher.join()
    assert stats.sent == 6
    assert max(claimed) == 2, claimed  # one in delivery, one ready for the worker; not the whole queue
