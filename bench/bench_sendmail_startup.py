"""mq-sendmail start-up cost: wall time per message against a bare interpreter, same run.

    python bench/bench_sendmail_startup.py [--runs 40] [--write-docs]

``mq-sendmail`` runs once per cron mail, so what matters is the time from
process start to exit for one small message, delivered over SMTP to a sink
running in its own process on 127.0.0.1. The baseline is ``python -c pass``
with the same interpreter, measured interleaved with the tool so that both see
the same machine load. Bytecode is cached first (as after ``pip install``),
even where PYTHONDONTWRITEBYTECODE is set.

Context rows, not part of the ratio: ``import smtplib`` (what merely importing
the standard library's SMTP client costs; we use our own small wire module
instead) and ``-X importtime`` totals per top-level module, to show where the
time goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from bench_common import ROOT, Sink, cpu_info, replace_section

MESSAGE = (b'From: cron@example.org\nTo: root@example.org\nSubject: Cron <root@host> run-parts /etc/cron.daily\n'
           b'\n/etc/cron.daily/logrotate:\nerror: skipping "/var/log/x.log" because parent directory has '
           b'insecure permissions\n')
HEADING = 'mq-sendmail start-up'
TOOL_ROW = 'mq-sendmail, default config (1 message)'
PLAIN_ROW = 'mq-sendmail, smtp_tls = none (1 message)'


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Cached bytecode is what an installed package has; without it every run compiles our modules.
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    return env


def run_once(argv: Sequence[str], stdin: bytes, env: Dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          timeout=60, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f'{argv[0]} exited {proc.returncode}: {proc.stderr.decode(errors="replace")}')
    return elapsed


def measure(commands: Dict[str, Tuple[List[str], bytes]], runs: int, env: Dict[str, str]) -> Dict[str, List[float]]:
    """Interleaved runs: each round runs every command once, so load changes hit all of them alike."""
    for argv, stdin in commands.values():  # warm-up: bytecode cache, page cache
        for _ in range(3):
            run_once(argv, stdin, env)
    times: Dict[str, List[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, stdin) in commands.items():
            times[name].append(run_once(argv, stdin, env))
    return times


def import_breakdown(argv: Sequence[str], stdin: bytes, env: Dict[str, str]) -> List[Tuple[str, int]]:
    """Cumulative import time (µs) per top-level import of one mq-sendmail run, largest first."""
    proc = subprocess.run([sys.executable, '-X', 'importtime', *argv], input=stdin, capture_output=True, env=env,
                          timeout=60, check=True)
    rows = []
    for line in proc.stderr.decode().splitlines():
        if not line.startswith('import time:') or '|' not in line:
            continue
        _, cumulative, name = line.split('|')
        if cumulative.strip().isdigit() and not name.startswith('  '):
            rows.append((name.strip(), int(cumulative)))
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=40, help='measured runs per command (default 40)')
    parser.add_argument('--write-docs', action='store_true', help='write the figures into docs/benchmarks.md')
    args = parser.parse_args()

    sendmail = shutil.which('mq-sendmail', path=os.path.dirname(sys.executable))
    if sendmail is None:
        sys.exit('mq-sendmail is not installed next to this interpreter (pip install -e .)')
    env = child_env()
    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {sink.port}\n'
                          f'from = cron@example.org\n')
        plain_config = Path(tmp) / 'plain.conf'
        plain_config.write_text(config.read_text() + 'smtp_tls = none\n')
        tool = [sendmail, '-C', str(config), '-FCronDaemon', '-i', '-oem', 'root@example.org']
        commands = {
            'python -c pass': ([sys.executable, '-c', 'pass'], b''),
            'python -c "import smtplib"': ([sys.executable, '-c', 'import smtplib'], b''),
            TOOL_ROW: (tool, MESSAGE),
            PLAIN_ROW: ([sendmail, '-C', str(plain_config), *tool[3:]], MESSAGE),
        }
        times = measure(commands, args.runs, env)
        breakdown = import_breakdown([sendmail, *tool[1:]], MESSAGE, env)
    expected = 2 * (args.runs + 3) + 1  # two tool rows: measured + warm-up; one importtime run
    if sink.received != expected:
        sys.exit(f'sink received {sink.received} messages, expected {expected}')

    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians['python -c pass']
    ratio = medians[TOOL_ROW] / base
    lines = [
        f'`python bench/bench_sendmail_startup.py --runs {args.runs}` ({cpu_info()}; {time.strftime("%Y-%m-%d")}).',
        'Wall time from process start to exit, median of interleaved runs; mq-sendmail delivers one',
        'small cron message over SMTP to a sink in its own process on 127.0.0.1 (bytecode cached, as',
        'after `pip install`; PuzzlePluginSystem installed, so plugin discovery is included).',
        '',
        '| command | median | min | vs `python -c pass` |',
        '|---|---|---|---|',
    ]
    for name, values in times.items():
        lines.append(f'| {name} | {medians[name] * 1000:.1f} ms | {min(values) * 1000:.1f} ms | '
                     f'{medians[name] / base:.1f}x |')
    total = sum(us for _, us in breakdown) or 1
    top = ', '.join(f'{name} {us / 1000:.1f} ms' for name, us in breakdown[:6])
    lines += [
        '',
        f'**Ratio: {ratio:.1f}x** a bare interpreter start with the default configuration (target: under',
        '4x; issue 4 reports about 13x for the published 1.0.0). Merely importing the standard',
        "library's smtplib (second row) would cost almost the whole budget, so the SMTP client speaks the",
        'protocol through our own small `smtp/wire.py`; `ssl` is imported and the CA store loaded only',
        'when TLS is actually negotiated (the sink offers no STARTTLS, so both configurations cost the',
        'same here), the queue modules only when a message is queued, importlib.metadata only when some',
        'installed distribution declares `mailqueue.plugins` entry points, and the modules on this path',
        'avoid `dataclasses` (which imports `inspect`).',
        f'Top-level imports of one run (`-X importtime`, cumulative, {total / 1000:.1f} ms in all): {top}.',
    ]
    report = '\n'.join(lines)
    print(report)
    if args.write_docs:
        replace_section(ROOT / 'docs' / 'benchmarks.md', HEADING, report)
        print(f'\nwritten to {ROOT / "docs" / "benchmarks.md"}')


if __name__ == '__main__':
    main()
