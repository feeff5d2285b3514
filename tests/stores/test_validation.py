"""What a store refuses to queue: no recipients, addresses that could not be sent (SPEC §10)."""

from __future__ import annotations

import pytest

from schwarz.mailqueue.queue.contract import CLAIMED, QueueStore

from ._support import BODY, SENDER, T0, claim, enqueue, meta_of

BAD_ADDRESSES = [
    'no-at-sign',
    'a@example.org\r\nRCPT TO:<evil@example.org>',
    'a@example.org> NOTIFY=NEVER',
    '<a@example.org>',
    'a@',
    '-oQ/tmp@example.org',
    'a,b@example.org',
    '',
]


def test_enqueue_without_recipients(store: QueueStore) -> None:
    with pytest.raises(ValueError):
        store.enqueue(BODY, SENDER, [])
    with pytest.raises(ValueError):
        store.enqueue_claimed(BODY, SENDER, [])
    assert list(store.entries()) == []


@pytest.mark.parametrize('bad', BAD_ADDRESSES)
def test_a_bad_recipient_is_refused(store: QueueStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.enqueue(BODY, SENDER, ['ok@example.org', bad], queue_date=T0)
    with pytest.raises(ValueError):
        store.enqueue_claimed(BODY, SENDER, [bad], queue_date=T0)
    with pytest.raises(ValueError):
        store.store_dead_letter(BODY, SENDER, [bad], 'refused')
    assert list(store.entries()) == []


@pytest.mark.parametrize('bad', [b for b in BAD_ADDRESSES if b])
def test_a_bad_sender_is_refused(store: QueueStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.enqueue(BODY, bad, ['ok@example.org'], queue_date=T0)
    with pytest.raises(ValueError):
        store.enqueue_claimed(BODY, bad, ['ok@example.org'], queue_date=T0)
    assert list(store.entries()) == []


@pytest.mark.parametrize('bad', BAD_ADDRESSES)
def test_rewrite_to_a_bad_address_is_refused_and_changes_nothing(store: QueueStore, bad: str) -> None:
    msg_id = enqueue(store, recipients=['a@example.org', 'b@example.org'])
    msg = claim(store, msg_id)
    with pytest.raises(ValueError):
        store.rewrite(msg, recipients=['a@example.org', bad])
    if bad:
        with pytest.raises(ValueError):
            store.rewrite(msg, sender=bad)
    assert msg.is_claimed
    assert (msg.from_addr, msg.to_addrs) == (SENDER, ['a@example.org', 'b@example.org'])
    meta = meta_of(store, msg_id)
    assert (meta.from_addr, meta.to_addrs) == (SENDER, ['a@example.org', 'b@example.org'])
    assert store.resolve(msg_id) == [(CLAIMED, msg_id)]
    store.complete(msg)


def test_international_addresses_are_accepted(store: QueueStore) -> None:
    msg_id = enqueue(store, sender='jürgen@exämple.org', recipients=['用户@例子.广告', '"quoted local"@example.org'])
    meta = meta_of(store, msg_id)
    assert (meta.from_addr, meta.to_addrs) == ('jürgen@exämple.org', ['用户@例子.广告', '"quoted local"@example.org'])
