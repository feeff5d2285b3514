"""Per-minute rate limits (issue 13): ``smtp_rate_limit = 30/min`` per account, kept by all of the runner's
workers together; a "slow down" reply (421, 4.7.x "too many") pauses the account instead of spending an
attempt. The clock is injected: 90 messages at 30/min take minutes of simulated time, no sleeping."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List

import pytest

from schwarz.mailqueue.bootstrap import build_runner, build_smtp_transport, build_transports
from schwarz.mailqueue.config import ConfigError, Settings, parse_config_text, settings_from_mapping
from schwarz.mailqueue.handler import MessageHandler
from schwarz.mailqueue.limits import RATE_LIMIT
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.smtp.errors import is_rate_reply
from schwarz.mailqueue.smtp.ratelimit import RateLimiter
from schwarz.mailqueue.smtp.transport import AccountRouter, SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: hi\r\n\r\nbody\r\n'


class FakeClock:
    """Simulated time: waiting jumps the clock forward at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slots: List[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep_until(self, deadline: float, stop: threading.Event) -> bool:
        with self._lock:
            self.slots.append(deadline)
            self.now = max(self.now, deadline)
        return not stop.is_set()


def settings_for(server: SMTPTestServer, **values: str) -> Settings:
    return settings_from_mapping({'smtp_hostname': server.hostname, 'smtp_port': str(server.port),
                                  'smtp_tls': 'none', **values})


@pytest.mark.parametrize('text, per_second', [('10', 10.0), ('30/min', 0.5), ('30/m', 0.5), ('3600/h', 1.0),
                                              ('2/s', 2.0), ('1.5/minute', 0.025), (' 30 / min ', 0.5)])
def test_rates_per_second_minute_or_hour(text: str, per_second: float) -> None:
    assert RATE_LIMIT(text) == pytest.approx(per_second)


@pytest.mark.parametrize('text', ['30/day', '/min', '30/', 'x/min', '0/min', '0.01/h', '1e3/min', '-1/min',
                                  'nan/min', '10000000/s'])
def test_bad_rates_name_the_range(text: str) -> None:
    with pytest.raises(ConfigError, match='smtp_rate_limit: invalid value .*from 0.001 to 100000'):
        parse_config_text(f'[mqrunner]\nsmtp_rate_limit = {text}\n')


def test_90_messages_at_30_per_minute_take_at_least_two_minutes(smtp_server: SMTPTestServer,
                                                                tmp_path: Path) -> None:
    store = MaildirQueue(str(tmp_path / 'queue'))
    for n in range(90):
        store.enqueue(MSG, 'a@example.org', [f'r{n}@example.net'])
    clock = FakeClock()
    runner = build_runner(settings_for(smtp_server, smtp_rate_limit='30/min'), store, workers=4, clock=clock)
    started = time.monotonic()
    stats = runner.run_once()
    assert stats.sent == 90 and len(smtp_server.received) == 90
    assert clock.now >= 120  # simulated: 89 gaps of 2 s
    assert time.monotonic() - started < 30  # and nobody slept through them
    # never more than 30 message starts in any minute, across the four workers
    starts = sorted([0.0] + clock.slots)
    assert all(b - a >= 2.0 - 1e-9 for a, b in zip(starts, starts[1:]))
    assert max(sum(1 for t in starts if s <= t < s + 60) for s in starts) <= 30


def test_each_account_has_its_own_rate_shared_by_the_clones() -> None:
    settings = parse_config_text("""[mqrunner]
smtp_hostname = main.example
smtp_rate_limit = 10

[account:exchange]
match_from = @corp.example
smtp_hostname = smtp.office365.com:587
smtp_rate_limit = 30/min

[account:unlimited]
match_from = @other.example
smtp_hostname = other.example
""")
    router = build_smtp_transport(settings)
    assert isinstance(router, AccountRouter)  # accounts configured
    assert router.mailer_for('x@corp.example').rate_limiter.rate == pytest.approx(0.5)
    assert router.mailer_for('x@main.example').rate_limiter.rate == 10
    assert router.mailer_for('x@other.example').rate_limiter.rate is None  # not inherited
    twin = router.clone()
    for name in ('x@corp.example', 'x@main.example', 'x@other.example'):
        assert twin.mailer_for(name).rate_limiter is router.mailer_for(name).rate_limiter
        assert twin.mailer_for(name) is not router.mailer_for(name)


@pytest.mark.parametrize('code, text', [
    (421, '4.7.0 Too many messages, slow down'),
    (421, 'Service not available, closing channel'),
    (451, '4.7.500 Server busy. Please try again later'),
    (450, '4.7.1 Sending rate limit exceeded'),
])
def test_slow_down_replies(code: int, text: str) -> None:
    assert is_rate_reply(code, text)


@pytest.mark.parametrize('code, text', [(450, '4.2.0 Greylisted, see http://x'), (452, '4.5.3 Too many recipients'),
                                        (451, '4.3.0 Temporary lookup failure'), (550, '5.7.1 rate limit')])
def test_other_replies_are_no_request_to_slow_down(code: int, text: str) -> None:
    assert not is_rate_reply(code, text)


@pytest.mark.parametrize('command, code, text', [('MAIL', 421, '4.7.0 Too many messages, slow down'),
                                                 ('DATA', 451, '4.7.500 Server busy. Please try again later'),
                                                 ('RCPT', 450, '4.7.1 Rate limit exceeded')])
def test_mq_run_slows_down_instead_of_spending_an_attempt(smtp_server: SMTPTestServer, tmp_path: Path,
                                                          command: str, code: int, text: str) -> None:
    store = MaildirQueue(str(tmp_path / 'queue'))
    msg_id = store.enqueue(MSG, 'a@example.org', ['r@example.net'])
    smtp_server.set_reply(command, code, text, times=1)
    clock = FakeClock()
    stats = build_runner(settings_for(smtp_server), store, workers=1, clock=clock).run_once()
    assert (stats.sent, stats.deferred) == (1, 0)
    assert len(smtp_server.received) == 1 and store.entry(msg_id) is None
    assert clock.now >= 60  # the account paused before the same message was tried again


def test_a_slow_down_reply_pauses_the_account_without_holding_up_a_direct_sender(smtp_server: SMTPTestServer,
                                                                                 tmp_path: Path) -> None:
    """mq-sendmail or a web request (not patient): no waiting for minutes; mail is queued meanwhile."""
    clock = FakeClock()
    settings = settings_for(smtp_server, queue_dir=str(tmp_path / 'queue'))
    transports = build_transports(settings)
    smtp = transports[0] = build_smtp_transport(settings, clock=clock)
    assert isinstance(smtp, SMTPMailer)  # no accounts: a single mailer
    handler = MessageHandler(transports)
    smtp_server.set_reply('MAIL', 421, '4.7.0 Too many messages', times=1)
    result = handler.send_message(MSG, sender='a@example.org', recipients=['r@example.net'])
    assert result is not None and result.queued
    assert smtp.rate_limiter.paused_for() == pytest.approx(60)
    connections = smtp_server.connection_count
    result = handler.send_message(MSG, sender='a@example.org', recipients=['s@example.net'])
    assert result is not None and result.queued and clock.now == 0 and smtp_server.connection_count == connections
    clock.now = 61  # the pause is over
    result = handler.send_message(MSG, sender='a@example.org', recipients=['t@example.net'])
    assert result is not None and result.accepted
    assert MaildirQueue(str(tmp_path / 'queue')).stats()['new'].count == 2
    handler.close()


def test_pauses_grow_and_the_rate_recovers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock)
    assert limiter.slow_down() == 60 and limiter.slow_down() == 120 and limiter.interval == 4.0
    for _ in range(20):
        limiter.relax()
    assert limiter.interval == 1.0
    for _ in range(20):
        limiter.slow_down()
    assert limiter.paused_for() <= 900 and limiter.interval == 8.0  # at most 15 min, an eighth of the rate
    stop = threading.Event()
    stop.set()
    assert limiter.acquire(stop) is False  # a shutdown ends the wait
