"""The PostgreSQL store beyond the contract suite (tests/stores/ runs that against it too).

Schema and migrations, leases (token conditions, a stale lease racing a completion, the
heartbeat), crash recovery of a SIGKILLed runner, SKIP LOCKED between processes, NOTIFY,
the transactional enqueue with psycopg 2 and 3, the roles of docs/postgresql.md, stats and
streamed listings on many rows. The server comes from tests/_pg.py (never skipped).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from _pg import fresh_location, fresh_schema, scratch_role, server_url, server_version, with_params
from schwarz.mailqueue.errors import ClaimLost, QueueUnavailable
from schwarz.mailqueue.queue import postgres
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, QueuedMessage
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.pg_location import split_location
from schwarz.mailqueue.queue.postgres import (
    PostgresQueue,
    SchemaMissing,
    enqueue_in_transaction,
    init_schema,
    schema_version,
)
from schwarz.mailqueue.queue.schedule import RetryPolicy

BODY = b'From: shop@example.org\r\nTo: customer@example.org\r\nSubject: order\r\n\r\nThanks\r\n'
POLICY = RetryPolicy()
CHILD = str(Path(__file__).with_name('_pg_child.py'))
DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'postgresql.md'


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def location() -> str:
    return fresh_location()


@pytest.fixture
def stores(location: str) -> Iterator[Callable[..., PostgresQueue]]:
    """Opens store instances (each one owner) on the test's queue; all closed afterwards."""
    opened: List[PostgresQueue] = []

    def make(where: str = location, **options: Any) -> PostgresQueue:
        store = PostgresQueue(where, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def sql(location: str, query: str, *params: Any) -> List[Any]:
    """Run SQL on the test queue's schema (a separate connection, autocommit)."""
    conninfo, ours = split_location(location)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{ours["schema"]}"')
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


class Child:
    """A runner process (tests/_pg_child.py)."""

    def __init__(self, location: str, mode: str, limit: int) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1] / 'src')
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [src, env.get('PYTHONPATH')]))
        self.proc = subprocess.Popen([sys.executable, CHILD, location, mode, str(limit)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        assert self.line() == 'ready'

    def line(self, timeout: float = 20) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, 'the child did not answer'
        return self.proc.stdout.readline().decode().strip()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'go\n')
        self.proc.stdin.flush()

    def ids(self) -> List[str]:
        words = self.line().split()
        assert words[:1] == ['ids'], words
        return words[1:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    started: List[Child] = []

    def start(location: str, mode: str, limit: int) -> Child:
        child = Child(location, mode, limit)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


# --- locations --------------------------------------------------------------------------------


def test_our_parameters_are_removed_before_libpq_sees_the_uri() -> None:
    conninfo, ours = split_location('postgresql://u@h/db?sslmode=require&mq_schema=mq2&mq_lease=30&application_name=x')
    assert conninfo == 'postgresql://u@h/db?sslmode=require&application_name=x'
    assert ours == {'schema': 'mq2', 'lease': '30'}
    assert split_location('postgresql://h/db?mq_schema=s') == ('postgresql://h/db', {'schema': 's'})
    with pytest.raises(ValueError, match='mq_nonsense'):
        split_location('postgresql://h/db?mq_nonsense=1')


def test_a_question_mark_in_the_password_does_not_start_the_query() -> None:
    """libpq reads the user info up to the first '@' before any '/'; so do we."""
    conninfo, ours = split_location('postgresql://mq:pa?ss&mq_x=1@h/db?mq_schema=s2&sslmode=disable')
    assert ours == {'schema': 's2'}
    assert conninfo == 'postgresql://mq:pa?ss&mq_x=1@h/db?sslmode=disable'
    assert conninfo_to_dict(conninfo)['password'] == 'pa?ss&mq_x=1'
    assert split_location('postgresql://mq:pa?ss@h/db') == ('postgresql://mq:pa?ss@h/db', {})
    assert split_location('postgresql://h/d@b?mq_schema=s3')[1] == {'schema': 's3'}  # no user info
    with pytest.raises(ValueError, match='schema'):
        PostgresQueue('postgresql://h/db?mq_schema=Robert%27);DROP')
    with pytest.raises(ValueError, match='mq_lease'):
        PostgresQueue('postgresql://h/db?mq_lease=1')
    with pytest.raises(ValueError, match='mq_pooling'):
        PostgresQueue('postgresql://h/db?mq_pooling=statement')


def test_location_hides_the_password_and_open_queue_shares_one_store() -> None:
    store = PostgresQueue('postgresql://mq:secret@db.example.org/mail?password=other&mq_schema=q1')
    assert 'secret' not in store.location and 'other' not in store.location
    assert store.schema == 'q1' and store.kind == 'postgresql'
    first = open_queue('postgresql://db.example.org/mail?mq_schema=q2')
    assert isinstance(first, PostgresQueue)
    assert open_queue('postgres://db.example.org/mail?mq_schema=q2') is not first  # another URI
    assert open_queue('postgresql://db.example.org/mail?mq_schema=q2') is first


def test_opening_does_not_connect() -> None:
    store = open_queue('postgresql://nobody@127.0.0.1:9/none?connect_timeout=1&mq_schema=x', create=False)
    with pytest.raises(QueueUnavailable, match='cannot connect'):
        store.stats()


# --- schema -----------------------------------------------------------------------------------


def test_init_is_idempotent_and_versioned() -> None:
    location = fresh_location(init=False)
    assert schema_version(location) is None
    assert init_schema(location) == (0, postgres.SCHEMA_VERSION)
    assert init_schema(location) == (postgres.SCHEMA_VERSION, postgres.SCHEMA_VERSION)
    assert schema_version(location) == postgres.SCHEMA_VERSION
    store = PostgresQueue(location)
    try:
        store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
        assert init_schema(location) == (postgres.SCHEMA_VERSION, postgres.SCHEMA_VERSION)
        assert store.stats()[NEW].count == 1  # nothing lost by a second init
    finally:
        store.close()


def test_init_from_several_hosts_at_once() -> None:
    location = fresh_location(init=False)
    results: List[Any] = []

    def init() -> None:
        try:
            results.append(init_schema(location))
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=init) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latest = postgres.SCHEMA_VERSION
    assert sorted(results) == [(0, latest)] + [(latest, latest)] * 3


def test_a_missing_schema_names_mq_queue_init(stores: Callable[..., PostgresQueue]) -> None:
    store = stores(fresh_location(init=False))
    for action in (lambda: store.enqueue(BODY, 'a@example.org', ['b@example.org']), store.check,
                   lambda: store.claim_due(5, now=now(), policy=POLICY), store.stats, store.recover):
        with pytest.raises(SchemaMissing, match='mq-queue init') as info:
            action()
        assert isinstance(info.value, QueueUnavailable)
        assert store.schema in str(info.value)


def test_an_older_schema_names_mq_queue_init(location: str, stores: Callable[..., PostgresQueue],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, 'SCHEMA_VERSION', postgres.SCHEMA_VERSION + 1)
    found, needed = postgres.SCHEMA_VERSION - 1, postgres.SCHEMA_VERSION
    with pytest.raises(SchemaMissing, match=rf'at version {found}, this version needs {needed}; run `mq-queue init`'):
        stores().stats()


def test_a_newer_schema_asks_for_an_upgrade_of_the_software(location: str,
                                                            stores: Callable[..., PostgresQueue]) -> None:
    sql(location, 'INSERT INTO schema_version (version) VALUES (%s)', postgres.SCHEMA_VERSION + 1)
    with pytest.raises(QueueUnavailable, match='upgrade mailqueue-runner') as info:
        stores().stats()
    assert not isinstance(info.value, SchemaMissing)
    with pytest.raises(QueueUnavailable, match='upgrade mailqueue-runner'):
        init_schema(location)


def test_enqueue_after_an_attempt_counts_it_and_is_due_at_once(stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    tried = now().replace(microsecond=0)
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'], attempted=tried,
                           extra={'X-Queue-Last-Error': '451 busy'})
    entry = store.entry(msg_id)
    assert entry is not None and entry.meta is not None
    assert (entry.meta.retries, entry.meta.last_delivery_attempt, entry.meta.last_error) == (1, tried, '451 busy')
    assert [msg.msg_id for msg in store.claim_due(5, now=tried, policy=POLICY)] == [msg_id]


# --- leases -----------------------------------------------------------------------------------


def test_no_transaction_stays_open_while_a_message_is_claimed(stores: Callable[..., PostgresQueue]) -> None:
    name = f'mqtest-{os.getpid()}-{time.monotonic_ns()}'
    store = stores(with_params(fresh_location(), application_name=name))
    for _ in range(3):
        store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    claimed = store.claim_due(10, now=now(), policy=POLICY)
    assert len(claimed) == 3
    with psycopg.connect(server_url(), autocommit=True) as conn:
        states = [row[0] for row in conn.execute(
            'SELECT state FROM pg_stat_activity WHERE application_name = %s', [name]).fetchall()]
    assert states and 'idle in transaction' not in states, states
    for msg in claimed:
        store.complete(msg)


def _taken_over(location: str, runner: PostgresQueue, other: PostgresQueue) -> Tuple[str, QueuedMessage,
                                                                                   QueuedMessage]:
    """``runner`` claims a message, is cut off for longer than a lease, and ``other`` takes it over."""
    msg_id = runner.enqueue(BODY, 'shop@example.org', ['a@example.org', 'b@example.org'])
    (msg,) = runner.claim_due(5, now=now(), policy=POLICY)
    sql(location, "UPDATE messages SET lease_until = now() - interval '1 second' WHERE id = %s", msg_id)
    assert other.recover() == 1
    theirs = other.claim(msg_id)
    assert theirs is not None
    return msg_id, msg, theirs


def test_a_lost_lease_touches_nothing(location: str, stores: Callable[..., PostgresQueue]) -> None:
    runner, other = stores(), stores()
    msg_id, msg, theirs = _taken_over(location, runner, other)
    before = sql(location, 'SELECT state, recipients, retries, lease_token FROM messages')
    actions = [
        lambda: runner.complete(msg),
        lambda: runner.defer(msg, ['b@example.org'], '451', now(), now() + timedelta(hours=1)),
        lambda: runner.fail(msg, '550'),
        lambda: runner.move(msg, HELD),
        lambda: runner.rewrite(msg, recipients=['z@example.org']),
        lambda: runner.release(msg),
    ]
    stale = msg.token
    for action in actions:
        msg.token = stale  # each change tried with the stale token, against the database
        with pytest.raises(ClaimLost):
            action()
        assert sql(location, 'SELECT state, recipients, retries, lease_token FROM messages') == before
    assert not msg.is_claimed
    other.complete(theirs)
    assert other.view(msg_id) is None


def test_a_lost_lease_found_after_a_completion_without_waiting_is_logged(
        location: str, stores: Callable[..., PostgresQueue], caplog: pytest.LogCaptureFixture) -> None:
    runner, other = stores(), stores()
    msg_id, msg, theirs = _taken_over(location, runner, other)
    before = sql(location, 'SELECT state, lease_token FROM messages')
    with caplog.at_level('WARNING', logger='mailqueue'):
        runner.complete(msg, wait=False)  # nothing raised: the answer comes later
        assert runner.view(msg_id) is not None  # ... before this: the row is theirs, untouched
    assert sql(location, 'SELECT state, lease_token FROM messages') == before
    assert f'queue entry {msg_id} was delivered, but its lease was no longer ours' in caplog.text
    other.complete(theirs)


def test_a_runner_whose_role_loses_delete_stops_claiming(location: str, stores: Callable[..., PostgresQueue],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """REVOKE DELETE under a running daemon: it went on claiming and delivering mail whose removal
    it could not record (each message delivered again after its lease). Now its next claim
    raises QueueMisconfigured, which stops a daemon (exit 78)."""
    from schwarz.mailqueue.errors import QueueMisconfigured

    with scratch_role(location, 'mq_nodelete', 'SELECT, INSERT, UPDATE') as role:
        admin = stores()
        ids = [admin.enqueue(BODY, 'shop@example.org', [f'c{n}@example.org']) for n in range(3)]
        runner = stores(with_params(location, user=role))
        batch = runner.claim_due(1, now=now(), policy=POLICY)
        assert len(batch) == 1
        with caplog.at_level('ERROR', logger='mailqueue'):
            runner.complete(batch[0], wait=False)
            with pytest.raises(QueueMisconfigured, match='permission denied'):
                runner.claim_due(2, now=now(), policy=POLICY)
        assert 'its removal cannot be recorded' in caplog.text
        waiting = sorted(row[0] for row in sql(location, 'SELECT id FROM messages WHERE state = %s', NEW))
        assert waiting == sorted(msg_id for msg_id in ids if msg_id != batch[0].msg_id)  # no more claimed
        # said once: a process that goes on (a library user, not a daemon) may claim again later
        again = runner.claim_due(1, now=now(), policy=POLICY)
        assert len(again) == 1
        runner.release(again[0])
        runner.close()


def test_a_completion_sent_survives_its_runner(location: str) -> None:
    """SIGKILL right after complete(wait=False) returned: the server still removes the row."""
    store = PostgresQueue(location)
    msg_ids = [store.enqueue(BODY, 'shop@example.org', ['a@example.org']) for _ in range(20)]
    child = subprocess.Popen([sys.executable, '-c', f"""
import sys, time
from schwarz.mailqueue.queue.postgres import PostgresQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy, utcnow
store = PostgresQueue({location!r})
for msg in store.claim_due(20, now=utcnow(), policy=RetryPolicy()):
    store.complete(msg, wait=False)
print('sent', flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b'sent\n'
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 5
        while store.stats()[CLAIMED].count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [msg_id for msg_id in msg_ids if store.view(msg_id) is not None] == []
    finally:
        if child.poll() is None:
            child.kill()
        store.close()


def test_a_forged_token_is_a_lost_lease(stores: Callable[..., PostgresQueue]) -> None:
    import uuid

    store = stores()
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    msg = store.claim(msg_id)
    assert msg is not None
    real = msg.token
    msg.token = uuid.uuid4()
    with pytest.raises(ClaimLost):
        store.complete(msg)
    msg.token = real
    store.complete(msg)


def _race(runner: PostgresQueue, msg: QueuedMessage, rescuer: PostgresQueue) -> Tuple[bool, Any]:
    """The runner completes ``msg`` while the rescuer recovers and claims it; (completed, rescuer's claim)."""
    start = threading.Barrier(2)
    result: Dict[str, Any] = {}

    def complete() -> None:
        start.wait()
        try:
            runner.complete(msg)
            result['completed'] = True
        except ClaimLost:
            result['completed'] = False

    def rescue() -> None:
        start.wait()
        rescuer.recover()
        result['taken'] = rescuer.claim(msg.msg_id)

    threads = [threading.Thread(target=complete), threading.Thread(target=rescue)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result['completed'], result['taken']


def test_a_stale_lease_races_a_completion(location: str, stores: Callable[..., PostgresQueue]) -> None:
    """Completion and a recovery-and-reclaim at the same instant: exactly one side wins."""
    runner, rescuer = stores(), stores()
    outcomes: Counter[str] = Counter()
    for _ in range(25):
        msg_id = runner.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
        msg = runner.claim(msg_id)
        assert msg is not None
        sql(location, "UPDATE messages SET lease_until = now() - interval '1 second' WHERE id = %s", msg_id)
        completed, taken = _race(runner, msg, rescuer)
        assert completed != (taken is not None), (completed, taken)
        if taken is not None:
            rescuer.complete(taken)
            outcomes['rescued'] += 1
        else:
            outcomes['completed'] += 1
        assert runner.view(msg_id) is None
    assert sum(outcomes.values()) == 25
    print(f'\nstale lease against completion: {dict(outcomes)}')


def test_the_heartbeat_renews_live_leases(location: str, stores: Callable[..., PostgresQueue]) -> None:
    store = stores(lease=6)  # heartbeat every second
    assert store.heartbeat_interval == 1
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    msg = store.claim(msg_id)
    assert msg is not None
    sql(location, "UPDATE messages SET lease_until = now() + interval '1.5 seconds'")
    time.sleep(2.2)
    (remaining,) = sql(location, 'SELECT extract(epoch FROM lease_until - now()) FROM messages')[0]
    assert float(remaining) > 3.5, remaining
    assert store.renew_leases() == 1
    store.complete(msg)
    assert store.renew_leases() == 0


def test_a_dropped_claim_is_not_renewed(stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    msg = store.claim(msg_id)
    assert store.renew_leases() == 1
    del msg  # forgotten without complete/release: its lease runs out after one lease
    assert store.renew_leases() == 0


def test_lost_connections_are_replaced(location: str, stores: Callable[..., PostgresQueue]) -> None:
    """A server restart or a killed session: the next operation works, the lease keeps its owner key."""
    store, other = stores(), stores()
    store.ping_after = 0.0
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    msg = store.claim(msg_id)
    assert msg is not None
    with psycopg.connect(server_url(), autocommit=True) as conn:
        killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'mailqueue-runner' AND pid <> pg_backend_pid() "
                              "AND query NOT LIKE '%%pg_terminate_backend%%' AND backend_type = 'client backend' "
                              "AND datname = current_database() AND pid = ANY(%s)",
                              [[c.info.backend_pid for c, _ in store._idle[False] + store._idle[True]]
                               + [store._owner_conn.info.backend_pid]]).fetchall()  # type: ignore[union-attr]
    assert len(killed) == 2
    assert store.view(msg_id) is not None  # a fresh connection instead of the dead pooled one
    assert store.renew_leases() == 1  # the heartbeat reconnects and takes the same lock again
    assert other.recover() == 0
    store.complete(msg)


def test_a_forked_child_opens_connections_of_its_own(stores: Callable[..., PostgresQueue]) -> None:
    """Pre-fork servers: a child never talks over its parent's connections."""
    store = stores()
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    assert store.stats()[NEW].count == 1  # the parent has a pooled connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os._exit(0 if store.claim(msg_id) is not None else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert store.stats()[CLAIMED].count == 1  # the parent's connection still works
    assert store.recover() == 1  # the child has ended
    msg = store.claim(msg_id)
    assert msg is not None
    store.complete(msg)


# --- crash recovery ---------------------------------------------------------------------------


OTHER_HOST = 'elsewhere.example.org:4242:0123456789abcdef:99'


@pytest.mark.parametrize('where', ['this machine', 'another host'])
def test_claims_of_a_killed_runner_come_back_within_a_second(location: str, children: Callable[..., Child],
                                                             stores: Callable[..., PostgresQueue], where: str) -> None:
    """On this machine a dead owner is seen at once; from another host, its advisory lock tells."""
    store = stores()
    queued = sorted(store.enqueue(BODY, 'shop@example.org', ['customer@example.org']) for _ in range(5))
    child = children(location, 'hold', 10)
    child.go()
    assert sorted(child.ids()) == queued
    if where == 'another host':  # the lock is all there is to go by
        sql(location, 'UPDATE messages SET lease_owner = %s', OTHER_HOST)
    assert store.recover() == 0  # its runner is alive
    entries = list(store.entries())
    assert {(entry.state, entry.active) for entry in entries} == {(CLAIMED, True)}
    killed = time.monotonic()
    child.proc.send_signal(signal.SIGKILL)
    recovered = 0
    while recovered < len(queued) and time.monotonic() - killed < 5:
        recovered += store.recover()
        time.sleep(0.005)
    elapsed = time.monotonic() - killed
    assert recovered == len(queued)
    assert elapsed < 1.0, f'recovered after {elapsed:.3f} s'
    print(f'\n{where}: recovered {recovered} claims {elapsed * 1000:.0f} ms after SIGKILL')
    assert sorted(msg.msg_id for msg in store.claim_due(10, now=now(), policy=POLICY)) == queued


def test_stats_do_not_count_a_claim_of_an_ended_process_as_active(stores: Callable[..., PostgresQueue],
                                                                  location: str) -> None:
    """Its session may outlive it for a moment; the summary and the listing both see the process gone."""
    from schwarz.mailqueue.queue.admin import QueueAdmin

    store = stores()
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    held = stores().claim(msg_id)  # a live session holds the lease and its lock
    assert held is not None
    admin = QueueAdmin(store, POLICY)
    assert (admin.stats().active, admin.stats_from_rows().active) == (1, 1)
    ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                           check=True)
    [(owner,)] = sql(location, 'SELECT lease_owner FROM messages')
    host, _pid, machine, started = owner.rsplit(':', 3)
    sql(location, 'UPDATE messages SET lease_owner = %s', f'{host}:{int(ended.stdout)}:{machine}:{started}')
    assert (admin.stats().active, admin.stats_from_rows().active) == (0, 0)


def test_runners_recovering_at_once_share_the_work(location: str, children: Callable[..., Child],
                                                   stores: Callable[..., PostgresQueue]) -> None:
    """Several runners start their pass at the same moment: each dead claim comes back once, nobody waits."""
    first = stores()
    queued = sorted(first.enqueue(BODY, 'shop@example.org', ['customer@example.org']) for _ in range(60))
    child = children(location, 'hold', 100)
    child.go()
    assert sorted(child.ids()) == queued
    child.kill()
    rescuers = [first] + [stores() for _ in range(3)]
    start = threading.Barrier(len(rescuers))
    counts: List[int] = []
    errors: List[BaseException] = []

    def rescue(store: PostgresQueue) -> None:
        start.wait()
        try:
            counts.append(store.recover())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rescue, args=(store,)) for store in rescuers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert sum(counts) == 60
    assert first.stats()[NEW].count == 60


def test_a_waiting_daemon_wakes_up_for_claims_of_a_killed_runner(location: str, children: Callable[..., Child],
                                                                  stores: Callable[..., PostgresQueue]) -> None:
    """No new mail, but a runner died holding some: the others' wait ends within about a second."""
    daemon = stores()
    msg_id = daemon.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    child = children(location, 'hold', 10)
    child.go()
    assert child.ids() == [msg_id]
    sql(location, 'UPDATE messages SET lease_owner = %s', OTHER_HOST)  # only its lock tells
    assert daemon.wait_for_work(1.5) is False  # alive: nothing to do
    woke: List[float] = []
    thread = threading.Thread(target=lambda: woke.append(time.monotonic()) if daemon.wait_for_work(10) else None)
    thread.start()
    time.sleep(0.2)
    killed = time.monotonic()
    child.proc.send_signal(signal.SIGKILL)
    thread.join(15)
    assert woke and woke[0] - killed < 1.5, woke
    assert daemon.recover() == 1
    print(f'\na waiting daemon noticed the dead runner after {(woke[0] - killed) * 1000:.0f} ms')


HANGING_RUNNER = """
import sys, time
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.runner import QueueRunner

class Hang:  # an SMTP server that never answers
    def send(self, *args, **kwargs):
        print('sending', flush=True)
        time.sleep(3600)

    def close(self):
        pass

QueueRunner(open_queue(sys.argv[1]), mailer=Hang(), workers=4).run_once()
"""


def test_a_runner_killed_mid_delivery_is_replaced_within_two_seconds(location: str) -> None:
    """Two runners; one is SIGKILLed in the middle of four deliveries; the other delivers them."""
    from schwarz.mailqueue.handler import DebugMailer
    from schwarz.mailqueue.runner import QueueRunner

    store = PostgresQueue(location)
    queued = sorted(store.enqueue(BODY, 'shop@example.org', ['customer@example.org']) for _ in range(4))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / 'src'),
                                                      env.get('PYTHONPATH')]))
    hanging = subprocess.Popen([sys.executable, '-c', HANGING_RUNNER, location], stdout=subprocess.PIPE, env=env)
    mailer = DebugMailer()
    runner = QueueRunner(store, mailer=mailer, workers=2)
    thread = threading.Thread(target=runner.run_forever, kwargs={'poll_interval': 1.0, 'full_scan_interval': 60.0})
    try:
        assert hanging.stdout is not None
        started = 0
        while started < 4:  # four deliveries under way (threads may print on one line)
            line = hanging.stdout.readline()
            assert line, 'the hanging runner exited'
            started += line.count(b'sending')
        thread.start()
        time.sleep(1.2)
        assert mailer.sent_mails == []  # claimed by the live runner
        killed = time.monotonic()
        hanging.send_signal(signal.SIGKILL)
        while len(mailer.sent_mails) < 4 and time.monotonic() - killed < 10:
            time.sleep(0.01)
        elapsed = time.monotonic() - killed
        assert len(mailer.sent_mails) == 4
        assert elapsed < 2.0, elapsed
        print(f'\nthe other runner delivered the killed runner\'s messages {elapsed * 1000:.0f} ms after SIGKILL')
        runner.stop()
        thread.join(10)
        assert [entry.msg_id for entry in store.entries()] == []  # completed: deleted
        assert len(queued) == 4
    finally:
        runner.stop()
        if thread.is_alive():
            thread.join(10)
        hanging.kill()
        hanging.wait()
        if hanging.stdout is not None:
            hanging.stdout.close()
        store.close()


def test_without_session_locks_the_deadline_decides(location: str, children: Callable[..., Child],
                                                     stores: Callable[..., PostgresQueue]) -> None:
    """``mq_pooling=transaction`` (PgBouncer): no advisory lock, so only the lease deadline frees a claim."""
    pooled = with_params(location, mq_pooling='transaction')
    store = stores(pooled)
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    child = children(pooled, 'hold', 10)
    child.go()
    assert child.ids() == [msg_id]
    assert sql(location, 'SELECT lease_key FROM messages') == [(None,)]
    sql(location, 'UPDATE messages SET lease_owner = %s', OTHER_HOST)  # not on this machine
    child.kill()
    time.sleep(0.2)
    assert store.recover() == 0  # cannot tell a dead runner from a live one
    sql(location, "UPDATE messages SET lease_until = now() - interval '1 second'")
    assert store.recover() == 1
    started = time.monotonic()
    assert store.wait_for_work(0.2) is True  # no LISTEN: polling
    assert time.monotonic() - started >= 0.15
    msg = store.claim(msg_id)
    assert msg is not None
    store.complete(msg)


# --- several runner processes -----------------------------------------------------------------


def test_runner_processes_deliver_every_message_exactly_once(location: str, children: Callable[..., Child],
                                                             stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    queued = set()
    with psycopg.connect(split_location(location)[0]) as conn:
        for _ in range(600):
            queued.add(enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'],
                                              schema=store.schema))
    runners = [children(location, 'drain', 4) for _ in range(4)]
    for child in runners:
        child.go()
    delivered: Counter[str] = Counter()
    per_runner = []
    for child in runners:
        ids = child.ids()
        per_runner.append(len(ids))
        delivered.update(ids)
        assert child.proc.wait(20) == 0
    assert set(delivered) == queued
    assert [msg_id for msg_id, n in delivered.items() if n > 1] == []
    assert store.stats()[NEW].count == 0
    assert sum(1 for n in per_runner if n) >= 2, per_runner  # they really ran side by side


# --- wake-up ----------------------------------------------------------------------------------


def _wake_up_after(store: PostgresQueue, enqueue: Callable[[], object]) -> float:
    woke: List[float] = []
    listening = threading.Event()

    def wait() -> None:
        listening.set()
        if store.wait_for_work(10):
            woke.append(time.monotonic())

    store._listener()  # LISTEN before the enqueue (as a daemon does between passes)
    thread = threading.Thread(target=wait)
    thread.start()
    listening.wait()
    time.sleep(0.1)
    sent = time.monotonic()
    enqueue()
    thread.join(15)
    assert woke, 'no wake-up'
    return woke[0] - sent


def test_notify_wakes_a_listener_at_once(location: str, stores: Callable[..., PostgresQueue]) -> None:
    listener, sender = stores(), stores()
    latency = _wake_up_after(listener, lambda: sender.enqueue(BODY, 'shop@example.org', ['customer@example.org']))
    assert latency < 1.0
    print(f'\nwoken {latency * 1000:.1f} ms after the enqueue')


def test_notify_comes_with_the_commit(location: str, stores: Callable[..., PostgresQueue]) -> None:
    listener = stores()

    def in_a_transaction() -> None:
        with psycopg.connect(split_location(location)[0]) as conn:
            for _ in range(3):  # one transaction, three messages: one notification
                enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'],
                                       schema=listener.schema)
            time.sleep(0.3)  # the commit comes 0.3 s after the inserts: so does the wake-up

    latency = _wake_up_after(listener, in_a_transaction)
    assert 0.3 <= latency < 1.3
    # a rolled-back insert wakes nobody
    with psycopg.connect(split_location(location)[0]) as conn:
        enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'], schema=listener.schema)
        conn.rollback()
    assert listener.wait_for_work(0.3) is False


def test_mail_queued_during_a_pass_wakes_the_wait_after_it(stores: Callable[..., PostgresQueue]) -> None:
    daemon, application = stores(), stores()
    assert daemon.claim_due(5, now=now(), policy=POLICY) == []  # a pass: it listens from here on
    application.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    started = time.monotonic()
    assert daemon.wait_for_work(5) is True
    assert time.monotonic() - started < 0.5


def _raw_listener(location: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(split_location(location)[0], autocommit=True)
    conn.execute(f'LISTEN "{split_location(location)[1]["schema"]}"')
    return conn


def _notified(conn: psycopg.Connection[Any], timeout: float) -> bool:
    return any(True for _ in conn.notifies(timeout=timeout, stop_after=1))


def test_enqueues_notify_only_while_a_runner_waits(location: str, stores: Callable[..., PostgresQueue]) -> None:
    """A notifying commit takes a lock for the whole server: without a waiting runner, no NOTIFY."""
    daemon, application = stores(), stores()
    mail = lambda: application.enqueue(BODY, 'shop@example.org', ['customer@example.org'])  # noqa: E731
    claim = lambda: daemon.claim_due(10, now=now(), policy=POLICY)  # noqa: E731
    with _raw_listener(location) as spy:
        mail()
        assert not _notified(spy, 0.3)  # no runner at all
        assert len(claim()) == 1  # a pass, busy
        mail()
        assert not _notified(spy, 0.3)  # the pass finds it itself
        assert len(claim()) == 1
        assert claim() == []  # the pass ends...
        mail()
        assert not _notified(spy, 0.3)
        assert daemon.wait_for_work(5.0) is True  # ... the wait takes the lock and looks once more
        assert len(claim()) == 1
        assert claim() == []
        assert daemon.wait_for_work(0.2) is True  # once per busy spell
        assert claim() == []  # empty, and the lock kept: enqueues notify from now on
        assert daemon.wait_for_work(0.3) is False
        mail()
        assert _notified(spy, 2.0)
        assert daemon.wait_for_work(2.0) is True


def test_an_enqueue_committing_as_the_runner_starts_waiting_wakes_it(location: str,
                                                                      stores: Callable[..., PostgresQueue]) -> None:
    """The insert ran before the runner took the wait lock (so it did not notify) and commits
    after the pass looked: the runner gets the lock only after that commit, and then looks again."""
    daemon = stores()
    with psycopg.connect(split_location(location)[0]) as conn:
        enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'], schema=daemon.schema)
        assert daemon.claim_due(5, now=now(), policy=POLICY) == []  # not committed: nothing to see
        woke: List[float] = []
        waiter = threading.Thread(target=lambda: woke.append(time.monotonic()) if daemon.wait_for_work(5) else None)
        waiter.start()
        time.sleep(0.5)
        assert not woke
        committed = time.monotonic()
        conn.commit()
    waiter.join(10)
    assert woke and woke[0] - committed < 1.0
    assert len(daemon.claim_due(5, now=now(), policy=POLICY)) == 1


def test_a_runner_that_cannot_take_the_wait_lock_polls(location: str, stores: Callable[..., PostgresQueue]) -> None:
    """A long transaction that queued mail holds the wait lock shared: others' enqueues then skip
    NOTIFY, so the waiting runner looks for work at the end of each wait instead."""
    daemon, application = stores(), stores()
    assert daemon.claim_due(5, now=now(), policy=POLICY) == []
    with psycopg.connect(split_location(location)[0]) as slow:
        enqueue_in_transaction(slow, BODY, 'shop@example.org', ['slow@example.org'], schema=daemon.schema)
        application.enqueue(BODY, 'shop@example.org', ['quick@example.org'])  # committed, no NOTIFY
        started = time.monotonic()
        assert daemon.wait_for_work(1.0) is True
        assert time.monotonic() - started < 1.5
        claimed = daemon.claim_due(5, now=now(), policy=POLICY)
        assert [msg.to_addrs for msg in claimed] == [['quick@example.org']]
        slow.rollback()
    daemon.complete(claimed[0])


def test_a_completion_on_a_lost_connection_is_done_once_more(location: str,
                                                            stores: Callable[..., PostgresQueue],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    store = stores()
    first, second = (store.enqueue(BODY, 'shop@example.org', ['a@example.org']) for _ in range(2))
    one, two = store.claim_due(5, now=now(), policy=POLICY)
    store.complete(one, wait=False)
    assert store.view(one.msg_id) is None
    completer = store._completer
    assert completer is not None
    with psycopg.connect(server_url(), autocommit=True) as conn:  # a server restart, a failover...
        conn.execute('SELECT pg_terminate_backend(%s)', [completer.backend_pid])
    time.sleep(0.2)
    with caplog.at_level('WARNING', logger='mailqueue'):
        store.complete(two, wait=False)
        assert store.view(two.msg_id) is None  # removed on a fresh connection, not lost
    assert 'lease was no longer ours' not in caplog.text and 'cannot be recorded' not in caplog.text
    assert {first, second} == {one.msg_id, two.msg_id}


def test_upgrade_from_schema_version_1(location: str, stores: Callable[..., PostgresQueue],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = postgres._migrations
    monkeypatch.setattr(postgres, '_migrations', lambda schema: real(schema)[:1])
    conninfo, ours = split_location(location)
    schema = ours['schema'] + '_v1'
    old = with_params(conninfo, mq_schema=schema)
    try:
        assert init_schema(old) == (0, postgres.SCHEMA_VERSION)
        assert schema_version(old) == 1
        with pytest.raises(SchemaMissing, match='version 1.*mq-queue init'):
            stores(old).enqueue(BODY, 'shop@example.org', ['customer@example.org'])
        monkeypatch.setattr(postgres, '_migrations', real)
        assert init_schema(old) == (1, 2)
        store = stores(old)
        with _raw_listener(old) as spy:
            store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
            assert not _notified(spy, 0.3)  # the v2 trigger
        assert store.stats()[NEW].count == 1
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- transactional enqueue --------------------------------------------------------------------


def _connect_with(driver: str, location: str) -> Any:
    conninfo = split_location(location)[0]
    if driver == 'psycopg2':
        import psycopg2  # in the test extra: never skipped

        return psycopg2.connect(conninfo)
    return psycopg.connect(conninfo)


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_transactional_enqueue(driver: str, location: str, stores: Callable[..., PostgresQueue]) -> None:
    runner = stores()
    conn = _connect_with(driver, location)
    try:
        cur = conn.cursor()
        cur.execute('CREATE TEMPORARY TABLE orders (n integer)')
        cur.execute('INSERT INTO orders VALUES (1)')
        rolled_back = enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'],
                                             schema=runner.schema)
        assert runner.view(rolled_back) is None  # not visible before the commit
        conn.rollback()
        assert runner.view(rolled_back) is None
        assert runner.claim_due(10, now=now(), policy=POLICY) == []

        cur = conn.cursor()
        cur.execute('CREATE TEMPORARY TABLE orders (n integer)')
        cur.execute('INSERT INTO orders VALUES (2)')
        committed = enqueue_in_transaction(conn, BODY, '', ['customer@example.org', 'office@example.org'],
                                           location=location, extra={'X-Queue-Origin': 'shop'})
        conn.commit()
    finally:
        conn.close()
    (msg,) = runner.claim_due(10, now=now(), policy=POLICY)
    assert (msg.msg_id, msg.msg_bytes, msg.from_addr, msg.to_addrs) == (
        committed, BODY, '', ['customer@example.org', 'office@example.org'])
    assert msg.meta.extra['X-Queue-Origin'] == 'shop'
    runner.complete(msg)


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_transactional_enqueue_without_a_schema_aborts_the_transaction(driver: str) -> None:
    location = fresh_location(init=False)
    conn = _connect_with(driver, location)
    try:
        with pytest.raises(SchemaMissing, match='mq-queue init'):
            enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'],
                                   schema=split_location(location)[1]['schema'])
        cur = conn.cursor()
        with pytest.raises(Exception, match='aborted'):
            cur.execute('SELECT 1')  # the application's changes cannot commit without their mail
        conn.rollback()
    finally:
        conn.close()


def test_transactional_enqueue_refuses_bad_input_before_touching_the_connection() -> None:
    class Untouchable:
        def cursor(self) -> None:  # pragma: no cover - must not be called
            raise AssertionError('touched')

    with pytest.raises(ValueError):
        enqueue_in_transaction(Untouchable(), BODY, 'shop@example.org', [])
    with pytest.raises(ValueError):
        enqueue_in_transaction(Untouchable(), BODY, 'shop@example.org', ['a@example.org\r\nRCPT TO:<x@y.org>'])


# --- roles (the SQL of docs/postgresql.md) ----------------------------------------------------


def _doc_sql(first_line: str) -> str:
    text = DOCS.read_text(encoding='utf-8')
    for block in re.findall(r'```sql\n(.*?)```', text, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f'no sql block starting with {first_line!r} in {DOCS}')


def test_the_roles_of_the_docs(stores: Callable[..., PostgresQueue]) -> None:
    schema = fresh_schema()
    suffix = schema.split('_', 1)[1]
    roles = {name: f'{name}_{suffix}' for name in ('mq_admin', 'mq_runner', 'mq_app')}

    def adapted(block: str) -> str:
        block = re.sub(r'\bmailqueue\b(?=[.;\s])', schema, block)
        for name, real in roles.items():
            block = re.sub(rf'\b{name}\b', real, block)
        return block

    base = server_url()
    as_role = {name: with_params(base, user=real, mq_schema=schema) for name, real in roles.items()}
    with psycopg.connect(base, autocommit=True) as conn:
        superuser = conn.execute('SELECT rolsuper FROM pg_roles WHERE rolname = current_user').fetchone()
        if not (superuser and superuser[0]):
            pytest.fail('the test server must let the tests create roles (a superuser)')
        conn.execute(adapted(_doc_sql('-- roles for the queue')))
    try:
        assert init_schema(as_role['mq_admin']) == (0, postgres.SCHEMA_VERSION)
        with psycopg.connect(with_params(base, user=roles['mq_admin']), autocommit=True) as conn:
            conn.execute(adapted(_doc_sql('-- grants on the queue tables')))

        app, runner = stores(as_role['mq_app']), stores(as_role['mq_runner'])
        queued = app.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
        with psycopg.connect(with_params(base, user=roles['mq_app'])) as conn:
            in_transaction = enqueue_in_transaction(conn, BODY, 'shop@example.org', ['customer@example.org'],
                                                    schema=schema)
        for action in (app.check, lambda: app.claim_due(5, now=now(), policy=POLICY), app.stats,
                       lambda: app.view(queued)):
            with pytest.raises(QueueUnavailable, match='permission denied|may not'):
                action()

        runner.check()
        claimed = runner.claim_due(5, now=now(), policy=POLICY)
        assert sorted(msg.msg_id for msg in claimed) == sorted([queued, in_transaction])
        assert runner.recover() == 0
        runner.defer(claimed[0], claimed[0].to_addrs, '451', now(), now())
        runner.complete(claimed[1])
        assert runner.stats()[NEW].count == 1
        assert init_schema(as_role['mq_admin']) == (postgres.SCHEMA_VERSION, postgres.SCHEMA_VERSION)
    finally:
        for store in (locals().get('app'), locals().get('runner')):
            if store is not None:
                store.close()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            for real in roles.values():
                if conn.execute('SELECT 1 FROM pg_roles WHERE rolname = %s', [real]).fetchone():
                    conn.execute(f'DROP OWNED BY "{real}"')
                    conn.execute(f'DROP ROLE "{real}"')


# --- many rows --------------------------------------------------------------------------------


def test_stats_and_listing_of_many_rows(location: str, stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    rows = 30_000
    sql(location, """
        INSERT INTO messages (id, state, sender, recipients, msg, size, queue_date)
        SELECT 'bulk' || n, (ARRAY['new', 'hold', 'failed'])[1 + mod(n, 3)], 'a@example.org', ARRAY['b@example.org'],
               convert_to(repeat('x', 100 + mod(n, 50)), 'UTF8'), 100 + mod(n, 50),
               timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second'
          FROM generate_series(1, %s) AS n""", rows)
    sql(location, 'ANALYZE messages')
    started = time.monotonic()
    stats = store.stats()
    took = time.monotonic() - started
    assert sum(count.count for count in stats.values()) == rows
    assert stats[NEW].count == rows // 3 and stats[CLAIMED].count == 0
    assert stats[HELD].oldest == datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    expected_size = sql(location, "SELECT sum(octet_length(msg)) FROM messages WHERE state = 'failed'")[0][0]
    assert stats[FAILED].size == expected_size
    assert took < 2.0
    print(f'\nstats of {rows} rows: {took * 1000:.0f} ms')

    stream = store.entries([HELD])
    first = next(stream)
    assert first.state == HELD
    with psycopg.connect(server_url(), autocommit=True) as conn:
        cursors = conn.execute("SELECT state, query FROM pg_stat_activity "
                               "WHERE query LIKE 'FETCH FORWARD%%mq_stream_%%'").fetchall()
    assert any(state == 'idle in transaction' for state, _ in cursors), cursors  # a server-side cursor
    assert 1 + sum(1 for _ in stream) == rows // 3
    assert sum(1 for _ in store.ids([NEW, FAILED])) == rows - rows // 3
    assert len(store.resolve('bulk1000')) == 11  # bulk1000, bulk10000..10009


def test_claim_latency(stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    for _ in range(200):
        store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    timings = []
    claimed: List[QueuedMessage] = []
    while True:
        started = time.perf_counter()
        batch = store.claim_due(4, now=now(), policy=POLICY)
        timings.append(time.perf_counter() - started)
        if not batch:
            break
        claimed.extend(batch)
    for msg in claimed:
        store.complete(msg)
    timings.sort()
    median = timings[len(timings) // 2]
    print(f'\nclaim_due(4): median {median * 1000:.2f} ms, max {timings[-1] * 1000:.2f} ms '
          f'(PostgreSQL {server_version()})')
    assert len(claimed) == 200
    assert median < 0.05


# --- the runner's connections -----------------------------------------------------------------


def test_only_the_runner_commits_asynchronously(stores: Callable[..., PostgresQueue]) -> None:
    """Claims and completions may be forgotten by a crashing server (a duplicate, docs/postgresql.md);
    an accepted message may not: enqueue and admin connections keep synchronous commits."""
    store = stores()
    with store._conn(runner=True) as conn:
        assert conn.execute('SHOW synchronous_commit').fetchone() == ('off',)
    with store._conn() as conn:
        assert conn.execute('SHOW synchronous_commit').fetchone() == ('on',)
    # behind a transaction pooler a session setting would leak to other clients: none there
    pooled = stores(pooling='transaction')
    with pooled._conn(runner=True) as conn:
        assert conn.execute('SHOW synchronous_commit').fetchone() == ('on',)


def test_a_claim_reads_the_due_index_in_order_before_any_analyze(location: str,
                                                                  stores: Callable[..., PostgresQueue]) -> None:
    """Without statistics the planner sorted every due row for each claim (quadratic in the
    backlog); the runner's claim walks the due index and stops after the batch."""
    store = stores()
    sql(location, """
        INSERT INTO messages (id, state, sender, recipients, msg, size, queue_date)
        SELECT 'fresh' || n, 'new', 'a@example.org', ARRAY['b@example.org'], '\\x00', 1, now() - n * interval '1 s'
          FROM generate_series(1, 3000) AS n""")
    params = store._lease_params()
    params.update(postgres._policy_params(POLICY, now()))
    params.update({'pass': store._pass_id, 'limit': 16})
    with store._conn(runner=True) as conn:
        plan = '\n'.join(row[0] for row in conn.execute('EXPLAIN ' + store._sql_claim_due, params))
    assert 'messages_due' in plan and 'Sort' not in plan, plan
    assert len(store.claim_due(16, now=now(), policy=POLICY)) == 16


def test_the_runner_plans_its_claim_once_and_reads_the_due_index_at_any_size(
        location: str, stores: Callable[..., PostgresQueue]) -> None:
    """On an analyzed table PostgreSQL planned the claim afresh on every execution (its
    parameters looked worth a custom plan): 0.8 ms of server CPU per claim. The runner's
    connections keep one generic plan, and that plan walks the due index in order even when
    most rows lie in the future and the heap is in no particular order."""
    store = stores()
    sql(location, """
        INSERT INTO messages (id, state, sender, recipients, msg, size, queue_date, retries, last_attempt,
                              next_attempt)
        SELECT md5(n::text), 'new', 'a@example.org', ARRAY['b@example.org'], '\\x00', 1,
               now() - random() * interval '2 days',
               CASE WHEN n % 10 = 0 THEN 0 ELSE 1 END, CASE WHEN n % 10 = 0 THEN NULL ELSE now() END,
               CASE WHEN n % 10 = 0 THEN NULL ELSE now() + random() * interval '1 hour' END
          FROM generate_series(1, 20000) AS n""")
    sql(location, 'ANALYZE messages')
    for _ in range(8):  # past psycopg's prepare threshold and PostgreSQL's five custom plans
        batch = store.claim_due(16, now=now(), policy=POLICY)
        assert len(batch) == 16
        for msg in batch:
            store.complete(msg)
    with store._conn(runner=True) as conn:
        plans = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                             "WHERE statement LIKE 'UPDATE % SET state = ''cur''%FOR UPDATE SKIP LOCKED%'").fetchall()
        assert len(plans) == 1 and plans[0][0] >= 3 and plans[0][1] == 0, plans
        params = store._lease_params()
        params.update(postgres._policy_params(POLICY, now()))
        params.update({'pass': store._pass_id, 'limit': 16})
        plan = '\n'.join(row[0] for row in conn.execute('EXPLAIN ' + store._sql_claim_due, params, prepare=True))
    assert 'messages_due' in plan and 'Sort' not in plan and 'Seq Scan' not in plan, plan


def test_a_pass_goes_on_after_a_claim_of_only_corrupt_rows(stores: Callable[..., PostgresQueue],
                                                           location: str) -> None:
    from schwarz.mailqueue import SMTPMailer
    from schwarz.mailqueue.runner import QueueRunner
    from schwarz.mailqueue.testutils import SMTPTestServer

    store = stores()
    early = now() - timedelta(hours=1)
    broken = [store.enqueue(BODY, 'shop@example.org', ['customer@example.org'], queue_date=early) for _ in range(2)]
    good = [store.enqueue(BODY, 'shop@example.org', [f'c{n}@example.org']) for n in range(3)]
    sql(location, "UPDATE messages SET sender = 'a@b> NOTIFY=NEVER' WHERE id = ANY(%s)", broken)  # around us
    with SMTPTestServer() as server:
        runner = QueueRunner(store, mailer=SMTPMailer(server.hostname, server.port, tls='none', timeout=5), workers=1)
        stats = runner.run_once()  # its first claim takes two rows: both corrupt
        assert (stats.sent, stats.corrupt) == (3, 2)
        assert sorted(r for m in server.received for r in m.rcpt_tos) == [f'c{n}@example.org' for n in range(3)]
    assert sorted(msg_id for state, msg_id in store.ids()) == sorted(broken) and len(good) == 3
    assert {state for state, _ in store.ids()} == {FAILED}


def test_a_failing_end_of_pass_claim_keeps_what_the_first_statement_claimed(
        stores: Callable[..., PostgresQueue]) -> None:
    store = stores()
    queued = sorted(store.enqueue(BODY, 'shop@example.org', ['customer@example.org']) for _ in range(3))
    store._sql_claim_ahead = 'SELECT no_such_function()'  # the second statement fails (fault injection)
    batch = store.claim_due(16, now=now(), policy=POLICY)
    assert sorted(msg.msg_id for msg in batch) == queued  # claimed and handed out, not left to their lease
    for msg in batch:
        store.complete(msg)
    assert list(store.ids()) == []


def test_a_connection_lent_out_while_the_sessions_end_is_not_pooled_again(stores: Callable[..., PostgresQueue]) -> None:
    """Sessions ended (a restart, an admin) while one connection was in use: once another
    operation has noticed, that connection does not go back to the pool either, so the next
    statement is not sent on a dead session (it could not tell whether it ran)."""
    store = stores()
    store.ping_after = 3600.0  # a pooled connection is trusted without asking
    msg_id = store.enqueue(BODY, 'shop@example.org', ['customer@example.org'])
    with store._conn() as lent:
        lent.execute('SELECT 1')
        assert store.view(msg_id) is not None  # on a second connection, pooled afterwards
        with psycopg.connect(server_url(), autocommit=True) as conn:
            ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                 [[c.info.backend_pid for c, _ in store._idle[False] + store._idle[True]]
                                  + [lent.info.backend_pid]]).fetchall()
        assert len(ended) == 2
        with pytest.raises(QueueUnavailable):
            store.view(msg_id)  # on the pooled connection: the loss is noticed here
    assert lent.closed
    assert store.view(msg_id) is not None  # on the first try
