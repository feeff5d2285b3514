"""claim_due: the store picks and claims the next due messages, a batch at a time."""

from __future__ import annotations

from datetime import timedelta
from typing import Counter, List

from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, QueuedMessage, QueueStore
from schwarz.mailqueue.queue.schedule import RetryPolicy

from ._support import POLICY, T0, claim, drain, due_ids, enqueue, ids, state_of


def test_at_most_limit_and_an_empty_batch_ends_the_pass(store: QueueStore) -> None:
    queued = sorted(enqueue(store) for _ in range(7))
    sizes = []
    claimed: List[QueuedMessage] = []
    while True:
        batch = store.claim_due(3, now=T0, policy=POLICY)
        sizes.append(len(batch))
        if not batch:
            break
        assert all(msg.is_claimed for msg in batch)
        claimed.extend(batch)
    assert all(size <= 3 for size in sizes)
    assert sizes[-1] == 0
    assert ids(claimed) == queued
    assert {state_of(store, msg_id) for msg_id in queued} == {CLAIMED}
    for msg in claimed:
        store.complete(msg)
    assert drain(store, force=True) == []


def test_limit_one(store: QueueStore) -> None:
    queued = sorted(enqueue(store) for _ in range(3))
    batches = []
    while batch := store.claim_due(1, now=T0, policy=POLICY):
        assert len(batch) == 1
        batches.append(batch[0])
    assert ids(batches) == queued


def test_only_due_messages(store: QueueStore) -> None:
    fresh = enqueue(store)
    waiting = enqueue(store)
    msg = claim(store, waiting)
    store.defer(msg, msg.to_addrs, '451', T0, T0 + timedelta(hours=1))
    backoff = enqueue(store)
    msg = claim(store, backoff)
    store.defer(msg, msg.to_addrs, '451', T0)  # POLICY: due after 10 minutes

    assert due_ids(store, now=T0) == [fresh]
    assert due_ids(store, now=T0 + timedelta(minutes=10)) == sorted([fresh, backoff])
    assert due_ids(store, now=T0 + timedelta(hours=1)) == sorted([fresh, waiting, backoff])


def test_force_claims_every_waiting_message(store: QueueStore) -> None:
    queued = [enqueue(store) for _ in range(3)]
    for msg_id in queued[1:]:
        msg = claim(store, msg_id)
        store.defer(msg, msg.to_addrs, '451', T0, T0 + timedelta(days=1))
    assert due_ids(store, now=T0) == [queued[0]]
    assert due_ids(store, now=T0, force=True) == sorted(queued)


def test_never_held_failed_or_claimed_messages(store: QueueStore) -> None:
    waiting = enqueue(store)
    held = enqueue(store)
    store.move(claim(store, held), HELD)
    failed = enqueue(store)
    store.fail(claim(store, failed), 'refused')
    dead = store.store_dead_letter(b'x', '', ['a@example.org'], 'refused')
    claimed = claim(store, enqueue(store))
    later = T0 + timedelta(days=30)  # every one would be due (or expired) by now
    for now, force in ((T0, False), (T0, True), (later, False), (later, True)):
        assert due_ids(store, now=now, force=force) == [waiting]
    assert (state_of(store, held), state_of(store, failed), state_of(store, dead)) == (HELD, FAILED, FAILED)
    assert claimed.is_claimed and state_of(store, claimed.msg_id) == CLAIMED


def test_expired_messages_are_due(store: QueueStore) -> None:
    old = enqueue(store, queue_date=T0 - timedelta(days=6))
    msg = claim(store, old)
    store.defer(msg, msg.to_addrs, '451', T0 - timedelta(minutes=1), T0 + timedelta(hours=3))
    young = enqueue(store)
    msg = claim(store, young)
    store.defer(msg, msg.to_addrs, '451', T0 - timedelta(minutes=1), T0 + timedelta(hours=3))
    assert due_ids(store, now=T0) == [old]  # POLICY: lifetime 5 days
    short = RetryPolicy(min_delay=timedelta(minutes=10), max_delay=timedelta(hours=4),
                        max_queue_lifetime=timedelta(minutes=30))
    assert due_ids(store, now=T0 + timedelta(minutes=31), policy=short) == sorted([old, young])


def test_expiry_bounds_a_far_next_attempt(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    store.defer(msg, msg.to_addrs, '451', T0, T0 + timedelta(days=3650))
    assert due_ids(store, now=T0 + timedelta(days=4)) == []
    assert due_ids(store, now=T0 + timedelta(days=5, seconds=1)) == [msg_id]


def test_future_dates_do_not_block_forever(store: QueueStore) -> None:
    # written by a host whose clock was two years ahead
    ahead = T0 + timedelta(days=730)
    never_tried = enqueue(store, queue_date=ahead)
    tried = enqueue(store, queue_date=ahead)
    msg = claim(store, tried)
    store.defer(msg, msg.to_addrs, '451', ahead)  # next attempt from the policy: in two years
    recorded = enqueue(store, queue_date=ahead)
    msg = claim(store, recorded)
    store.defer(msg, msg.to_addrs, '451', ahead, ahead + timedelta(hours=1))
    assert due_ids(store, now=T0) == sorted([never_tried, tried, recorded])


def test_repeated_calls_in_one_pass_never_return_a_message_twice(store: QueueStore) -> None:
    queued = sorted(enqueue(store) for _ in range(30))
    seen: Counter[str] = Counter()
    eager = RetryPolicy(min_delay=timedelta(0), max_delay=timedelta(0))
    for _ in range(1000):
        batch = store.claim_due(4, now=T0, policy=eager)
        if not batch:
            break
        for n, msg in enumerate(batch):
            seen[msg.msg_id] += 1
            if n % 2:
                store.release(msg)  # back unchanged: still due
            else:
                store.defer(msg, msg.to_addrs, '451', T0)  # due again at once under this policy
    else:
        raise AssertionError('the pass never ended')
    assert sorted(seen) == queued
    assert max(seen.values()) == 1, [msg_id for msg_id, n in seen.items() if n > 1]
    # the next pass finds them all again
    assert due_ids(store, now=T0, policy=eager) == queued


def test_claimed_messages_are_claimed_and_complete(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=['a@example.org', 'b@example.org'])
    (msg,) = drain(store)
    assert (msg.msg_id, msg.to_addrs, msg.retries) == (msg_id, ['a@example.org', 'b@example.org'], 0)
    assert store.claim(msg_id) is None
    assert store.claim(msg_id, CLAIMED) is None
    store.complete(msg)
    assert store.view(msg_id) is None
    assert state_of(store, msg_id) is None


def test_a_new_pass_sees_messages_queued_after_the_last_one(store: QueueStore) -> None:
    first = enqueue(store)
    assert ids(drain(store)) == [first]
    second = enqueue(store)
    assert ids(drain(store)) == [second]
    assert drain(store) == []
    assert {state_of(store, first), state_of(store, second)} == {CLAIMED}
    assert NEW not in {entry.state for entry in store.entries()}
