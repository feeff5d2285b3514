"""mq-run throughput of this checkout against an earlier revision, side by side in one run.

    python bench/bench_runner_vs_baseline.py [--baseline 33137fa] [--current REV] [--messages 5000]
                                             [--workers 4] [--rounds 7] [--sink aiosmtpd] [--write-docs]

The baseline revision is checked out with ``git worktree add --detach`` into a temporary
directory, installed (not editable) into a venv of its own, and the worktree is removed
again; the venv goes when the run ends. The working tree is measured through the project
venv's ``mq-run`` (next to the interpreter running this script); ``--current REV`` installs
that revision the same way as the baseline instead (reproducible while others edit src/).

Every measurement is one whole ``mq-run --workers W`` process (start-up included) delivering
N messages from a freshly filled queue to the same sink process on 127.0.0.1. Both versions
get byte-identical queues: the files are written from a fixed template in the 1.0.0 queue
format, which every version reads, and synced to disk (as ``enqueue`` leaves them) before
the clock starts. Rounds alternate which version goes first (ABBA), so a change in machine
load hits both alike; each round also times one pass over an empty queue (the fixed
start-up cost). Reported: messages/s per version (median and every round), the ratio
current/baseline of the medians, the spread of the per-round paired ratios, and CPU per
message of mq-run and of the sink.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Tuple

from bench_common import ROOT, Sink, cpu_info, replace_section
from bench_runner import MESSAGE

HEADING = 'mq-run throughput against the previous release'
DEFAULT_BASELINE = '33137fa'
BASELINE_NOTE = ('`33137fa` is the last commit before the SMTP client rewrite (strict reply matching, deadlines) '
                 'and the queue store contract (`claim_due`). ')
QUEUE_SUBDIRS = ('tmp', 'new', 'cur', 'hold', 'failed')  # the 1.0.0 maildir layout
SINKS = {
    'aiosmtpd': 'aiosmtpd sink (our test server, a complete SMTP implementation)',
    'raw': 'raw sink (a minimal asyncio protocol that only answers; CPU-bound worst case for the client)',
}


def git(*args: str) -> str:
    return subprocess.run(['git', '-C', str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop('PYTHONDONTWRITEBYTECODE', None)  # installed packages run from cached bytecode
    env.pop('PYTHONPATH', None)  # each version must import its own package only
    return env


class Version:
    def __init__(self, label: str, mq_run: str) -> None:
        self.label = label
        self.mq_run = mq_run
        self.desc = label
        self.rates: List[float] = []
        self.cpu_us: List[float] = []
        self.sink_cpu_us: List[float] = []
        self.empty_ms: List[float] = []


def build_venv(rev: str, workdir: Path) -> Tuple[str, str]:
    """A venv in ``workdir`` with ``rev`` installed (not editable) from a temporary worktree; (mq-run, commit)."""
    commit = git('rev-parse', '--verify', f'{rev}^{{commit}}')
    tree = workdir / 'worktree'
    venv = workdir / 'venv'
    git('worktree', 'add', '--detach', str(tree), commit)
    try:
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
        python = str(venv / 'bin' / 'python')
        # The same optional packages as here (plugin discovery is part of mq-run's start-up).
        extra: List[str] = []
        try:
            extra.append(f'PuzzlePluginSystem=={metadata.version("PuzzlePluginSystem")}')
        except metadata.PackageNotFoundError:
            pass
        subprocess.run([python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', str(tree), *extra],
                       check=True, env=child_env())
    finally:
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', str(tree)], check=False)
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'prune'], check=False)
    return str(venv / 'bin' / 'mq-run'), commit


def queue_file(message: bytes, queue_date: datetime) -> bytes:
    """A due message in the 1.0.0 queue file format (what 1.0.0 and every later version write and read)."""
    return (b'Return-path: <bench@example.org>\r\nEnvelope-to: rcpt@example.org\r\n'
            + f'X-Queue-Date: {format_datetime(queue_date.replace(microsecond=0))}\r\n'.encode()
            + b'X-Queue-Meta-End: end\r\n' + message)


def fill_queue(queue_dir: Path, count: int) -> None:
    """``count`` due messages in new/, 1.0.0 format, ids as enqueue makes them; synced to disk."""
    for sub in QUEUE_SUBDIRS:
        (queue_dir / sub).mkdir(parents=True, mode=0o700)
    content = queue_file(MESSAGE, datetime.now(timezone.utc))
    new = queue_dir / 'new'
    stamp = int(time.time())
    for _ in range(count):
        fd = os.open(new / f'{secrets.token_hex(6)}.{stamp}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
    os.sync()  # what enqueue's fsync leaves behind: data and directory entries on disk


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc; the sink is not waited for)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def run_mq_run(version: Version, sink: Sink, count: int, workers: int,
               env: Dict[str, str]) -> Tuple[float, float, float]:
    """One whole mq-run process over a fresh queue of ``count`` messages: (seconds, its CPU, the sink's CPU)."""
    assert sink.proc is not None
    tmp = Path(tempfile.mkdtemp(prefix='mq-vs-'))
    try:
        queue_dir = tmp / 'q'
        fill_queue(queue_dir, count)
        config = tmp / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {sink.port}\nsmtp_tls = none\n'
                          f'queue_dir = {queue_dir}\n')
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sink_before = process_cpu(sink.proc.pid)
        started = time.perf_counter()
        proc = subprocess.run([version.mq_run, '-C', str(config), '--workers', str(workers), '--no-progress'],
                              env=env, capture_output=True, timeout=600, check=False)
        elapsed = time.perf_counter() - started
        sink_cpu = process_cpu(sink.proc.pid) - sink_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f'{version.label}: mq-run exited {proc.returncode}: '
                               f'{proc.stderr.decode(errors="replace")[-2000:]}')
        left = {sub: len(os.listdir(queue_dir / sub)) for sub in ('new', 'cur', 'failed')}
        if any(left.values()):
            raise RuntimeError(f'{version.label}: messages left in the queue: {left}')
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return elapsed, cpu, sink_cpu
    finally:
        shutil.rmtree(tmp)


def measure(versions: List[Version], kind: str, count: int, workers: int, rounds: int) -> int:
    """Interleaved rounds against one sink process; the number of messages the sink received."""
    env = child_env()
    with Sink(kind) as sink:
        expected = 0
        for version in versions:  # warm-up: bytecode, page cache, the sink's first connections
            run_mq_run(version, sink, min(count, 500), workers, env)
            expected += min(count, 500)
        for n in range(rounds):
            order = versions if n % 4 in (0, 3) else versions[::-1]  # ABBA BAAB ...
            for version in order:
                elapsed, cpu, sink_cpu = run_mq_run(version, sink, count, workers, env)
                expected += count
                version.rates.append(count / elapsed)
                version.cpu_us.append(cpu / count * 1e6)
                version.sink_cpu_us.append(sink_cpu / count * 1e6)
                version.empty_ms.append(run_mq_run(version, sink, 0, workers, env)[0] * 1e3)
                print(f'round {n + 1}: {version.label}: {count / elapsed:,.0f} msg/s, '
                      f'{cpu / count * 1e6:.0f} µs CPU per message', flush=True)
    if sink.received != expected:
        raise RuntimeError(f'sink received {sink.received} messages, expected {expected}')
    return sink.received


def report(current: Version, baseline: Version, workers: int) -> Tuple[str, float]:
    ratio = statistics.median(current.rates) / statistics.median(baseline.rates)
    paired = [c / b for c, b in zip(current.rates, baseline.rates)]
    table = [f'| mq-run --workers {workers} | messages/s (median) | every round | mq-run CPU per message '
             f'| sink CPU per message | empty-queue pass |',
             '|---|---:|---|---:|---:|---:|']
    for v in (baseline, current):
        table.append(f'| {v.desc} | {statistics.median(v.rates):,.0f} | {", ".join(f"{r:,.0f}" for r in v.rates)} '
                     f'| {statistics.median(v.cpu_us):.0f} µs | {statistics.median(v.sink_cpu_us):.0f} µs '
                     f'| {statistics.median(v.empty_ms):.0f} ms |')
    q = statistics.quantiles(paired, n=4, method='inclusive') if len(paired) >= 2 else [paired[0]] * 3
    verdict = 'met' if ratio >= 0.95 else '**not met**'
    cpu_ratio = statistics.median(current.cpu_us) / statistics.median(baseline.cpu_us)
    lines = [
        *table, '',
        f'- **throughput, current / baseline: {ratio:.2f}** (ratio of the medians; target >= 0.95: {verdict})',
        f'- spread: per-round paired ratios (the two runs of a round are back to back) median '
        f'{statistics.median(paired):.2f}, quartiles {q[0]:.2f}-{q[2]:.2f}, range {min(paired):.2f}-{max(paired):.2f}',
        f'- CPU per message of the mq-run process (user + system, median), current / baseline: **{cpu_ratio:.2f}x** '
        f'({statistics.median(current.cpu_us) - statistics.median(baseline.cpu_us):+.0f} µs)',
    ]
    return '\n'.join(lines), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--baseline', default=DEFAULT_BASELINE, help='git revision to compare with')
    parser.add_argument('--current', metavar='REV',
                        help='measure this revision (installed like the baseline) instead of the working tree')
    parser.add_argument('--messages', type=int, default=5000)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=7, help='measurements per version; medians are reported')
    parser.add_argument('--sink', choices=list(SINKS), default='aiosmtpd')
    parser.add_argument('--write-docs', action='store_true', help=f'update "{HEADING}" in docs/benchmarks.md')
    args = parser.parse_args()
    if args.messages < 1 or args.rounds < 1 or args.workers < 1:
        parser.error('--messages, --rounds and --workers must be at least 1')

    def describe(commit: str) -> str:
        return f'`{commit}` ({git("log", "-1", "--format=%s", commit)[:50].rstrip()}...)'

    base_commit = git('rev-parse', '--short', f'{args.baseline}^{{commit}}')
    workdir = Path(tempfile.mkdtemp(prefix='mq-baseline-'))
    try:
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        print(f'installing {args.baseline} into {workdir}/baseline ...', flush=True)
        baseline = Version('baseline', build_venv(args.baseline, workdir / 'baseline')[0])
        baseline.desc = f'baseline: {describe(base_commit)}'
        if args.current:
            cur_commit = git('rev-parse', '--short', f'{args.current}^{{commit}}')
            print(f'installing {args.current} into {workdir}/current ...', flush=True)
            current = Version('current', build_venv(args.current, workdir / 'current')[0])
            current.desc = f'current: {describe(cur_commit)}'
        else:
            head = git('rev-parse', '--short', 'HEAD')
            dirty = bool(git('status', '--porcelain', '--untracked-files=no', '--', 'src'))
            current = Version('current', str(Path(sys.executable).parent / 'mq-run'))
            current.desc = f'current: working tree at `{head}`' + (' with uncommitted changes' if dirty else '')
        received = measure([current, baseline], args.sink, args.messages, args.workers, args.rounds)
        elapsed = time.monotonic() - started
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    body, ratio = report(current, baseline, args.workers)
    print(f'\n{body}\n')
    command = (f'.venv/bin/python bench/bench_runner_vs_baseline.py --baseline {args.baseline}'
               + (f' --current {args.current}' if args.current else '')
               + f' --messages {args.messages} --workers {args.workers} --rounds {args.rounds} --sink {args.sink}'
               ' --write-docs')
    if args.write_docs:
        installed = ('Both revisions are checked out with `git worktree add --detach` and installed into venvs of '
                     'their own' if args.current else
                     'The baseline is checked out with `git worktree add --detach` and installed into a venv of its '
                     'own; the working tree runs from the project venv')
        text = (
            f'Command: `{command}`  \n'
            + (BASELINE_NOTE if args.baseline == DEFAULT_BASELINE else '')
            + f'{installed} (not editable, the same interpreter and optional packages). {args.messages} queued '
            f'messages ({len(MESSAGE)} bytes each; byte-identical 1.0.0-format queue files, synced to disk before '
            f'the clock starts) delivered by one whole `mq-run --workers {args.workers}` process (start-up '
            f'included) to the {SINKS[args.sink]} in a separate process on 127.0.0.1. {args.rounds} rounds per '
            f'version, alternating which goes first (ABBA), after one warm-up run each. {cpu_info()}; load '
            f'average {load_before:.1f} before and {load_after:.1f} after (a shared machine: wall-clock rates '
            f'move with the load, CPU per message much less); the sink received all {received:,} messages; '
            f'{elapsed:.0f} s in all.\n\n' + body)
        replace_section(ROOT / 'docs' / 'benchmarks.md', HEADING, text)
    print(f'ratio {ratio:.3f}')


if __name__ == '__main__':
    main()
