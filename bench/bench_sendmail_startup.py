"""mq-sendmail start-up cost: CPU and wall time per message against a bare interpreter and msmtp, same run.

    python bench/bench_sendmail_startup.py [--runs 40] [--baseline REV] [--write-docs]

``mq-sendmail`` runs once per cron mail, so what matters is what one small
message costs from process start to exit, delivered over SMTP to a sink
running in its own process on 127.0.0.1. Two baselines, measured interleaved
with the tool (each round runs every command once, in a rotating order) so
that all of them see the same machine load:

* ``python -c pass`` with the same interpreter: the CPU (user + system time of
  the child, from ``os.wait4``) of a bare interpreter start;
* ``msmtp`` (``apt-get install msmtp``), a C sendmail replacement, configured on
  its command line for the same sink and sending the same message: the wall time
  a caller waits for a compiled relay-only client.

With ``--baseline REV`` (repeatable) the same interpreter also runs ``mq-sendmail``
from the sources of that revision (``git archive`` into a temporary directory, first
on PYTHONPATH), in the same rounds: before and after, side by side. The current rows
run the installed package, or what PYTHONPATH names (a clean checkout's ``src``).

Bytecode is cached first (as after ``pip install``), even where
PYTHONDONTWRITEBYTECODE is set. Context rows, not part of the ratios:
``import smtplib`` (what merely importing the standard library's SMTP client
costs; we use our own small wire module instead) and ``-X importtime`` totals
per top-level module, to show where the time goes.
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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from bench_common import ROOT, Sink, cpu_info, replace_section

MESSAGE = (b'From: cron@example.org\nTo: root@example.org\nSubject: Cron <root@host> run-parts /etc/cron.daily\n'
           b'\n/etc/cron.daily/logrotate:\nerror: skipping "/var/log/x.log" because parent directory has '
           b'insecure permissions\n')
HEADING = 'mq-sendmail start-up'
BASE_ROW = 'python -c pass'
SMTPLIB_ROW = 'python -c "import smtplib"'
TOOL_ROW = 'mq-sendmail, default config (1 message)'
PLAIN_ROW = 'mq-sendmail, smtp_tls = none (1 message)'
MSMTP_ROW = 'msmtp (1 message)'
BASELINE_ROW = 'mq-sendmail at {rev}, default config (1 message)'
# The options cron passes (-FCronDaemon -i -oem), the same for both sendmail replacements.
SENDMAIL_ARGS = ['-FCronDaemon', '-i', '-oem', 'root@example.org']
MSMTP_MISSING = 'msmtp not found: apt-get install msmtp (the wall-time comparison needs it)'
CPU_GOAL = 3.0  # mq-sendmail CPU at most 3x that of python -c pass (issue 10)
WALL_GOAL = 1.0  # mq-sendmail wall time no worse than msmtp's


class Run(NamedTuple):
    wall: float  # seconds from spawning the child to reaping it
    cpu: float  # user + system seconds of the child


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Cached bytecode is what an installed package has; without it every run compiles our modules.
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    return env


def export_sources(rev: str, directory: Path) -> str:
    """``rev``'s ``src/`` in ``directory`` (nothing in the repository changes); returns its short hash."""
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', f'{rev}^{{commit}}'], check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(['git', '-C', str(ROOT), 'archive', commit, 'src'], check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(directory)], input=archive, check=True)
    return commit


def run_once(argv: Sequence[str], stdin: bytes, env: Dict[str, str]) -> Run:
    """Run one command to its end; its CPU comes from ``wait4`` on exactly that child."""
    if argv[0] == 'env':  # a row with its own environment: env NAME=VALUE ... command
        env = dict(env)
        while '=' in argv[1]:
            name, _, value = argv[1].partition('=')
            env[name] = value
            argv = argv[1:]
        argv = argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(stdin)
    except BrokenPipeError:
        pass
    proc.stdin.close()
    errors = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode != 0:
        raise RuntimeError(f'{argv[0]} exited {proc.returncode}: {errors.decode(errors="replace")}')
    return Run(elapsed, usage.ru_utime + usage.ru_stime)


def measure(commands: Dict[str, Tuple[List[str], bytes]], runs: int, env: Dict[str, str]) -> Dict[str, List[Run]]:
    """Interleaved rounds: each runs every command once, so load changes hit all of them alike.

    The order rotates from round to round, so no command always runs right after the same other one.
    """
    for argv, stdin in commands.values():  # warm-up: bytecode cache, page cache
        for _ in range(3):
            run_once(argv, stdin, env)
    results: Dict[str, List[Run]] = {name: [] for name in commands}
    names = list(commands)
    for round_number in range(runs):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            argv, stdin = commands[name]
            results[name].append(run_once(argv, stdin, env))
    return results


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


def measured_sources(env: Dict[str, str]) -> str:
    """Which code the current rows run: this checkout's commit (and whether src/ has changes), or a path."""
    code = 'import os, schwarz.mailqueue as m; print(os.path.dirname(m.__file__))'
    where = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    checkout = Path(where).resolve().parent.parent.parent
    if not (checkout / '.git').exists():
        return f'the sources in {where}'
    commit = subprocess.run(['git', '-C', str(checkout), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
    changed = subprocess.run(['git', '-C', str(checkout), 'status', '--porcelain', '--', 'src'], capture_output=True,
                             text=True, check=True).stdout.strip()
    return f'commit {commit}' + (' with uncommitted changes in src/' if changed else '')


def msmtp_command(msmtp: str, port: int) -> List[str]:
    """msmtp for the same sink, configured entirely on its command line (no ~/.msmtprc or /etc/msmtprc)."""
    return [msmtp, '--file=/dev/null', '--host=127.0.0.1', f'--port={port}', '--from=cron@example.org',
            '--tls=off', '--auth=off', *SENDMAIL_ARGS]


def ms(seconds: float) -> str:
    return f'{seconds * 1000:.1f} ms'


def report(results: Dict[str, List[Run]], breakdown: List[Tuple[str, int]], runs: int,
           msmtp_argv: Optional[List[str]], baselines: List[str], sources: str, load: float) -> str:
    wall = {name: statistics.median(r.wall for r in values) for name, values in results.items()}
    cpu = {name: statistics.median(r.cpu for r in values) for name, values in results.items()}
    cpu_ratio = cpu[TOOL_ROW] / cpu[BASE_ROW]
    lines = [
        f'`python bench/bench_sendmail_startup.py --runs {runs}{"".join(f" --baseline {b}" for b in baselines)}` '
        f'({cpu_info()}; load average {load:.1f} at the start; {time.strftime("%Y-%m-%d")}; '
        f'mq-sendmail at {sources}).',
        f'Medians of {runs} interleaved rounds; mq-sendmail and msmtp each deliver the same small cron message',
        'over SMTP to a sink in its own process on 127.0.0.1 (bytecode cached, as after `pip install`;',
        'PuzzlePluginSystem installed, so plugin discovery is included). CPU is user + system time of the',
        'child (`os.wait4`); wall time runs from spawning the child to reaping it.',
        '',
        '| command | wall median | wall min | CPU median | CPU vs `python -c pass` | wall vs msmtp |',
        '|---|---|---|---|---|---|',
    ]
    for name, values in results.items():
        against_msmtp = f'{wall[name] / wall[MSMTP_ROW]:.2f}x' if MSMTP_ROW in wall else 'n/a'
        lines.append(f'| {name} | {ms(wall[name])} | {ms(min(r.wall for r in values))} | {ms(cpu[name])} | '
                     f'{cpu[name] / cpu[BASE_ROW]:.1f}x | {against_msmtp} |')
    lines += ['', f'**CPU: {cpu_ratio:.2f}x** `python -c pass` with the default configuration '
              f'(goal: at most {CPU_GOAL:.0f}x; {"met" if cpu_ratio <= CPU_GOAL else "NOT met"}).']
    for baseline in baselines:
        before = BASELINE_ROW.format(rev=baseline)
        lines.append(f'At {baseline} (the sources of that revision, same interpreter, same rounds): '
                     f'{cpu[before] / cpu[BASE_ROW]:.2f}x the CPU of `python -c pass`; now '
                     f'{cpu[TOOL_ROW] / cpu[before]:.2f}x its CPU and {wall[TOOL_ROW] / wall[before]:.2f}x '
                     'its wall time.')
    if MSMTP_ROW in wall:
        wall_ratio = wall[TOOL_ROW] / wall[MSMTP_ROW]
        lines.append(f'**Wall time: {wall_ratio:.2f}x** msmtp\'s (goal: at most {WALL_GOAL:.0f}x; '
                     f'{"met" if wall_ratio <= WALL_GOAL else "NOT met"}).')
        assert msmtp_argv is not None
        shown = ' '.join(msmtp_argv[1:]).replace(f'--port={msmtp_argv[3].partition("=")[2]}', '--port=N')
        lines.append(f'msmtp ran as `msmtp {shown}`.')
    else:
        lines.append(f'**Wall time against msmtp: not measured** ({MSMTP_MISSING}).')
    total = sum(us for _, us in breakdown) or 1
    top = ', '.join(f'{name} {us / 1000:.1f} ms' for name, us in breakdown[:6])
    lines += [
        '',
        "Merely importing the standard library's smtplib (second row) would cost most of the budget, so the",
        'SMTP client speaks the protocol through our own small `smtp/wire.py`; `ssl` is imported and the CA',
        'store loaded only when TLS is actually negotiated (the sink offers no STARTTLS, so both',
        'configurations cost the same here); the queue stores, the runner, the aliases parser, the `email`',
        'package, `json`, `hashlib` and `dataclasses` are not imported on this path',
        '(`tests/test_sendmail_cli.py` checks that); importlib.metadata is imported only when some installed',
        'distribution declares `mailqueue.plugins` entry points; `message.MessageSource` holds no quoted',
        'name and `result.Reply` is built without `typing.NamedTuple` (typing compiles every quoted name in',
        'a module-level alias or NamedTuple field when the module is imported; the aliases in',
        '`smtp/wire.py` and `smtp/client.py` still pay that).',
        '',
        'What the rest is: `re`, `socket` and `configparser`, which the tool cannot do without, already cost',
        'about twice a bare interpreter start. On top come `logging` (with `traceback`, `linecache`,',
        '`tokenize` and `textwrap`), imported by the handler and the SMTP client at import time; `typing`;',
        '`ipaddress` and the `idna` codec (`getaddrinfo` with a `str` host name imports it); `datetime`;',
        'and some 25 modules of our own.',
        f'Top-level imports of one run (`-X importtime`, cumulative, {total / 1000:.1f} ms in all): {top}.',
    ]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=40, help='measured rounds (default 40)')
    parser.add_argument('--baseline', metavar='REV', action='append', default=[],
                        help='also run mq-sendmail from the sources of this revision (repeatable)')
    parser.add_argument('--write-docs', action='store_true', help='write the figures into docs/benchmarks.md')
    args = parser.parse_args()

    sendmail = shutil.which('mq-sendmail', path=os.path.dirname(sys.executable))
    if sendmail is None:
        sys.exit('mq-sendmail is not installed next to this interpreter (pip install -e .)')
    msmtp = shutil.which('msmtp')
    if msmtp is None:
        print(f'error: {MSMTP_MISSING}', file=sys.stderr)
        if args.write_docs:
            sys.exit('not writing docs/benchmarks.md without the msmtp comparison')
    env = child_env()
    load = os.getloadavg()[0]  # other work on the machine stretches wall times far more than CPU times
    msmtp_argv: Optional[List[str]] = None
    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {sink.port}\n'
                          f'from = cron@example.org\n')
        plain_config = Path(tmp) / 'plain.conf'
        plain_config.write_text(config.read_text() + 'smtp_tls = none\n')
        tool = [sendmail, '-C', str(config), *SENDMAIL_ARGS]
        commands = {
            BASE_ROW: ([sys.executable, '-c', 'pass'], b''),
            SMTPLIB_ROW: ([sys.executable, '-c', 'import smtplib'], b''),
            TOOL_ROW: (tool, MESSAGE),
            PLAIN_ROW: ([sendmail, '-C', str(plain_config), *SENDMAIL_ARGS], MESSAGE),
        }
        baselines: List[str] = []
        for rev in args.baseline:
            old_sources = Path(tmp) / f'baseline-{len(baselines)}'
            old_sources.mkdir()
            baselines.append(export_sources(rev, old_sources))
            commands[BASELINE_ROW.format(rev=baselines[-1])] = (
                ['env', f'PYTHONPATH={old_sources / "src"}', *tool], MESSAGE)
        if msmtp is not None:
            msmtp_argv = msmtp_command(msmtp, sink.port)
            commands[MSMTP_ROW] = (msmtp_argv, MESSAGE)
        results = measure(commands, args.runs, env)
        breakdown = import_breakdown(tool, MESSAGE, env)
    senders = 2 + (msmtp is not None) + len(baselines)
    expected = senders * (args.runs + 3) + 1  # measured + warm-up runs; one importtime run
    if sink.received != expected:
        sys.exit(f'sink received {sink.received} messages, expected {expected}')

    text = report(results, breakdown, args.runs, msmtp_argv, baselines, measured_sources(env), load)
    print(text)
    if args.write_docs:
        replace_section(ROOT / 'docs' / 'benchmarks.md', HEADING, text)
        print(f'\nwritten to {ROOT / "docs" / "benchmarks.md"}')


if __name__ == '__main__':
    main()
