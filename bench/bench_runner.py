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
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List

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

    return _timed(count, lambda: _threads(work, shares))


def _threads(work: Callable[[int], None], shares: List[int]) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _timed(count: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
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
        subprocess.run([mq_run_bin, '-C', str(config), *extra_args], check=True)
        elapsed = time.perf_counter() - started
        left = sum(1 for state in ('new', 'cur', 'failed') for _ in queue.iter_ids(state))
        if left:
            raise RuntimeError(f'{left} messages left in the queue')
        return count / elapsed
    finally:
        shutil.rmtree(tmp)


def measure(kind: str, n: int, w: int) -> str:
    with Sink(kind) as sink:
        expected = 200 + n + n + min(n, 1000) + n + n
        bare(sink.port, 200, 1)  # warm up
        seq = bare(sink.port, n, 1)
        ceiling = bare(sink.port, n, w)
        per_message = bare(sink.port, min(n, 1000), 1, reuse=False)
        default = mq_run(sink.port, n, [])
        parallel = mq_run(sink.port, n, ['--workers', str(w)])
    if sink.received != expected:
        raise RuntimeError(f'sink received {sink.received} messages, expected {expected}')
    rows = [
        ('bare smtplib, 1 reused connection', seq),
        (f'bare smtplib, {w} threads x 1 reused connection (ceiling)', ceiling),
        ('bare smtplib, one connection per message (how the replaced project delivers)', per_message),
        ('mq-run, default settings (4 workers)', default),
        (f'mq-run --workers {w}', parallel),
    ]
    table = ['| delivery | messages/s |', '|---|---:|'] + [f'| {name} | {rate:,.0f} |' for name, rate in rows]
    ratios = [
        f'- mq-run --workers {w} / bare ceiling at {w} workers: **{parallel / ceiling:.0%}** (target >= 80%)',
        f'- mq-run default / bare sequential connection: **{default / seq:.2f}x** (target > 1)',
        f'- mq-run default / one connection per message: **{default / per_message:.1f}x**',
    ]
    return '\n'.join(table + [''] + ratios)


SINKS = {
    'aiosmtpd': 'aiosmtpd sink (our test server, a complete SMTP implementation like a small MTA)',
    'raw': 'raw sink (a minimal asyncio protocol that only answers; CPU-bound worst case for the client)',
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--messages', type=int, default=5000)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--sink', choices=[*SINKS, 'both'], default='both')
    parser.add_argument('--write-docs', action='store_true', help='update docs/benchmarks.md')
    args = parser.parse_args()
    kinds = list(SINKS) if args.sink == 'both' else [args.sink]
    sections = []
    for kind in kinds:
        report = measure(kind, args.messages, args.workers)
        print(f'### {SINKS[kind]}\n\n{report}\n', flush=True)
        sections.append(f'### {SINKS[kind]}\n\n{report}')
    if args.write_docs:
        body = (f'Command: `.venv/bin/python bench/bench_runner.py --messages {args.messages} --workers '
                f'{args.workers} --write-docs`  \n'
                f'{args.messages} queued messages ({len(MESSAGE)} bytes each), each sink in a separate process on '
                f'127.0.0.1, {cpu_info()}. mq-run timings are whole process runs (start-up included) on a real '
                f'queue (fsync on, ext4).\n\n' + '\n\n'.join(sections))
        replace_section(ROOT / 'docs' / 'benchmarks.md', 'mq-run throughput', body)


if __name__ == '__main__':
    main()
