"""Stores that aggregate ``mq-queue stats`` themselves (``contract.Summarizing``) must agree
with the figures ``QueueAdmin`` computes from every entry, on a queue holding every case."""

from __future__ import annotations

from datetime import timedelta

from schwarz.mailqueue.queue.admin import QueueAdmin, QueueStats
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW, STATES, Summarizing
from schwarz.mailqueue.queue.format import ORIGINAL_DATE, format_date

from ._support import BODY, POLICY, T0, claim, enqueue
from .conftest import StoreHarness, requires_summary

NOW = T0 + timedelta(hours=1)


def _figures(stats: QueueStats) -> dict:
    return {
        'states': {state: (item.count, item.bytes, item.oldest, item.oldest_id, item.unreadable)
                   for state, item in stats.states.items()},
        'deferred': stats.deferred, 'due': stats.due, 'active': stats.active,
    }


def _populate(harness: StoreHarness) -> None:
    store = harness.store
    hours = iter(range(1, 100))

    def queued(**kwargs: object) -> str:
        return enqueue(store, body=BODY + b'x' * next(hours), queue_date=T0 - timedelta(hours=next(hours)),
                       **kwargs)  # type: ignore[arg-type]

    queued()  # never tried: due
    store.defer(claim(store, queued()), ['a@example.org'], '451 later', NOW - timedelta(minutes=1),
                NOW + timedelta(hours=1))  # deferred, not due
    store.defer(claim(store, queued()), ['a@example.org'], '451 later', NOW - timedelta(hours=2),
                NOW - timedelta(minutes=5))  # deferred, due again
    store.defer(claim(store, queued()), ['a@example.org'], '451 later', NOW - timedelta(minutes=1))  # by the policy
    expired = claim(store, enqueue(store, queue_date=NOW - timedelta(days=6)))  # lifetime over: due
    store.defer(expired, ['a@example.org'], '451 later', NOW - timedelta(minutes=1), NOW + timedelta(hours=1))
    # requeued by an admin: first queued long before its (restarted) queue date
    requeued = claim(store, queued())
    store.move(requeued, NEW, reset_retries=True, queue_date=NOW,
               extra={ORIGINAL_DATE: format_date(T0 - timedelta(days=8))})
    unparsable = claim(store, queued())
    store.move(unparsable, HELD, extra={ORIGINAL_DATE: 'not a date'})
    store.move(claim(store, queued()), HELD)
    store.fail(claim(store, queued()), 'refused')
    harness.claim_and_die(queued())  # abandoned claim
    harness.keep = claim(store, queued())  # type: ignore[attr-defined]  # a live claim, held to the end


@requires_summary
def test_summary_agrees_with_the_entries(harness: StoreHarness) -> None:
    _populate(harness)
    store = harness.store
    assert isinstance(store, Summarizing)
    admin = QueueAdmin(store, POLICY, clock=lambda: NOW)
    summarized = admin.stats()
    counted = admin.stats_from_rows()
    assert _figures(summarized) == _figures(counted)
    # and the figures are those of the queue built above, not two equal mistakes
    assert {state: summarized.states[state].count for state in STATES} == {NEW: 6, CLAIMED: 2, HELD: 2, FAILED: 1}
    assert (summarized.deferred, summarized.due, summarized.active) == (4, 4, 1)
    assert summarized.states[NEW].oldest == T0 - timedelta(days=8)  # the original date, not NOW


@requires_summary
def test_summary_of_an_empty_store(harness: StoreHarness) -> None:
    admin = QueueAdmin(harness.store, POLICY, clock=lambda: NOW)
    assert _figures(admin.stats()) == _figures(admin.stats_from_rows())
    assert admin.stats().total.count == 0
