"""mq-queue end to end: the installed script on real queue directories, a terminal from a pty,
a real runner process and the SMTP test server on 127.0.0.1. Also the JSON delivery/queue logs."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schwarz.mailqueue.app import init_app
from schwarz.mailqueue.cli.mq_queue import list_queue
from schwarz.mailqueue.logs import DELIVERY_LOG, QUEUE_LOG, SMTP_LOG, log_event
from schwarz.mailqueue.queue.format import HOLD_REASON
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.runner import send_all_queued_messages
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer
from test_queue_admin import Populated, listdir, message, populate

MQ_QUEUE = str(Path(sys.executable).parent / 'mq-queue')
TIMEOUT = 30


@pytest.fixture
def env(tmp_path) -> Dict[str, str]:
    home = tmp_path / 'home'
    home.mkdir()
    # HOME elsewhere: never pick up a real ~/.mailqueue-runner.conf.
    return {**os.environ, 'HOME': str(home), 'COLUMNS': '100', 'LC_ALL': 'C.UTF-8'}


@pytest.fixture
def pop(tmp_path) -> Iterator[Populated]:
    populated = populate(str(tmp_path / 'queue'))
    yield populated
    if populated.claimed.is_claimed:
        populated.queue.release(populated.claimed)


def mq(env: Dict[str, str], *args: str, queue: Optional[str] = None, input: Optional[str] = None
       ) -> subprocess.CompletedProcess[str]:
    cmd = [MQ_QUEUE] + (['--queue-dir', queue] if queue else []) + list(args)
    return subprocess.run(cmd, env=env, input=input if input is not None else '', capture_output=True, text=True,
                          timeout=TIMEOUT)


def on_terminal(env: Dict[str, str], args: Sequence[str], answer: bytes = b'') -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal, 100 columns wide."""
    master, slave = pty.openpty()
    fcntl_ioctl(slave, 100)
    proc = subprocess.Popen([MQ_QUEUE, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    if answer:
        os.write(master, answer)
    output = b''
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode('utf-8', 'replace').replace('\r\n', '\n')


def fcntl_ioctl(fd: int, columns: int) -> None:
    import fcntl

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', 24, columns, 0, 0))


def write_config(path: Path, **values: object) -> str:
    lines = ['[mqrunner]'] + [f'{key} = {value}' for key, value in values.items()]
    path.write_text('\n'.join(lines) + '\n')
    path.chmod(0o600)
    return str(path)


# --- list ----------------------------------------------------------------------------------------


def test_list_is_plain_and_one_line_per_message_when_piped(pop: Populated, env) -> None:
    result = mq(env, 'list', queue=pop.queue.path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and not lines[0].startswith('ID')  # no header, no footer when piped
    assert '\x1b' not in result.stdout
    by_id = {}
    for line in lines:
        fields = line.split()
        by_id[fields[0]] = fields
    assert all(len(short) == 8 for short in by_id)
    short = {msg_id: msg_id[:8] for msg_id in pop.all_ids}
    deferred = by_id[short[pop.deferred]]
    assert deferred[1:4] == ['new', '3h', '2'] and re.fullmatch(r'\d+m', deferred[4])
    assert deferred[6:8] == ['sender@example.org', 'slow@example.net,other@example.net']
    assert ' '.join(deferred[8:]) == 'slow@example.net: 451 4.3.0 later'
    assert by_id[short[pop.fresh]][4] == 'now'
    assert by_id[short[pop.claimed.msg_id]][1:5:3] == ['cur', 'sending']  # this process holds its lock
    assert by_id[short[pop.stale]][4] == 'stale'
    assert by_id[short[pop.held]][1:3] == ['hold', '2d']
    failed = by_id[short[pop.failed]]
    assert failed[1] == 'failed' and failed[6] == '<>' and 'no such user' in ' '.join(failed[8:])
    assert by_id[short[pop.corrupt]][8] == 'unreadable:'


def test_list_json_has_full_values(pop: Populated, env) -> None:
    result = mq(env, 'list', '--json', queue=pop.queue.path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_id = {r['id']: r for r in records}
    assert sorted(by_id) == sorted(pop.all_ids)
    deferred = by_id[pop.deferred]
    assert deferred['to'] == ['slow@example.net', 'other@example.net'] and deferred['retries'] == 2
    assert deferred['due'] is False and deferred['next_attempt'] and deferred['last_attempt']
    assert deferred['last_error'] == 'slow@example.net: 451 4.3.0 later'
    assert deferred['path'] == os.path.join(pop.queue.path, 'new', pop.deferred)
    assert 3 * 3600 - 5 < deferred['age_seconds'] < 3 * 3600 + 60
    assert by_id[pop.claimed.msg_id]['active'] is True and by_id[pop.stale]['active'] is False
    assert by_id[pop.failed]['from'] == '' and by_id[pop.failed]['failed_reason'].startswith('gone@example.com')
    assert by_id[pop.corrupt]['error'] and by_id[pop.corrupt]['to'] == []


def test_list_filters(pop: Populated, env) -> None:
    def ids(*args: str) -> List[str]:
        result = mq(env, 'list', '--json', *args, queue=pop.queue.path)
        assert result.returncode == 0, result.stderr
        return sorted(json.loads(line)['id'] for line in result.stdout.splitlines())

    assert ids('--state', 'hold', '--state', 'failed') == sorted([pop.held, pop.failed])
    assert ids('--older-than', '2h') == sorted([pop.deferred, pop.held])
    assert ids('--to', 'slow@') == [pop.deferred]
    assert ids('--from', '<>') == [pop.failed]
    assert ids('--state', 'new', '--older-than', '1h30m', '--to', 'example.net') == [pop.deferred]
    sorted_run = mq(env, 'list', '--sort', 'age', queue=pop.queue.path)
    assert sorted_run.stdout.splitlines()[0].split()[0] == pop.held[:8]
    none = mq(env, 'list', '--to', 'nobody', queue=pop.queue.path)
    assert (none.returncode, none.stdout) == (0, '')


def test_list_on_a_terminal_is_aligned_and_safe(pop: Populated, env) -> None:
    nasty = pop.queue.enqueue(message('nasty'), 'x@example.org', ['victim@example.org'])
    msg = pop.queue.claim(str(nasty))
    assert msg is not None and msg.meta.queue_date is not None
    pop.queue.defer(msg, ['victim@example.org'], 'victim@example.org: 451 \x1b[2J\x1b]0;pwned\x07 ' + 'x' * 200,
                    msg.meta.queue_date)
    code, out = on_terminal({k: v for k, v in env.items() if k != 'COLUMNS'}, ['--queue-dir', pop.queue.path, 'list'])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ['ID', 'STATE', 'AGE', 'TRIES', 'NEXT', 'SIZE']
    assert lines[-1] == f'-- 8 messages, {lines[-1].split()[-1]}'
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert '\x1b' not in out and '\x07' not in out
    # Fixed columns: the STATE column starts at the same place on every row.
    assert len({line.index(line.split()[1]) for line in lines[1:-1]}) == 1
    assert any(line.rstrip().endswith('…') for line in lines[1:-1])


def test_empty_queue(tmp_path, env) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    assert mq(env, 'list', queue=queue.path).stdout == 'Mail queue is empty\n'
    assert mq(env, queue=queue.path).stdout == 'Mail queue is empty\n'  # list is the default
    assert mq(env, 'list', '--json', queue=queue.path).stdout == ''
    stats = json.loads(mq(env, 'stats', '--json', queue=queue.path).stdout)
    assert stats['total'] == {'messages': 0, 'bytes': 0, 'unreadable': 0, 'oldest_age_seconds': None,
                              'oldest_id': None}


def test_list_piped_into_head_stops_quietly(tmp_path, env) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    for n in range(1500):  # more than a pipe buffer holds
        queue.enqueue(message(f'm{n}'), 'a@example.org', ['b@example.org'])
    proc = subprocess.Popen([MQ_QUEUE, '--queue-dir', queue.path, 'list'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=TIMEOUT) == 0
    assert first and proc.stderr.read() == b''
    proc.stderr.close()


def test_list_queue_function_for_mailq(pop: Populated, env) -> None:
    out = io.StringIO()
    assert list_queue(pop.queue.path, out) == 0
    cli = mq(env, 'list', queue=pop.queue.path).stdout
    assert [line.split()[:2] for line in out.getvalue().splitlines()] == [line.split()[:2] for line in cli.splitlines()]
    out = io.StringIO()
    assert list_queue(pop.queue.path, out, as_json=True) == 0
    assert {json.loads(line)['id'] for line in out.getvalue().splitlines()} == set(pop.all_ids)
    assert list_queue(os.path.join(pop.queue.path, 'nope'), io.StringIO()) == 66


def test_huge_queues_list_full_ids_instead_of_keeping_every_name(pop: Populated) -> None:
    from schwarz.mailqueue.cli.mq_queue import _write_listing
    from schwarz.mailqueue.queue.admin import QueueAdmin, Selection

    out = io.StringIO()
    _write_listing(QueueAdmin(pop.queue, abbrev_limit=3), out, Selection(), as_json=False)
    assert sorted(line.split()[0] for line in out.getvalue().splitlines()) == sorted(pop.all_ids)


# --- show ----------------------------------------------------------------------------------------


def test_show_headers_body_and_prefixes(pop: Populated, env) -> None:
    result = mq(env, 'show', pop.deferred[:6], queue=pop.queue.path)
    assert result.returncode == 0, result.stderr
    head, _, headers = result.stdout.partition('\n\n')
    fields = dict(line.split(':', 1) for line in head.splitlines())
    assert fields['Queue-ID'].strip() == pop.deferred
    assert fields['State'].strip().startswith('new (deferred, next attempt in')
    assert fields['Recipients'].strip() == 'slow@example.net, other@example.net'
    assert fields['Attempts'].strip() == '2'
    assert fields['Last error'].strip() == 'slow@example.net: 451 4.3.0 later'
    assert 'Next attempt' in fields and 'Last attempt' in fields
    assert all(value.startswith(' ') for value in fields.values())  # a space after every label
    # (text mode turns the message's CRLF into LF)
    assert headers == 'From: sender@example.org\nTo: rcpt@example.org\nSubject: deferred\n' \
        'Message-ID: <deferred@example.org>\n'
    body = subprocess.run([MQ_QUEUE, '--queue-dir', pop.queue.path, 'show', '--body', pop.deferred],
                          env=env, capture_output=True, timeout=TIMEOUT)
    assert body.returncode == 0 and body.stdout.endswith(b'\n\n' + message('deferred'))
    corrupt = mq(env, 'show', '--body', pop.corrupt, queue=pop.queue.path)
    assert corrupt.returncode == 0 and 'Unreadable:' in corrupt.stdout
    assert corrupt.stdout.endswith('this is not a queue file\n')


def test_ambiguous_and_unknown_ids(pop: Populated, env) -> None:
    data = open(os.path.join(pop.queue.path, 'new', pop.fresh), 'rb').read()
    for name in ('abcd1111.1', 'abcd2222.1'):
        (Path(pop.queue.path) / 'new' / name).write_bytes(data)
    result = mq(env, 'show', 'abcd', queue=pop.queue.path)
    assert result.returncode == 64 and 'ambiguous' in result.stderr and 'abcd1111.1' in result.stderr
    assert result.stderr.count('\n') == 1  # one line, no traceback
    result = mq(env, 'hold', 'ffffff', queue=pop.queue.path)
    assert result.returncode == 66 and 'no such message' in result.stderr
    result = mq(env, 'delete', '-y', 'abcd1', 'ffffff', queue=pop.queue.path)
    assert result.returncode == 66 and (Path(pop.queue.path) / 'new' / 'abcd1111.1').exists()  # all or nothing
    assert mq(env, 'show', 'ab', queue=pop.queue.path).returncode == 64  # too short
    assert mq(env, 'show', '../x', queue=pop.queue.path).returncode == 64


# --- retry ---------------------------------------------------------------------------------------


def test_retry_makes_due_now(pop: Populated, env) -> None:
    result = mq(env, 'retry', pop.deferred[:8], queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, f'{pop.deferred}: due now\n'), result.stderr
    meta = pop.queue.read_meta('new', pop.deferred)
    assert meta.retries == 2 and meta.last_delivery_attempt is None
    assert mq(env, 'retry', pop.deferred, queue=pop.queue.path).stdout == f'{pop.deferred}: already due\n'
    held = mq(env, 'retry', pop.held, queue=pop.queue.path)
    assert held.returncode == 64 and 'is in hold/ (release it first)' in held.stderr
    assert mq(env, 'retry', queue=pop.queue.path).returncode == 64
    assert mq(env, 'retry', '--all', pop.held, queue=pop.queue.path).returncode == 64


def test_retry_all(tmp_path, env) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    ids = [str(queue.enqueue(message(f'm{n}'), 'a@example.org', ['b@example.org'])) for n in range(3)]
    for msg_id in ids[:2]:
        msg = queue.claim(msg_id)
        assert msg is not None
        queue.defer(msg, ['b@example.org'], '451 later', msg.meta.queue_date)  # type: ignore[arg-type]
    result = mq(env, 'retry', '--all', queue=queue.path)
    assert (result.returncode, result.stdout) == (0, 'made due 2 messages, 1 unchanged\n'), result.stderr
    assert all(queue.read_meta('new', i).last_delivery_attempt is None for i in ids)


def test_retry_now_delivers_and_writes_json_logs(pop: Populated, env, tmp_path, smtp_server: SMTPTestServer
                                                 ) -> None:
    delivery_log = tmp_path / 'delivery.log'
    queue_log = tmp_path / 'queue.log'
    config = write_config(tmp_path / 'mq.conf', queue_dir=pop.queue.path, smtp_hostname='127.0.0.1',
                          smtp_port=smtp_server.port, smtp_tls='none', delivery_log=delivery_log,
                          queue_log=queue_log, log_format='json')
    result = mq(env, '-C', config, 'retry', '--now', pop.deferred[:8])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'{pop.deferred}: sent (250')
    (received,) = smtp_server.wait_for_messages(1)
    assert received.rcpt_tos == ['slow@example.net', 'other@example.net']
    assert received.data.replace(b'\r\n', b'\n') == message('deferred').replace(b'\r\n', b'\n')
    assert pop.deferred not in listdir(pop.queue, 'new')

    assert mq(env, '-C', config, 'hold', pop.fresh).returncode == 0
    events = [json.loads(line) for line in delivery_log.read_text().splitlines()]
    assert [e['status'] for e in events] == ['sent']
    sent = events[0]
    assert sent['to'] == 'slow@example.net,other@example.net' and sent['attempts'] == 3
    assert sent['via'] == f'smtp:127.0.0.1:{smtp_server.port}' and sent['app'] == 'mq-queue'
    assert sent['msgid'] == '<deferred@example.org>' and sent['smtp'].startswith('250')
    (held,) = [json.loads(line) for line in queue_log.read_text().splitlines()]
    assert (held['status'], held['queue_id'], held['app']) == ('held', pop.fresh, 'mq-queue')

    # The same events in logfmt carry exactly the same fields.
    logfmt_log = tmp_path / 'delivery-logfmt.log'
    config = write_config(tmp_path / 'mq2.conf', queue_dir=pop.queue.path, smtp_hostname='127.0.0.1',
                          smtp_port=smtp_server.port, smtp_tls='none', delivery_log=logfmt_log)
    other = str(pop.queue.enqueue(message('deferred'), 'sender@example.org', ['slow@example.net', 'other@example.net']))
    msg = pop.queue.claim(other)
    assert msg is not None
    for _ in range(2):
        assert msg.meta.queue_date is not None
        pop.queue.defer(msg, msg.to_addrs, 'later', msg.meta.queue_date)
        msg = pop.queue.claim(other)
        assert msg is not None
    pop.queue.release(msg)
    assert mq(env, '-C', config, 'retry', '--now', other).returncode == 0
    (line,) = logfmt_log.read_text().splitlines()
    fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line[line.index('status='):]))
    fields = {k: json.loads(v) if v.startswith('"') else v for k, v in fields.items()}
    json_fields = {k: v for k, v in sent.items() if k not in ('time', 'level', 'logger')}
    assert set(fields) == set(json_fields)
    for key in ('status', 'to', 'via', 'from', 'attempts', 'app', 'msgid', 'smtp'):
        assert fields[key] == str(json_fields[key]), key


def test_retry_now_reports_a_deferral(pop: Populated, env, tmp_path, smtp_server: SMTPTestServer) -> None:
    smtp_server.set_reply('MAIL', 451, '4.3.0 try again later')
    config = write_config(tmp_path / 'mq.conf', queue_dir=pop.queue.path, smtp_hostname='127.0.0.1',
                          smtp_port=smtp_server.port, smtp_tls='none')
    result = mq(env, '-C', config, 'retry', '--now', pop.fresh)
    assert result.returncode == 75 and 'deferred' in result.stderr and '451' in result.stderr
    meta = pop.queue.read_meta('new', pop.fresh)
    assert meta.retries == 1 and '451' in (meta.extra.get('X-Queue-Last-Error') or '')
    no_smtp = mq(env, 'retry', '--now', pop.fresh, queue=pop.queue.path)
    assert no_smtp.returncode == 78 and 'smtp_hostname' in no_smtp.stderr


# --- hold / release / delete / requeue -----------------------------------------------------------


def test_hold_and_release(pop: Populated, env) -> None:
    result = mq(env, 'hold', '--reason', 'waiting for DNS fix', pop.fresh, queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, f'{pop.fresh}: held\n'), result.stderr
    assert pop.queue.read_meta('hold', pop.fresh).extra[HOLD_REASON] == 'waiting for DNS fix'
    listing = mq(env, 'list', '--state', 'hold', queue=pop.queue.path).stdout
    assert 'waiting for DNS fix' in listing
    assert mq(env, 'hold', pop.fresh, queue=pop.queue.path).stdout == f'{pop.fresh}: already held\n'
    result = mq(env, 'release', '--all', queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, 'released 2 messages\n')
    assert listdir(pop.queue, 'hold') == []
    result = mq(env, 'hold', '--all', '--to', 'slow@', queue=pop.queue.path)
    assert result.stdout == 'held 1 message\n' and listdir(pop.queue, 'hold') == [pop.deferred]


def test_an_operation_on_a_message_being_delivered_reports_busy(pop: Populated, env) -> None:
    started = time.monotonic()
    result = mq(env, '--wait', '0.3', 'hold', pop.claimed.msg_id, queue=pop.queue.path)
    assert result.returncode == 75 and 'busy: being delivered' in result.stderr
    assert time.monotonic() - started < 10
    assert pop.claimed.msg_id in listdir(pop.queue, 'cur')
    assert mq(env, 'delete', '-y', '--wait', '0', pop.claimed.msg_id, queue=pop.queue.path).returncode == 75
    assert pop.claimed.msg_id in listdir(pop.queue, 'cur')


def test_delete_asks_on_a_terminal(pop: Populated, env) -> None:
    code, out = on_terminal(env, ['--queue-dir', pop.queue.path, 'delete', pop.fresh[:8]], b'n\n')
    assert code == 0 and 'Delete this message? [y/N]' in out and 'nothing deleted' in out
    assert f'{pop.fresh} (new, from <sender@example.org> to rcpt@example.org)' in out
    assert pop.fresh in listdir(pop.queue, 'new')
    code, out = on_terminal(env, ['--queue-dir', pop.queue.path, 'delete', pop.fresh[:8]], b'y\n')
    assert code == 0 and f'{pop.fresh}: deleted from new/' in out
    assert pop.fresh not in listdir(pop.queue, 'new')
    code, out = on_terminal(env, ['--queue-dir', pop.queue.path, 'delete', '-y', pop.held])
    assert code == 0 and '[y/N]' not in out and pop.held not in listdir(pop.queue, 'hold')


def test_delete_from_a_script_with_ids_on_stdin(pop: Populated, env) -> None:
    ids = '\n'.join([pop.failed, pop.corrupt, pop.stale]) + '\n'
    result = mq(env, 'delete', '-', queue=pop.queue.path, input=ids)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f'{pop.failed}: deleted from failed/', f'{pop.corrupt}: deleted from new/',
                                          f'{pop.stale}: deleted from cur/']
    assert listdir(pop.queue, 'failed') == [] and pop.corrupt not in listdir(pop.queue, 'new')


def test_requeue(pop: Populated, env) -> None:
    result = mq(env, 'requeue', pop.failed[:8], queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, f'{pop.failed}: requeued\n'), result.stderr
    meta = pop.queue.read_meta('new', pop.failed)
    assert meta.retries == 0 and meta.failed_reason is None
    wrong = mq(env, 'requeue', pop.deferred, queue=pop.queue.path)
    assert wrong.returncode == 64 and 'use retry' in wrong.stderr
    for n in range(3):
        pop.queue.store_failed(message(f'f{n}'), 'a@example.org', ['b@example.org'], '550 no')
    result = mq(env, 'requeue', '--all', queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, 'requeued 3 messages\n')
    assert listdir(pop.queue, 'failed') == []


# --- purge / stats -------------------------------------------------------------------------------


def test_purge(pop: Populated, env) -> None:
    dry = mq(env, 'purge', '--older-than', '2h', '--dry-run', queue=pop.queue.path)
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == '2 messages would be purged'
    assert sorted(dry.stdout.splitlines()[:-1]) == sorted([f'{pop.deferred}: would be purged from new/',
                                                           f'{pop.held}: would be purged from hold/'])
    code, out = on_terminal(env, ['--queue-dir', pop.queue.path, 'purge', '--older-than', '1d'], b'n\n')
    assert code == 0 and 'Delete 1 message older than 1d from new, hold, failed? [y/N]' in out
    assert pop.held in listdir(pop.queue, 'hold')
    result = mq(env, 'purge', '--older-than', '2h', '--state', 'new', queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, 'purged 1 message\n')
    assert pop.deferred not in listdir(pop.queue, 'new') and pop.held in listdir(pop.queue, 'hold')
    assert mq(env, 'purge', queue=pop.queue.path).returncode == 64  # --older-than is required
    assert mq(env, 'purge', '--older-than', 'soon', queue=pop.queue.path).returncode == 64


def test_stats_human_json_and_prometheus(pop: Populated, env, tmp_path) -> None:
    human = mq(env, 'stats', queue=pop.queue.path)
    assert human.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in human.stdout.splitlines()[1:6]}
    assert rows['new'][0] == '3' and rows['hold'] == ['1', rows['hold'][1], '2d'] and rows['total'][0] == '7'

    data = json.loads(mq(env, 'stats', '--json', queue=pop.queue.path).stdout)
    assert {k: v['messages'] for k, v in data['states'].items()} == {'new': 3, 'cur': 2, 'hold': 1, 'failed': 1}
    assert data['states']['hold']['oldest_id'] == pop.held
    assert 2 * 86400 <= data['states']['hold']['oldest_age_seconds'] < 2 * 86400 + 60
    assert (data['deferred'], data['due'], data['active'], data['total']['unreadable']) == (1, 1, 1, 1)

    text = mq(env, 'stats', '--prometheus', queue=pop.queue.path).stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {f.type for f in families.values()} == {'gauge'}
    samples = {(s.name, s.labels.get('state')): s.value for f in families.values() for s in f.samples}
    assert samples[('mailqueue_messages', 'new')] == 3 and samples[('mailqueue_messages', 'cur')] == 2
    assert samples[('mailqueue_size_bytes', 'failed')] == data['states']['failed']['bytes']
    assert samples[('mailqueue_oldest_message_age_seconds', 'hold')] >= 2 * 86400
    assert samples[('mailqueue_deferred_messages', None)] == 1
    assert samples[('mailqueue_unreadable_files', 'new')] == 1
    assert samples[('mailqueue_active_deliveries', None)] == 1

    target = tmp_path / 'textfile' / 'mailqueue.prom'
    target.parent.mkdir()
    result = mq(env, 'stats', '--prometheus', '-o', str(target), queue=pop.queue.path)
    assert (result.returncode, result.stdout) == (0, '')
    assert os.listdir(target.parent) == ['mailqueue.prom']  # no temporary file left behind
    assert {f.name for f in text_string_to_metric_families(target.read_text())} == set(families)
    assert oct(target.stat().st_mode & 0o777) == '0o644'


# --- errors --------------------------------------------------------------------------------------


def test_usage_and_configuration_errors(tmp_path, env) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    checks = [
        (['list'], None, 64, 'no queue directory'),
        (['--queue-dir', str(tmp_path / 'missing'), 'list'], None, 66, 'does not exist'),
        (['--queue-dir', queue.path, 'list', '--state', 'sent'], None, 64, 'unknown state'),
        (['--queue-dir', queue.path, 'frobnicate'], None, 64, 'invalid choice'),
        (['--queue-dir', queue.path, 'stats', '--json', '--prometheus'], None, 64, 'not allowed'),
        (['--queue-dir', queue.path, 'hold', 'abcd', '--to', 'x'], None, 64, 'only apply to --all'),
        (['-C', str(tmp_path / 'nope.conf'), 'list'], None, 78, 'nope.conf'),
    ]
    bad_config = tmp_path / 'bad.conf'
    bad_config.write_text('[mqrunner]\nqueue_dir = /tmp\nbogus_key = 1\n')
    checks.append((['-C', str(bad_config), 'list'], None, 78, 'bogus_key'))
    for args, _input, code, text in checks:
        result = mq(env, *args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr and result.stderr.startswith('mq-queue: ') and 'Traceback' not in result.stderr
    config = write_config(tmp_path / 'ok.conf', queue_dir=queue.path)
    assert mq(env, '-C', config, 'list').stdout == 'Mail queue is empty\n'
    assert mq(env, 'list', '-C', config).stdout == 'Mail queue is empty\n'  # options after the command too


def run_as_nobody(argv: List[str]) -> tuple[int, str]:
    """main(argv) in a forked child that dropped to nobody (root ignores permission bits).

    Forked rather than exec'd: nobody may not be able to read the virtualenv.
    """
    import pwd

    from schwarz.mailqueue.cli import mq_queue

    nobody = pwd.getpwnam('nobody')
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 70
        try:
            os.dup2(write_end, 2)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, 'wb', buffering=0), write_through=True)
            code = mq_queue.main(argv)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as fp:
        err = fp.read().decode()
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_unreadable_queue_is_a_clear_error(tmp_path, env, monkeypatch) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    queue.enqueue(message('secret'), 'a@example.org', ['b@example.org'])
    if os.geteuid() == 0:
        monkeypatch.setenv('HOME', env['HOME'])
        os.chmod(tmp_path, 0o755)  # the queue itself stays 0700, owned by root
        code, err = run_as_nobody(['--queue-dir', queue.path, 'list'])
    else:
        os.chmod(os.path.join(queue.path, 'new'), 0)
        try:
            result = mq(env, 'list', queue=queue.path)
        finally:
            os.chmod(os.path.join(queue.path, 'new'), 0o700)
        code, err = result.returncode, result.stderr
    assert code == 77 and 'Permission denied' in err and 'Traceback' not in err, err


# --- live queue ----------------------------------------------------------------------------------

RUNNER = textwrap.dedent('''
    import signal, sys, time
    from schwarz.mailqueue.queue.maildir import MaildirQueue
    from schwarz.mailqueue.runner import QueueRunner
    from schwarz.mailqueue.smtp.transport import SMTPMailer
    runner = QueueRunner(MaildirQueue(sys.argv[1], fsync=False), force=True,
                         mailer=SMTPMailer('127.0.0.1', int(sys.argv[2]), tls='none'))
    signal.signal(signal.SIGTERM, lambda *args: runner.stop())  # finish the message in flight, then stop
    print('ready', flush=True)
    passes = 0
    while not runner.stop_event.is_set():
        runner.run_once()
        passes += 1
        time.sleep(0.005)
    print(passes)
''')


def test_every_command_on_a_live_queue_with_a_runner_process(tmp_path, env, smtp_server: SMTPTestServer) -> None:
    """mq-queue commands while a queue runner in another process delivers: nothing lost, nothing twice."""
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    tags: Dict[str, str] = {}
    for n in range(150):
        tags[str(queue.enqueue(message(f'm{n}'), 'a@example.org', ['b@example.org']))] = f'm{n}'
    for n in range(5):
        tags[queue.store_failed(message(f'f{n}'), 'a@example.org', ['b@example.org'], '550 refused')] = f'f{n}'
    smtp_server.set_delay('DATA', 0.02)  # a full pass takes longer than the admin rounds below
    runner = subprocess.Popen([sys.executable, '-c', RUNNER, queue.path, str(smtp_server.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deleted: Set[str] = set()
    try:
        assert runner.stdout is not None and runner.stdout.readline() == 'ready\n'
        for _round in range(3):
            for args in (['hold', '--all'], ['release', '--all'], ['retry', '--all'], ['requeue', '--all']):
                result = mq(env, '--wait', '10', *args, queue=queue.path)
                assert result.returncode == 0, (args, result.stdout, result.stderr)
            listing = mq(env, 'list', '--json', queue=queue.path)
            assert listing.returncode == 0, listing.stderr
            rows = [json.loads(line) for line in listing.stdout.splitlines()]
            assert all(row['error'] is None for row in rows)
            stats = mq(env, 'stats', '--prometheus', queue=queue.path)
            assert list(text_string_to_metric_families(stats.stdout))
            waiting = [row['id'] for row in rows if row['state'] == 'new'][-3:]
            if waiting:
                result = mq(env, '--wait', '10', 'delete', '-y', *waiting, queue=queue.path)
                assert result.returncode in (0, 66), result.stderr
                deleted.update(line.split(':')[0] for line in result.stdout.splitlines() if 'deleted from' in line)
            assert mq(env, 'show', next(iter(tags)), queue=queue.path).returncode in (0, 66)
        assert len(smtp_server.received) > 0, 'the runner did not deliver while mq-queue worked'
    finally:
        runner.terminate()
        out, err = runner.communicate(timeout=TIMEOUT)
    assert runner.returncode == 0, err
    assert int(out) >= 1
    # Whatever is still held or failed goes out in a last pass.
    assert mq(env, 'release', '--all', queue=queue.path).returncode == 0
    assert mq(env, 'requeue', '--all', queue=queue.path).returncode == 0
    smtp_server.set_delay('DATA', None)
    send_all_queued_messages(queue.path, mailer=SMTPMailer('127.0.0.1', smtp_server.port, tls='none'), force=True,
                             workers=8)

    subjects = [m.as_message()['Subject'] for m in smtp_server.received]
    assert len(subjects) == len(set(subjects)), 'a message was delivered twice'
    deleted_tags = {tags[i] for i in deleted}
    assert deleted and not deleted_tags & set(subjects)
    assert set(subjects) | deleted_tags == set(tags.values())
    for state in ('new', 'cur', 'hold', 'failed', 'tmp'):
        assert listdir(queue, state) == [], state


# --- JSON log files --------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ('mailqueue', DELIVERY_LOG, QUEUE_LOG, SMTP_LOG)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


def test_log_files_in_json_one_object_per_line_even_after_init_app_again(tmp_path, restore_logging) -> None:
    delivery_log = tmp_path / 'delivery.log'
    queue_log = tmp_path / 'queue.log'
    config = write_config(tmp_path / 'c.conf', queue_dir=tmp_path / 'q', delivery_log=delivery_log,
                          queue_log=queue_log, log_format='json')
    for attempt in range(3):
        # A custom wrapper runs one_shot_queue_run (and so init_app) again and again in one process.
        app = init_app(config, load_plugins=False)
        app.close()
        log_event(logging.getLogger(DELIVERY_LOG), {'status': 'sent', 'to': 'a@x,b@y', 'msgid': '<id@x>',
                                                   'via': 'smtp:h:25', 'attempts': attempt + 1, 'smtp': '250 OK'})
        log_event(logging.getLogger(QUEUE_LOG), {'status': 'queued', 'to': 'c@z', 'queue_id': 'abc'})
    lines = delivery_log.read_text().splitlines()
    assert [json.loads(line)['attempts'] for line in lines] == [1, 2, 3]
    first = json.loads(lines[0])
    assert set(first) == {'time', 'level', 'logger', 'status', 'to', 'msgid', 'via', 'attempts', 'smtp'}
    assert (first['logger'], first['smtp'], first['to']) == (DELIVERY_LOG, '250 OK', 'a@x,b@y')
    assert [json.loads(line)['status'] for line in queue_log.read_text().splitlines()] == ['queued'] * 3

    # Switching the format back applies at once, and to the file only.
    write_config(tmp_path / 'c.conf', queue_dir=tmp_path / 'q', delivery_log=delivery_log)
    init_app(config, load_plugins=False).close()
    log_event(logging.getLogger(DELIVERY_LOG), {'status': 'deferred', 'to': 'a@x'})
    last = delivery_log.read_text().splitlines()
    assert len(last) == 4 and last[-1].endswith(' status=deferred to=a@x')


def test_show_labels_our_own_meta_values(tmp_path: Path, env) -> None:
    from datetime import datetime, timedelta, timezone

    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = queue.enqueue(b'Subject: x\r\n\r\nbody\r\n', 'a@example.org', ['b@example.org'])
    msg = queue.claim(msg_id)
    assert msg is not None
    now = datetime.now(timezone.utc)
    queue.defer(msg, ['b@example.org'], '451 later', now, now + timedelta(hours=2))
    result = mq(env, 'show', msg_id, queue=queue.path)
    assert result.returncode == 0, result.stderr
    head = result.stdout.partition('\n\n')[0]
    assert 'X-Queue-' not in head, head  # the next attempt has its label already
    next_line = [line for line in head.splitlines() if line.startswith('Next attempt:')]
    assert len(next_line) == 1 and ('1h59m' in next_line[0] or '2h' in next_line[0]), head
