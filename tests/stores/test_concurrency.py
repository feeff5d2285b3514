"""Claims are exclusive (threads, handles, processes); dead owners' claims come back; admins racing runners."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Counter, List

import pytest

from schwarz.mailqueue.errors import ClaimLost
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, QueuedMessage, QueueStore

from ._support import POLICY, T0, claim, drain, enqueue, meta_of, state_of
from .conftest import StoreHarness, requires_processes

THREADS = 8
MESSAGES = 120


def _run_threads(targets: List[threading.Thread]) -> None:
    for thread in targets:
        thread.start()
    for thread in targets:
        thread.join(30)
        assert not thread.is_alive()


def test_threads_claim_every_message_exactly_once(harness: StoreHarness) -> None:
    store = harness.store
    queued = {enqueue(store) for _ in range(MESSAGES)}
    handles = [store if n % 2 else harness.other_handle() for n in range(THREADS)]
    start = threading.Barrier(THREADS)
    claimed: List[List[QueuedMessage]] = [[] for _ in range(THREADS)]
    errors: List[BaseException] = []

    def by_claim_due(n: int) -> None:
        try:
            start.wait()
            claimed[n].extend(drain(handles[n], limit=3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def by_id(n: int) -> None:
        order = sorted(queued)
        random.Random(n).shuffle(order)
        try:
            start.wait()
            for msg_id in order:
                msg = handles[n].claim(msg_id)
                if msg is not None:
                    claimed[n].append(msg)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    _run_threads([threading.Thread(target=by_claim_due if n < THREADS // 2 else by_id, args=(n,))
                  for n in range(THREADS)])
    assert errors == []
    counts = Counter(msg.msg_id for msgs in claimed for msg in msgs)
    assert set(counts) == queued
    assert [msg_id for msg_id, n in counts.items() if n > 1] == []
    # claims outlive the threads that made them; completing from here is fine
    for n, msgs in enumerate(claimed):
        for msg in msgs:
            assert msg.is_claimed
            handles[n].complete(msg)
    assert list(store.entries()) == []


def test_threads_racing_for_one_message(harness: StoreHarness) -> None:
    store = harness.store
    handles = [store if n % 2 else harness.other_handle() for n in range(THREADS)]

    def grab(handle: QueueStore, msg_id: str, start: threading.Barrier, won: List[QueuedMessage]) -> None:
        start.wait()
        msg = handle.claim(msg_id)
        if msg is not None:
            won.append(msg)

    for _ in range(20):
        msg_id = enqueue(store)
        start = threading.Barrier(THREADS)
        won: List[QueuedMessage] = []
        _run_threads([threading.Thread(target=grab, args=(handle, msg_id, start, won)) for handle in handles])
        assert len(won) == 1
        won[0].store.complete(won[0])


def test_two_handles_do_not_share_claims(harness: StoreHarness) -> None:
    store = harness.store
    other = harness.other_handle()
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    assert other.claim(msg_id) is None
    assert other.claim(msg_id, CLAIMED) is None
    assert drain(other, force=True) == []
    assert other.delete(msg_id, CLAIMED) is False
    store.release(msg)
    msg = claim(other, msg_id)
    assert store.claim(msg_id) is None
    other.complete(msg)
    assert store.view(msg_id) is None


@requires_processes
def test_processes_claim_every_message_exactly_once(harness: StoreHarness) -> None:
    store = harness.store
    queued = {store.enqueue(b'Subject: x\r\n\r\nx\r\n', 'a@example.org', ['b@example.org']) for _ in range(80)}
    children = [harness.child() for _ in range(4)]
    for child in children:
        child.wait_ready()
    for child in children:  # all at once
        child.send('drain 3')
    claimed: Counter[str] = Counter()
    for child in children:
        reply = child.receive().split()
        assert reply[0] == 'ids'
        claimed.update(reply[1:])
    assert set(claimed) == queued
    assert [msg_id for msg_id, n in claimed.items() if n > 1] == []
    # held by the children: nothing left here
    assert store.claim(sorted(queued)[0]) is None
    assert drain(store, force=True) == []
    for child in children:
        assert child.ask('complete').startswith('done ')
    assert list(store.entries()) == []


@requires_processes
def test_a_claim_in_another_process_is_exclusive(harness: StoreHarness) -> None:
    store = harness.store
    msg_id = enqueue(store)
    child = harness.child()
    assert child.ask(f'claim {msg_id}') == f'claimed {msg_id}'
    assert store.claim(msg_id) is None
    assert store.claim(msg_id, CLAIMED) is None
    assert store.delete(msg_id, CLAIMED) is False
    assert store.recover() == 0  # its owner is alive
    assert state_of(store, msg_id) == CLAIMED
    assert child.ask('release') == 'done 1'
    assert state_of(store, msg_id) == NEW
    msg = claim(store, msg_id)
    assert child.ask(f'claim {msg_id}') == f'none {msg_id}'
    store.complete(msg)


# --- recovery -------------------------------------------------------------------------------


def test_recover_brings_back_the_claim_of_a_dead_owner(harness: StoreHarness) -> None:
    store = harness.store
    msg_id = enqueue(store, recipients=['a@example.org', 'b@example.org'])
    untouched = enqueue(store)
    harness.claim_and_die(msg_id)
    assert state_of(store, msg_id) == CLAIMED
    assert store.recover() == 1
    assert state_of(store, msg_id) == NEW
    assert meta_of(store, msg_id).to_addrs == ['a@example.org', 'b@example.org']
    assert store.recover() == 0
    assert sorted(msg.msg_id for msg in drain(store)) == sorted([msg_id, untouched])


def test_recover_leaves_claims_of_live_owners(harness: StoreHarness) -> None:
    store = harness.store
    mine = claim(store, enqueue(store))
    claimed_at_once = store.enqueue_claimed(b'x', 'a@example.org', ['b@example.org'])
    held = threading.Event()
    done = threading.Event()
    theirs: List[QueuedMessage] = []
    other_id = enqueue(store)

    def runner() -> None:  # a live thread holding a claim
        theirs.append(claim(store, other_id))
        held.set()
        done.wait(10)

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        assert held.wait(10)
        assert store.recover() == 0
        assert {state_of(store, m) for m in (mine.msg_id, claimed_at_once.msg_id, other_id)} == {CLAIMED}
        assert mine.is_claimed and claimed_at_once.is_claimed
        store.complete(mine)
        store.complete(claimed_at_once)
        store.complete(theirs[0])
    finally:
        done.set()
        thread.join()
    assert list(store.entries()) == []


@requires_processes
def test_recover_after_the_owning_process_dies(harness: StoreHarness) -> None:
    store = harness.store
    msg_ids = sorted(enqueue(store) for _ in range(5))
    child = harness.child()
    reply = child.ask('drain 2').split()
    assert sorted(reply[1:]) == msg_ids
    assert store.recover() == 0
    child.die()
    assert store.recover() == 5
    assert {state_of(store, msg_id) for msg_id in msg_ids} == {NEW}
    assert sorted(msg.msg_id for msg in drain(store)) == msg_ids


# --- a claim that has ended -----------------------------------------------------------------


def _ended(store: QueueStore, how: str) -> QueuedMessage:
    msg = claim(store, enqueue(store))
    if how == 'complete':
        store.complete(msg)
    elif how == 'release':
        store.release(msg)
    elif how == 'defer':
        store.defer(msg, msg.to_addrs, '451', T0, T0 + timedelta(hours=1))
    elif how == 'fail':
        store.fail(msg, 'refused')
    else:
        store.move(msg, HELD)
    assert not msg.is_claimed
    return msg


ENDINGS = ['complete', 'release', 'defer', 'fail', 'move']


@pytest.mark.parametrize('how', ENDINGS)
def test_acting_on_an_ended_claim_raises_claim_lost_and_changes_nothing(store: QueueStore, how: str) -> None:
    msg = _ended(store, how)
    before = store.view(msg.msg_id)
    actions = {
        'complete': lambda: store.complete(msg),
        'defer': lambda: store.defer(msg, msg.to_addrs, '451', T0, T0 + timedelta(hours=2)),
        'fail': lambda: store.fail(msg, 'again'),
        'move': lambda: store.move(msg, NEW),
        'rewrite': lambda: store.rewrite(msg, recipients=['z@example.org']),
    }
    for name, action in actions.items():
        with pytest.raises(ClaimLost):
            action()
        assert not msg.is_claimed, name
        assert store.view(msg.msg_id) == before, name
    store.release(msg)  # releasing what is not ours any more: a no-op
    assert store.view(msg.msg_id) == before


def test_an_ended_claim_does_not_touch_the_next_owner(store: QueueStore) -> None:
    msg = _ended(store, 'release')
    again = claim(store, msg.msg_id)
    with pytest.raises(ClaimLost):
        store.complete(msg)
    store.release(msg)
    assert again.is_claimed and state_of(store, msg.msg_id) == CLAIMED
    store.defer(again, again.to_addrs, '451', T0, T0 + timedelta(hours=1))
    assert meta_of(store, msg.msg_id).retries == 1


# --- admin operations racing a runner -------------------------------------------------------


def test_delete_of_a_claimed_message_is_refused(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    assert store.delete(msg_id, CLAIMED) is False
    assert store.delete(msg_id, NEW) is None  # not there any more
    assert state_of(store, msg_id) == CLAIMED
    store.complete(msg)
    assert store.delete(msg_id, CLAIMED) is None


def test_delete_of_waiting_held_and_failed_messages(store: QueueStore) -> None:
    waiting = enqueue(store)
    held = enqueue(store)
    store.move(claim(store, held), HELD)
    failed = enqueue(store)
    store.fail(claim(store, failed), 'refused')
    assert store.delete(waiting, HELD) is None  # wrong state: not found there
    for msg_id, state in ((waiting, NEW), (held, HELD), (failed, FAILED)):
        assert store.delete(msg_id, state) is True
        assert store.view(msg_id) is None
        assert store.delete(msg_id, state) is None
    assert list(store.entries()) == []


def test_claim_by_id_of_a_claimed_message_returns_none(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    for state in (NEW, CLAIMED, HELD, FAILED):
        assert store.claim(msg_id, state) is None
    store.release(msg)
    assert store.claim(msg_id, HELD) is None
    claim(store, msg_id)


def test_claim_of_a_deleted_message_returns_none(store: QueueStore) -> None:
    msg_id = enqueue(store)
    assert store.delete(msg_id, NEW) is True
    assert store.claim(msg_id) is None
    assert drain(store, force=True) == []


def test_admin_hold_races_a_runner(harness: StoreHarness) -> None:
    """An admin holding every message while a runner drains: each ends up delivered or held, once."""
    store = harness.store
    admin = harness.other_handle()
    queued = [enqueue(store) for _ in range(60)]
    delivered: List[str] = []
    held: List[str] = []
    start = threading.Barrier(2)

    def runner() -> None:
        start.wait()
        while batch := store.claim_due(2, now=T0, policy=POLICY):
            for msg in batch:
                delivered.append(msg.msg_id)
                store.complete(msg)

    def operator() -> None:
        start.wait()
        for msg_id in reversed(queued):
            msg = admin.claim(msg_id)
            if msg is not None:
                admin.move(msg, HELD, extra={'X-Queue-Hold-Reason': 'admin'})
                held.append(msg_id)

    _run_threads([threading.Thread(target=runner), threading.Thread(target=operator)])
    assert sorted(delivered + held) == sorted(queued)
    assert {entry.msg_id for entry in store.entries()} == set(held)
    assert {entry.state for entry in store.entries()} <= {HELD}


def test_an_abandoned_claim_can_be_taken_over_by_id(harness: StoreHarness) -> None:
    store = harness.store
    msg_id = enqueue(store, recipients=['a@example.org', 'b@example.org'])
    harness.claim_and_die(msg_id)
    entry = store.entry(msg_id)
    assert entry is not None and (entry.state, entry.active) == (CLAIMED, False)
    msg = claim(store, msg_id, CLAIMED)
    assert msg.to_addrs == ['a@example.org', 'b@example.org']
    entry = store.entry(msg_id)
    assert entry is not None and (entry.state, entry.active) == (CLAIMED, True)
    assert store.claim(msg_id, CLAIMED) is None  # ours now, and we are alive
    assert store.recover() == 0
    store.release(msg)  # an abandoned claim taken over goes back to new
    assert state_of(store, msg_id) == NEW


def test_an_abandoned_claim_can_be_deleted(harness: StoreHarness) -> None:
    store = harness.store
    msg_id = enqueue(store)
    harness.claim_and_die(msg_id)
    assert store.delete(msg_id, CLAIMED) is True
    assert store.view(msg_id) is None


def test_active_tells_live_claims_from_abandoned_ones(harness: StoreHarness) -> None:
    store = harness.store
    live = claim(store, enqueue(store))
    dead = enqueue(store)
    harness.claim_and_die(dead)
    waiting = enqueue(store)
    active = {entry.msg_id: entry.active for entry in store.entries()}
    assert active == {live.msg_id: True, dead: False, waiting: None}
    found = store.view(dead)
    assert found is not None and found[0].active is False
    store.complete(live)
