"""Queue dates and attempt times in the future (a clock set back, a host with a wrong clock).

Trusting them would keep a message waiting until the clock catches up, possibly for years.
A time more than ``CLOCK_SKEW_TOLERANCE`` ahead is treated as now: the message is due, and
its next attempt records a time from the current clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schwarz.mailqueue.queue.format import parse_queue_bytes, serialize_message_with_queue_data
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.schedule import CLOCK_SKEW_TOLERANCE, RetryPolicy, clock_skew, skewed_times
from schwarz.mailqueue.testutils import SMTPTestServer

from _hyp import examples
from helpers import run, script, write_config

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
YEARS_AHEAD = NOW + timedelta(days=5 * 365)
MSG = b'Subject: skew\r\n\r\nbody\r\n'


def test_last_attempt_in_the_future_is_due_now() -> None:
    policy = RetryPolicy()
    for retries in (1, 5, 64):
        assert policy.is_due(YEARS_AHEAD, retries, NOW)
        assert policy.next_attempt(YEARS_AHEAD, retries, NOW) is None
    # Without ``now`` (the old two-argument call) the stored time is taken as it is.
    assert policy.next_attempt(YEARS_AHEAD, 1) == YEARS_AHEAD + timedelta(minutes=5)


def test_small_skew_between_hosts_is_tolerated() -> None:
    """Two hosts sharing a queue, a few minutes apart: no retry before the backoff says so."""
    policy = RetryPolicy()
    slightly_ahead = NOW + CLOCK_SKEW_TOLERANCE
    assert clock_skew(slightly_ahead, NOW) is None
    assert not policy.is_due(slightly_ahead, 1, NOW)
    assert policy.next_attempt(slightly_ahead, 1, NOW) == slightly_ahead + timedelta(minutes=5)


def test_queue_date_in_the_future_never_expires_the_message_nor_blocks_it() -> None:
    policy = RetryPolicy(max_queue_lifetime=timedelta(days=1))
    assert policy.give_up_reason(YEARS_AHEAD, 3, NOW) is None
    assert policy.give_up_reason(NOW - timedelta(days=2), 3, NOW) is not None


def test_skewed_times_name_what_to_log() -> None:
    assert skewed_times(YEARS_AHEAD, NOW + timedelta(hours=1), NOW) == (
        ('queue date', YEARS_AHEAD - NOW), ('last attempt', timedelta(hours=1)))
    assert skewed_times(NOW, NOW - timedelta(hours=1), NOW) == ()
    assert skewed_times(None, None, NOW) == ()


def test_dates_near_the_end_of_time_do_not_overflow() -> None:
    far = datetime(9999, 12, 31, 23, 0, tzinfo=timezone.utc)
    policy = RetryPolicy(max_delay=timedelta(days=365), min_delay=timedelta(days=365))
    assert policy.next_attempt(far, 10) == datetime.max.replace(tzinfo=timezone.utc)
    assert policy.is_due(far, 10, NOW)  # in the future: due now, no arithmetic at all


@settings(max_examples=examples(200))
@given(ahead=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3000 * 365)),
       retries=st.integers(min_value=1, max_value=10**6))
def test_no_message_waits_longer_than_the_backoff_plus_tolerance(ahead: timedelta, retries: int) -> None:
    policy = RetryPolicy()
    due = policy.next_attempt(NOW + ahead, retries, NOW)
    assert due is None or due - NOW <= policy.max_delay + CLOCK_SKEW_TOLERANCE


def _plant(queue: MaildirQueue, *, queue_date: datetime, last: datetime, retries: int) -> str:
    """A queue file as another host with a wrong clock would have written it."""
    msg_id = 'skewed0000001.1'
    data = serialize_message_with_queue_data(MSG, 'a@example.org', ['b@example.org'], queue_date=queue_date,
                                             last=last, retries=retries)
    path = Path(queue.path) / 'new' / msg_id
    path.write_bytes(data)
    return msg_id


def test_mq_run_delivers_a_message_stamped_years_ahead(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    ahead = datetime.now(timezone.utc) + timedelta(days=4 * 365)
    msg_id = _plant(queue, queue_date=ahead, last=ahead, retries=3)
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue.path)
    listing = run([script('mq-queue'), '-C', config, 'list', '--json'], timeout=30)
    assert b'"due": true' in listing.stdout, listing.stdout  # mq-queue and mq-run agree
    result = run([script('mq-run'), '-C', config], timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 1
    assert not (Path(queue.path) / 'new' / msg_id).exists()


def test_a_deferred_attempt_replaces_the_future_time(tmp_path: Path) -> None:
    with SMTPTestServer(replies={'RCPT': 451}) as server:
        queue = MaildirQueue(str(tmp_path / 'q'))
        ahead = datetime.now(timezone.utc) + timedelta(days=4 * 365)
        msg_id = _plant(queue, queue_date=datetime.now(timezone.utc), last=ahead, retries=3)
        config = write_config(tmp_path / 'mq.conf', server, queue_dir=queue.path)
        result = run([script('mq-run'), '-C', config], timeout=30)
        assert result.returncode == 0, result.stderr
    meta, _ = parse_queue_bytes((Path(queue.path) / 'new' / msg_id).read_bytes())
    assert meta.retries == 4
    assert meta.last_delivery_attempt is not None
    assert clock_skew(meta.last_delivery_attempt, datetime.now(timezone.utc)) is None
    # ... so the next pass waits for the backoff as usual instead of trying again at once.
    assert not RetryPolicy().is_due(meta.last_delivery_attempt, meta.retries, datetime.now(timezone.utc))
