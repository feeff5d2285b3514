"""Every state change of the contract: enqueue, claim, complete, defer, fail, release, move, rewrite."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, ClaimLost, QueueStore
from schwarz.mailqueue.queue.format import FAILED_REASON, HOLD_REASON, LAST_ERROR
from schwarz.mailqueue.queue.schedule import RetryPolicy

from ._support import BODY, RCPTS, SENDER, T0, claim, due_ids, enqueue, meta_of, state_of
from .conftest import StoreHarness


def test_enqueue_claim_complete(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS, extra={'X-Queue-Origin': 'test'})
    assert isinstance(msg_id, str) and msg_id
    found = store.view(msg_id)
    assert found is not None
    entry, body = found
    assert (entry.msg_id, entry.state, body) == (msg_id, NEW, BODY)
    assert entry.meta is not None
    assert (entry.meta.from_addr, entry.meta.to_addrs, entry.meta.queue_date) == (SENDER, RCPTS, T0)
    assert (entry.meta.retries, entry.meta.last_delivery_attempt) == (0, None)
    assert entry.meta.extra.get('X-Queue-Origin') == 'test'

    msg = claim(store, msg_id)
    assert (msg.msg_id, msg.msg_bytes, msg.from_addr, msg.to_addrs) == (msg_id, BODY, SENDER, RCPTS)
    assert (msg.retries, msg.queue_date, msg.last_delivery_attempt) == (0, T0, None)
    assert msg.store is store
    assert state_of(store, msg_id) == CLAIMED

    store.complete(msg)
    assert not msg.is_claimed
    assert store.view(msg_id) is None
    assert list(store.entries()) == []
    assert store.claim(msg_id) is None


def test_complete_without_waiting(harness: StoreHarness) -> None:
    """``complete(wait=False)``: the confirmation may come later, the removal does not."""
    store = harness.store
    first, second = enqueue(store), enqueue(store)
    msg = claim(store, first)
    store.complete(msg, wait=False)
    assert not msg.is_claimed
    with pytest.raises(ClaimLost):
        store.complete(msg, wait=False)  # ended here already: known without asking anyone
    assert store.view(first) is None  # this store's next operation sees it gone
    store.complete(claim(store, second), wait=False)
    assert [entry.msg_id for entry in store.entries()] == []
    assert harness.other_handle().view(second) is None


def test_enqueue_without_queue_date_uses_now(store: QueueStore) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    msg_id = store.enqueue(BODY, SENDER, ['a@example.org'])
    queue_date = meta_of(store, msg_id).queue_date
    assert queue_date is not None
    assert before - timedelta(seconds=1) <= queue_date <= before + timedelta(seconds=5)


def test_null_sender(store: QueueStore) -> None:
    msg_id = enqueue(store, sender='')
    assert meta_of(store, msg_id).from_addr == ''
    assert claim(store, msg_id).from_addr == ''


def test_enqueue_claimed(store: QueueStore) -> None:
    msg = store.enqueue_claimed(BODY, SENDER, RCPTS, queue_date=T0)
    assert msg.is_claimed
    assert (msg.msg_bytes, msg.from_addr, msg.to_addrs, msg.queue_date) == (BODY, SENDER, RCPTS, T0)
    assert state_of(store, msg.msg_id) == CLAIMED
    assert store.claim(msg.msg_id) is None
    assert store.claim(msg.msg_id, CLAIMED) is None
    assert due_ids(store, force=True) == []
    store.complete(msg)
    assert store.view(msg.msg_id) is None


def test_enqueue_claimed_then_released_waits_in_new(store: QueueStore) -> None:
    msg = store.enqueue_claimed(BODY, SENDER, RCPTS, queue_date=T0)
    store.release(msg)
    assert not msg.is_claimed
    assert state_of(store, msg.msg_id) == NEW
    assert due_ids(store) == [msg.msg_id]


def test_enqueue_claimed_then_deferred(store: QueueStore) -> None:
    msg = store.enqueue_claimed(BODY, SENDER, RCPTS, queue_date=T0)
    store.defer(msg, RCPTS[1:], '451 try later', T0, T0 + timedelta(minutes=30))
    meta = meta_of(store, msg.msg_id)
    assert (meta.to_addrs, meta.retries) == (RCPTS[1:], 1)
    assert state_of(store, msg.msg_id) == NEW


def test_store_dead_letter(store: QueueStore) -> None:
    msg_id = store.store_dead_letter(BODY, SENDER, ['b@example.org'], '550 no such user')
    found = store.view(msg_id)
    assert found is not None
    entry, body = found
    assert (entry.state, body) == (FAILED, BODY)
    assert entry.meta is not None
    assert entry.meta.to_addrs == ['b@example.org']
    assert entry.meta.failed_reason == '550 no such user'
    assert due_ids(store, force=True) == []


# --- defer ----------------------------------------------------------------------------------


def test_defer_keeps_pending_recipients_and_counts_the_attempt(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    attempt = T0 + timedelta(minutes=1)
    store.defer(msg, ['b@example.org', 'c@example.org'], '451 4.3.0 mailbox busy', attempt,
                attempt + timedelta(minutes=30))
    assert not msg.is_claimed
    meta = meta_of(store, msg_id)
    assert state_of(store, msg_id) == NEW
    assert meta.to_addrs == ['b@example.org', 'c@example.org']
    assert meta.retries == 1
    assert meta.last_delivery_attempt == attempt
    assert meta.last_error == '451 4.3.0 mailbox busy'
    assert meta.queue_date == T0
    found = store.view(msg_id)
    assert found is not None and found[1] == BODY

    again = claim(store, msg_id)
    assert (again.retries, again.to_addrs) == (1, ['b@example.org', 'c@example.org'])
    store.defer(again, ['c@example.org'], '452 too many', attempt + timedelta(hours=1))
    meta = meta_of(store, msg_id)
    assert (meta.retries, meta.to_addrs, meta.last_error) == (2, ['c@example.org'], '452 too many')
    assert meta.last_delivery_attempt == attempt + timedelta(hours=1)


def test_defer_next_attempt_is_respected_by_claim_due(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    store.defer(msg, msg.to_addrs, '421 closing', T0, T0 + timedelta(hours=1))
    assert due_ids(store, now=T0) == []
    assert due_ids(store, now=T0 + timedelta(minutes=59)) == []
    assert due_ids(store, now=T0 + timedelta(hours=1)) == [msg_id]
    assert due_ids(store, now=T0 + timedelta(hours=2)) == [msg_id]


def test_defer_without_next_attempt_uses_the_policy(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    store.defer(msg, msg.to_addrs, '421 closing', T0)  # 1 attempt: POLICY waits 10 minutes
    assert due_ids(store, now=T0 + timedelta(minutes=9)) == []
    assert due_ids(store, now=T0 + timedelta(minutes=11)) == [msg_id]
    slow = RetryPolicy(min_delay=timedelta(hours=1), max_delay=timedelta(hours=4))
    assert due_ids(store, now=T0 + timedelta(minutes=11), policy=slow) == []
    assert due_ids(store, now=T0 + timedelta(minutes=61), policy=slow) == [msg_id]

    msg = claim(store, msg_id)
    later = T0 + timedelta(minutes=11)
    store.defer(msg, msg.to_addrs, '421 closing', later)  # 2 attempts: 20 minutes
    assert due_ids(store, now=later + timedelta(minutes=19)) == []
    assert due_ids(store, now=later + timedelta(minutes=21)) == [msg_id]


def test_enqueue_with_an_attempt_just_made_is_due_at_once(store: QueueStore) -> None:
    msg_id = store.enqueue(BODY, SENDER, RCPTS, queue_date=T0, attempted=T0)
    meta = meta_of(store, msg_id)
    assert (meta.retries, meta.last_delivery_attempt) == (1, T0)
    assert due_ids(store, now=T0) == [msg_id]


def test_enqueue_with_earlier_attempts_waits_for_the_schedule(store: QueueStore) -> None:
    """1.x's X-Retries/X-Last-Attempt (enqueue_message(..., retries=, last=)): the backoff
    schedule counts from them, as after that many deferrals."""
    msg_id = store.enqueue(BODY, SENDER, RCPTS, queue_date=T0, attempted=T0, retries=2)
    meta = meta_of(store, msg_id)
    assert (meta.retries, meta.last_delivery_attempt) == (2, T0)
    assert due_ids(store, now=T0 + timedelta(minutes=19)) == []  # POLICY: 20 minutes after 2 attempts
    assert due_ids(store, now=T0 + timedelta(minutes=21)) == [msg_id]
    never = store.enqueue(BODY, SENDER, RCPTS, queue_date=T0, retries=0)
    assert meta_of(store, never).retries == 0 and due_ids(store, now=T0) == [never]
    for bad in (-1, True, '2'):
        with pytest.raises(ValueError):
            store.enqueue(BODY, SENDER, RCPTS, attempted=T0, retries=bad)  # type: ignore[arg-type]


def test_a_deferral_without_next_attempt_forgets_an_earlier_next_attempt(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    store.defer(msg, msg.to_addrs, '421', T0, T0 + timedelta(days=3))
    msg = claim(store, msg_id)  # claim by id does not ask whether it is due
    store.defer(msg, msg.to_addrs, '421', T0)  # now the policy decides: 20 minutes after 2 attempts
    assert due_ids(store, now=T0 + timedelta(minutes=19)) == []
    assert due_ids(store, now=T0 + timedelta(minutes=21)) == [msg_id]


# --- fail -----------------------------------------------------------------------------------


def test_fail_moves_to_failed_with_the_reason(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    failed_id = store.fail(msg, '550 5.1.1 user unknown')
    assert not msg.is_claimed
    assert failed_id == msg_id
    assert state_of(store, msg_id) == FAILED
    meta = meta_of(store, msg_id)
    assert (meta.failed_reason, meta.to_addrs) == ('550 5.1.1 user unknown', RCPTS)
    assert due_ids(store, force=True) == []


def test_fail_with_fewer_recipients(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    store.fail(msg, 'expired', ['c@example.org'])
    meta = meta_of(store, msg_id)
    assert (meta.failed_reason, meta.to_addrs) == ('expired', ['c@example.org'])
    found = store.view(msg_id)
    assert found is not None and found[1] == BODY


# --- release --------------------------------------------------------------------------------


@pytest.mark.parametrize('origin', [NEW, HELD, FAILED])
def test_release_goes_back_unchanged_to_where_it_was_claimed_from(store: QueueStore, origin: str) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    if origin != NEW:
        msg = claim(store, msg_id)
        if origin == FAILED:
            store.fail(msg, 'gave up')
        else:
            store.move(msg, origin)
    before = meta_of(store, msg_id)
    msg = claim(store, msg_id, origin)
    assert state_of(store, msg_id) == CLAIMED
    store.release(msg)
    assert not msg.is_claimed
    assert state_of(store, msg_id) == origin
    assert meta_of(store, msg_id) == before
    store.release(msg)  # a second release is a no-op
    assert state_of(store, msg_id) == origin


def test_release_ignores_a_failed_rewrite(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    with pytest.raises(ValueError):
        store.rewrite(msg, recipients=['not an address'])
    assert msg.is_claimed
    store.release(msg)
    assert meta_of(store, msg_id).to_addrs == RCPTS


def test_context_manager_releases(store: QueueStore) -> None:
    msg_id = enqueue(store)
    with claim(store, msg_id) as msg:
        assert state_of(store, msg_id) == CLAIMED
    assert not msg.is_claimed
    assert state_of(store, msg_id) == NEW


# --- move -----------------------------------------------------------------------------------


def test_move_between_new_hold_and_failed(store: QueueStore) -> None:
    msg_id = enqueue(store)
    store.move(claim(store, msg_id), HELD)
    assert state_of(store, msg_id) == HELD
    assert store.claim(msg_id) is None  # not in new
    assert due_ids(store, force=True) == []
    store.move(claim(store, msg_id, HELD), FAILED)
    assert state_of(store, msg_id) == FAILED
    store.move(claim(store, msg_id, FAILED), NEW)
    assert state_of(store, msg_id) == NEW
    assert due_ids(store) == [msg_id]


def test_move_with_extra_sets_and_removes_meta_values(store: QueueStore) -> None:
    msg_id = enqueue(store)
    store.move(claim(store, msg_id), HELD, extra={HOLD_REASON: 'looks like spam'})
    assert meta_of(store, msg_id).extra.get(HOLD_REASON) == 'looks like spam'
    store.move(claim(store, msg_id, HELD), NEW, extra={HOLD_REASON: None})
    assert HOLD_REASON not in meta_of(store, msg_id).extra
    assert state_of(store, msg_id) == NEW


def _deferred(store: QueueStore, retries: int = 2) -> str:
    msg_id = enqueue(store)
    for n in range(retries):
        msg = claim(store, msg_id)
        store.defer(msg, msg.to_addrs, f'421 attempt {n}', T0 + timedelta(minutes=n), T0 + timedelta(days=2))
    return msg_id


def test_move_with_reset_retries_forgets_every_attempt(store: QueueStore) -> None:
    msg_id = _deferred(store)
    store.move(claim(store, msg_id), HELD)
    store.move(claim(store, msg_id, HELD), NEW, reset_retries=True)
    meta = meta_of(store, msg_id)
    assert (meta.retries, meta.last_delivery_attempt, meta.last_error) == (0, None, None)
    assert due_ids(store) == [msg_id]


def test_requeue_of_a_failed_message_with_reset_retries(store: QueueStore) -> None:
    msg_id = _deferred(store, retries=1)
    store.fail(claim(store, msg_id), 'expired')
    store.move(claim(store, msg_id, FAILED), NEW, reset_retries=True)
    meta = meta_of(store, msg_id)
    assert (meta.retries, meta.failed_reason, meta.last_error) == (0, None, None)
    assert FAILED_REASON not in meta.extra and LAST_ERROR not in meta.extra
    assert due_ids(store) == [msg_id]


def test_move_due_now_keeps_the_attempt_count(store: QueueStore) -> None:
    msg_id = _deferred(store)
    assert due_ids(store) == []
    store.move(claim(store, msg_id), NEW, due_now=True)
    assert meta_of(store, msg_id).retries == 2
    assert due_ids(store) == [msg_id]


def test_move_with_a_queue_date_restarts_the_lifetime(store: QueueStore) -> None:
    msg_id = enqueue(store, queue_date=T0 - timedelta(days=6))
    msg = claim(store, msg_id)
    store.defer(msg, msg.to_addrs, '451', T0 - timedelta(minutes=1), T0 + timedelta(hours=1))
    assert due_ids(store) == [msg_id]  # expired: due, so that a runner moves it to failed
    store.move(claim(store, msg_id), NEW, queue_date=T0)
    meta = meta_of(store, msg_id)
    assert (meta.queue_date, meta.retries) == (T0, 1)
    assert due_ids(store) == []
    assert due_ids(store, now=T0 + timedelta(hours=1)) == [msg_id]


def test_move_to_an_unknown_state_is_refused_and_keeps_the_claim(store: QueueStore) -> None:
    msg_id = enqueue(store)
    msg = claim(store, msg_id)
    with pytest.raises(ValueError):
        store.move(msg, 'trash')
    assert msg.is_claimed
    assert state_of(store, msg_id) == CLAIMED
    store.complete(msg)
    assert store.view(msg_id) is None


# --- rewrite --------------------------------------------------------------------------------


def test_rewrite_changes_the_envelope_and_keeps_the_claim(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    store.rewrite(msg, sender='bounces@example.org', recipients=['c@example.org'])
    assert msg.is_claimed
    assert (msg.from_addr, msg.to_addrs) == ('bounces@example.org', ['c@example.org'])
    assert state_of(store, msg_id) == CLAIMED
    meta = meta_of(store, msg_id)
    assert (meta.from_addr, meta.to_addrs, meta.queue_date) == ('bounces@example.org', ['c@example.org'], T0)
    assert store.claim(msg_id, CLAIMED) is None
    store.release(msg)
    assert state_of(store, msg_id) == NEW
    meta = meta_of(store, msg_id)
    assert (meta.from_addr, meta.to_addrs) == ('bounces@example.org', ['c@example.org'])
    again = claim(store, msg_id)
    assert (again.from_addr, again.to_addrs, again.msg_bytes) == ('bounces@example.org', ['c@example.org'], BODY)


def test_rewrite_only_recipients_then_defer(store: QueueStore) -> None:
    msg_id = enqueue(store, recipients=RCPTS)
    msg = claim(store, msg_id)
    store.rewrite(msg, recipients=RCPTS[:2])
    store.defer(msg, RCPTS[1:2], '451', T0, T0 + timedelta(minutes=5))
    meta = meta_of(store, msg_id)
    assert (meta.from_addr, meta.to_addrs, meta.retries) == (SENDER, RCPTS[1:2], 1)
