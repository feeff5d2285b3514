"""Filesystem faults: the queue fails cleanly and never leaves half a message behind.

Three kinds of evidence:

* injected errors (ENOSPC, EIO) at every step of a durable enqueue, by standing in
  for the ``os`` module inside ``queue/maildir.py`` (a real disk cannot be made to fail at
  exactly the n-th ``write`` or at the directory ``fsync``);
* real filesystems: a tiny tmpfs filled up, a read-only remount, a queue owned by root
  seen by ``nobody`` (root ignores permission bits, so that part runs in a subprocess
  that drops its privileges);
* hostile queue contents: symlinks, directories, empty, corrupt and vanishing files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from schwarz.mailqueue import MaildirBackend, MessageHandler, enqueue_message
from schwarz.mailqueue.handler import DebugMailer
from schwarz.mailqueue.queue import maildir as maildir_module
from schwarz.mailqueue.queue.format import parse_queue_bytes
from schwarz.mailqueue.queue.maildir import MaildirQueue, QueueWriteError
from schwarz.mailqueue.runner import QueueRunner, send_all_queued_messages
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import script, write_config

MSG = b'Subject: fault test\r\n\r\n' + b'0123456789abcdef' * 220 + b'\r\n'  # ~3.5 kB: several writes
SMALL = b'Subject: small\r\n\r\nbody\r\n'
CHUNK = 1024
STRERROR = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EIO: os.strerror(errno.EIO)}
NOBODY_UID = 65534
NOBODY_GID = 65534


def listing(queue_path: str, state: str) -> List[str]:
    return sorted(os.listdir(os.path.join(queue_path, state)))


def assert_queue_empty(queue_path: str) -> None:
    for state in ('tmp', 'new', 'cur'):
        assert listing(queue_path, state) == [], f'{state}/ is not empty'


# --- fault injection --------------------------------------------------------------------------


class FaultyOS:
    """Stands in for ``os`` inside maildir.py: records every relevant call and fails one chosen call.

    Writes are cut into ``CHUNK``-sized pieces, as a real kernel may do, so that a
    message takes several ``write`` calls and each one can be failed.
    """

    def __init__(self, fail_at: Optional[Tuple[str, int]] = None, error: int = errno.ENOSPC) -> None:
        self.fail_at = fail_at
        self.error = error
        self.calls: List[str] = []
        self.failed_index: Optional[int] = None
        self._paths: Dict[int, str] = {}
        self._counts: Dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _step(self, kind: str) -> None:
        number = self._counts.get(kind, 0)
        self._counts[kind] = number + 1
        self.calls.append(kind)
        if self.fail_at == (kind, number):
            self.failed_index = len(self.calls) - 1
            raise OSError(self.error, os.strerror(self.error))

    def _kind_of_fd(self, fd: int) -> str:
        path = self._paths.get(fd, '')
        return 'dir' if os.path.isdir(path) else 'file'

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        is_dir = bool(flags & getattr(os, 'O_DIRECTORY', 0))
        if flags & os.O_CREAT:
            self._step('create')
        elif is_dir:
            self._step('open_dir')
        fd = os.open(path, flags, mode, **kwargs)
        self._paths[fd] = os.fspath(path)
        return fd

    def write(self, fd: int, data: Any) -> int:
        self._step('write')
        return os.write(fd, bytes(data[:CHUNK]))

    def fsync(self, fd: int) -> None:
        self._step('fsync_' + self._kind_of_fd(fd))
        os.fsync(fd)

    def rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._step('rename')
        os.rename(src, dst, **kwargs)

    def close(self, fd: int) -> None:
        kind = 'close_' + self._kind_of_fd(fd)
        self._paths.pop(fd, None)
        os.close(fd)  # the descriptor is gone even when close reports an error (Linux)
        self._step(kind)


@pytest.fixture
def faulty_os(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FaultyOS]:
    def install(fail_at: Optional[Tuple[str, int]] = None, error: int = errno.ENOSPC) -> FaultyOS:
        fake = FaultyOS(fail_at, error)
        monkeypatch.setattr(maildir_module, 'os', fake)
        return fake

    return install


def test_durable_enqueue_protocol(tmp_path: Path, faulty_os: Callable[..., FaultyOS]) -> None:
    """The order the fault tests rely on: create, write..., fsync file, rename, fsync dir."""
    queue = MaildirQueue(str(tmp_path / 'q'))
    fake = faulty_os()
    msg_id = queue.enqueue(MSG, 'a@x', ['b@x'])
    steps = [c for c in fake.calls if c not in ('open_dir', 'close_file', 'close_dir')]
    writes = steps.count('write')
    assert writes >= 3
    assert steps == ['create'] + ['write'] * writes + ['fsync_file', 'rename', 'fsync_dir']
    assert listing(queue.path, 'new') == [msg_id] and listing(queue.path, 'tmp') == []


FAULT_POINTS = [('create', 0), ('write', 0), ('write', 1), ('write', 3), ('fsync_file', 0), ('rename', 0),
                ('open_dir', 0), ('fsync_dir', 0)]


@pytest.mark.parametrize('error', [errno.ENOSPC, errno.EIO], ids=['ENOSPC', 'EIO'])
@pytest.mark.parametrize('fail_at', FAULT_POINTS, ids=[f'{k}{n}' for k, n in FAULT_POINTS])
@pytest.mark.parametrize('claimed', [False, True], ids=['new', 'in_progress'])
def test_fault_at_every_enqueue_step_leaves_nothing(tmp_path: Path, faulty_os: Callable[..., FaultyOS],
                                                    fail_at: Tuple[str, int], error: int, claimed: bool) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    fake = faulty_os(fail_at, error)
    with pytest.raises(QueueWriteError) as info:
        if claimed:
            queue.enqueue_claimed(MSG, 'a@x', ['b@x', 'c@x'])
        else:
            queue.enqueue(MSG, 'a@x', ['b@x', 'c@x'])
    assert fake.failed_index is not None, f'{fail_at} never happened: {fake.calls}'
    exc = info.value
    assert exc.errno == error
    message = str(exc)
    assert STRERROR[error] in message and queue.path in message and '\n' not in message
    # Nothing half-written anywhere; the failed fsync (or any fsync) is not tried again.
    assert_queue_empty(queue.path)
    assert not [c for c in fake.calls[fake.failed_index + 1:] if c.startswith('fsync')]
    # The queue is not wedged: the next enqueue on a healthy disk works.
    faulty_os()
    msg_id = queue.enqueue(SMALL, 'a@x', ['b@x'])
    assert listing(queue.path, 'new') == [msg_id]


def test_close_error_after_durable_publish_is_not_a_failure(tmp_path: Path,
                                                            faulty_os: Callable[..., FaultyOS]) -> None:
    """Once fsync'ed and renamed the message exists; reporting a failure now would invite a duplicate."""
    queue = MaildirQueue(str(tmp_path / 'q'))
    faulty_os(('close_file', 0), errno.EIO)
    msg_id = queue.enqueue(MSG, 'a@x', ['b@x'])
    assert listing(queue.path, 'new') == [msg_id]
    assert parse_queue_bytes((Path(queue.path) / 'new' / str(msg_id)).read_bytes())[1] == MSG


@pytest.mark.parametrize('fail_at', [('write', 1), ('fsync_file', 0), ('rename', 0), ('fsync_dir', 0)],
                         ids=['write', 'fsync_file', 'rename', 'fsync_dir'])
def test_maildir_backend_reports_deferred_not_an_exception(tmp_path: Path, faulty_os: Callable[..., FaultyOS],
                                                           fail_at: Tuple[str, int]) -> None:
    queue_dir = str(tmp_path / 'q')
    backend = MaildirBackend(queue_dir)
    MaildirQueue(queue_dir)  # directories exist before the disk starts failing
    faulty_os(fail_at, errno.ENOSPC)
    result = backend.send('a@x', ['b@x', 'c@x'], MSG)
    assert not result and not result.queued and not result.queued_to
    assert set(result.deferred) == {'b@x', 'c@x'}
    assert STRERROR[errno.ENOSPC] in (result.error or '')
    assert_queue_empty(queue_dir)


def test_handler_with_failing_smtp_and_failing_disk_reports_temporary_failure(
        tmp_path: Path, faulty_os: Callable[..., FaultyOS]) -> None:
    queue_dir = str(tmp_path / 'q')
    MaildirQueue(queue_dir)
    handler = MessageHandler([DebugMailer(simulate_failed_sending=True), MaildirBackend(queue_dir)])
    faulty_os(('fsync_file', 0), errno.EIO)
    result = handler.send_message(MSG, sender='a@x', recipients=['b@x', 'c@x'])
    assert result is not None and not result
    assert not result.queued and set(result.deferred) == {'b@x', 'c@x'}
    # The reason a caller reports (mq-sendmail prints it) is the queue's, not the SMTP one.
    assert all(STRERROR[errno.EIO] in text for _, text in result.deferred.values())
    assert_queue_empty(queue_dir)


# --- real filesystems ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = '64k') -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size},mode=0700', 'tmpfs', str(path)],
                   check=True, timeout=10, capture_output=True)
    try:
        yield path
    finally:
        done = subprocess.run(['umount', str(path)], timeout=10, capture_output=True)
        if done.returncode != 0:
            subprocess.run(['umount', '-l', str(path)], timeout=10, capture_output=True)


def fill_up(directory: Path) -> Path:
    filler = directory / 'filler'
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b'\0' * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_full_tmpfs_enqueue_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / 'mnt') as mnt:
        queue = MaildirQueue(str(mnt / 'q'))
        filler = fill_up(mnt)
        big = b'Subject: big\r\n\r\n' + b'x' * 200_000
        for message in (big, SMALL):
            with pytest.raises(QueueWriteError) as info:
                queue.enqueue(message, 'a@x', ['b@x'])
            assert info.value.errno == errno.ENOSPC and STRERROR[errno.ENOSPC] in str(info.value)
            assert_queue_empty(queue.path)
        result = MessageHandler([DebugMailer(simulate_failed_sending=True), MaildirBackend(queue.path)]) \
            .send_message(big, sender='a@x', recipients=['b@x'])
        assert result is not None and not result and not result.queued and list(result.deferred) == ['b@x']
        assert_queue_empty(queue.path)
        filler.unlink()
        msg_id = queue.enqueue(SMALL, 'a@x', ['b@x'])
        assert listing(queue.path, 'new') == [msg_id]
        queue.close()


def test_read_only_queue_gives_a_clear_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / 'mnt', size='1m') as mnt:
        queue_path = str(mnt / 'q')
        MaildirQueue(queue_path).close()
        subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True, timeout=10, capture_output=True)
        queue = MaildirQueue(queue_path)  # existing directories are fine on a read-only filesystem
        with pytest.raises(QueueWriteError) as info:
            queue.enqueue(SMALL, 'a@x', ['b@x'])
        assert info.value.errno == errno.EROFS and os.strerror(errno.EROFS) in str(info.value)
        with pytest.raises(QueueWriteError, match='cannot create queue directory'):
            MaildirQueue(str(mnt / 'other'))
        result = MaildirBackend(str(mnt / 'other')).send('a@x', ['b@x'], SMALL)
        assert not result and 'b@x' in result.deferred
        assert_queue_empty(queue_path)


def _sendmail_into_broken_queue(tmp_path: Path, queue_dir: Path, server: SMTPTestServer) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / 'mq.conf', server, queue_dir=str(queue_dir))
    return subprocess.run([script('mq-sendmail'), '-C', config, '-i', 'b@example.org'], input=SMALL,
                          capture_output=True, timeout=60, env={**os.environ, 'HOME': str(tmp_path)})


@pytest.mark.slow
def test_mq_sendmail_exits_75_on_full_and_read_only_queue(tmp_path: Path) -> None:
    with SMTPTestServer(replies={'RCPT': 451}) as server, tmpfs(tmp_path / 'mnt', size='64k') as mnt:
        queue_dir = mnt / 'q'
        MaildirQueue(str(queue_dir)).close()
        filler = fill_up(mnt)
        full = _sendmail_into_broken_queue(tmp_path, queue_dir, server)
        filler.unlink()
        subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True, timeout=10, capture_output=True)
        read_only = _sendmail_into_broken_queue(tmp_path, queue_dir, server)
        for proc, reason in ((full, errno.ENOSPC), (read_only, errno.EROFS)):
            stderr = proc.stderr.decode()
            assert proc.returncode == 75, stderr
            assert os.strerror(reason) in stderr and 'Traceback' not in stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
        assert_queue_empty(str(queue_dir))
        assert server.received == []


# --- permission denied: as nobody on a root-owned 0700 queue -------------------------------------

NOBODY_SCRIPT = textwrap.dedent('''
    import io, json, os, sys
    from schwarz.mailqueue import MaildirBackend, MessageHandler
    from schwarz.mailqueue.handler import DebugMailer
    from schwarz.mailqueue.queue.maildir import MaildirQueue, QueueWriteError
    from schwarz.mailqueue.cli import mq_sendmail

    target, warm_queue, warm_config, target_config = sys.argv[1:5]
    msg = b'Subject: perm\\r\\n\\r\\nbody\\r\\n'

    def run_cli(config):
        sys.stdin = io.TextIOWrapper(io.BytesIO(msg))
        return mq_sendmail.main(['-C', config, '-i', 'b@example.org'])

    # As root: the same calls on a writable queue, so that every lazy import has happened
    # before we can no longer read the interpreter's files.
    MaildirQueue(warm_queue).enqueue(msg, 'a@x', ['b@x'])
    MessageHandler([DebugMailer(simulate_failed_sending=True), MaildirBackend(warm_queue)]).send_message(
        msg, sender='a@x', recipients=['b@x'])
    assert run_cli(warm_config) == 0

    os.setgroups([])
    os.setgid(%(gid)d)
    os.setuid(%(uid)d)
    out = {'uid': os.getuid()}
    for name, call in (('construct', lambda: MaildirQueue(target)),
                       ('enqueue', lambda: MaildirQueue(target, create=False).enqueue(msg, 'a@x', ['b@x']))):
        try:
            call()
            out[name] = None
        except QueueWriteError as exc:
            out[name] = [exc.errno, str(exc)]
    result = MessageHandler([DebugMailer(simulate_failed_sending=True), MaildirBackend(target)]).send_message(
        msg, sender='a@x', recipients=['b@x'])
    out['handler'] = [bool(result), result.queued, sorted(result.deferred),
                      ' '.join(text for _, text in result.deferred.values())]
    sys.stderr.write('--- cli ---\\n')
    out['cli'] = run_cli(target_config)
    sys.stdout.write(json.dumps(out))
''') % {'uid': NOBODY_UID, 'gid': NOBODY_GID}


@pytest.mark.slow
def test_permission_denied_as_nobody_is_a_clear_error(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix='mq-perm-'))
    try:
        os.chmod(base, 0o755)  # nobody may look up the queue, but not enter it
        target = base / 'q'
        MaildirQueue(str(target)).close()
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o700 and os.stat(target).st_uid == 0
        with SMTPTestServer(replies={'RCPT': 451}) as server:
            warm_config = write_config(base / 'warm.conf', server, queue_dir=str(tmp_path / 'warm'))
            target_config = write_config(base / 'target.conf', server, queue_dir=str(target))
            os.chmod(target_config, 0o644)
            proc = subprocess.run([sys.executable, '-c', NOBODY_SCRIPT, str(target), str(tmp_path / 'warm'),
                                   warm_config, target_config], capture_output=True, timeout=60,
                                  env={**os.environ, 'HOME': str(base)}, cwd=str(base))
        assert proc.returncode == 0, proc.stderr.decode()
        out = json.loads(proc.stdout)
        denied = os.strerror(errno.EACCES)
        assert out['uid'] == NOBODY_UID
        for step in ('construct', 'enqueue'):
            assert out[step] is not None, step
            code, text = out[step]
            assert code == errno.EACCES and denied in text and str(target) in text
        ok, queued, deferred, reasons = out['handler']
        assert not ok and not queued and deferred == ['b@x'] and denied in reasons
        cli_stderr = proc.stderr.decode().split('--- cli ---\n', 1)[1]
        assert out['cli'] == 75, cli_stderr
        assert denied in cli_stderr and 'Traceback' not in cli_stderr
        assert len(cli_stderr.strip().splitlines()) == 1, cli_stderr
        assert_queue_empty(str(target))
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


# --- symlinks, directories and other strangers in the queue ---------------------------------------


def _queue_file(sender: str = 'a@x', recipients: Tuple[str, ...] = ('b@example.org',)) -> bytes:
    from schwarz.mailqueue import serialize_message_with_queue_data

    return serialize_message_with_queue_data(SMALL, sender, list(recipients))


@pytest.mark.parametrize('state', ['new', 'cur', 'tmp'])
def test_queue_subdirectory_replaced_by_symlink_is_refused(tmp_path: Path, state: str) -> None:
    queue_path = tmp_path / 'q'
    MaildirQueue(str(queue_path)).close()
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'planted').write_bytes(_queue_file())
    os.rmdir(queue_path / state)
    os.symlink(elsewhere, queue_path / state)
    with pytest.raises(QueueWriteError, match='symlink'):
        MaildirQueue(str(queue_path))
    with pytest.raises(QueueWriteError, match='symlink'):
        enqueue_message(SMALL, str(queue_path), 'a@x', ['b@x'])
    result = MaildirBackend(str(queue_path)).send('a@x', ['b@x'], SMALL)
    assert not result and 'symlink' in (result.error or '')
    assert sorted(os.listdir(elsewhere)) == ['planted']


@pytest.mark.parametrize('state', ['new', 'cur'])
def test_subdirectory_swapped_for_symlink_under_a_running_queue_is_not_followed(
        tmp_path: Path, smtp_server: SMTPTestServer, state: str) -> None:
    """A long-lived queue object (mq-run --daemon, an application) notices on its next operation."""
    queue = MaildirQueue(str(tmp_path / 'q'))
    queue.enqueue(SMALL, 'a@x', ['b@x'])  # opens and caches directory descriptors
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'planted').write_bytes(_queue_file())
    real = tmp_path / 'q' / state
    os.rename(real, tmp_path / f'{state}.moved')
    os.symlink(elsewhere, real)
    # Enqueueing into new/ does not touch cur/; a claimed enqueue (into cur/) does and is refused.
    with pytest.raises(QueueWriteError, match='symlink'):
        if state == 'cur':
            queue.enqueue_claimed(SMALL, 'a@x', ['b@x'])
        else:
            queue.enqueue(SMALL, 'a@x', ['b@x'])
    runner = QueueRunner(queue, mailer=SMTPMailer(smtp_server.hostname, smtp_server.port), workers=1)
    with pytest.raises(OSError, match='symlink'):
        runner.run_once()
    assert smtp_server.received == []
    assert sorted(os.listdir(elsewhere)) == ['planted']
    assert (elsewhere / 'planted').read_bytes() == _queue_file()


def _runner_pass(queue: MaildirQueue, server: SMTPTestServer) -> Any:
    return send_all_queued_messages(queue.path, mailer=SMTPMailer(server.hostname, server.port, timeout=5))


def test_symlinked_queue_file_is_not_followed_and_the_run_goes_on(tmp_path: Path,
                                                                   smtp_server: SMTPTestServer) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    secret = tmp_path / 'secret'
    planted = _queue_file(recipients=('leak@example.org',))  # once: it carries the current time
    secret.write_bytes(planted)
    os.symlink(secret, Path(queue.path) / 'new' / 'evil')
    good = [queue.enqueue(SMALL, 'a@x', [f'r{n}@example.org']) for n in range(3)]
    stats = _runner_pass(queue, smtp_server)
    assert stats.sent == 3 and stats.corrupt == 1
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == [f'r{n}@example.org' for n in range(3)]
    # Not followed: the target is unchanged and still where it was; the link is out of new/.
    assert secret.read_bytes() == planted
    assert listing(queue.path, 'new') == [] and listing(queue.path, 'cur') == []
    assert listing(queue.path, 'failed') == ['evil.foreign']
    assert os.path.islink(Path(queue.path) / 'failed' / 'evil.foreign')
    assert len(good) == 3


def test_directory_and_special_files_in_new_are_moved_aside(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    new = Path(queue.path) / 'new'
    (new / 'subdir').mkdir()
    (new / 'subdir' / 'inner').write_bytes(_queue_file())
    os.mkfifo(new / 'fifo')
    queue.enqueue(SMALL, 'a@x', ['b@example.org'])
    stats = _runner_pass(queue, smtp_server)
    assert stats.sent == 1 and stats.corrupt == 2
    assert len(smtp_server.received) == 1
    assert listing(queue.path, 'new') == []
    assert listing(queue.path, 'failed') == ['fifo.foreign', 'subdir.foreign']
    assert (Path(queue.path) / 'failed' / 'subdir.foreign' / 'inner').read_bytes() == _queue_file()


@pytest.mark.parametrize('content,reason', [
    (b'', 'corrupt queue file'),
    (b'From MAILER-DAEMON Mon Jan  1 00:00:00 2024\nSubject: mbox\n\nhello\n', 'corrupt queue file'),
    (b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4, 'corrupt queue file'),
    (b'Return-path: <a@x>\r\nEnvelope-to: b@x\r\nX-Queue-Date: Sun, 31 Dec 9999 23:59:59 +0000\r\n'
     b'X-Last-Attempt: Sun, 31 Dec 9999 23:59:59 +0000\r\nX-Retries: 9\r\nX-Queue-Meta-End: end\r\nbody\r\n',
     'X-Queue-Date'),
    (_queue_file()[:40], 'corrupt queue file'),
    (_queue_file().replace(b'Envelope-to: b@example.org', b'Envelope-to: '), 'no recipients'),
], ids=['zero-bytes', 'mbox', 'binary', 'absurd-date', 'truncated', 'no-recipients'])
def test_corrupt_or_foreign_file_goes_to_failed_with_reason(tmp_path: Path, smtp_server: SMTPTestServer,
                                                            content: bytes, reason: str) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    for n in range(6):  # more than the runner's hand-off holds: a stuck worker would hang the pass
        queue.enqueue(SMALL, 'a@x', [f'r{n}@example.org'])
    (Path(queue.path) / 'new' / 'bad').write_bytes(content)
    done: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(stats=_runner_pass(queue, smtp_server)), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), 'the runner pass hung'
    stats = done['stats']
    assert (stats.sent, stats.corrupt) == (6, 1)
    assert listing(queue.path, 'new') == [] and listing(queue.path, 'cur') == []
    assert listing(queue.path, 'failed') == ['bad']
    meta, body = queue.read_message('failed', 'bad')
    assert reason in (meta.failed_reason or '')
    assert body == content  # kept byte for byte for the operator


def test_queue_file_vanishing_between_listing_and_claim_is_skipped_silently(
        tmp_path: Path, smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    ids = [str(queue.enqueue(SMALL, 'a@x', [f'r{n}@example.org'])) for n in range(4)]
    vanished = ids[1:3]
    caplog.set_level('DEBUG', logger='mailqueue')

    walk = queue.iter_ids
    done: List[str] = []

    def listing_then_vanish(state: str = 'new') -> Iterator[str]:
        listed = list(walk(state))  # the runner saw them all ...
        if state == 'new' and not done:
            for msg_id in vanished:  # ... then someone else took two (another runner, mq-queue delete)
                os.unlink(os.path.join(queue.path, 'new', msg_id))
            done.extend(vanished)
        yield from listed

    queue.iter_ids = listing_then_vanish  # type: ignore[method-assign]
    runner = QueueRunner(queue, mailer=SMTPMailer(smtp_server.hostname, smtp_server.port, timeout=5), workers=1)
    stats = runner.run_once()
    assert (stats.sent, stats.corrupt) == (2, 0) and done == vanished
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == ['r0@example.org', 'r3@example.org']
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]
    assert listing(queue.path, 'failed') == []


def test_claim_of_vanished_file_returns_none(tmp_path: Path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(SMALL, 'a@x', ['b@x']))
    os.unlink(os.path.join(queue.path, 'new', msg_id))
    assert queue.claim(msg_id) is None
    assert queue.claim('never-existed') is None


def test_large_valid_queue_file_is_not_taken_for_a_corrupt_one(tmp_path: Path) -> None:
    """The corrupt-file checks must not misfire on a big meta block (here ~1.5 MB of recipients)."""
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    recipients = [f'recipient-number-{n}@example.org' for n in range(50_000)]
    msg_id = str(queue.enqueue(SMALL, 'a@x', recipients))
    msg = queue.claim(msg_id)
    assert msg is not None and msg.to_addrs == recipients and msg.msg_bytes == SMALL
    queue.release(msg)
    assert listing(queue.path, 'new') == [msg_id] and listing(queue.path, 'failed') == []
