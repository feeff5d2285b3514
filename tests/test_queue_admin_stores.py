"""QueueAdmin and mq-queue on every store: the admin only uses the queue contract.

The same operations as tests/test_queue_admin.py (which also covers maildir oddities:
corrupt files, symlinks, directories), here set up and checked through the contract only,
against the maildir, the in-memory and the PostgreSQL store.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Dict, Iterator, List, Optional

import pytest

from schwarz.mailqueue.cli import mq_queue
from schwarz.mailqueue.handler import DebugMailer, MessageHandler
from schwarz.mailqueue.queue.admin import (
    BUSY,
    GONE,
    HELD_SINCE,
    NOOP,
    OK,
    ORIGINAL_DATE,
    WRONG_STATE,
    InvalidID,
    QueueAdmin,
    Selection,
    UnknownID,
)
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, QueuedMessage, QueueEntry, QueueStore
from schwarz.mailqueue.queue.format import FAILED_REASON, HOLD_REASON, LAST_ERROR, parse_date
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.memory import MemoryQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.runner import QueueRunner

UTC = timezone.utc


def message(tag: str) -> bytes:
    return (f'From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {tag}\r\n'
            f'Message-ID: <{tag}@example.org>\r\n\r\nbody of {tag}\r\n').encode()


@pytest.fixture(params=['maildir', 'memory', 'postgresql'])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[QueueStore]:
    if request.param == 'maildir':
        queue: QueueStore = MaildirQueue(str(tmp_path / 'queue'), fsync=False)
    elif request.param == 'postgresql':
        from _pg import fresh_location
        from schwarz.mailqueue.queue.locations import open_queue

        queue = open_queue(fresh_location())
    else:
        queue = MemoryQueue(f'admin-{uuid.uuid4().hex}')
    yield queue
    queue.close()


def abandon_claim(store: QueueStore, msg_id: str) -> None:
    """A claim whose owner died: a thread that ended (memory), a process that exited (maildir)."""
    if isinstance(store, MemoryQueue):
        thread = threading.Thread(target=store.claim, args=(msg_id,))
        thread.start()
        thread.join()
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            store.claim(msg_id)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def entry(store: QueueStore, msg_id: str) -> QueueEntry:
    found = store.entry(msg_id)
    assert found is not None and found.meta is not None, msg_id
    return found


@dataclass
class Populated:
    store: QueueStore
    fresh: str
    deferred: str
    held: str
    failed: str
    stale: str
    claimed: QueuedMessage
    tags: Dict[str, str] = field(default_factory=dict)

    @property
    def all_ids(self) -> List[str]:
        return [self.fresh, self.deferred, self.held, self.failed, self.stale, self.claimed.msg_id]


def populate(store: QueueStore, now: Optional[datetime] = None) -> Populated:
    """A message in every state, made through the contract only."""
    now = now or datetime.now(UTC)
    tags: Dict[str, str] = {}

    def add(tag: str, rcpts: Optional[List[str]] = None, age: timedelta = timedelta(hours=1)) -> str:
        msg_id = store.enqueue(message(tag), 'sender@example.org', rcpts or ['rcpt@example.org'],
                               queue_date=now - age)
        tags[msg_id] = tag
        return msg_id

    fresh = add('fresh', age=timedelta(minutes=5))
    rcpts = ['slow@example.net', 'other@example.net']
    deferred = add('deferred', rcpts=rcpts, age=timedelta(hours=3))
    for _ in range(2):
        msg = store.claim(deferred)
        assert msg is not None
        store.defer(msg, rcpts, 'slow@example.net: 451 4.3.0 later', now - timedelta(minutes=1))
    held = add('held', age=timedelta(days=2))
    msg = store.claim(held)
    assert msg is not None
    store.move(msg, HELD)
    failed = store.store_dead_letter(message('failed'), '', ['gone@example.com'],
                                     'gone@example.com: 550 5.1.1 no such user')
    tags[failed] = 'failed'
    stale = add('stale', age=timedelta(minutes=30))
    abandon_claim(store, stale)
    claimed = store.enqueue_claimed(message('claimed'), 'sender@example.org', ['rcpt@example.org'],
                                    queue_date=now - timedelta(minutes=10))
    tags[claimed.msg_id] = 'claimed'
    return Populated(store, fresh, deferred, held, failed, stale, claimed, tags)


@pytest.fixture
def pop(store: QueueStore) -> Iterator[Populated]:
    populated = populate(store)
    yield populated
    if populated.claimed.is_claimed:
        store.release(populated.claimed)


# --- reading -------------------------------------------------------------------------------------


def test_rows_and_stats(pop: Populated) -> None:
    admin = QueueAdmin(pop.store)
    rows = {row.msg_id: row for row in admin.rows()}
    assert sorted(rows) == sorted(pop.all_ids)
    assert (rows[pop.fresh].state, rows[pop.fresh].due, rows[pop.fresh].next_attempt) == (NEW, True, None)
    deferred = rows[pop.deferred]
    assert (deferred.retries, deferred.due) == (2, False)
    assert deferred.next_attempt is not None and deferred.next_attempt > datetime.now(UTC)
    assert deferred.reason == 'slow@example.net: 451 4.3.0 later'
    assert deferred.to_addrs == ['slow@example.net', 'other@example.net']
    assert rows[pop.held].state == HELD
    assert (rows[pop.failed].state, rows[pop.failed].from_addr) == (FAILED, '')
    assert rows[pop.failed].reason == 'gone@example.com: 550 5.1.1 no such user'
    assert (rows[pop.stale].state, rows[pop.stale].active) == (CLAIMED, False)
    assert (rows[pop.claimed.msg_id].state, rows[pop.claimed.msg_id].active) == (CLAIMED, True)

    assert sorted(r.msg_id for r in admin.rows(Selection(older_than=timedelta(hours=2)))) == \
        sorted([pop.deferred, pop.held])
    assert [r.msg_id for r in admin.rows(Selection(sender='<>'))] == [pop.failed]
    assert [r.msg_id for r in admin.rows(Selection(to='SLOW@'))] == [pop.deferred]
    assert sorted(i for _s, i in admin.select_ids(Selection(states=(HELD, FAILED)))) == \
        sorted([pop.held, pop.failed])

    stats = admin.stats()
    assert {name: item.count for name, item in stats.states.items()} == {NEW: 2, CLAIMED: 2, HELD: 1, FAILED: 1}
    assert (stats.deferred, stats.due, stats.active, stats.total.unreadable) == (1, 1, 1, 0)
    assert stats.states[HELD].oldest_id == pop.held
    assert stats.as_json()['queue'] == pop.store.location
    assert 'mailqueue_messages{state="hold"} 1' in stats.prometheus()


def test_resolve_view_and_abbreviations(pop: Populated) -> None:
    admin = QueueAdmin(pop.store)
    assert admin.resolve([pop.deferred[:8], pop.held]) == [pop.deferred, pop.held]
    with pytest.raises(UnknownID, match='no such message'):
        admin.resolve(['ffffffffffff'])
    with pytest.raises(InvalidID):
        admin.resolve(['../x'])
    assert admin.abbrev_length() == 8 and sorted(admin.names()) == sorted(pop.all_ids)
    view = admin.view(pop.deferred)
    assert view.content == message('deferred') and view.headers.endswith(b'<deferred@example.org>')
    assert view.meta is not None and view.meta.retries == 2
    busy = admin.view(pop.claimed.msg_id)  # reading a message being delivered is fine
    assert busy.row.active is True and busy.content == message('claimed')
    with pytest.raises(UnknownID):
        admin.view('ffffffffffff.1')


# --- actions -------------------------------------------------------------------------------------


def test_retry_hold_release_requeue(pop: Populated) -> None:
    store = pop.store
    admin = QueueAdmin(store, wait=0)
    assert (admin.retry(pop.deferred).outcome, admin.retry(pop.deferred).outcome) == (OK, NOOP)
    meta = entry(store, pop.deferred).meta
    assert meta is not None and (meta.retries, meta.last_delivery_attempt) == (2, None)
    assert meta.extra[LAST_ERROR] == 'slow@example.net: 451 4.3.0 later'  # kept for the operator

    assert admin.hold(pop.fresh, reason='customer asked to wait').outcome == OK
    held = entry(store, pop.fresh)
    assert held.state == HELD and held.meta is not None and held.meta.extra[HOLD_REASON] == 'customer asked to wait'
    assert admin.hold(pop.fresh).outcome == NOOP
    assert admin.release(pop.fresh).outcome == OK
    released = entry(store, pop.fresh)
    assert released.state == NEW and released.meta is not None
    assert HOLD_REASON not in released.meta.extra and HELD_SINCE not in released.meta.extra
    assert admin.release(pop.fresh).outcome == NOOP

    assert admin.requeue(pop.failed).outcome == OK
    requeued = entry(store, pop.failed)
    assert requeued.state == NEW and requeued.meta is not None
    assert requeued.meta.retries == 0 and FAILED_REASON not in requeued.meta.extra
    assert ORIGINAL_DATE in requeued.meta.extra

    assert (admin.retry(pop.held).outcome, admin.retry(pop.held).state) == (WRONG_STATE, HELD)
    assert admin.requeue(pop.fresh).outcome == WRONG_STATE
    assert admin.retry('0000deadbeef.1').outcome == GONE


def test_held_time_does_not_count_against_the_lifetime(store: QueueStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    msg_id = store.enqueue(message('old'), 'a@example.org', ['b@example.org'], queue_date=now - timedelta(days=4))
    three_days_ago = now - timedelta(days=3)
    assert QueueAdmin(store, clock=lambda: three_days_ago).hold(msg_id).outcome == OK
    mailer = DebugMailer()
    assert QueueRunner(store, mailer=mailer).run_once().seen == 0 and mailer.sent_mails == []

    assert QueueAdmin(store).release(msg_id).outcome == OK
    meta = entry(store, msg_id).meta
    assert meta is not None and meta.queue_date is not None
    assert parse_date(meta.extra[ORIGINAL_DATE]) == now - timedelta(days=4)
    assert abs((now - meta.queue_date) - timedelta(days=1)) < timedelta(seconds=5)
    QueueRunner(store, mailer=mailer, policy=RetryPolicy(max_queue_lifetime=timedelta(days=5))).run_once()
    assert len(mailer.sent_mails) == 1 and store.entry(msg_id) is None


def test_busy_messages_are_waited_for(pop: Populated) -> None:
    store = pop.store
    msg_id = pop.claimed.msg_id
    admin = QueueAdmin(store, wait=0.3)
    for action in (admin.delete, admin.hold, admin.retry):
        started = time.monotonic()
        result = action(msg_id)
        assert result.outcome == BUSY and 'being delivered' in result.detail
        assert 0.25 <= time.monotonic() - started < 3
    assert entry(store, msg_id).state == CLAIMED

    timer = threading.Timer(0.3, store.release, args=(pop.claimed,))
    timer.start()
    try:
        assert QueueAdmin(store, wait=10).hold(msg_id).outcome == OK
    finally:
        timer.join()
    assert entry(store, msg_id).state == HELD


def test_a_message_delivered_while_waiting_is_gone(pop: Populated) -> None:
    timer = threading.Timer(0.2, pop.store.complete, args=(pop.claimed,))
    timer.start()
    try:
        assert QueueAdmin(pop.store, wait=10).hold(pop.claimed.msg_id).outcome == GONE
    finally:
        timer.join()


def test_an_abandoned_claim_can_be_acted_upon(pop: Populated) -> None:
    admin = QueueAdmin(pop.store, wait=0)
    assert admin.release(pop.stale).outcome == NOOP  # it is a waiting message; back to new
    assert entry(pop.store, pop.stale).state == NEW
    abandon_claim(pop.store, pop.stale)
    assert admin.hold(pop.stale).outcome == OK and entry(pop.store, pop.stale).state == HELD


def test_delete_and_purge(pop: Populated) -> None:
    store = pop.store
    admin = QueueAdmin(store, wait=0)
    for msg_id, state in ((pop.fresh, NEW), (pop.failed, FAILED), (pop.stale, CLAIMED)):
        result = admin.delete(msg_id)
        assert (result.outcome, result.state) == (OK, state), msg_id
        assert store.entry(msg_id) is None
    assert admin.delete(pop.fresh).outcome == GONE
    assert admin.delete(pop.claimed.msg_id).outcome == BUSY
    dry = list(admin.purge(timedelta(hours=2), dry_run=True))
    assert sorted(r.msg_id for r in dry) == sorted([pop.deferred, pop.held]) and store.entry(pop.held) is not None
    results = list(admin.purge(timedelta(hours=2), states=(HELD,)))
    assert [(r.msg_id, r.outcome) for r in results] == [(pop.held, OK)]
    assert [r.msg_id for r in admin.purge(timedelta(0))] == [pop.deferred]
    assert [r.msg_id for r in admin.rows()] == [pop.claimed.msg_id]  # never purged: being delivered


def test_deliver_now_and_logging(pop: Populated) -> None:
    logger = logging.getLogger('mailqueue.queue_log.test-stores')
    records: List[str] = []
    handler_ = logging.Handler()
    handler_.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler_)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        admin = QueueAdmin(pop.store, queue_log=logger)
        mailer = DebugMailer()
        result = admin.deliver(pop.deferred, MessageHandler([mailer]))
        assert (result.outcome, result.state) == (OK, None)
        assert [to for _f, to, _d in mailer.sent_mails] == [['slow@example.net', 'other@example.net']]
        assert pop.store.entry(pop.deferred) is None
        admin.hold(pop.fresh)
        admin.delete(pop.held)
    finally:
        logger.removeHandler(handler_)
    assert [line.split()[0] for line in records] == ['status=held', 'status=deleted']
    assert all('app=mq-queue' in line for line in records)


# --- the command line on a memory store ----------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = [name for name in logging.root.manager.loggerDict if name.startswith('mailqueue')] + ['mailqueue']
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for extra in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(extra)
            extra.close()
        logger.setLevel(level)
        logger.propagate = propagate


def test_mq_queue_works_unchanged_on_a_memory_store(tmp_path, monkeypatch, capsys, restore_logging) -> None:
    monkeypatch.setenv('HOME', str(tmp_path))  # no ~/.mailqueue-runner.conf
    location = f'memory://cli-{uuid.uuid4().hex}'
    pop = populate(open_queue(location))
    try:
        def run(*args: str) -> str:
            code = mq_queue.main(['--queue-dir', location, *args])
            out, err = capsys.readouterr()
            assert code == 0, err
            return out

        rows = {r['id']: r for r in map(json.loads, run('list', '--json').splitlines())}
        assert sorted(rows) == sorted(pop.all_ids) and rows[pop.deferred]['path'] is None
        assert (rows[pop.stale]['active'], rows[pop.claimed.msg_id]['active']) == (False, True)
        assert run('hold', '--reason', 'DNS', pop.fresh[:8]) == f'{pop.fresh}: held\n'
        assert run('release', '--all') == 'released 2 messages\n'
        assert run('requeue', pop.failed) == f'{pop.failed}: requeued\n'
        shown = run('show', pop.deferred)
        assert 'Queue-ID:      ' + pop.deferred in shown and 'File:' not in shown
        assert 'Subject: deferred' in shown
        stats = json.loads(run('stats', '--json'))
        assert stats['queue'] == location and stats['states']['new']['messages'] == 4
        assert pop.deferred[:8] in run('list')
        assert mq_queue.main(['--queue-dir', location, '--wait', '0', 'delete', '-y', pop.claimed.msg_id]) == 75
        assert 'busy' in capsys.readouterr().err
    finally:
        pop.store.release(pop.claimed)
