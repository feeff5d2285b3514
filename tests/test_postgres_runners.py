"""Several mq-run processes (stand-ins for several hosts) share one PostgreSQL queue."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg

from _pg import fresh_location
from schwarz.mailqueue.queue.contract import STATES
from schwarz.mailqueue.queue.pg_location import split_location
from schwarz.mailqueue.queue.postgres import enqueue_in_transaction, open_postgres_queue
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import script, write_config

MSG = b'Subject: from the shared queue\r\n\r\nbody\r\n'
MESSAGES = 4000


def test_four_mq_run_processes_deliver_each_of_4000_messages_exactly_once(tmp_path: Path) -> None:
    location = fresh_location()
    schema = split_location(location)[1]['schema']
    with psycopg.connect(split_location(location)[0]) as conn:  # one transaction: fast to fill
        for n in range(MESSAGES):
            enqueue_in_transaction(conn, MSG + b'%d' % n, 'a@example.org', [f'r{n}@example.org'], schema=schema)
    with SMTPTestServer() as server:
        # one config per "host": each keeps its own delivery log
        configs = [write_config(tmp_path / f'host{n}.conf', server, queue_url=location,
                                delivery_log=tmp_path / f'host{n}.log') for n in range(4)]
        started = time.monotonic()
        procs = [subprocess.Popen([script('mq-run'), '-C', config, '--workers', '2'],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for config in configs]
        outcomes = [proc.communicate(timeout=120) for proc in procs]
        took = time.monotonic() - started
        assert [proc.returncode for proc in procs] == [0, 0, 0, 0], [err for _, err in outcomes]
        counts = Counter(rcpt for received in server.received for rcpt in received.rcpt_tos)
    assert len(counts) == MESSAGES, len(counts)
    assert [rcpt for rcpt, n in counts.items() if n != 1] == []
    per_host = [sum(1 for line in (tmp_path / f'host{n}.log').read_text().splitlines() if 'status=sent' in line)
                for n in range(4)]
    assert sum(1 for lines in per_host if lines) >= 3, per_host  # they really worked side by side
    store = open_postgres_queue(location)
    try:
        stats = store.stats()
        assert {state: stats[state].count for state in STATES} == {state: 0 for state in STATES}
    finally:
        store.close()
    assert sum(per_host) == MESSAGES, per_host
    print(f'\n4 mq-run processes delivered {MESSAGES} messages in {took:.1f} s ({per_host})')


def test_waiting_daemons_deliver_new_mail_within_a_second(tmp_path: Path) -> None:
    """Two `mq-run --daemon` on one queue: each message, enqueued while they idle or while they
    are busy, is delivered within a second (NOTIFY while they wait, their own passes otherwise)."""
    location = fresh_location()
    store = open_postgres_queue(location)
    with SMTPTestServer() as server:
        configs = [write_config(tmp_path / f'host{n}.conf', server, queue_url=location) for n in range(2)]
        procs = [subprocess.Popen([script('mq-run'), '-C', config, '--daemon', '--workers', '2'],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for config in configs]
        try:
            time.sleep(1.0)  # both have made their first pass and wait
            latencies = []
            for n in range(6):
                if n == 3:
                    for k in range(300):  # keep them busy for the next ones
                        store.enqueue(MSG, 'a@example.org', [f'bulk{k}@example.org'])
                sent = time.monotonic()
                store.enqueue(MSG, 'a@example.org', [f'new{n}@example.org'])
                while (f'new{n}@example.org' not in {r for m in server.received for r in m.rcpt_tos}
                       and time.monotonic() - sent < 5):
                    time.sleep(0.01)
                latencies.append(time.monotonic() - sent)
                time.sleep(0.3 if n < 3 else 0.0)
        finally:
            for proc in procs:
                proc.terminate()
            outcomes = [proc.communicate(timeout=30) for proc in procs]
            store.close()
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outcomes]
    assert max(latencies) < 1.0, latencies
    counts = Counter(rcpt for received in server.received for rcpt in received.rcpt_tos)
    assert all(count == 1 for count in counts.values())


def test_a_daemon_outlives_the_end_of_its_database_sessions(tmp_path: Path) -> None:
    """An admin ending every session of the daemon (or a failover doing it): it goes on, and
    mail queued afterwards is delivered; a second time while it sits in a pass, too."""
    location = fresh_location()
    conninfo = split_location(location)[0]
    store = open_postgres_queue(location)

    def delivered(rcpt: str, within: float) -> bool:
        until = time.monotonic() + within
        while time.monotonic() < until:
            if rcpt in {r for m in server.received for r in m.rcpt_tos}:
                return True
            time.sleep(0.02)
        return False

    def end_sessions(pid: int) -> int:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            # the daemon's sessions: every client session of this database but ours and the test store's
            return len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "AND application_name = %s", [f'mq-run-{pid}']).fetchall())

    with SMTPTestServer() as server:
        config = write_config(tmp_path / 'host.conf', server,
                              queue_url=f'{location}&application_name=mq-run-{os.getpid()}')
        proc = subprocess.Popen([script('mq-run'), '-C', config, '--daemon'], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            store.enqueue(MSG, 'a@example.org', ['first@example.org'])
            assert delivered('first@example.org', 5)
            assert end_sessions(os.getpid()) >= 2  # at least its claims' and its listener's
            store.enqueue(MSG, 'a@example.org', ['second@example.org'])
            assert delivered('second@example.org', 10)
            assert proc.poll() is None
            server.set_delay('DATA', 0.5)
            store.enqueue(MSG, 'a@example.org', ['third@example.org'])
            time.sleep(0.2)  # in its pass, the delivery under way
            assert end_sessions(os.getpid()) >= 1
            server.set_delay('DATA', 0)
            store.enqueue(MSG, 'a@example.org', ['fourth@example.org'])
            assert delivered('fourth@example.org', 10)
            assert proc.poll() is None
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            store.close()
    assert proc.returncode == 0, err
    counts = Counter(rcpt for received in server.received for rcpt in received.rcpt_tos)
    assert counts['first@example.org'] == counts['second@example.org'] == counts['fourth@example.org'] == 1
    assert counts['third@example.org'] >= 1  # under way when its sessions ended; at worst delivered twice


def test_a_daemon_stops_with_78_when_its_role_loses_a_privilege(tmp_path: Path) -> None:
    """Not something that goes away by itself: the daemon says so and exits, instead of retrying."""
    location = fresh_location()
    conninfo, ours = split_location(location)
    schema, role = ours['schema'], f'mq_runner_{ours["schema"][-8:]}'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE {role} LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        conn.execute(f'GRANT SELECT ON "{schema}".schema_version TO {role}')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{schema}".messages TO {role}')
    store = open_postgres_queue(location)
    try:
        with SMTPTestServer() as server:
            config = write_config(tmp_path / 'host.conf', server, queue_url=f'{location}&user={role}')
            proc = subprocess.Popen([script('mq-run'), '-C', config, '--daemon'], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                store.enqueue(MSG, 'a@example.org', ['first@example.org'])
                until = time.monotonic() + 5
                while not server.received and time.monotonic() < until:
                    time.sleep(0.02)
                assert len(server.received) == 1
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f'REVOKE UPDATE ON "{schema}".messages FROM {role}')
                store.enqueue(MSG, 'a@example.org', ['second@example.org'])
                _, err = proc.communicate(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        assert proc.returncode == 78, err
        assert 'permission denied' in err and 'docs/postgresql.md' in err
        assert [state for state, _ in store.ids()] == ['new']  # the second one waits, untouched
    finally:
        store.close()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY {role}')
            conn.execute(f'DROP ROLE {role}')
