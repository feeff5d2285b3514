"""Back online, mail flows (issue 13): messages deferred only because the smarthost could not be reached
are due at once when a pass finds it reachable again; messages a server deferred with its own 4xx keep
their backoff."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List

import pytest

from schwarz.mailqueue.bootstrap import build_runner
from schwarz.mailqueue.config import settings_from_mapping
from schwarz.mailqueue.queue.contract import QueueStore, due_time
from schwarz.mailqueue.queue.format import QueueMeta
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.memory import MemoryQueue
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.runner import RunStats
from schwarz.mailqueue.smtp.errors import is_unreachable_error
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: hi\r\n\r\nbody\r\n'


@pytest.fixture(params=['maildir', 'memory'])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueStore]:
    queue: QueueStore = MaildirQueue(str(tmp_path / 'queue')) if request.param == 'maildir' else MemoryQueue()
    yield queue
    queue.close()


def run(server: SMTPTestServer, store: QueueStore, workers: int = 1) -> RunStats:
    settings = settings_from_mapping({'smtp_hostname': server.hostname, 'smtp_port': str(server.port),
                                      'smtp_tls': 'none', 'smtp_timeout': '2'})
    return build_runner(settings, store, workers=workers).run_once()


def metas(store: QueueStore) -> List[QueueMeta]:
    """The meta values of all queued messages (each must be readable)."""
    found = []
    for entry in store.entries():
        assert entry.meta is not None, entry.error
        found.append(entry.meta)
    return found


def waiting(store: QueueStore) -> List[str]:
    """Recipients of the messages that are not due now."""
    now = datetime.now(timezone.utc)
    policy = RetryPolicy()
    result: List[str] = []
    for meta in metas(store):
        due = due_time(meta, policy)
        if due is not None and due > now:
            result += meta.to_addrs
    return sorted(result)


def test_messages_deferred_while_the_host_was_down_go_out_when_it_is_back(smtp_server: SMTPTestServer,
                                                                         store: QueueStore) -> None:
    for n in range(5):
        store.enqueue(MSG, 'a@example.org', [f'r{n}@example.net'])
    smtp_server.stop()
    stats = run(smtp_server, store)
    assert stats.aborted and stats.deferred == 3  # the pass stopped after three failed connections
    assert len(waiting(store)) == 3
    assert all(is_unreachable_error(meta.last_error) for meta in metas(store) if meta.retries)
    smtp_server.start()
    stats = run(smtp_server, store)
    assert (stats.sent, stats.woken) == (5, 3)  # the two due ones, then the three that waited
    assert list(store.entries()) == [] and len(smtp_server.received) == 5


def test_a_servers_own_4xx_keeps_its_backoff(smtp_server: SMTPTestServer, store: QueueStore) -> None:
    smtp_server.set_recipient_reply('busy@example.net', 451, '4.2.1 mailbox busy')
    store.enqueue(MSG, 'a@example.org', ['busy@example.net'])
    assert run(smtp_server, store).deferred == 1
    smtp_server.clear_recipient_reply('busy@example.net')
    store.enqueue(MSG, 'a@example.org', ['later@example.net'])
    smtp_server.stop()
    run(smtp_server, store)
    assert waiting(store) == ['busy@example.net', 'later@example.net']
    smtp_server.start()
    stats = run(smtp_server, store)
    assert stats.woken == 1 and [m.rcpt_tos for m in smtp_server.received] == [['later@example.net']]
    assert waiting(store) == ['busy@example.net']  # its backoff stands


def test_with_nothing_due_a_probe_finds_the_host_back(smtp_server: SMTPTestServer, store: QueueStore) -> None:
    for n in range(3):
        store.enqueue(MSG, 'a@example.org', [f'r{n}@example.net'])
    smtp_server.stop()
    run(smtp_server, store)
    assert len(waiting(store)) == 3
    # still down: the probe fails, nothing is touched, no attempt is counted
    stats = run(smtp_server, store)
    assert (stats.woken, stats.deferred, stats.seen) == (0, 0, 0)
    assert {meta.retries for meta in metas(store)} == {1}
    smtp_server.start()
    stats = run(smtp_server, store, workers=2)
    assert (stats.woken, stats.sent) == (3, 3)
    assert smtp_server.connection_count <= 2  # one per worker: the probe's connection is reused


def test_a_host_that_fails_again_at_once_is_not_hammered(store: QueueStore, tmp_path: Path) -> None:
    """Woken messages that fail to connect again are deferred again, once per pass."""
    with SMTPTestServer() as server:
        store.enqueue(MSG, 'a@example.org', ['r@example.net'])
        server.stop()
        run(server, store)
        server.start()
        server.drop_connection_on('MAIL')  # the probe gets through, the delivery does not
        stats = run(server, store)
        assert stats.woken == 1 and stats.deferred == 1
        [meta] = metas(store)
        assert meta.retries == 2 and len(waiting(store)) == 1
