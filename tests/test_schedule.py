from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schwarz.mailqueue.queue.schedule import RetryPolicy, format_duration, parse_duration

from _hyp import examples

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def test_defaults_double_from_five_minutes_up_to_four_hours() -> None:
    policy = RetryPolicy()
    delays = [policy.delay_after(n) for n in range(1, 9)]
    assert delays[:4] == [timedelta(minutes=m) for m in (5, 10, 20, 40)]
    assert delays[-1] == timedelta(hours=4)


def test_due_and_not_due() -> None:
    policy = RetryPolicy()
    assert policy.is_due(None, 0, NOW)
    assert not policy.is_due(NOW - timedelta(minutes=1), 1, NOW)
    assert policy.is_due(NOW - timedelta(minutes=5), 1, NOW)
    assert not policy.is_due(NOW - timedelta(minutes=9), 2, NOW)


def test_give_up_on_age_and_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.give_up_reason(NOW - timedelta(days=6), 1, NOW) is not None
    assert policy.give_up_reason(NOW - timedelta(days=1), 3, NOW) == 'gave up after 3 attempts'
    assert policy.give_up_reason(NOW - timedelta(days=1), 2, NOW) is None


@pytest.mark.parametrize('text,seconds', [('90', 90), ('5m', 300), ('4h', 14400), ('1h30m', 5400), ('2d', 172800)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize('text', ['', 'soon', '5x', '1h5', '-3m'])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(timedelta(seconds=s)) for s in (5, 180, 11520, 187200)] == ['5s', '3m', '3h12m', '2d4h']


@settings(max_examples=examples())
@given(min_s=st.integers(0, 10**6), extra_s=st.integers(0, 10**7), retries=st.integers(0, 10**4))
def test_delay_is_monotonic_and_bounded(min_s: int, extra_s: int, retries: int) -> None:
    policy = RetryPolicy(timedelta(seconds=min_s), timedelta(seconds=min_s + extra_s))
    this, following = policy.delay_after(retries), policy.delay_after(retries + 1)
    assert timedelta(0) <= this <= following <= policy.max_delay
    if retries >= 1:
        assert this >= policy.min_delay
