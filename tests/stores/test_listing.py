"""Looking without claiming: entries, stats, resolve, view; waiting for work."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Dict, Tuple

from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, STATES, QueuedMessage, QueueStore

from ._support import BODY, T0, claim, enqueue, state_of


def _populate(store: QueueStore) -> Tuple[Dict[str, str], QueuedMessage]:
    """Two waiting, one claimed (and that claim), one held, two failed; queue dates one hour apart."""
    made: Dict[str, str] = {}
    for n, name in enumerate(['new1', 'new2', 'cur', 'hold', 'failed', 'dead']):
        body = BODY + b'x' * (100 * n)
        made[name] = enqueue(store, body=body, recipients=[f'{name}@example.org'],
                             queue_date=T0 - timedelta(hours=n))
    claimed = claim(store, made['cur'])
    store.move(claim(store, made['hold']), HELD)
    store.fail(claim(store, made['failed']), 'refused')
    store.fail(claim(store, made['dead']), 'refused')
    return made, claimed


def test_entries_streams_every_message_with_meta(store: QueueStore) -> None:
    made, claimed = _populate(store)
    entries = list(store.entries())
    by_id = {entry.msg_id: entry for entry in entries}
    assert len(entries) == len(by_id) == 6
    expected_states = {'new1': NEW, 'new2': NEW, 'cur': CLAIMED, 'hold': HELD, 'failed': FAILED, 'dead': FAILED}
    for n, name in enumerate(['new1', 'new2', 'cur', 'hold', 'failed', 'dead']):
        entry = by_id[made[name]]
        assert entry.state == expected_states[name]
        assert entry.error is None
        assert entry.meta is not None
        assert entry.meta.to_addrs == [f'{name}@example.org']
        assert entry.meta.queue_date == T0 - timedelta(hours=n)
        assert entry.size >= len(BODY) + 100 * n
        assert entry.changed > 0
    assert by_id[made['failed']].meta.failed_reason == 'refused'  # type: ignore[union-attr]


def test_entries_filtered_by_state(store: QueueStore) -> None:
    made, claimed = _populate(store)
    assert sorted(e.msg_id for e in store.entries([NEW])) == sorted([made['new1'], made['new2']])
    assert [e.msg_id for e in store.entries([HELD])] == [made['hold']]
    assert [e.msg_id for e in store.entries([CLAIMED])] == [made['cur']]
    assert sorted(e.msg_id for e in store.entries([FAILED, HELD])) == sorted(
        [made['failed'], made['dead'], made['hold']])
    assert list(store.entries([])) == []


def test_entries_is_a_stream(store: QueueStore) -> None:
    for _ in range(5):
        enqueue(store)
    stream = store.entries()
    assert iter(stream) is stream
    first = next(stream)
    assert first.state == NEW
    assert len(list(stream)) == 4


def test_stats(store: QueueStore) -> None:
    empty = store.stats()
    assert set(empty) >= set(STATES)
    assert all((count.count, count.size, count.oldest) == (0, 0, None) for count in empty.values())

    _populate(store)
    stats = store.stats()
    assert {state: stats[state].count for state in STATES} == {NEW: 2, CLAIMED: 1, HELD: 1, FAILED: 2}
    assert stats[NEW].oldest == T0 - timedelta(hours=1)
    assert stats[CLAIMED].oldest == T0 - timedelta(hours=2)
    assert stats[HELD].oldest == T0 - timedelta(hours=3)
    assert stats[FAILED].oldest == T0 - timedelta(hours=5)
    sizes = {state: 0 for state in STATES}
    for entry in store.entries():
        sizes[entry.state] += entry.size
    assert {state: stats[state].size for state in STATES} == sizes
    assert stats[FAILED].size >= 2 * len(BODY) + 900


def test_resolve_a_prefix(store: QueueStore) -> None:
    made, claimed = _populate(store)
    everything = store.resolve('')
    assert sorted(msg_id for _, msg_id in everything) == sorted(
        made[name] for name in ['new1', 'new2', 'cur', 'hold', 'failed', 'dead'])
    held = made['hold']
    assert store.resolve(held) == [(HELD, held)]
    matches = store.resolve(held[:4])
    assert (HELD, held) in matches
    assert all(msg_id.startswith(held[:4]) for _, msg_id in matches)
    assert store.resolve(held, [NEW, CLAIMED]) == []
    assert store.resolve(made['cur'], [CLAIMED]) == [(CLAIMED, made['cur'])]
    assert store.resolve('no-such-prefix') == []


def test_view(store: QueueStore) -> None:
    made, claimed = _populate(store)
    for name, state in (('new1', NEW), ('cur', CLAIMED), ('hold', HELD), ('failed', FAILED)):
        found = store.view(made[name])
        assert found is not None
        entry, body = found
        assert (entry.msg_id, entry.state) == (made[name], state)
        assert body.startswith(BODY)
        assert entry.meta is not None and entry.meta.to_addrs == [f'{name}@example.org']
    store.complete(claimed)
    assert store.view(made['cur']) is None
    assert store.view('no-such-id') is None
    assert state_of(store, made['new1']) == NEW


def test_entry_is_one_message_of_the_listing(store: QueueStore) -> None:
    made, claimed = _populate(store)
    listed = {entry.msg_id: entry for entry in store.entries()}
    for msg_id, entry in listed.items():
        single = store.entry(msg_id)
        assert single is not None
        assert (single.msg_id, single.state, single.size, single.meta, single.error) == (
            entry.msg_id, entry.state, entry.size, entry.meta, entry.error)
        found = store.view(msg_id)
        assert found is not None and found[0].state == single.state
    assert store.entry(made['cur']).active is True  # type: ignore[union-attr]
    assert store.entry(made['new1']).active is None  # type: ignore[union-attr]
    store.complete(claimed)
    assert store.entry(made['cur']) is None
    assert store.entry('no-such-id') is None


def test_ids_streams_state_and_id(store: QueueStore) -> None:
    made, claimed = _populate(store)
    listed = sorted((entry.state, entry.msg_id) for entry in store.entries())
    stream = store.ids()
    assert iter(stream) is stream
    assert sorted(stream) == listed
    assert sorted(store.ids([NEW, HELD])) == sorted([(NEW, made['new1']), (NEW, made['new2']), (HELD, made['hold'])])
    assert list(store.ids([])) == []


def test_check_passes_on_a_usable_store(store: QueueStore) -> None:
    store.check()
    enqueue(store)
    store.check()


def test_view_does_not_claim(store: QueueStore) -> None:
    msg_id = enqueue(store)
    assert store.view(msg_id) is not None
    msg = claim(store, msg_id)
    assert store.view(msg_id) is not None
    store.complete(msg)


def test_wait_for_work_wakes_up_on_an_enqueue(store: QueueStore) -> None:
    def later() -> None:
        time.sleep(0.3)
        enqueue(store)

    thread = threading.Thread(target=later)
    started = time.monotonic()
    thread.start()
    try:
        assert store.wait_for_work(10) is True
        assert time.monotonic() - started < 3
    finally:
        thread.join()


def test_wait_for_work_times_out(store: QueueStore) -> None:
    enqueue(store)  # queued before the wait: not new work for this wait
    started = time.monotonic()
    assert store.wait_for_work(0.5) is False
    assert time.monotonic() - started >= 0.45
