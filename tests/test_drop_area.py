"""Issue 12: every local user can send without the smarthost password, through the drop area.

The end-to-end test creates two unprivileged users, lets one send while the smarthost is down
(exit 0, the message durably in ``drop/``, readable by nobody else), checks that the other
cannot read, change or delete it, then runs ``mq-run`` as root (the queue owner), which takes
the drop into the queue, records the user and delivers. A drop that is not a valid message,
and one with an envelope sender the user may not use, go to ``failed/`` with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from schwarz.mailqueue.intake import SUBMITTED_BY, DropIntake
from schwarz.mailqueue.queue.format import parse_queue_bytes, serialize_message_with_queue_data
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.maildir_drop import drop_message, make_drop_area, take_drops
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import script

needs_root = pytest.mark.skipif(os.getuid() != 0 or not shutil.which('setpriv') or not shutil.which('useradd'),
                                reason='needs root, setpriv and useradd')

MSG = b'Subject: from a user\r\n\r\nsent while the smarthost was down\r\n'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def users() -> Iterator[Dict[str, Tuple[int, int]]]:
    """Two throw-away users (name -> (uid, gid)), removed afterwards."""
    made: Dict[str, Tuple[int, int]] = {}
    try:
        for name in ('mqdropa', 'mqdropb'):
            subprocess.run(['userdel', name], capture_output=True)
            subprocess.run(['useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group',
                            name], check=True, capture_output=True, timeout=30)
            import pwd

            entry = pwd.getpwnam(name)
            made[name] = (entry.pw_uid, entry.pw_gid)
        yield made
    finally:
        for name in made:
            subprocess.run(['userdel', name], capture_output=True, timeout=30)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix='mq-drop-'))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user(ids: Tuple[int, int], args: List[str], base: Path, **kwargs: object) -> subprocess.CompletedProcess:
    uid, gid = ids
    return subprocess.run(['setpriv', f'--reuid={uid}', f'--regid={gid}', '--clear-groups', *args],
                          capture_output=True, timeout=60, cwd=base,
                          env={**os.environ, 'HOME': str(base), 'LOGNAME': '', 'USER': ''}, **kwargs)  # type: ignore


def write_config(path: Path, text: str, mode: int) -> str:
    path.write_text('[mqrunner]\n' + text)
    os.chmod(path, mode)
    return str(path)


def queue_files(queue_dir: Path) -> List[Path]:
    return [p for p in queue_dir.rglob('*') if p.is_file()]


@needs_root
def test_unprivileged_user_sends_with_the_smarthost_down_and_the_runner_delivers(users, base: Path) -> None:
    alice, bob = users['mqdropa'], users['mqdropb']
    queue_dir = base / 'spool'
    subprocess.run([script('mq-queue'), 'setup', '--drop-area', '-d', str(queue_dir)], check=True, capture_output=True)
    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o711
    assert stat.S_IMODE((queue_dir / 'drop').stat().st_mode) == 0o1733
    down = _free_port()
    # the whole config readable by the users, the smarthost down: they try SMTP, then the queue
    config = write_config(base / 'mq.conf', f'smtp_hostname = 127.0.0.1\nsmtp_port = {down}\nsmtp_tls = none\n'
                          f'queue_dir = {queue_dir}\ndefault_domain = example.org\n'
                          f'queue_log = {base / "queue.log"}\n', 0o644)
    sent = as_user(alice, [script('mq-sendmail'), '-C', config, 'admin@example.com'], base, input=MSG)
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == b''  # no warning per mail (not even for the queue log it may not write)
    drops = os.listdir(queue_dir / 'drop')
    assert len(drops) == 1
    drop = queue_dir / 'drop' / drops[0]
    st = drop.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice[0], 0o600)
    # nothing in the queue is readable by other users
    for path in queue_files(queue_dir):
        assert not path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWOTH), path
    # the other user can neither list, read, change nor delete it
    assert as_user(bob, ['ls', str(queue_dir / 'drop')], base).returncode != 0
    assert as_user(bob, ['ls', str(queue_dir / 'new')], base).returncode != 0
    assert as_user(bob, ['cat', str(drop)], base).returncode != 0
    assert as_user(bob, ['sh', '-c', f'echo x >> {drop}'], base).returncode != 0
    assert as_user(bob, ['rm', '-f', str(drop)], base).returncode != 0
    assert as_user(bob, ['mv', str(drop), str(queue_dir / 'drop' / 'mine')], base).returncode != 0
    assert drop.read_bytes().endswith(MSG)
    # the same user, writing junk and a forged sender straight into the drop area
    junk = as_user(alice, ['sh', '-c', f'printf "no queue file" > {queue_dir}/drop/junk'], base)
    assert junk.returncode == 0, junk.stderr
    forged = serialize_message_with_queue_data(MSG, 'ceo@example.com', ['victim@example.com'])
    wrote = as_user(alice, ['sh', '-c', f'cat > {queue_dir}/drop/forged'], base, input=forged)
    assert wrote.returncode == 0, wrote.stderr

    with SMTPTestServer() as server:
        write_config(base / 'mq.conf', f'smtp_hostname = {server.hostname}\nsmtp_port = {server.port}\n'
                     f'smtp_tls = none\nqueue_dir = {queue_dir}\ndefault_domain = example.org\n'
                     f'queue_log = {base / "queue.log"}\n', 0o644)
        ran = subprocess.run([script('mq-run'), '-C', config], capture_output=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert [m.rcpt_tos for m in server.received] == [['admin@example.com']]
        assert server.received[0].mail_from == 'mqdropa@example.org'
    assert os.listdir(queue_dir / 'drop') == []
    log = (base / 'queue.log').read_text()
    assert 'status=queued' in log and 'submitted_by=mqdropa' in log
    failed = {p.name: p.read_bytes() for p in (queue_dir / 'failed').iterdir()}
    assert len(failed) == 2
    reasons = {name: parse_queue_bytes(data)[0] for name, data in failed.items()}
    junk_meta = reasons.pop(next(n for n, d in failed.items() if d.endswith(b'no queue file')))
    assert junk_meta.failed_reason is not None and 'not a valid submission' in junk_meta.failed_reason
    assert junk_meta.extra[SUBMITTED_BY] == 'mqdropa'
    (forged_meta,) = reasons.values()
    assert forged_meta.failed_reason is not None
    assert 'may not use the envelope sender ceo@example.com' in forged_meta.failed_reason
    assert forged_meta.extra[SUBMITTED_BY] == 'mqdropa'


@needs_root
def test_a_user_who_cannot_read_the_credentials_hands_mail_to_the_drop_area(users, base: Path) -> None:
    alice = users['mqdropa']
    queue_dir = base / 'spool'
    subprocess.run([script('mq-queue'), 'setup', '--drop-area', '-d', str(queue_dir)], check=True, capture_output=True)
    with SMTPTestServer() as server:
        secret = write_config(base / 'secret.conf', f'smtp_hostname = {server.hostname}\n'
                              f'smtp_port = {server.port}\nsmtp_tls = none\n', 0o600)
        config = write_config(base / 'mq.conf', f'queue_dir = {queue_dir}\ninclude = {secret}\n'
                              f'from = host@example.org\n', 0o644)
        sent = as_user(alice, [script('mq-sendmail'), '-C', config, 'admin@example.com'], base, input=MSG)
        assert sent.returncode == 0, sent.stderr
        assert sent.stderr == b''  # no warning: the split set-up is how it is meant to be
        assert server.received == [] and len(os.listdir(queue_dir / 'drop')) == 1
        mail = as_user(alice, [script('mq-mail'), '-C', config, '-s', 'hi', 'admin@example.com'], base,
                       input=b'body\n')
        assert mail.returncode == 0, mail.stderr
        ran = subprocess.run([script('mq-run'), '-C', config], capture_output=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert len(server.received) == 2
        assert {m.mail_from for m in server.received} == {'host@example.org'}


# --- the pieces, without other users ---------------------------------------------------------------


def test_drop_is_taken_once_and_the_sender_meta_is_not_trusted(tmp_path: Path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    make_drop_area(queue)
    drop_id = drop_message(queue.path, MSG, 'root@example.org', ['a@example.org'], fsync=False)
    # a sender that writes its own meta lines (a submitter name, retries) gets none of them
    forged = serialize_message_with_queue_data(MSG, 'root@example.org', ['b@example.org'], retries=7,
                                               extra={SUBMITTED_BY: 'someone-else'})
    (tmp_path / 'q' / 'drop' / 'forged').write_bytes(forged)
    intake = DropIntake(queue)
    assert intake() == 2
    assert intake() == 0
    metas = {m.to_addrs[0]: m for m in (queue.read_meta('new', i) for i in queue.iter_ids('new'))}
    assert set(metas) == {'a@example.org', 'b@example.org'}
    assert metas['b@example.org'].retries == 0
    assert metas['b@example.org'].extra[SUBMITTED_BY] == 'root'
    assert drop_id in list(queue.iter_ids('new'))


def test_hard_links_oversized_drops_and_stale_temporaries(tmp_path: Path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    make_drop_area(queue)
    outside = tmp_path / 'secret'
    outside.write_text('root:$6$hash\n')
    os.link(outside, tmp_path / 'q' / 'drop' / 'link')
    (tmp_path / 'q' / 'drop' / 'big').write_bytes(b'x' * 5000)
    stale = tmp_path / 'q' / 'drop' / '.abc.tmp'
    stale.write_bytes(b'half')
    os.utime(stale, (1, 1))
    problems = {d.drop_id: d.problem for d in take_drops(queue, max_size=4096)}
    assert problems == {'link': '2 links to the file (only 1 allowed)',
                        'big': '5000 bytes, more than drop_max_size (4096)'}
    assert not stale.exists()
    assert DropIntake(queue, max_size=4096)() == 2
    failed = [queue.read_message('failed', i) for i in queue.iter_ids('failed')]
    assert all(body == b'' for _, body in failed)  # neither the linked file nor the big one is copied
    assert outside.read_text() == 'root:$6$hash\n'


def test_sender_policy() -> None:
    intake = DropIntake(None, trusted_users=['www-data'], from_addr='host@example.org',  # type: ignore[arg-type]
                        local_domain='example.org')
    uid = 12345
    assert intake.sender_refused(uid, 'alice', 'alice@example.org') is None
    assert intake.sender_refused(uid, 'alice', 'host@example.org') is None
    assert intake.sender_refused(uid, 'alice', '') is None
    assert intake.sender_refused(uid, 'alice', 'bob@example.org') is not None
    assert intake.sender_refused(uid, 'alice', 'alice@other.example') is not None
    assert intake.sender_refused(uid, 'www-data', 'shop@customer.example') is None
    assert intake.sender_refused(0, 'root', 'anyone@anywhere.example') is None
