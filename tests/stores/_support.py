"""Helpers of the store suite: contract calls only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Sequence

from schwarz.mailqueue.queue.contract import QueuedMessage, QueueStore
from schwarz.mailqueue.queue.format import QueueMeta
from schwarz.mailqueue.queue.schedule import RetryPolicy

SENDER = 'sender@example.org'
RCPTS = ['a@example.org', 'b@example.org', 'c@example.org']
BODY = b'From: sender@example.org\r\nTo: a@example.org\r\nSubject: test\r\n\r\nHello\r\n'
# Whole seconds: stores may keep dates at the precision of RFC 2822 (maildir files do).
T0 = datetime.now(timezone.utc).replace(microsecond=0)
POLICY = RetryPolicy(min_delay=timedelta(minutes=10), max_delay=timedelta(hours=4),
                     max_queue_lifetime=timedelta(days=5))


def enqueue(store: QueueStore, *, body: bytes = BODY, sender: str = SENDER,
            recipients: Sequence[str] = ('a@example.org',), queue_date: datetime = T0,
            extra: Optional[Dict[str, str]] = None) -> str:
    return store.enqueue(body, sender, list(recipients), queue_date=queue_date, extra=extra)


def state_of(store: QueueStore, msg_id: str) -> Optional[str]:
    found = store.view(msg_id)
    return None if found is None else found[0].state


def meta_of(store: QueueStore, msg_id: str) -> QueueMeta:
    found = store.view(msg_id)
    assert found is not None, f'{msg_id} is gone'
    entry = found[0]
    assert entry.error is None and entry.meta is not None, entry.error
    return entry.meta


def claim(store: QueueStore, msg_id: str, state: str = 'new') -> QueuedMessage:
    msg = store.claim(msg_id, state)
    assert msg is not None, f'cannot claim {msg_id} from {state}'
    assert msg.is_claimed
    return msg


def drain(store: QueueStore, *, now: datetime = T0, policy: RetryPolicy = POLICY, limit: int = 100,
          force: bool = False) -> List[QueuedMessage]:
    """One whole pass: ``claim_due`` until an empty batch; every claim is held."""
    claimed: List[QueuedMessage] = []
    for _ in range(10_000):
        batch = store.claim_due(limit, now=now, policy=policy, force=force)
        assert len(batch) <= limit
        if not batch:
            return claimed
        claimed.extend(batch)
    raise AssertionError('claim_due never returned an empty batch')


def due_ids(store: QueueStore, *, now: datetime = T0, policy: RetryPolicy = POLICY, force: bool = False) -> List[str]:
    """The ids one pass claims at ``now``; each claim is released again (back unchanged)."""
    claimed = drain(store, now=now, policy=policy, force=force)
    for msg in claimed:
        store.release(msg)
    return sorted(msg.msg_id for msg in claimed)


def ids(messages: Sequence[QueuedMessage]) -> List[str]:
    return sorted(msg.msg_id for msg in messages)
