"""mq-run as installed: concurrency, crash recovery, daemon shutdown, plugins, progress."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import run, script, write_config

MSG = b'Subject: from the queue\r\n\r\nbody\r\n'


def fill(queue_dir: str, count: int, prefix: str = 'r') -> list[str]:
    queue = MaildirQueue(queue_dir, fsync=False)
    return [str(queue.enqueue(MSG + b'%d' % n, 'a@x', [f'{prefix}{n}@x'])) for n in range(count)]


def read_terminal(controller: int) -> bytes:
    """Everything written to a pty until its other end is closed (EIO ends it on Linux); closes it."""
    output = b''
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return output


def delivered(server: SMTPTestServer) -> Counter:
    return Counter(r for m in server.received for r in m.rcpt_tos)


def test_four_concurrent_runners_deliver_each_message_exactly_once(smtp_server, tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    fill(queue_dir, 2000)
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    procs = [subprocess.Popen([script('mq-run'), '-C', config, '--workers', '2'],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outcomes = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1] for o in outcomes]
    counts = delivered(smtp_server)
    assert len(counts) == 2000 and set(counts.values()) == {1}
    for state in ('new', 'cur', 'failed'):
        assert os.listdir(os.path.join(queue_dir, state)) == []


def test_sigkill_mid_delivery_loses_nothing(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    ids = fill(queue_dir, 1000)
    rng = random.Random(7)
    with SMTPTestServer(delays={'DATA': 0.01}) as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_dir=queue_dir)
        for _ in range(12):
            proc = subprocess.Popen([script('mq-run'), '-C', config, '--workers', '2', '--force'],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.25 + rng.random() * 0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        queue = MaildirQueue(queue_dir)
        left = set(queue.iter_ids('new')) | set(queue.iter_ids('cur'))
        counts = delivered(server)
        # Every message is either delivered or still queued (claimed ones are recovered next run).
        lost = [n for n, msg_id in enumerate(ids) if f'r{n}@x' not in counts and msg_id not in left]
        assert lost == []
        assert 0 < len(counts) < 1000, 'kills should land mid-queue'
        result = run([script('mq-run'), '-C', config, '--force', '--workers', '4'], timeout=120)
        assert result.returncode == 0, result.stderr
        counts = delivered(server)
        assert sorted(counts) == sorted(f'r{n}@x' for n in range(1000))
        assert list(queue.iter_ids('new')) == [] and list(queue.iter_ids('cur')) == []
        duplicates = sum(c - 1 for c in counts.values())
        assert duplicates <= 12 * 2  # only the in-flight message of each worker per kill


def test_daemon_picks_up_new_mail_and_sigterm_leaves_nothing_claimed(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    with SMTPTestServer(delays={'DATA': 0.02}) as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_dir=queue_dir)
        MaildirQueue(queue_dir)
        proc = subprocess.Popen([script('mq-run'), '-C', config, '--daemon', '--workers', '3'],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            fill(queue_dir, 1, prefix='first')
            deadline = time.monotonic() + 3
            while not server.received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.received, 'daemon did not pick up a new message within 3 s'
            fill(queue_dir, 400)
            # 400 messages take at least 400 * 0.02 s / 3 workers; wait until some are claimed
            # rather than for a fixed time, which a loaded machine may not honour.
            deadline = time.monotonic() + 5
            while not os.listdir(os.path.join(queue_dir, 'cur')) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert os.listdir(os.path.join(queue_dir, 'cur')), 'expected deliveries in flight'
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert os.listdir(os.path.join(queue_dir, 'cur')) == []
        left = len(os.listdir(os.path.join(queue_dir, 'new')))
        assert left > 0 and left + len(delivered(server)) == 401
        assert set(delivered(server).values()) == {1}


PLUGIN = '''
from schwarz.puzzle_plugins import connect_signals, disconnect_signals
from schwarz.mailqueue import registry, MQAction, MQSignal

class MyPlugin:
    def __init__(self, registry):
        self._connected_signals = None
        self._registry = registry

    def signal_map(self):
        return {
            MQSignal.delivery_successful: self.delivery_successful,
            MQSignal.delivery_failed: self.delivery_failed,
        }

    def delivery_successful(self, _, msg, send_result):
        # called when a message was delivered successfully
        pass

    def delivery_failed(self, _, msg, send_result):
        # called when message delivery failed
        if msg.retries > 10:
            # discard messsage after 10 failed delivery attempts
            return MQAction.DISCARD
        return None

def initialize(context, registry):
    plugin = MyPlugin(registry)
    plugin._connected_signals = connect_signals(plugin.signal_map(), registry)
    context['plugin'] = plugin

def terminate(context):
    plugin = context['plugin']
    disconnect_signals(plugin._connected_signals, plugin._registry)
    plugin._registry = None
    plugin._connected_signals = None
    open(%r, 'w').write('terminated')
'''


def install_readme_plugin(tmp_path: Path) -> tuple[dict, Path]:
    """The README's example plugin, registered under the `mailqueue.plugins` entry point."""
    site = tmp_path / 'site'
    (site / 'example' / 'app').mkdir(parents=True)
    marker = tmp_path / 'terminated'
    (site / 'example' / 'app' / 'mqplugin.py').write_text(PLUGIN % str(marker))
    dist = site / 'example_app-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: example-app\nVersion: 1.0\n')
    (dist / 'entry_points.txt').write_text('[mailqueue.plugins]\nmyplugin = example.app.mqplugin\n')
    return {'PYTHONPATH': str(site)}, marker


def test_readme_plugin_discards_after_ten_failed_attempts(smtp_server, tmp_path) -> None:
    from test_runner import failed_once
    env, marker = install_readme_plugin(tmp_path)
    queue_dir = str(tmp_path / 'q')
    queue = MaildirQueue(queue_dir)
    young = failed_once(queue, minutes_ago=600, retries=3, to=('young@x',))
    old = failed_once(queue, minutes_ago=600, retries=11, to=('old@x',))
    smtp_server.set_reply('RCPT', 451, 'not today')
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir, plugins='myplugin')
    result = run([script('mq-run'), '-C', config], env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(queue.iter_ids('new')) == [young]  # old one discarded by the plugin
    assert old not in set(queue.iter_ids('failed'))
    assert marker.read_text() == 'terminated'  # plugins are terminated at exit


def test_progress_only_on_a_terminal(smtp_server, tmp_path) -> None:
    import pty
    queue_dir = str(tmp_path / 'q')
    fill(queue_dir, 20)
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    quiet = run([script('mq-run'), '-C', config])
    assert quiet.returncode == 0 and quiet.stdout == b'' and quiet.stderr == b''
    fill(queue_dir, 20)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([script('mq-run'), '-C', config], stderr=terminal, stdout=subprocess.DEVNULL)
    os.close(terminal)
    assert proc.wait(timeout=60) == 0
    output = read_terminal(controller)
    assert b'20/20 messages' in output and b'sent 20' in output


def test_missing_config_and_bad_queue(tmp_path) -> None:
    result = run([script('mq-run'), '-C', str(tmp_path / 'nope.conf')])
    assert result.returncode == 78 and result.stderr.count(b'\n') == 1 and b'nope.conf' in result.stderr
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    config = write_config(tmp_path / 'mq.conf', queue_dir=str(blocker / 'q'))
    result = run([script('mq-run'), '-C', config])
    assert result.returncode == 75 and b'Traceback' not in result.stderr, result.stderr


def test_custom_wrapper_cookbook(smtp_server, tmp_path) -> None:
    """The README's "Custom wrapper for mq-run" example, in a real subprocess."""
    env, marker = install_readme_plugin(tmp_path)
    queue_dir = str(tmp_path / 'q')
    fill(queue_dir, 3)
    wrapper = textwrap.dedent(f'''
        from schwarz.mailqueue.queue_runner import one_shot_queue_run
        queue_dir = {queue_dir!r}

        def main():
            cli_options = {{'verbose': True}}
            settings = {{
                'smtp_hostname': '127.0.0.1', 'smtp_port': {smtp_server.port}, 'smtp_tls': 'no',
                'plugins': 'myplugin',
                'basic_logging_configured': True,
            }}
            one_shot_queue_run(queue_dir, options=cli_options, settings=settings)

        if __name__ == '__main__':
            main()
    ''')
    result = run([sys.executable, '-c', wrapper], env=env)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 3 and marker.read_text() == 'terminated'


def test_symlinked_queue_directory_is_a_clear_error(smtp_server, tmp_path) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    os.rmdir(queue_dir / 'new')
    os.symlink(elsewhere, queue_dir / 'new')
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    result = run([script('mq-run'), '-C', config])
    assert result.returncode == 75, result.stderr
    assert b'symlink' in result.stderr and result.stderr.count(b'\n') == 1 and b'Traceback' not in result.stderr


def test_errors_quoting_input_stay_on_one_line(tmp_path) -> None:
    result = run([script('mq-sendmail'), '--x\nInjected: line', 'a@example.org'], input=b'x')
    assert result.returncode == 64
    assert result.stderr.count(b'\n') == 1 and b'\\nInjected' in result.stderr


def test_queue_dir_argument_still_needs_a_configuration(tmp_path) -> None:
    result = run([script('mq-run'), str(tmp_path / 'q')], env={'HOME': str(tmp_path)})
    assert result.returncode == 78 and b'no configuration found' in result.stderr


def test_dead_letters_are_reported_even_from_cron(smtp_server, tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    MaildirQueue(queue_dir).enqueue(MSG, 'a@x', ['gone@x'])
    smtp_server.set_recipient_reply('gone@x', 550, 'no such user')
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    result = run([script('mq-run'), '-C', config, '--quiet'])
    assert result.returncode == 0
    assert result.stderr == b'mq-run: 1 message(s) moved to failed/ (see: mq-queue list --state failed)\n'


@pytest.mark.parametrize('tool', ['mq-mail', 'mq-run', 'mq-queue', 'mq-send-test', 'mq-sendmail'])
def test_every_tool_answers_version(tool: str) -> None:
    result = run([script(tool), '--version'])
    import re
    assert result.returncode == 0 and re.search(rb'\d+\.\d+', result.stdout) and result.stderr == b''


# --- a queue this user cannot write: exit 75, one line, nothing touched -------------------------------

# setpriv rather than a preexec_fn with os.setuid(): here the latter cannot exec the venv's interpreter.
AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
needs_root = pytest.mark.skipif(os.getuid() != 0 or not shutil.which('setpriv'), reason='needs root and setpriv')


@pytest.fixture
def world_visible_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix='mq-run-ro-'))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _snapshot(queue_dir: Path) -> dict:
    return {state: sorted(os.listdir(queue_dir / state)) for state in ('new', 'cur', 'failed', 'hold')}


@needs_root
@pytest.mark.parametrize('daemon', [[], ['--daemon']])
def test_queue_owned_by_another_user_is_exit_75(world_visible_dir: Path, smtp_server, daemon: list) -> None:
    queue_dir = world_visible_dir / 'q'
    fill(str(queue_dir), 3)
    for path in [queue_dir, *queue_dir.iterdir()]:
        os.chmod(path, 0o755)  # readable for nobody (so the queue is found), writable only for root
    before = _snapshot(queue_dir)
    config = write_config(world_visible_dir / 'mq.conf', smtp_server, queue_dir=queue_dir)
    os.chmod(config, 0o644)
    result = subprocess.run([*AS_NOBODY, script('mq-run'), '-C', config, *daemon], capture_output=True,
                            timeout=30, env={**os.environ, 'HOME': str(world_visible_dir)}, cwd=world_visible_dir)
    assert result.returncode == 75, result.stderr
    assert result.stderr.decode() == (f'mq-run: queue {queue_dir}: cannot write to new/ '
                                      f'({os.strerror(errno.EACCES)}); nothing can be delivered\n')
    assert _snapshot(queue_dir) == before and smtp_server.connection_count == 0


@needs_root
def test_read_only_mounted_queue_is_exit_75(tmp_path: Path, smtp_server) -> None:
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', str(mnt)], check=True, timeout=10,
                   capture_output=True)
    try:
        queue_dir = mnt / 'q'
        fill(str(queue_dir), 2)
        subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True, timeout=10, capture_output=True)
        before = _snapshot(queue_dir)
        config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
        result = run([script('mq-run'), '-C', config], timeout=30)  # as root: the mount still says no
        assert result.returncode == 75, result.stderr
        assert result.stderr.decode() == (f'mq-run: queue {queue_dir}: cannot write to new/ '
                                          f'({os.strerror(errno.EROFS)}); nothing can be delivered\n')
        assert _snapshot(queue_dir) == before and smtp_server.connection_count == 0
    finally:
        done = subprocess.run(['umount', str(mnt)], timeout=10, capture_output=True)
        if done.returncode != 0:
            subprocess.run(['umount', '-l', str(mnt)], timeout=10, capture_output=True)


@needs_root
def test_queue_of_the_running_user_is_fine(world_visible_dir: Path, smtp_server) -> None:
    """The same set-up owned by nobody: the check does not refuse a queue that works."""
    queue_dir = world_visible_dir / 'q'
    fill(str(queue_dir), 2)
    subprocess.run(['chown', '-R', '65534:65534', str(queue_dir)], check=True, timeout=10)
    config = write_config(world_visible_dir / 'mq.conf', smtp_server, queue_dir=queue_dir)
    os.chmod(config, 0o644)
    result = subprocess.run([*AS_NOBODY, script('mq-run'), '-C', config], capture_output=True, timeout=30,
                            env={**os.environ, 'HOME': str(world_visible_dir)}, cwd=world_visible_dir)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 2 and os.listdir(queue_dir / 'new') == []


def test_an_unreachable_smarthost_is_said_on_a_terminal_with_the_next_attempt(tmp_path) -> None:
    import pty
    import socket as socket_mod

    queue_dir = str(tmp_path / 'q')
    fill(queue_dir, 3)
    with socket_mod.socket() as unused:  # a port nobody listens on: connections are refused
        unused.bind(('127.0.0.1', 0))
        port = unused.getsockname()[1]
    config = str(tmp_path / 'mq.conf')
    Path(config).write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = {port}\nsmtp_tls = none\n'
                            f'queue_dir = {queue_dir}\n')
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([script('mq-run'), '-C', config, '--no-progress'], stderr=terminal,
                            stdout=subprocess.DEVNULL)
    os.close(terminal)
    assert proc.wait(timeout=60) == 0
    output = read_terminal(controller)
    assert b'smarthost unreachable: 3 message(s) wait in the queue; next attempt at ' in output, output
    # from cron (no terminal) no such line: cron mails every line on stderr
    quiet = run([script('mq-run'), '-C', config, '--no-progress', '--force'])
    assert quiet.returncode == 0 and b'next attempt' not in quiet.stderr


def test_a_queue_named_on_the_command_line_must_exist(tmp_path) -> None:
    """A typo in ``mq-run /var/spool/mq-typo`` created an empty queue there and reported success."""
    with SMTPTestServer() as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_dir=str(tmp_path / 'configured'))
        typo = tmp_path / 'typo'
        proc = run([script('mq-run'), '-C', config, str(typo)])
        assert proc.returncode == 66, proc.stderr
        assert proc.stderr.decode().strip() == f'mq-run: no queue at {typo} (mq-queue init creates one)'
        assert not typo.exists()
        proc = run([script('mq-run'), '-C', config, 'nosuchscheme://x'])
        assert proc.returncode == 64 and b'unknown queue location scheme' in proc.stderr, proc.stderr
        # the configured queue is still made on first use, as a fresh install's cron job meets it
        proc = run([script('mq-run'), '-C', config])
        assert proc.returncode == 0 and (tmp_path / 'configured' / 'new').is_dir(), proc.stderr
