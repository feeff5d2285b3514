"""The queue runner: one pass (cron, systemd timer) or a daemon over a queue.

A feeder streams ids from ``new/`` (never the whole queue in memory) into a
small bounded hand-off; ``workers`` threads each own one SMTP connection (one
per account with ``[account:NAME]`` sections: a pool per account) and claim,
check the schedule, and deliver through a ``MessageHandler``. When the server
cannot be reached at all, the pass stops early instead of counting a failed
attempt against every queued message; with several accounts only the messages
of the account whose server is down wait.

Back online: messages deferred only because the smarthost was unreachable
(their last error says so, see ``smtp.errors.is_unreachable_error``) are made
due at once as soon as a pass finds the host reachable again, instead of
waiting out their backoff. Messages deferred by a server's own 4xx keep theirs.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, TextIO, Union

from .errors import MailQueueError, QueueMisconfigured
from .handler import MessageHandler
from .logs import QUEUE_LOG, log_event
from .queue.contract import NEW, QueuedMessage, QueueStore, due_time
from .queue.locations import open_queue
from .queue.schedule import RetryPolicy, format_duration, skewed_times
from .result import SendResult
from .smtp.errors import is_unreachable_error

if TYPE_CHECKING:  # pragma: no cover
    from .protocols import SignalRegistry, Transport

__all__ = ['QueueRunner', 'RunStats', 'send_all_queued_messages']

log = logging.getLogger('mailqueue')

# A fast smarthost: a claim_due batch of this many. A PostgreSQL claim costs about 0.3 ms per
# statement plus 35 µs per row (bench/bench_postgres.py), so 4 messages per statement spent more
# on the statement than on the rows. Claimed messages waiting for a worker keep their lease;
# SIGTERM gives them back.
CLAIM_BATCH = 16
# At most what the workers deliver in this many seconds (at the pace seen so far) waits for them:
# against a slow or rate-limited smarthost a runner must not sit on messages that other runners
# (other hosts) could deliver meanwhile.
CLAIM_AHEAD = 1.0


class ClaimPace:
    """How many claimed messages a pass keeps in hand, from how long deliveries take.

    In hand: in delivery, in the hand-off to the workers, or claimed and not yet handed off.
    Before the first delivery, or when deliveries are slow, that is one per worker plus one ready
    for each; when they are quick, ``CLAIM_BATCH`` more, claimed in one go while the workers still
    have the rest.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._changed = threading.Condition()
        self._seconds: Optional[float] = None  # moving average of one delivery
        self.in_hand = 0

    def record(self, seconds: float) -> None:
        with self._changed:
            previous = self._seconds
            self._seconds = seconds if previous is None else previous + (seconds - previous) / 8

    def most(self) -> int:
        """The most to have in hand at the pace seen so far."""
        least = self.workers * 2
        seconds = self._seconds
        if seconds is None:
            return least
        ahead = int(self.workers * CLAIM_AHEAD / max(seconds, 1e-6))
        return max(least, min(self.workers + ahead, least + CLAIM_BATCH))

    def next_claim(self, halted: Callable[[], bool]) -> int:
        """Wait until a claim is worth a statement; how many to claim (0: halted meanwhile)."""
        with self._changed:
            while True:
                most = self.most()
                if self.in_hand <= max(most - CLAIM_BATCH, self.workers):
                    return most - self.in_hand
                if halted():
                    return 0
                self._changed.wait(0.2)

    def taken(self, count: int) -> None:
        with self._changed:
            self.in_hand += count

    def done(self) -> None:
        """One claimed message left our hands (delivered, deferred, given back)."""
        with self._changed:
            self.in_hand -= 1
            self._changed.notify()


@dataclass
class RunStats:
    seen: int = 0
    not_due: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    discarded: int = 0
    skipped: int = 0
    corrupt: int = 0
    recovered: int = 0
    taken: int = 0  # submissions of unprivileged users taken from the drop area (intake)
    woken: int = 0  # deferred while the smarthost was unreachable, made due when it was back
    unreachable: int = 0  # deferred in this pass because the smarthost could not be reached
    aborted: Optional[str] = None
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed + self.discarded


class _RateLimiter:
    """Spreads message starts evenly across all workers: at most ``rate`` per second."""

    def __init__(self, rate: Optional[float]) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        delay = slot - time.monotonic()
        if delay > 0:
            stop.wait(delay)


class _Progress:
    """``done/total, rate, failures`` on one terminal line; silent when not a terminal."""

    def __init__(self, stream: Optional[TextIO], total: int) -> None:
        self.stream = stream
        self.total = total
        self._last = 0.0

    def update(self, stats: RunStats, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        done = stats.attempted + stats.not_due + stats.skipped + stats.corrupt
        elapsed = max(now - stats.started, 1e-6)
        rate = stats.attempted / elapsed
        line = (f'\r{done}/{self.total} messages, {rate:.0f} msg/s, sent {stats.sent}, '
                f'deferred {stats.deferred}, failed {stats.failed}')
        self.stream.write(line + ('\n' if final else ''))
        self.stream.flush()


class QueueRunner:
    def __init__(
        self,
        queue: QueueStore,
        *,
        mailer: Optional[Transport] = None,
        handler: Optional[MessageHandler] = None,
        policy: Optional[RetryPolicy] = None,
        workers: int = 1,
        force: bool = False,
        rate_limit: Optional[float] = None,
        plugins: Optional[SignalRegistry] = None,
        progress: Optional[TextIO] = None,
        app: str = 'mq-run',
        abort_after_connection_failures: int = 3,
        intake: Optional[Callable[[Callable[[], bool]], int]] = None,
    ) -> None:
        if mailer is None and handler is None:
            raise ValueError('QueueRunner needs a mailer or a handler')
        self.queue = queue
        self.mailer = mailer
        self.handler = handler
        self.policy = policy or RetryPolicy()
        # A caller-supplied handler is one object: several threads would only queue up on it.
        self.workers = 1 if handler is not None else max(1, int(workers))
        self.force = force
        self.rate = _RateLimiter(rate_limit)
        self.plugins = plugins
        self.progress_stream = progress
        self.app = app
        self.abort_after = abort_after_connection_failures
        # takes new submissions into the queue before each pass (the maildir's drop area, intake.py)
        self.intake = intake
        self.stop_event = threading.Event()
        self._abort_pass = threading.Event()
        self.queue_log = logging.getLogger(QUEUE_LOG)
        # per account ('' without accounts): consecutive connection failures, and whether it is down
        # (its messages wait for the next pass) or was reached in this pass
        self._conn_failures: Dict[str, int] = {}
        self._down: Set[str] = set()
        self._reached: Set[str] = set()
        self._woken_accounts: Set[str] = set()
        self._conn_lock = threading.Lock()
        self._handlers: List[MessageHandler] = []
        # look for messages deferred while the host was unreachable: at the first pass, and after failures
        self._wake_pending = True

    # --- building blocks --------------------------------------------------------------------

    def _make_handler(self, index: int) -> MessageHandler:
        if self.handler is not None:
            return self.handler
        assert self.mailer is not None
        # one connection per worker where the transport can make twins; else they share it
        clone = getattr(self.mailer, 'clone', None)
        mailer: Transport = self.mailer if index == 0 or clone is None else clone()
        return MessageHandler([mailer], plugins=self.plugins, app=self.app, retry_policy=self.policy)

    def stop(self, grace: Optional[float] = None) -> None:
        """Start no new messages; finish those in flight, or after ``grace`` seconds break them off.

        A broken-off message is reported as temporarily failed and stays queued: a server
        that stalls must not keep a daemon from stopping.
        """
        self.stop_event.set()
        if grace is not None:
            timer = threading.Timer(grace, self._abort_in_flight)
            timer.daemon = True
            timer.start()

    def _abort_in_flight(self) -> None:
        for handler in list(self._handlers):
            for transport in handler.transports:
                abort = getattr(transport, 'abort', None)
                if callable(abort):
                    abort()

    # --- accounts --------------------------------------------------------------------------

    def _transport(self) -> Optional[Transport]:
        """The SMTP transport of the first worker (the one that can probe and knows the accounts)."""
        if self.mailer is not None:
            return self.mailer
        assert self.handler is not None
        for transport in self.handler.transports:
            if callable(getattr(transport, 'probe', None)):
                return transport
        return None

    def _account(self, sender: str) -> str:
        """The account that sends for ``sender``: its name, '' for the [mqrunner] settings."""
        account_for: Optional[Callable[[str], Optional[str]]] = getattr(self._transport(), 'account_for', None)
        return (account_for(sender) or '') if account_for is not None else ''

    def _accounts(self) -> List[str]:
        names = getattr(self._transport(), 'account_names', None)
        return [name or '' for name in names()] if callable(names) else ['']

    def _deliver_claimed(self, msg: QueuedMessage, handler: MessageHandler, stats: RunStats,
                         now: datetime) -> None:
        account = self._account(msg.from_addr)
        if account in self._down:
            # its server could not be reached in this pass; the others' messages go on
            self.queue.release(msg)
            stats.add('skipped')
            return
        self._correct_clock_skew(msg, now)
        give_up = self.policy.give_up_reason(msg.queue_date, msg.retries, now)
        if give_up and not self.force:
            self.queue.fail(msg, give_up)
            log_event(self.queue_log, {'status': 'failed', 'to': ','.join(msg.to_addrs), 'queue_id': msg.msg_id,
                                       'from': msg.from_addr or '<>', 'attempts': msg.retries,
                                       'app': self.app, 'error': give_up})
            stats.add('failed')
            return
        self.rate.wait(self.stop_event)
        try:
            result = handler.send_message(msg)
        except Exception:
            log.exception('unexpected error while delivering %s; it stays queued', msg.msg_id)
            stats.add('skipped')
            return
        if result is None:
            stats.add('skipped')
        elif result.discarded:
            stats.add('discarded')
        elif result.queued_to:
            stats.add('deferred')
            if result.connection_failed:
                stats.add('unreachable')
        elif result.refused:
            stats.add('failed')
        else:
            stats.add('sent')
        self._note_connection(result, account)

    def _correct_clock_skew(self, msg: QueuedMessage, now: datetime) -> None:
        """Times stored in the future (a wrong clock when they were written) count as now.

        Logged once: the next attempt stores times from our clock. A queue date in the
        future is replaced, or the message could not expire until the clock caught up.
        """
        skewed = skewed_times(msg.queue_date, msg.last_delivery_attempt, now)
        if not skewed:
            return
        described = ', '.join(f'{name} {format_duration(ahead)} ahead of the clock' for name, ahead in skewed)
        log.warning('queue entry %s: %s; treated as now', msg.msg_id, described)
        if any(name == 'queue date' for name, _ in skewed):
            msg.meta.queue_date = now

    def _note_connection(self, result: Optional[SendResult], account: str = '') -> None:
        with self._conn_lock:
            if result is not None and result.connection_failed:
                self._wake_pending = True
                failures = self._conn_failures[account] = self._conn_failures.get(account, 0) + 1
                if failures >= self.abort_after:
                    self._down.add(account)
                    if all(name in self._down for name in self._accounts()):
                        self._abort_pass.set()
                    else:
                        log.warning('the smarthost of %s is unreachable; its messages wait for the next run',
                                    f'account {account}' if account else 'the default account ([mqrunner])')
            else:
                self._conn_failures[account] = 0
                if result is not None:
                    self._reached.add(account)

    # --- back online ------------------------------------------------------------------------

    def _wake_unreachable(self, now: datetime) -> int:
        """Make messages due that were deferred only because their smarthost was unreachable, if it is back.

        Reachable: a message of that account got through to its server in this pass, or a
        probe (one connection, kept for the next message) succeeds. Returns how many.
        """
        waiting: Dict[str, List[str]] = {}
        senders: Dict[str, str] = {}
        for entry in self.queue.entries([NEW]):
            meta = entry.meta
            if meta is None or not is_unreachable_error(meta.last_error):
                continue
            due = due_time(meta, self.policy)
            if due is None or due <= now:
                continue  # due anyway
            account = self._account(meta.from_addr)
            waiting.setdefault(account, []).append(entry.msg_id)
            senders.setdefault(account, meta.from_addr)
        woken = 0
        still_down = False
        transport = self._transport()
        for account, ids in waiting.items():
            if account in self._woken_accounts:
                continue  # once per pass: a host that fails again at once is not hammered
            if account in self._down:
                still_down = True
                continue
            if account not in self._reached:
                probe = getattr(transport, 'probe', None)
                if not callable(probe) or not probe(senders[account]):
                    still_down = True
                    continue
                self._reached.add(account)
            self._woken_accounts.add(account)
            count = 0
            for msg_id in ids:
                try:
                    msg = self.queue.claim(msg_id)
                    if msg is None:
                        continue  # taken or gone meanwhile
                    try:
                        self.queue.move(msg, NEW, due_now=True)
                    except MailQueueError:
                        self.queue.release(msg)
                        raise
                except MailQueueError as exc:
                    log.warning('cannot make %s due now: %s', msg_id, exc)
                    continue
                count += 1
            if count:
                host = getattr(transport, 'host', 'the smarthost')
                log.info('%s is reachable again%s: %d message(s) deferred while it was not are due now', host,
                         f' (account {account})' if account else '', count)
            woken += count
        self._wake_pending = still_down
        return woken

    # --- one pass ---------------------------------------------------------------------------

    def run_once(self) -> RunStats:
        """One pass: claim due messages in batches (the store picks them) until none is left."""
        stats = RunStats()
        self._abort_pass.clear()
        self._conn_failures = {}
        self._down = set()
        self._reached = set()
        self._woken_accounts = set()
        halted = lambda: self.stop_event.is_set() or self._abort_pass.is_set()  # noqa: E731
        stats.recovered = self.queue.recover()
        if self.intake is not None:
            stats.taken = self.intake(halted)
        total = self.queue.stats()[NEW].count if self.progress_stream else 0
        progress = _Progress(self.progress_stream, total)
        hand_off: queue_mod.Queue[Optional[QueuedMessage]] = queue_mod.Queue(maxsize=self.workers)
        pace = ClaimPace(self.workers)
        handlers = self._handlers = [self._make_handler(i) for i in range(self.workers)]

        def give_back(msg: QueuedMessage) -> None:
            try:
                self.queue.release(msg)
            except Exception as exc:  # (an OSError too: a worker must never die, see below)
                log.error('cannot release %s (the next pass recovers it): %s', msg.msg_id, exc)

        def work(handler: MessageHandler) -> None:
            while True:
                item = hand_off.get()
                if item is None:  # the feeder is done
                    return
                try:
                    if halted():
                        give_back(item)  # drain without starting new deliveries
                        continue
                    started = time.monotonic()
                    try:
                        self._deliver_claimed(item, handler, stats, datetime.now(timezone.utc))
                        pace.record(time.monotonic() - started)
                    except Exception:
                        # A worker must never die: the feeder would wait for it forever.
                        log.exception('unexpected error with queue entry %s; skipped', item.msg_id)
                        stats.add('skipped')
                    finally:
                        if item.is_claimed:
                            # whatever went wrong, the message goes back unchanged, for the next pass
                            give_back(item)
                    progress.update(stats)
                finally:
                    pace.done()

        threads = [threading.Thread(target=work, args=(h,), name=f'mq-worker-{i}', daemon=True)
                   for i, h in enumerate(handlers)]
        for thread in threads:
            thread.start()
        try:
            while not halted():
                wanted = pace.next_claim(halted)
                if not wanted:
                    break
                batch = self.queue.claim_due(wanted, now=datetime.now(timezone.utc), policy=self.policy,
                                             force=self.force)
                pace.taken(len(batch))
                stats.add('not_due', batch.not_due)
                stats.add('corrupt', batch.corrupt)
                if not batch:
                    # nothing more is due now, unless a host is back for messages that waited for it
                    if self._wake_pending and not self.force and not halted():
                        woken = self._wake_unreachable(datetime.now(timezone.utc))
                        if woken:
                            stats.add('woken', woken)
                            continue
                    break
                for msg in batch:
                    stats.add('seen')
                    while True:
                        if halted():
                            give_back(msg)
                            pace.done()
                            break
                        try:
                            hand_off.put(msg, timeout=0.2)
                            break
                        except queue_mod.Full:
                            continue
        finally:
            for _ in threads:
                hand_off.put(None)
            for thread in threads:
                thread.join()
            if self.handler is None:
                for handler in handlers:
                    handler.close()
        if self._abort_pass.is_set():
            stats.aborted = 'server unreachable; remaining messages stay queued for the next run'
        progress.update(stats, final=True)
        return stats

    # --- daemon -----------------------------------------------------------------------------

    def run_forever(self, poll_interval: float = 1.0, full_scan_interval: float = 30.0) -> None:
        """Keep delivering until ``stop()``; new messages are picked up within ``poll_interval``."""
        last_full = 0.0
        pending_work = True
        failures = 0
        while not self.stop_event.is_set():
            now = time.monotonic()
            if pending_work or now - last_full >= full_scan_interval:
                last_full = now
                try:
                    stats = self.run_once()
                except QueueMisconfigured:
                    raise  # (an operator must act: mq-queue init, a grant, a setting)
                except MailQueueError as exc:
                    # a database restarted, failed over or cut our sessions: what was claimed stays
                    # claimed by us until its lease runs out, and a later pass goes on
                    failures += 1
                    wait = min(poll_interval * 2 ** min(failures - 1, 5), full_scan_interval)
                    log.error('the pass failed (%s); trying again in %.0f s', exc, wait)
                    pending_work = True
                    self.stop_event.wait(wait)
                    continue
                failures = 0
                if stats.aborted:
                    self.stop_event.wait(min(full_scan_interval, 30.0))
                    continue
                if stats.taken:
                    # the intake takes a bounded number of drops per pass: more may be waiting,
                    # and nothing would wake us for those
                    pending_work = True
                    continue
            try:
                pending_work = self.queue.wait_for_work(poll_interval)
            except MailQueueError as exc:
                log.error('cannot watch the queue: %s', exc)
                pending_work = False
                self.stop_event.wait(poll_interval)

    def serve(self, shutdown_grace: float = 2.0) -> None:
        """``run_forever`` until SIGTERM or SIGINT; nothing stays claimed.

        In-flight messages get ``shutdown_grace`` seconds to finish; then their
        connections are broken off and they stay queued (temporary failure).
        """
        import signal

        def request_stop(signum: int, frame: object) -> None:
            self.stop(grace=shutdown_grace)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.run_forever()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def send_all_queued_messages(queue_dir: Union[str, QueueStore], mailer: Optional[Transport] = None,
                             plugins: Optional[SignalRegistry] = None,
                             mh: Optional[MessageHandler] = None, *, workers: int = 1, force: bool = False,
                             policy: Optional[RetryPolicy] = None, progress: Optional[TextIO] = None,
                             rate_limit: Optional[float] = None) -> RunStats:
    """One pass over the queue at ``queue_dir`` (a path or any location; README/1.0.0 API)."""
    runner = QueueRunner(open_queue(queue_dir), mailer=mailer, handler=mh, policy=policy, workers=workers,
                         force=force, plugins=plugins, progress=progress, rate_limit=rate_limit)
    return runner.run_once()


def terminal_or_none(stream: TextIO = sys.stderr) -> Optional[TextIO]:
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):
        return None

