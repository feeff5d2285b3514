"""mq-queue copy / QueueAdmin.copy_to: a maildir queue into PostgreSQL and back, none lost or doubled."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from _pg import fresh_location
from schwarz.mailqueue.queue.admin import COPIED_FROM, NOOP, OK, QueueAdmin
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, QueueStore
from schwarz.mailqueue.queue.format import FAILED_REASON, HOLD_REASON, LAST_ERROR
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.postgres import PostgresQueue

from helpers import run, script

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)


def body(n: int) -> bytes:
    return b'Subject: copy %d\r\n\r\nbody %d\r\n' % (n, n)


def fill(store: QueueStore) -> None:
    """Five kinds of messages: fresh, deferred twice, held, failed, and an abandoned claim."""
    store.enqueue(body(0), 'a@example.org', ['r0@example.org'], queue_date=T0)
    store.enqueue(body(1), 'a@example.org', ['r1@example.org', 'r1b@example.org'], queue_date=T0)
    msg = store.claim(_id_of(store, 1))
    assert msg is not None
    store.defer(msg, ['r1b@example.org'], '451 first', T0 + timedelta(minutes=1), T0 + timedelta(minutes=5))
    msg = store.claim(msg.msg_id)
    assert msg is not None
    store.defer(msg, ['r1b@example.org'], '451 later', T0 + timedelta(minutes=6), T0 + timedelta(hours=1))
    store.enqueue(body(2), '', ['r2@example.org'], queue_date=T0)
    msg = store.claim(_id_of(store, 2))
    assert msg is not None
    store.move(msg, HELD, extra={HOLD_REASON: 'ask legal'})
    store.store_dead_letter(body(3), 'a@example.org', ['r3@example.org'], '550 no such user')


def _id_of(store: QueueStore, n: int) -> str:
    for entry in store.entries():
        viewed = store.view(entry.msg_id)
        if viewed is not None and viewed[1] == body(n):
            return entry.msg_id
    raise AssertionError(f'message {n} not found')


Snapshot = Dict[bytes, Tuple[str, str, List[str], Optional[datetime], int, Optional[datetime], Dict[str, str]]]


def snapshot(store: QueueStore) -> Snapshot:
    """Everything that must survive a copy, keyed by the message bytes."""
    found: Snapshot = {}
    for entry in store.entries():
        viewed = store.view(entry.msg_id)
        assert viewed is not None and entry.meta is not None
        meta = entry.meta
        extra = {key: value for key, value in meta.extra.items() if key != COPIED_FROM}
        found[viewed[1]] = (entry.state, meta.from_addr, list(meta.to_addrs), meta.queue_date, meta.retries,
                            meta.last_delivery_attempt, extra)
    return found


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Tuple[MaildirQueue, PostgresQueue]]:
    maildir = MaildirQueue(str(tmp_path / 'q'))
    pg = PostgresQueue(fresh_location())
    yield maildir, pg
    pg.close()


def test_maildir_into_postgresql_and_back(stores: Tuple[MaildirQueue, PostgresQueue]) -> None:
    maildir, pg = stores
    fill(maildir)
    before = snapshot(maildir)
    assert sorted(state for state, *_ in before.values()) == [FAILED, HELD, NEW, NEW]

    results = list(QueueAdmin(maildir).copy_to(pg))
    assert [result.outcome for result in results] == [OK] * 4, results
    assert snapshot(maildir) == {}
    assert snapshot(pg) == before
    deferred = pg.view(_id_of(pg, 1))
    assert deferred is not None and deferred[0].meta is not None
    assert deferred[0].meta.retries == 2 and deferred[0].meta.extra[LAST_ERROR] == '451 later'
    assert (snapshot(pg)[body(3)][6][FAILED_REASON], snapshot(pg)[body(2)][6][HOLD_REASON]) == \
        ('550 no such user', 'ask legal')

    back = list(QueueAdmin(pg).copy_to(maildir))
    assert [result.outcome for result in back] == [OK] * 4, back
    assert snapshot(pg) == {}
    assert snapshot(maildir) == before


def test_an_abandoned_claim_is_copied_into_new(stores: Tuple[MaildirQueue, PostgresQueue], tmp_path: Path) -> None:
    maildir, pg = stores
    other = PostgresQueue(pg.location)
    msg_id = other.enqueue(body(7), 'a@example.org', ['r7@example.org'])
    assert other.claim(msg_id) is not None
    other.close()  # its runner died: the claim is abandoned
    [result] = list(QueueAdmin(pg).copy_to(maildir))
    assert result.outcome == OK, result
    assert [state for state, _ in maildir.ids()] == [NEW]
    assert list(pg.ids()) == []


def test_a_live_claim_is_reported_busy_and_stays(stores: Tuple[MaildirQueue, PostgresQueue]) -> None:
    maildir, pg = stores
    msg_id = pg.enqueue(body(8), 'a@example.org', ['r8@example.org'])
    runner = PostgresQueue(pg.location)
    held = runner.claim(msg_id)
    assert held is not None
    [result] = list(QueueAdmin(pg, wait=0.1).copy_to(maildir))
    assert result.outcome == 'busy'
    assert list(maildir.ids()) == [] and list(pg.ids()) == [(CLAIMED, msg_id)]
    runner.complete(held)
    runner.close()


class Crash(Exception):
    pass


@pytest.mark.parametrize('where', ['after the copy is written', 'before the source is removed'])
def test_a_rerun_after_a_crash_between_the_writes_doubles_nothing(
        stores: Tuple[MaildirQueue, PostgresQueue], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    maildir, pg = stores
    fill(maildir)
    before = snapshot(maildir)
    admin = QueueAdmin(maildir)
    if where == 'after the copy is written':
        monkeypatch.setattr(admin, '_finish_copy', lambda *args: (_ for _ in ()).throw(Crash()))
    else:
        monkeypatch.setattr(maildir, 'complete', lambda msg: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        list(admin.copy_to(pg))
    monkeypatch.undo()
    assert len(snapshot(maildir)) == 4 and len(list(pg.ids())) == 1  # one message in both stores
    results = list(QueueAdmin(maildir).copy_to(pg))
    assert sorted(result.outcome for result in results) == sorted([NOOP, OK, OK, OK]), results
    assert snapshot(maildir) == {}
    assert snapshot(pg) == before  # one copy each, with the right metadata (also the interrupted one)
    assert len(list(pg.ids())) == 4


def test_mq_queue_copy(tmp_path: Path) -> None:
    queue_dir = str(tmp_path / 'q')
    maildir = MaildirQueue(queue_dir)
    for n in range(20):
        maildir.enqueue(body(n), 'a@example.org', [f'r{n}@example.org'])
    location = fresh_location()
    proc = run([script('mq-queue'), '--queue-dir', queue_dir, 'copy', '--to', location])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == 'copied 20 messages'
    assert list(maildir.ids()) == []
    pg = open_queue(location)
    assert sum(1 for _ in pg.ids([NEW])) == 20
    again = run([script('mq-queue'), '--queue-dir', queue_dir, 'copy', '--to', location])
    assert again.returncode == 0 and again.stdout.decode().strip() == 'copied 0 messages'
    missing = run([script('mq-queue'), '--queue-dir', queue_dir, 'copy', '--to', fresh_location(init=False)])
    assert missing.returncode == 78 and b'mq-queue init' in missing.stderr
    itself = run([script('mq-queue'), '--queue-dir', location, 'copy', '--to', location])
    assert itself.returncode == 64, itself.stderr
    pg.close()


def test_copy_refuses_the_queue_itself_under_another_name(tmp_path: Path) -> None:
    from _pg import with_params
    from schwarz.mailqueue.queue.pg_location import split_location

    location = fresh_location()
    conninfo, ours = split_location(location)
    pg = open_queue(location)
    pg.enqueue(body(1), 'a@example.org', ['r@example.org'])
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(body(2), 'a@example.org', ['r@example.org'])
    (tmp_path / 'link').symlink_to(queue_dir)
    socket_dir = '/var/run/postgresql'
    same = [
        (location, with_params(location, sslmode='prefer')),  # another spelling
        (location, conninfo.replace('postgresql://', 'postgres://', 1) + f'?mq_schema={ours["schema"]}'),
        (str(queue_dir), str(tmp_path / 'link')),  # a symlink
        (str(queue_dir), f'maildir://{queue_dir}/'),
    ]
    # another session time zone (the server's start time must not be compared as local text)
    same.append((location, with_params(location, options='-c%20TimeZone%3DAsia/Tokyo')))
    if Path(socket_dir).is_dir() and '127.0.0.1' in conninfo:  # (the machine's server: also by its socket)
        same.append((location, with_params(location, host=socket_dir)))
    for source, target in same:
        proc = run([script('mq-queue'), '--queue-dir', source, 'copy', '--to', target])
        assert proc.returncode == 64, (source, target, proc.stderr)
        assert b'is the queue itself' in proc.stderr
    other = fresh_location()  # the same server and database, another schema: another queue
    proc = run([script('mq-queue'), '--queue-dir', location, 'copy', '--to', other])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == 'copied 1 message'
    assert sum(1 for _ in open_queue(other).ids()) == 1 and sum(1 for _ in pg.ids()) == 0
    pg.close()
