"""Torture test: submit mail while the smarthost misbehaves and queue runners get SIGKILLed.

    python bench/torture.py --messages 2000 --kills 25 [--seed 1] [--write-docs]
    python bench/torture.py --queue 'postgresql://postgres@127.0.0.1/test?mq_schema=mq_torture' ...

The queue is a fresh maildir in a temporary directory, or the store ``--queue`` names (it must be
empty; a PostgreSQL schema is created or upgraded first, as ``mq-queue init`` does). Everything
below works through the store contract, so both stores are checked the same way.

While messages (some to several recipients) are submitted through MessageHandler([SMTP, queue])
from several threads and through the installed `mq-sendmail`, a test SMTP server on 127.0.0.1
injects random faults: refused connections (server stopped), 421 on MAIL, 451/452 per recipient,
disconnects mid-DATA, 451 after DATA, replies slower than the client's timeout; recipients named
`bounce-*` are always refused with 550. Meanwhile `mq-run` processes are started and SIGKILLed at
random moments. Then the faults stop and the queue is drained.

Checked per (message, recipient): delivered at least once unless permanently refused (then it is
in failed/ or was reported to the submitter), never delivered when permanently refused, nothing
left claimed or queued, and duplicates counted against their only possible cause here: a runner
killed between the server's final 250 and the removal of the queue file (or, in PostgreSQL, of the
row): at most one message per worker per kill.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from schwarz.mailqueue.handler import MessageHandler
from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, NEW, QueueStore
from schwarz.mailqueue.queue.locations import init_store, open_queue
from schwarz.mailqueue.queue.transport import QueueTransport
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer

__all__ = ['Summary', 'torture']

ID_HEADER = re.compile(rb'^X-Torture-Id: (\d+)\r?$', re.M)
RUNNER_WORKERS = 2
CLIENT_TIMEOUT = 1.0
RUN_LIMIT = 10.0  # seconds; a runner pass still running then is killed (while kills are left)


@dataclass
class Summary:
    messages: int = 0
    pairs: int = 0
    via_sendmail: int = 0
    delivered_pairs: int = 0
    duplicates: int = 0
    refused_pairs: int = 0
    refused_delivered: int = 0
    lost: int = 0
    left_in_queue: int = 0
    kills: int = 0
    runner_starts: int = 0
    faults: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    store: str = 'maildir'

    @property
    def duplicate_bound(self) -> int:
        return self.kills * RUNNER_WORKERS

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.refused_delivered == 0 and self.left_in_queue == 0
                and self.duplicates <= self.duplicate_bound)

    def table(self) -> str:
        rows = [
            ('queue store', self.store),
            ('messages submitted', self.messages),
            ('  of them through mq-sendmail', self.via_sendmail),
            ('(message, recipient) pairs', self.pairs),
            ('pairs delivered', self.delivered_pairs),
            ('pairs permanently refused (550, kept in failed or reported)', self.refused_pairs),
            ('refused pairs delivered anyway (must be 0)', self.refused_delivered),
            ('duplicate deliveries', self.duplicates),
            (f'  allowed: kills x workers = {self.kills} x {RUNNER_WORKERS}', self.duplicate_bound),
            ('mq-run processes started / SIGKILLed', f'{self.runner_starts} / {self.kills}'),
            ('faults injected', ', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))),
            ('left in the queue after draining (must be 0)', self.left_in_queue),
            ('**lost (must be 0)**', f'**{self.lost}**'),
            ('wall time', f'{self.seconds:.0f} s'),
        ]
        return '\n'.join(['| | |', '|---|---:|'] + [f'| {name} | {value} |' for name, value in rows])


class Chaos:
    """Random per-command faults (server thread) plus timed outages and slow replies (own thread)."""

    def __init__(self, server: SMTPTestServer, rng: random.Random, summary: Summary) -> None:
        self.server = server
        self.rng = random.Random(rng.random())
        self.summary = summary
        self.active = True
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._outages, daemon=True)

    def _count(self, name: str) -> None:
        with self.lock:
            self.summary.faults[name] += 1

    def hook(self, command: str, argument: str) -> object:
        if argument.lower().startswith('bounce-'):
            return (550, 'no such user')
        if not self.active:
            return None
        roll = self.rng.random()
        if command == 'MAIL' and roll < 0.03:
            self._count('421')
            return (421, 'too busy, closing')
        if command == 'RCPT':
            if roll < 0.05:
                self._count('451/rcpt')
                return (451, 'greylisted')
            if roll < 0.08:
                self._count('452/rcpt')
                return (452, 'mailbox full')
        if command == 'DATA':
            if roll < 0.03:
                self._count('disconnect mid-DATA')
                return 'disconnect'
            if roll < 0.05:
                self._count('451 after DATA')
                return (451, 'local error')
        return None

    def _outages(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.3, 0.8)):
            if not self.active:
                continue
            roll = self.rng.random()
            if roll < 0.15:
                self._count('server down (refused connections)')
                self.server.stop()
                time.sleep(self.rng.uniform(0.1, 0.4))
                self.server.start()
            elif roll < 0.30:
                self._count('replies slower than the timeout')
                self.server.set_delay('RCPT', CLIENT_TIMEOUT * 1.5)
                time.sleep(self.rng.uniform(0.2, 0.5))
                self.server.set_delay('RCPT', None)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.active = False
        self.stop_event.set()
        self.thread.join()
        self.server.set_delay('RCPT', None)
        if not self.server.is_running:
            self.server.start()


def _message(n: int, recipients: List[str]) -> bytes:
    return (f'From: app@example.org\r\nTo: {", ".join(recipients)}\r\nSubject: torture {n}\r\n'
            f'X-Torture-Id: {n}\r\nMessage-ID: <torture-{n}@example.org>\r\n\r\nmessage {n}\r\n'
            ).encode() + b'.leading dot line\r\n' * (n % 3)


def _recipients(n: int, rng: random.Random) -> List[str]:
    count = rng.choice([1, 1, 1, 2, 3])
    rcpts = [f'r{n}-{i}@example.org' for i in range(count)]
    if rng.random() < 0.08:
        rcpts.append(f'bounce-{n}@example.org')
    return rcpts


def _claimed(store: QueueStore) -> bool:
    return any(True for _ in store.ids([CLAIMED]))


def _runner_loop(bin_dir: Path, config: str, store: QueueStore, kills: int, stop: threading.Event,
                 rng: random.Random, summary: Summary) -> None:
    mq_run = str(bin_dir / 'mq-run')
    while not stop.is_set():
        proc = subprocess.Popen([mq_run, '-C', config, '--force', '--workers', str(RUNNER_WORKERS), '--quiet'],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary.runner_starts += 1
        if summary.kills < kills and rng.random() < 0.8:
            # wait until it is delivering (something claimed), then kill it at a random instant
            deadline = time.monotonic() + 2
            while proc.poll() is None and not _claimed(store) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                summary.kills += 1
        # A pass over PostgreSQL also takes mail queued while it runs (the maildir walks new/ once), so
        # with the filler feeding it a pass may not end: one still running after RUN_LIMIT is killed too.
        while summary.kills < kills:
            try:
                proc.wait(RUN_LIMIT)
                break
            except subprocess.TimeoutExpired:
                if _claimed(store):
                    proc.send_signal(signal.SIGKILL)
                    summary.kills += 1
        # Kills are used up: let the pass end by itself, but not beyond the chaos phase. A runner
        # pausing after a "421 too busy" (60 s and more, doubling) while the faults go on would
        # otherwise hold the phase open, and the phase would wait for it: SIGTERM it (a graceful
        # stop: what it has not delivered stays queued for the final drain).
        while True:
            try:
                proc.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                    break
        stop.wait(0.05)


def torture(messages: int, kills: int, seed: int = 1, sendmail_share: float = 0.1,
            workdir: Optional[str] = None, queue: Optional[str] = None) -> Summary:
    """``queue``: the location of an empty store (default: a fresh maildir under ``workdir``)."""
    rng = random.Random(seed)
    summary = Summary()
    started = time.monotonic()
    tmp = Path(workdir or tempfile.mkdtemp(prefix='mq-torture-'))
    bin_dir = Path(sys.executable).parent
    server = SMTPTestServer()
    server.start()
    chaos = Chaos(server, rng, summary)
    server.fault_hook = chaos.hook
    location = queue or str(tmp / 'queue')
    init_store(location)
    store = open_queue(location)
    summary.store = store.kind
    left = sum(1 for _ in store.ids())
    if left:
        server.close()
        raise RuntimeError(f'the queue {store.location} is not empty ({left} messages)')
    config = tmp / 'mq.conf'
    config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {server.port}\nsmtp_tls = none\n'
                      f'smtp_timeout = {CLIENT_TIMEOUT}\nqueue_url = {location}\n')
    expected: Dict[int, List[str]] = {}
    reported_refused: Set[Tuple[int, str]] = set()
    lock = threading.Lock()
    sendmail = bin_dir / 'mq-sendmail'
    use_sendmail = sendmail_share > 0 and sendmail.exists()
    plan = [(n, _recipients(n, rng), use_sendmail and rng.random() < sendmail_share) for n in range(messages)]
    for n, rcpts, _ in plan:
        expected[n] = rcpts
    summary.via_sendmail = sum(1 for _, _, via in plan if via)
    # a little latency on every transaction, so that SIGKILLs land in the middle of deliveries
    server.set_delay('MAIL', 0.003)
    chaos.start()
    runner_stop = threading.Event()
    runner = threading.Thread(target=_runner_loop, args=(bin_dir, str(config), store, kills, runner_stop,
                                                         random.Random(rng.random()), summary), daemon=True)
    runner.start()

    def submit(chunk: List[Tuple[int, List[str], bool]]) -> None:
        mailer = SMTPMailer('127.0.0.1', server.port, tls='none', timeout=CLIENT_TIMEOUT)
        handler = MessageHandler([mailer, QueueTransport(location)], app='torture')
        queue_only = MessageHandler([QueueTransport(location)], app='torture')
        for n, rcpts, via_sendmail in chunk:
            msg = _message(n, rcpts)
            if n % 4 == 0:
                # a quarter goes straight into the queue, so the runners being killed have work
                queue_only.send_message(msg, sender='app@example.org', recipients=rcpts)
                continue
            if via_sendmail:
                proc = subprocess.run([str(sendmail), '-C', str(config), '-i', '-f', 'app@example.org', '--',
                                       *rcpts], input=msg, capture_output=True, timeout=60)
                if proc.returncode not in (0, 69):
                    raise RuntimeError(f'mq-sendmail exited {proc.returncode}: {proc.stderr.decode()}')
                continue
            result = handler.send_message(msg, sender='app@example.org', recipients=rcpts)
            if result is None or result.deferred:
                raise RuntimeError(f'message {n} neither delivered nor queued: {result!r}')
            with lock:
                reported_refused.update((n, r) for r in result.refused)
        handler.close()

    threads = [threading.Thread(target=submit, args=(plan[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Until the kill budget is used, keep the runners busy with more queued messages.
    filler = MessageHandler([QueueTransport(location)], app='torture')
    next_n = messages
    deadline = time.monotonic() + 120
    while summary.kills < kills and time.monotonic() < deadline:
        for _ in range(30):
            rcpts = _recipients(next_n, rng)
            expected[next_n] = rcpts
            filler.send_message(_message(next_n, rcpts), sender='app@example.org', recipients=rcpts)
            next_n += 1
        time.sleep(0.3)
    runner_stop.set()
    runner.join()
    chaos.stop()
    server.set_delay('MAIL', None)
    server.fault_hook = lambda command, argument: (550, 'no such user') \
        if argument.lower().startswith('bounce-') else None

    for _ in range(20):
        subprocess.run([str(bin_dir / 'mq-run'), '-C', str(config), '--force', '--quiet'], check=True,
                       timeout=300)
        if not any(True for _ in store.ids([NEW, CLAIMED])):
            break
    summary.left_in_queue = sum(1 for _ in store.ids([NEW, CLAIMED]))

    delivered: Counter = Counter()
    for received in server.received:
        match = ID_HEADER.search(received.data)
        if match is None:
            raise RuntimeError('a message without X-Torture-Id arrived')
        n = int(match.group(1))
        for rcpt in received.rcpt_tos:
            delivered[(n, rcpt)] += 1
    failed_pairs: Set[Tuple[int, str]] = set()
    for _state, msg_id in list(store.ids([FAILED])):
        viewed = store.view(msg_id)
        meta = viewed[0].meta if viewed is not None else None
        if viewed is None or meta is None:
            continue
        match = ID_HEADER.search(viewed[1])
        if match:
            failed_pairs.update((int(match.group(1)), r) for r in meta.to_addrs)

    summary.messages = len(expected)
    for n, rcpts in expected.items():
        for rcpt in rcpts:
            summary.pairs += 1
            pair = (n, rcpt)
            if rcpt.startswith('bounce-'):
                summary.refused_pairs += 1
                if delivered[pair]:
                    summary.refused_delivered += 1
                if pair not in failed_pairs and pair not in reported_refused:
                    summary.lost += 1
                continue
            if delivered[pair]:
                summary.delivered_pairs += 1
                summary.duplicates += delivered[pair] - 1
            else:
                summary.lost += 1
    summary.seconds = time.monotonic() - started
    server.close()
    store.close()
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=2000)
    parser.add_argument('--kills', type=int, default=25)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--sendmail-share', type=float, default=0.1,
                        help='fraction of messages submitted through the mq-sendmail script')
    parser.add_argument('--queue', metavar='LOCATION',
                        help='an empty store to torture, e.g. '
                             'postgresql://postgres@127.0.0.1/test?mq_schema=mq_torture '
                             '(default: a fresh maildir in a temporary directory)')
    parser.add_argument('--write-docs', action='store_true', help='update docs/reliability.md')
    args = parser.parse_args()
    summary = torture(args.messages, args.kills, args.seed, args.sendmail_share, queue=args.queue)
    table = summary.table()
    print(table)
    print('RESULT:', 'PASS' if summary.ok else 'FAIL')
    if args.write_docs:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_common import ROOT, replace_section

        queue_arg = f" --queue '{args.queue}'" if args.queue else ''
        command = (f'.venv/bin/python bench/torture.py --messages {args.messages} --kills {args.kills} '
                   f'--seed {args.seed} --sendmail-share {args.sendmail_share}{queue_arg} --write-docs')
        heading = 'Torture test result' if summary.store == 'maildir' else f'Torture test result ({summary.store})'
        replace_section(ROOT / 'docs' / 'reliability.md', heading,
                        f'Command: `{command}`\n\n{table}\n\nResult: **{"PASS" if summary.ok else "FAIL"}**')
    return 0 if summary.ok else 1


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    sys.exit(main())
