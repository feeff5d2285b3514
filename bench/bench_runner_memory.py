"""mq-run memory against queue size: the queue is streamed, never loaded at once.

    python bench/bench_runner_memory.py [--write-docs]

Builds queues of 10 000 and 100 000 messages that are not due yet (failed a minute ago), runs one
`mq-run` pass over each (every file is opened and its schedule checked) and one delivering pass
of 20 000 due messages to the raw sink, reporting wall time and peak RSS of the mq-run process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Tuple

from schwarz.mailqueue.queue.format import serialize_message_with_queue_data

from bench_common import ROOT, Sink, cpu_info, replace_section
from bench_runner import MESSAGE


def build_queue(directory: Path, count: int, due: bool) -> None:
    for sub in ('tmp', 'new', 'cur', 'hold', 'failed'):
        (directory / sub).mkdir(parents=True, mode=0o700)
    now = datetime.now(timezone.utc)
    last = None if due else now - timedelta(minutes=1)
    content = serialize_message_with_queue_data(MESSAGE, 'bench@example.org', ['rcpt@example.org'],
                                                queue_date=now, last=last, retries=0 if due else 1)
    new = directory / 'new'
    for n in range(count):
        fd = os.open(new / f'bench{n:07d}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content)
        os.close(fd)


def run_pass(port: int, count: int, due: bool) -> Tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix='mq-mem-'))
    try:
        build_queue(tmp / 'q', count, due)
        config = tmp / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {port}\nsmtp_tls = none\n'
                          f'queue_dir = {tmp / "q"}\n')
        mq_run = str(Path(sys.executable).parent / 'mq-run')
        started = time.perf_counter()
        # a fresh process per measurement so ru_maxrss is this run's alone
        code = ('import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); '
                'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')
        out = subprocess.run([sys.executable, '-c', code, mq_run, '-C', str(config)], check=True,
                             capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        left = len(os.listdir(tmp / 'q' / 'new'))
        expected_left = 0 if due else count
        if left != expected_left:
            raise RuntimeError(f'{left} messages in new/, expected {expected_left}')
        return elapsed, int(out.stdout.strip()) / 1024
    finally:
        shutil.rmtree(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--write-docs', action='store_true')
    args = parser.parse_args()
    rows = []
    with Sink() as sink:
        for count, due in ((10_000, False), (100_000, False), (2_000, True), (20_000, True)):
            elapsed, rss = run_pass(sink.port, count, due)
            what = 'delivered' if due else 'not due, each file checked'
            rows.append(f'| {count:,} | {what} | {elapsed:.1f} s | {rss:.0f} MiB |')
            print(rows[-1], flush=True)
    table = '\n'.join(['| queue size | pass | wall time | peak RSS of mq-run |', '|---:|---|---:|---:|', *rows])
    print(table)
    if args.write_docs:
        body = (f'Command: `.venv/bin/python bench/bench_runner_memory.py --write-docs` ({cpu_info()}).\n\n'
                f'{table}\n\nPeak memory does not grow with the number of queued messages: names are streamed '
                'from the directory and handed to the workers through a small bounded queue.')
        replace_section(ROOT / 'docs' / 'benchmarks.md', 'mq-run memory against queue size', body)


if __name__ == '__main__':
    main()
