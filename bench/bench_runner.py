"""mq-run throughput against bare smtplib clients, same sink, same run.

    python bench/bench_runner.py [--messages 5000] [--workers 4] [--write-docs]

The sink (bench/sink.py) runs in its own process on 127.0.0.1. Baselines:
- bare sequential: one smtplib connection, reused, in one thread;
- bare W workers: W threads, each reusing one smtplib connection (the ceiling);
- one connection per message: how the project we replace delivers (measured on a subset).
mq-run is run as the installed console script on a real queue (fsync on), with its default
settings and with --workers W. Reported as messages/s and ratios.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

from schwarz.mailqueue.config import Settings
from schwarz.mailqueue.queue.maildir import MaildirQueue

from bench_common import ROOT, Sink, cpu_info, replace_section

BODY_LINE = b'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n'
MESSAGE = (b'From: bench@example.org\r\nTo: rcpt@example.org\r\nSubject: benchmark\r\n'
           b'Message-ID: <bench@example.org>\r\n\r\n' + BODY_LINE * 24)


def bare(port: int, count: int, workers: int, reuse: bool = True) -> float:
    """Messages/s for plain smtplib clients."""
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]

    def work(n: int) -> None:
        if reuse:
            with smtplib.SMTP('127.0.0.1', port, local_hostname='bench') as smtp:
                for _ in range(n):
                    smtp.sendmail('bench@example.org', ['rcpt@example.org'], MESSAGE)
        else:
            for _ in range(n):
                with smtplib.SMTP('127.0.0.1', port, local_hostname='bench') as smtp:
                    smtp.sendmail('bench@example.org', ['rcpt@example.org'], MESSAGE)

    label = f'bare, {workers} thread(s)' + ('' if reuse else ', connection per message')
    return _timed(count, lambda: _threads(work, shares), label)


def _threads(work: Callable[[int], None], shares: List[int]) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


CPU_US: Dict[str, List[float]] = {}


def _timed(count: int, fn: Callable[[], None], label: str = '') -> float:
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    if label:
        CPU_US.setdefault(label, []).append((time.process_time() - cpu) / count * 1e6)
    return count / (time.perf_counter() - started)


def mq_run(port: int, count: int, extra_args: List[str]) -> float:
    tmp = Path(tempfile.mkdtemp(prefix='mq-bench-'))
    try:
        queue = MaildirQueue(str(tmp / 'q'))
        for _ in range(count):
            queue.enqueue(MESSAGE, 'bench@example.org', ['rcpt@example.org'])
        config = tmp / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {port}\nsmtp_tls = none\n'
                          f'queue_dir = {tmp / "q"}\n')
        mq_run_bin = str(Path(sys.executable).parent / 'mq-run')
        started = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([mq_run_bin, '-C', str(config), *extra_args], check=True)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        CPU_US.setdefault(' '.join(['mq-run', *extra_args]) + ' (whole process)', []).append(cpu / count * 1e6)
        left = sum(1 for state in ('new', 'cur', 'failed') for _ in queue.iter_ids(state))
        if left:
            raise RuntimeError(f'{left} messages left in the queue')
        return count / elapsed
    finally:
        shutil.rmtree(tmp)


def measure(kind: str, n: int, w: int, rounds: int) -> str:
    """Median of ``rounds`` rounds; each round runs every row once against the same sink process."""
    names = ['bare smtplib, 1 reused connection',
             f'bare smtplib, {w} threads x 1 reused connection (ceiling)',
             'bare smtplib, one connection per message (how the replaced project delivers)',
             f'mq-run, default settings ({Settings.workers} workers)',
             f'mq-run --workers {w}']
    samples: List[List[float]] = [[] for _ in names]
    with Sink(kind) as sink:
        per_message_n = min(n, 1000)
        expected = 200 + rounds * (4 * n + per_message_n)
        bare(sink.port, 200, 1)  # warm up
        for _ in range(rounds):
            samples[0].append(bare(sink.port, n, 1))
            samples[1].append(bare(sink.port, n, w))
            samples[2].append(bare(sink.port, per_message_n, 1, reuse=False))
            samples[3].append(mq_run(sink.port, n, []))
            samples[4].append(mq_run(sink.port, n, ['--workers', str(w)]))
    if sink.received != expected:
        raise RuntimeError(f'sink received {sink.received} messages, expected {expected}')
    seq, ceiling, per_message, default, parallel = (statistics.median(values) for values in samples)
    table = ['| delivery | messages/s (median) | all rounds |', '|---|---:|---|']
    for name, values in zip(names, samples):
        table.append(f'| {name} | {statistics.median(values):,.0f} | {", ".join(f"{v:,.0f}" for v in values)} |')
    cpu_rows = [f'| {label} | {statistics.median(values):.0f} µs |' for label, values in CPU_US.items()]
    CPU_US.clear()
    table += ['', '| CPU per message in the client process (user + system) | median |', '|---|---:|', *cpu_rows]
    verdict = {True: 'met', False: '**not met**'}
    ratios = [
        f'- mq-run --workers {w} / bare ceiling at {w} workers: **{parallel / ceiling:.0%}** '
        f'(target >= 80%: {verdict[parallel / ceiling >= 0.8]})',
        f'- mq-run default / bare sequential connection: **{default / seq:.2f}x** '
        f'(target > 1: {verdict[default > seq]})',
        f'- mq-run default / one connection per message: **{default / per_message:.1f}x**',
    ]
    return '\n'.join(table + [''] + ratios)


ANALYSIS = '''### Reading these figures

Against the aiosmtpd sink, a complete SMTP server like the smarthosts mq-run meets in practice, both
targets are met. Against the raw sink, which costs almost nothing per message, the comparison is
about client CPU, and the 80% target is not met: bare smtplib spends about 65-110 µs of CPU per
message and nothing else, while mq-run also owns a durable queue file per message (open, lock,
read, rename to cur/, unlink after the 250: on this ext4 with online discard, freeing the blocks
of an fsync'd file alone costs about 60 µs) and runs the handler's per-recipient bookkeeping. Its
worker threads share one GIL, so the whole client is bounded by one core. What mq-run does instead
is save round trips: PIPELINING sends MAIL, every RCPT and DATA in one write (two round trips
per message where smtplib needs four), which is what counts against a real smarthost behind
network latency. Its default settings beat a bare sequential connection against both sinks.'''


SINKS = {
    'aiosmtpd': 'aiosmtpd sink (our test server, a complete SMTP implementation like a small MTA)',
    'raw': 'raw sink (a minimal asyncio protocol that only answers; CPU-bound worst case for the client)',
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=5000)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--sink', choices=[*SINKS, 'both'], default='both')
    parser.add_argument('--rounds', type=int, default=3, help='rounds per sink; the median is reported')
    parser.add_argument('--write-docs', action='store_true', help='update docs/benchmarks.md')
    args = parser.parse_args()
    kinds = list(SINKS) if args.sink == 'both' else [args.sink]
    sections = []
    for kind in kinds:
        report = measure(kind, args.messages, args.workers, args.rounds)
        print(f'### {SINKS[kind]}\n\n{report}\n', flush=True)
        sections.append(f'### {SINKS[kind]}\n\n{report}')
    if args.write_docs:
        body = (f'Command: `.venv/bin/python bench/bench_runner.py --messages {args.messages} --workers '
                f'{args.workers} --rounds {args.rounds} --write-docs`  \n'
                f'{args.messages} queued messages ({len(MESSAGE)} bytes each), each sink in a separate process on '
                f'127.0.0.1, {cpu_info()}. mq-run timings are whole process runs (start-up included) on a real '
                f'queue (fsync on, ext4).\n\n' + '\n\n'.join(sections) + '\n\n' + ANALYSIS)
        replace_section(ROOT / 'docs' / 'benchmarks.md', 'mq-run throughput', body)


if __name__ == '__main__':
    main()
