"""schwarz.mailqueue.queue.admin and humanize, on real queue directories (no mocks)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional

import pytest

from schwarz.mailqueue.handler import DebugMailer
from schwarz.mailqueue.humanize import ellipsize, format_age, format_size, format_until, one_line, printable
from schwarz.mailqueue.queue.admin import (
    BUSY,
    CORRUPT,
    GONE,
    HELD_SINCE,
    NOOP,
    OK,
    ORIGINAL_DATE,
    WRONG_STATE,
    AmbiguousID,
    InvalidID,
    QueueAdmin,
    Selection,
    UnknownID,
    abbrev_length,
)
from schwarz.mailqueue.queue.contract import QueuedMessage
from schwarz.mailqueue.queue.format import (
    FAILED_REASON,
    HOLD_REASON,
    LAST_ERROR,
    QueueFileError,
    format_date,
    parse_date,
)
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.runner import QueueRunner

UTC = timezone.utc


def message(tag: str) -> bytes:
    return (f'From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: {tag}\r\n'
            f'Message-ID: <{tag}@example.org>\r\n\r\nbody of {tag}\r\n').encode()


def listdir(queue: MaildirQueue, state: str) -> List[str]:
    return sorted(os.listdir(os.path.join(queue.path, state)))


@dataclass
class Populated:
    """A queue with a message in every state (and the odd ones an operator meets)."""

    queue: MaildirQueue
    fresh: str
    deferred: str
    held: str
    failed: str
    stale: str
    corrupt: str
    claimed: QueuedMessage
    tags: Dict[str, str] = field(default_factory=dict)

    @property
    def all_ids(self) -> List[str]:
        return [self.fresh, self.deferred, self.held, self.failed, self.stale, self.corrupt, self.claimed.msg_id]


def populate(path: str, now: Optional[datetime] = None) -> Populated:
    now = now or datetime.now(UTC)
    queue = MaildirQueue(path)
    tags: Dict[str, str] = {}

    def add(tag: str, sender: str = 'sender@example.org', rcpts: Optional[List[str]] = None,
            age: timedelta = timedelta(hours=1)) -> str:
        msg_id = str(queue.enqueue(message(tag), sender, rcpts or ['rcpt@example.org'], queue_date=now - age))
        tags[msg_id] = tag
        return msg_id

    fresh = add('fresh', age=timedelta(minutes=5))
    deferred = add('deferred', rcpts=['slow@example.net', 'other@example.net'], age=timedelta(hours=3))
    msg = queue.claim(deferred)
    assert msg is not None
    queue.defer(msg, ['slow@example.net', 'other@example.net'], 'slow@example.net: 451 4.3.0 later',
                now - timedelta(minutes=1))
    msg = queue.claim(deferred)
    assert msg is not None
    queue.defer(msg, ['slow@example.net', 'other@example.net'], 'slow@example.net: 451 4.3.0 later',
                now - timedelta(minutes=1))
    held = add('held', age=timedelta(days=2))
    msg = queue.claim(held)
    assert msg is not None
    queue.move(msg, 'hold')
    failed = queue.store_failed(message('failed'), '', ['gone@example.com'], 'gone@example.com: 550 5.1.1 no such user')
    tags[failed] = 'failed'
    stale = add('stale', age=timedelta(minutes=30))
    # A runner that crashed: the file sits in cur/ and nobody holds its lock.
    os.rename(os.path.join(queue.path, 'new', stale), os.path.join(queue.path, 'cur', stale))
    corrupt = 'c0ffee000000.1700000000'
    with open(os.path.join(queue.path, 'new', corrupt), 'wb') as fp:
        fp.write(b'this is not a queue file\r\n')
    claimed = queue.enqueue_claimed(message('claimed'), 'sender@example.org', ['rcpt@example.org'],
                                    queue_date=now - timedelta(minutes=10))
    assert isinstance(claimed, QueuedMessage)
    tags[claimed.msg_id] = 'claimed'
    return Populated(queue, fresh, deferred, held, failed, stale, corrupt, claimed, tags)


@pytest.fixture
def pop(tmp_path):
    populated = populate(str(tmp_path / 'queue'))
    yield populated
    if populated.claimed.is_claimed:
        populated.queue.release(populated.claimed)


# --- humanize ------------------------------------------------------------------------------------


def test_humanize_helpers() -> None:
    assert [format_size(n) for n in (0, 512, 1023, 1024, 1300, 12 * 1024, 3 * 1024 ** 2 + 1)] == \
        ['0', '512', '1023', '1.0K', '1.3K', '12K', '3.0M']
    assert format_age(timedelta(hours=3, minutes=12)) == '3h12m'
    assert format_age(timedelta(seconds=-5)) == '0s'
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert format_until(None, now) == 'now'
    assert format_until(now - timedelta(1), now) == 'now'
    assert format_until(now + timedelta(minutes=12), now) == '12m'
    assert one_line('a\r\nb\tc\x1b[2J') == 'a b c?[2J'
    assert printable('line\n\x07bell\x9b') == 'line\n?bell?'
    assert ellipsize('abcdef', 4) == 'abc…' and ellipsize('abc', 4) == 'abc' and ellipsize('abcdef', 4, '...') == 'a...'


# --- reading -------------------------------------------------------------------------------------


def test_rows_show_every_state(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue)
    rows = {row.msg_id: row for row in admin.rows()}
    assert sorted(rows) == sorted(pop.all_ids)
    assert {rows[i].state for i in pop.all_ids} == {'new', 'cur', 'hold', 'failed'}

    fresh = rows[pop.fresh]
    assert (fresh.state, fresh.retries, fresh.due, fresh.next_attempt) == ('new', 0, True, None)
    assert fresh.from_addr == 'sender@example.org' and fresh.to_addrs == ['rcpt@example.org']
    assert timedelta(minutes=4) < fresh.age(datetime.now(UTC)) < timedelta(minutes=6)

    deferred = rows[pop.deferred]
    assert deferred.retries == 2 and deferred.due is False
    assert deferred.next_attempt is not None and deferred.next_attempt > datetime.now(UTC)
    assert deferred.reason == 'slow@example.net: 451 4.3.0 later'

    assert rows[pop.held].state == 'hold'
    assert rows[pop.failed].state == 'failed' and rows[pop.failed].reason == 'gone@example.com: 550 5.1.1 no such user'
    assert rows[pop.failed].from_addr == ''
    assert (rows[pop.stale].state, rows[pop.stale].active) == ('cur', False)
    assert (rows[pop.claimed.msg_id].state, rows[pop.claimed.msg_id].active) == ('cur', True)
    corrupt = rows[pop.corrupt]
    assert corrupt.error is not None and corrupt.reason is not None and corrupt.reason.startswith('unreadable')
    assert corrupt.as_json(datetime.now(UTC))['error'] == corrupt.error
    # Listing never changed anything: the corrupt file is still where it was.
    assert pop.corrupt in listdir(pop.queue, 'new')


def test_selection_filters(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue)

    def ids(**kwargs: object) -> List[str]:
        return sorted(row.msg_id for row in admin.rows(Selection(**kwargs)))  # type: ignore[arg-type]

    assert ids(states=('hold', 'failed')) == sorted([pop.held, pop.failed])
    assert ids(older_than=timedelta(hours=2)) == sorted([pop.deferred, pop.held])
    assert ids(to='SLOW@example') == [pop.deferred]
    assert ids(sender='<>') == [pop.failed]
    assert pop.failed not in ids(sender='example.org')
    with pytest.raises(ValueError, match='unknown state'):
        Selection(states=('bogus',))


def test_abbreviation_and_prefix_resolution(tmp_path) -> None:
    assert abbrev_length(['abc1', 'abc2', 'x'], minimum=1) == 4
    assert abbrev_length(['a', 'b']) == 8
    assert abbrev_length([]) == 8
    assert abbrev_length((f'{n:04x}' for n in range(100)), limit=99) is None  # too many: full ids
    assert abbrev_length((f'{n:04x}' for n in range(100)), minimum=1, limit=100) == 4
    queue = MaildirQueue(str(tmp_path / 'q'))
    template = str(queue.enqueue(message('t'), 'a@x', ['b@x']))
    data = open(os.path.join(queue.path, 'new', template), 'rb').read()
    for name in ('aaaa1111.1', 'aaaa2222.1', 'abcd', 'abcd.foreign', 'bbbb9999.1'):
        with open(os.path.join(queue.path, 'hold' if name.startswith('b') else 'new', name), 'wb') as fp:
            fp.write(data)
    admin = QueueAdmin(queue)
    assert admin.resolve(['aaaa1', 'bbbb', template[:6]]) == ['aaaa1111.1', 'bbbb9999.1', template]
    assert admin.resolve(['abcd']) == ['abcd']  # an exact id wins over ids it prefixes
    with pytest.raises(AmbiguousID) as info:
        admin.resolve(['aaaa'])
    assert info.value.matches == ['aaaa1111.1', 'aaaa2222.1'] and 'ambiguous' in str(info.value)
    with pytest.raises(UnknownID):
        admin.resolve(['ffff'])
    with pytest.raises(InvalidID, match='too short'):
        admin.resolve(['bbb'])
    for bad in ('../new/x', '.hidden', ''):
        with pytest.raises(InvalidID):
            admin.resolve([bad])
    assert admin.abbrev_length(minimum=1) == 5  # 'aaaa1111.1'/'aaaa2222.1' and 'abcd'/'abcd.foreign'
    assert admin.abbrev_length() == 8


def test_view_reads_without_claiming(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue)
    view = admin.view(pop.deferred)
    assert view.meta is not None and view.meta.retries == 2
    assert view.headers.endswith(b'Message-ID: <deferred@example.org>')
    assert view.content == message('deferred')
    corrupt = admin.view(pop.corrupt)
    assert corrupt.meta is None and corrupt.content == b'this is not a queue file\r\n'
    busy = admin.view(pop.claimed.msg_id)  # reading a message being delivered is fine
    assert busy.row.active is True and busy.content == message('claimed')
    with pytest.raises(UnknownID):
        admin.view('ffffffffffff.1')


def test_stats_counts_sizes_and_ages(pop: Populated) -> None:
    stats = QueueAdmin(pop.queue).stats()
    counts = {name: item.count for name, item in stats.states.items()}
    assert counts == {'new': 3, 'cur': 2, 'hold': 1, 'failed': 1}
    total_bytes = sum(os.lstat(os.path.join(pop.queue.path, s, i)).st_size
                      for s in ('new', 'cur', 'hold', 'failed') for i in listdir(pop.queue, s))
    assert stats.total.bytes == total_bytes and stats.total.count == 7
    assert stats.states['hold'].oldest_id == pop.held
    age = stats.states['hold'].oldest_age(stats.generated)
    assert age is not None and timedelta(days=2) <= age < timedelta(days=2, minutes=1)
    assert (stats.deferred, stats.due, stats.active) == (1, 1, 1)
    assert stats.states['new'].unreadable == 1
    assert stats.as_json()['total']['messages'] == 7


# --- actions -------------------------------------------------------------------------------------


def test_retry_makes_a_deferred_message_due_and_keeps_its_attempts(pop: Populated) -> None:
    mailer = DebugMailer()
    runner = QueueRunner(pop.queue, mailer=mailer)
    stats = runner.run_once()
    delivered = {tag for _f, _t, data in mailer.sent_mails for tag in pop.tags.values() if f'<{tag}@' in data.decode()}
    assert 'deferred' not in delivered and stats.not_due == 1

    admin = QueueAdmin(pop.queue)
    result = admin.retry(pop.deferred)
    assert (result.outcome, result.state) == (OK, 'new')
    meta = pop.queue.read_meta('new', pop.deferred)
    assert meta.retries == 2 and meta.last_delivery_attempt is None
    assert meta.extra[LAST_ERROR] == 'slow@example.net: 451 4.3.0 later'  # kept for the operator
    assert admin.retry(pop.deferred).outcome == NOOP

    runner.run_once()
    assert any(b'<deferred@example.org>' in data for _f, _t, data in mailer.sent_mails)
    assert pop.deferred not in listdir(pop.queue, 'new')


def test_actions_report_the_wrong_state(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue, wait=0)
    assert (admin.retry(pop.held).outcome, admin.retry(pop.held).state) == (WRONG_STATE, 'hold')
    assert admin.retry(pop.failed).state == 'failed'
    assert admin.hold(pop.held).outcome == NOOP
    assert admin.hold(pop.failed).outcome == WRONG_STATE
    assert admin.release(pop.fresh).outcome == NOOP
    assert admin.requeue(pop.fresh).outcome == WRONG_STATE
    assert admin.retry('0000deadbeef.1').outcome == GONE


def test_hold_and_release_do_not_count_held_time_against_the_lifetime(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    now = datetime.now(UTC).replace(microsecond=0)
    msg_id = str(queue.enqueue(message('old'), 'a@example.org', ['b@example.org'], queue_date=now - timedelta(days=4)))
    three_days_ago = now - timedelta(days=3)
    past_admin = QueueAdmin(queue, clock=lambda: three_days_ago)
    result = past_admin.hold(msg_id, reason='customer asked to wait')
    assert (result.outcome, listdir(queue, 'hold')) == (OK, [msg_id])
    meta = queue.read_meta('hold', msg_id)
    assert meta.extra[HOLD_REASON] == 'customer asked to wait'
    assert parse_date(meta.extra[HELD_SINCE]) == three_days_ago

    mailer = DebugMailer()
    stats = QueueRunner(queue, mailer=mailer).run_once()
    assert stats.seen == 0 and mailer.sent_mails == []  # held: never delivered, never expired

    assert QueueAdmin(queue).release(msg_id).outcome == OK
    meta = queue.read_meta('new', msg_id)
    assert HELD_SINCE not in meta.extra and HOLD_REASON not in meta.extra
    assert parse_date(meta.extra[ORIGINAL_DATE]) == now - timedelta(days=4)
    assert meta.queue_date is not None
    assert timedelta(days=1) - timedelta(seconds=5) < now - meta.queue_date <= timedelta(days=1) + timedelta(seconds=5)
    # 4 days in the queue, 3 of them on hold: well within the 5-day lifetime, so it goes out.
    QueueRunner(queue, mailer=mailer, policy=RetryPolicy(max_queue_lifetime=timedelta(days=5))).run_once()
    assert len(mailer.sent_mails) == 1 and listdir(queue, 'failed') == []


def test_requeue_gives_an_expired_message_a_fresh_start(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    queued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=6)
    msg_id = str(queue.enqueue(message('expired'), 'a@example.org', ['b@example.org'], queue_date=queued))
    mailer = DebugMailer()
    QueueRunner(queue, mailer=mailer).run_once()
    assert listdir(queue, 'failed') == [msg_id] and mailer.sent_mails == []
    assert 'expired' in (queue.read_meta('failed', msg_id).extra[FAILED_REASON])

    admin = QueueAdmin(queue)
    rows = list(admin.rows())
    assert rows[0].reason is not None and 'expired' in rows[0].reason
    assert admin.requeue(msg_id).outcome == OK
    meta = queue.read_meta('new', msg_id)
    assert (meta.retries, meta.last_delivery_attempt) == (0, None)
    assert FAILED_REASON not in meta.extra and LAST_ERROR not in meta.extra
    assert parse_date(meta.extra[ORIGINAL_DATE]) == queued
    # The listing still shows how old the message really is.
    assert next(admin.rows()).age(datetime.now(UTC)) > timedelta(days=6)
    QueueRunner(queue, mailer=mailer).run_once()
    assert len(mailer.sent_mails) == 1 and listdir(queue, 'failed') == []


def test_requeue_leaves_unreadable_dead_letters_alone(pop: Populated) -> None:
    with pytest.raises(QueueFileError):
        pop.queue.claim(pop.corrupt)  # what a runner does: quarantine to failed/
    before = open(os.path.join(pop.queue.path, 'failed', pop.corrupt), 'rb').read()
    admin = QueueAdmin(pop.queue)
    result = admin.requeue(pop.corrupt)
    assert result.outcome == CORRUPT
    assert open(os.path.join(pop.queue.path, 'failed', pop.corrupt), 'rb').read() == before
    row = next(r for r in admin.rows() if r.msg_id == pop.corrupt)
    assert row.reason is not None and 'corrupt queue file' in row.reason and row.first_queued is not None


def test_requeue_of_a_refused_copy(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue)
    assert admin.requeue(pop.failed).outcome == OK
    meta = pop.queue.read_meta('new', pop.failed)
    assert meta.to_addrs == ['gone@example.com'] and FAILED_REASON not in meta.extra
    assert admin.requeue(pop.failed).outcome == WRONG_STATE


def test_delete_from_every_state_and_odd_files(pop: Populated) -> None:
    queue = pop.queue
    admin = QueueAdmin(queue, wait=0)
    for msg_id, state in ((pop.fresh, 'new'), (pop.held, 'hold'), (pop.failed, 'failed'), (pop.stale, 'cur'),
                          (pop.corrupt, 'new')):
        result = admin.delete(msg_id)
        assert (result.outcome, result.state) == (OK, state), msg_id
        assert msg_id not in listdir(queue, state)
    os.symlink('/etc/passwd', os.path.join(queue.path, 'failed', 'link.foreign'))
    os.mkdir(os.path.join(queue.path, 'failed', 'dir.foreign'))
    assert admin.delete('link.foreign').outcome == OK and os.path.exists('/etc/passwd')
    assert admin.delete('dir.foreign').outcome == CORRUPT
    assert admin.delete(pop.fresh).outcome == GONE


def test_a_message_being_delivered_is_waited_for_then_reported_busy(pop: Populated) -> None:
    queue = pop.queue
    msg_id = pop.claimed.msg_id
    admin = QueueAdmin(queue, wait=0.3)
    for action in (admin.delete, admin.hold, admin.retry):
        started = time.monotonic()
        result = action(msg_id)
        assert result.outcome == BUSY and 'being delivered' in result.detail
        assert 0.25 <= time.monotonic() - started < 3
    assert listdir(queue, 'cur') == sorted([msg_id, pop.stale])

    # The delivering process gives the message back while we wait: we get it.
    patient = QueueAdmin(queue, wait=10)
    timer = threading.Timer(0.3, queue.release, args=(pop.claimed,))
    timer.start()
    try:
        started = time.monotonic()
        assert patient.hold(msg_id).outcome == OK
        assert 0.2 < time.monotonic() - started < 5
    finally:
        timer.join()
    assert msg_id in listdir(queue, 'hold')


def test_a_message_delivered_while_waiting_is_reported_gone(pop: Populated) -> None:
    timer = threading.Timer(0.2, pop.queue.complete, args=(pop.claimed,))
    timer.start()
    try:
        result = QueueAdmin(pop.queue, wait=10).hold(pop.claimed.msg_id)
    finally:
        timer.join()
    assert result.outcome == GONE


def test_an_abandoned_claim_can_be_acted_upon(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue, wait=0)
    assert admin.hold(pop.stale).outcome == OK
    assert pop.stale in listdir(pop.queue, 'hold')


def test_purge_by_age_and_state(pop: Populated) -> None:
    admin = QueueAdmin(pop.queue)
    dry = list(admin.purge(timedelta(hours=2), dry_run=True))
    assert sorted(r.msg_id for r in dry) == sorted([pop.deferred, pop.held])
    assert pop.deferred in listdir(pop.queue, 'new')
    results = list(admin.purge(timedelta(hours=2), states=('hold',)))
    assert [(r.msg_id, r.outcome) for r in results] == [(pop.held, OK)]
    assert listdir(pop.queue, 'hold') == []
    results = list(admin.purge(timedelta(0)))
    assert sorted(r.msg_id for r in results) == sorted([pop.fresh, pop.deferred, pop.failed, pop.corrupt])
    # cur/ is never purged by default: one of them is being delivered right now.
    assert listdir(pop.queue, 'cur') == sorted([pop.claimed.msg_id, pop.stale])


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_admin_actions_are_logged(pop: Populated) -> None:
    # A handler on the logger itself: other tests may have run init_app(), which stops propagation.
    logger = logging.getLogger('mailqueue.queue_log')
    collect = _Collect()
    old_level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        admin = QueueAdmin(pop.queue)
        admin.hold(pop.fresh)
        admin.release(pop.fresh)
        admin.requeue(pop.failed)
        admin.delete(pop.held)
        admin.retry(pop.deferred)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    lines = collect.lines
    assert [line.split()[0] for line in lines] == ['status=held', 'status=released', 'status=requeued',
                                                   'status=deleted', 'status=retry']
    assert all('app=mq-queue' in line for line in lines)
    assert f'queue_id={pop.fresh}' in lines[0]


def test_concurrent_admin_and_runner_threads_lose_nothing(tmp_path) -> None:
    """Admin actions in a loop while runner threads deliver: every message exactly once, or still queued."""
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    tags = {}
    for n in range(120):
        tags[str(queue.enqueue(message(f'm{n}'), 'a@example.org', ['b@example.org']))] = f'm{n}'
    delivered: List[bytes] = []
    lock = threading.Lock()

    def slow_send(from_addr: str, to_addrs: List[str], data: bytes) -> bool:
        time.sleep(0.005)
        with lock:
            delivered.append(data)
        return True

    stop = threading.Event()

    def run() -> None:
        runner = QueueRunner(MaildirQueue(queue.path, fsync=False), mailer=DebugMailer(send_callback=slow_send),
                             force=True)
        while not stop.is_set():
            runner.run_once()
            time.sleep(0.001)

    threads = [threading.Thread(target=run) for _ in range(2)]
    admin = QueueAdmin(MaildirQueue(queue.path, fsync=False), wait=2)
    deleted = set()
    outcomes: Dict[str, int] = {}
    for thread in threads:
        thread.start()
    try:
        for _round in range(6):
            # Against the runner's directory order, so that the two meet rather than queue up behind each other.
            pending = list(admin.select_ids(Selection(states=('new', 'cur'))))[::-1]
            results = [admin.hold(msg_id) for _s, msg_id in pending]
            results += [admin.release(msg_id) for _s, msg_id in list(admin.select_ids(Selection(states=('hold',))))]
            for row in list(admin.rows(Selection(states=('new',))))[:2]:
                results.append(admin.delete(row.msg_id, wait=0))
                if results[-1].outcome == OK:
                    deleted.add(row.msg_id)
            for result in results:
                outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            admin.stats()
        delivered_while_busy = len(delivered)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    # Both sides really worked at the same time.
    assert outcomes.get(OK, 0) > 20 and delivered_while_busy > 0, (outcomes, delivered_while_busy)
    # Release anything still held and drain the queue.
    for _state, msg_id in list(admin.select_ids(Selection(states=('hold',)))):
        admin.release(msg_id)
    QueueRunner(queue, mailer=DebugMailer(send_callback=slow_send), force=True).run_once()

    got = [tag for data in delivered for tag in [data.decode().split('Subject: ')[1].split('\r\n')[0]]]
    assert len(got) == len(set(got)), 'a message was delivered twice'
    deleted_tags = {tags[i] for i in deleted}
    assert set(got) | deleted_tags == set(tags.values())
    assert not set(got) & deleted_tags
    for state in ('new', 'cur', 'hold', 'failed', 'tmp'):
        assert listdir(queue, state) == [], state


def test_format_date_roundtrip_for_extra_dates() -> None:
    # The extra meta dates are RFC 2822 like the rest of the file (second resolution).
    value = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
    assert parse_date(format_date(value)) == value
