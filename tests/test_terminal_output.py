"""What the tools print is safe for a terminal and survives hostile output conditions.

- Server text (SMTP replies, stored last errors) never reaches stderr/stdout with its control
  characters: escape sequences are shown as ``?``, line breaks as ``\\r``/``\\n``.
- A closed stdout (``>&-``) is a one-line error with exit 74 (EX_IOERR) where output was asked
  for, and no problem at all where nothing is printed; a closed stderr never sends error
  messages to stdout.
- An ASCII-only locale degrades non-ASCII text to ``\\xf6`` escapes instead of an internal error.

All through the installed scripts, with real queue directories and the SMTP test server.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import Script, ScriptedSMTPServer, SMTPTestServer, smtp_reply

from helpers import run, script, write_config

TIMEOUT = 30
# ESC ] (OSC: set the window title) ... BEL, ESC [ 2 J (clear the screen), the C1 CSI, a
# bidirectional override and a bare CR that would overwrite the start of the line.
HOSTILE = 'no \x1b]0;pwned\x07 such \x1b[2J user \x9b1m \u202eevil\r'
RAW = [b'\x1b', b'\x07', '\x9b'.encode(), '\u202e'.encode(), b'\r']
MSG = b'Subject: hello\r\n\r\nbody\r\n'
UMSG = 'From: J\u00f6rg <j@example.org>\r\nSubject: Gr\u00fc\u00dfe \u2603\r\n\r\nbody\r\n'.encode()
USENDER = 'j\u00f6rg@ex\u00e4mple.org'


def assert_neutralised(output: bytes) -> None:
    for raw in RAW:
        assert raw not in output, (raw, output)
    assert b'?]0;pwned? such ?[2J user ?1m ?evil' in output, output


@pytest.fixture
def hostile_server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as server:
        server.set_recipient_reply('gone@example.org', 550, HOSTILE)
        server.set_recipient_reply('later@example.org', 451, HOSTILE)
        yield server


# --- server replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize('verbose', [[], ['-v']])
def test_mq_sendmail_shows_hostile_replies_neutralised(tmp_path: Path, hostile_server: SMTPTestServer,
                                                       verbose: List[str]) -> None:
    config = write_config(tmp_path / 'mq.conf', hostile_server)
    result = run([script('mq-sendmail'), '-C', config, *verbose, '-i', 'gone@example.org'], input=MSG,
                 timeout=TIMEOUT)
    assert result.returncode == 69, result.stderr
    assert_neutralised(result.stderr)
    if not verbose:
        assert result.stderr.count(b'\n') == 1, result.stderr


def test_mq_send_test_shows_hostile_replies_neutralised(tmp_path: Path, hostile_server: SMTPTestServer) -> None:
    config = write_config(tmp_path / 'mq.conf', hostile_server)
    result = run([script('mq-send-test'), '-C', config, '--to', 'gone@example.org'], timeout=TIMEOUT)
    assert result.returncode == 69
    assert_neutralised(result.stderr)
    assert result.stderr.count(b'\n') == 1, result.stderr


def test_mq_send_test_success_line_is_neutralised(tmp_path: Path) -> None:
    script_ = Script(replies={'DOT': smtp_reply(250, 'queued as \x1b[31mRED\x1b[0m \x9b2J')})
    with ScriptedSMTPServer(script_) as server:
        config = write_config(tmp_path / 'mq.conf', server)
        result = run([script('mq-send-test'), '-C', config, '--to', 'a@example.org'], timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert b'queued as ?[31mRED?[0m ?2J' in result.stdout, result.stdout
    assert b'\x1b' not in result.stdout and '\x9b'.encode() not in result.stdout
    assert result.stdout.count(b'\n') == 1, result.stdout


def test_mq_run_verbose_and_mq_queue_show_stored_errors_neutralised(tmp_path: Path,
                                                                     hostile_server: SMTPTestServer) -> None:
    queue_dir = tmp_path / 'q'
    queue = MaildirQueue(str(queue_dir))
    msg_id = str(queue.enqueue(MSG, 'a@example.org', ['later@example.org']))
    config = write_config(tmp_path / 'mq.conf', hostile_server, queue_dir=queue_dir)
    runner = run([script('mq-run'), '-C', config, '-v'], timeout=TIMEOUT)
    assert runner.returncode == 0, runner.stderr
    assert_neutralised(runner.stderr)
    # The reply is now the message's last error, stored in the queue file and shown by mq-queue.
    for args in (['list'], ['show', msg_id], ['retry', '--now', msg_id]):
        shown = run([script('mq-queue'), '-C', config, *args], timeout=TIMEOUT)
        output = shown.stdout + shown.stderr
        for raw in RAW:
            assert raw not in output, (args, raw, output)
        assert b'?]0;pwned?' in output, (args, output)


# --- closed stdout / stderr / stdin ------------------------------------------------------------------


def _closed(args: List[str], fd: int, *, input: Optional[bytes] = None, env: Optional[Dict[str, str]] = None
            ) -> Tuple[int, bytes, bytes]:
    """Run with descriptor ``fd`` closed (``>&-``, ``2>&-``, ``<&-``); the others captured."""
    def close_it() -> None:
        os.close(fd)

    proc = subprocess.Popen(args, stdin=subprocess.PIPE if fd != 0 and input is not None else subprocess.DEVNULL
                            if fd != 0 else None, stdout=subprocess.PIPE if fd != 1 else None,
                            stderr=subprocess.PIPE if fd != 2 else None, preexec_fn=close_it,
                            env={**os.environ, **(env or {})})
    out, err = proc.communicate(input if fd != 0 else None, timeout=TIMEOUT)
    return proc.returncode, out or b'', err or b''


@pytest.fixture
def unicode_queue(tmp_path: Path) -> Tuple[MaildirQueue, str, str]:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(UMSG, USENDER, ['b\u00f6@example.org']))
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nqueue_dir = {queue.path}\nsmtp_hostname = 127.0.0.1\nsmtp_port = 9\n')
    return queue, msg_id, str(config)


@pytest.mark.parametrize('args', [['list'], ['list', '--json'], ['show', '--body', 'ID'], ['stats'],
                                  ['retry', 'ID']])
def test_mq_queue_with_stdout_closed_is_a_clean_error(unicode_queue: Tuple[MaildirQueue, str, str],
                                                      args: List[str]) -> None:
    queue, msg_id, config = unicode_queue
    args = [msg_id if a == 'ID' else a for a in args]
    code, _, err = _closed([script('mq-queue'), '-C', config, *args], 1)
    assert code == 74, err
    assert err == b'mq-queue: cannot write the output: standard output is closed\n'


def test_mq_sendmail_bp_with_stdout_closed(unicode_queue: Tuple[MaildirQueue, str, str]) -> None:
    _queue, _msg_id, config = unicode_queue
    code, _, err = _closed([script('mq-sendmail'), '-C', config, '-bp'], 1)
    assert code == 74, err
    assert err == b'mq-sendmail: cannot write the output: standard output is closed\n'


def test_tools_that_print_nothing_do_not_mind_a_closed_stdout(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(MSG, 'a@example.org', ['b@example.org'])
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    code, _, err = _closed([script('mq-sendmail'), '-C', config, '-i', 'c@example.org'], 1, input=MSG)
    assert (code, err) == (0, b'')
    code, _, err = _closed([script('mq-run'), '-C', config], 1)
    assert (code, err) == (0, b'')
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == ['b@example.org', 'c@example.org']


def test_closed_stderr_never_moves_errors_to_stdout(tmp_path: Path) -> None:
    for tool, args in (('mq-queue', ['list']), ('mq-run', []), ('mq-sendmail', ['a@example.org'])):
        code, out, _ = _closed([script(tool), '-C', str(tmp_path / 'missing.conf'), *args], 2, input=MSG)
        assert code == 78 and out == b'', (tool, out)


def test_closed_stdin_is_read_as_empty(unicode_queue: Tuple[MaildirQueue, str, str]) -> None:
    queue, msg_id, config = unicode_queue
    code, out, err = _closed([script('mq-queue'), '-C', config, 'hold', '-'], 0)  # ids from stdin
    assert (code, out, err) == (64, b'', b'mq-queue: no ids on stdin\n')
    assert os.listdir(Path(queue.path) / 'new') == [msg_id]


# --- ASCII-only locales ----------------------------------------------------------------------------

ASCII_LOCALES = [
    {'LC_ALL': 'C', 'PYTHONIOENCODING': 'ascii'},
    {'LC_ALL': 'C', 'PYTHONCOERCECLOCALE': '0', 'PYTHONUTF8': '0'},
    {'LANG': 'C', 'LC_ALL': '', 'PYTHONCOERCECLOCALE': '0', 'PYTHONUTF8': '0'},
]


@pytest.mark.parametrize('locale_env', ASCII_LOCALES)
@pytest.mark.parametrize('args', [['list'], ['list', '--json'], ['show', 'ID'], ['show', '--body', 'ID'],
                                  ['stats'], ['hold', 'ID']])
def test_mq_queue_on_an_ascii_locale_degrades(unicode_queue: Tuple[MaildirQueue, str, str],
                                              locale_env: Dict[str, str], args: List[str]) -> None:
    _queue, msg_id, config = unicode_queue
    args = [msg_id if a == 'ID' else a for a in args]
    result = run([script('mq-queue'), '-C', config, *args], env=locale_env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b''
    if args[0] in ('list', 'show') and '--body' not in args:
        # the sender, escaped (or, in JSON, as JSON escapes): never a UnicodeEncodeError
        assert b'j\\xf6rg@ex\\xe4mple.org' in result.stdout or b'j\\u00f6rg' in result.stdout, result.stdout


@pytest.mark.parametrize('locale_env', ASCII_LOCALES)
def test_mq_sendmail_bp_on_an_ascii_locale_degrades(unicode_queue: Tuple[MaildirQueue, str, str],
                                                    locale_env: Dict[str, str]) -> None:
    _queue, _msg_id, config = unicode_queue
    result = run([script('mq-sendmail'), '-C', config, '-bp'], env=locale_env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert b'j\\xf6rg@ex\\xe4mple.org' in result.stdout and result.stderr == b''


def _on_terminal(args: List[str], env: Dict[str, str]) -> Tuple[int, bytes]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**os.environ, **env}, close_fds=True)
    os.close(slave)
    output = b''
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=TIMEOUT), output


@pytest.mark.parametrize('locale_env', ASCII_LOCALES)
def test_mq_run_progress_on_an_ascii_terminal(tmp_path: Path, smtp_server: SMTPTestServer,
                                              locale_env: Dict[str, str]) -> None:
    queue_dir = tmp_path / 'q'
    queue = MaildirQueue(str(queue_dir))
    queue.enqueue(UMSG, 'j@example.org', ['b@example.org'])
    queue.enqueue(UMSG, 'j@example.org', ['gone@example.org'])
    smtp_server.set_recipient_reply('gone@example.org', 550, 'n\u00f6 such user')
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    code, output = _on_terminal([script('mq-run'), '-C', config], locale_env)
    assert code == 0, output
    assert b'2/2 messages' in output and b'Traceback' not in output and b'internal error' not in output
    assert b'moved to failed/' in output
