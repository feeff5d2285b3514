"""The drop area (issue 12) attacked by a malicious local user and by a careless operator.

Each test is one defect: it fails until the defect is fixed. The threat model and the promises
are in docs/operations.md ("The drop area") and docs/install.md; the helpers come from
tests/test_drop_area.py (throw-away users, a base directory every user can reach).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from schwarz.mailqueue import SMTPMailer
from schwarz.mailqueue.intake import DropIntake
from schwarz.mailqueue.queue import maildir_drop
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.maildir_drop import drop_message, make_drop_area
from schwarz.mailqueue.runner import QueueRunner
from schwarz.mailqueue.testutils import SMTPTestServer
from test_drop_area import MSG, as_user, base, needs_root, users, write_config

from helpers import script

__all__ = ['base', 'users']  # fixtures reused from test_drop_area (pytest finds them by name here)


def _queue(tmp_path: Path) -> MaildirQueue:
    queue = MaildirQueue(str(tmp_path / 'q'), fsync=False)
    make_drop_area(queue)
    return queue


def _ids(queue: MaildirQueue, state: str) -> List[str]:
    return list(queue.iter_ids(state))


# --- the sender's link/unlink window --------------------------------------------------------------


def test_a_drop_taken_between_link_and_unlink_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """drop_message links ``.<id>.tmp`` to ``<id>`` and only then removes the temporary name: for
    that moment the drop has 2 links. A pass that starts then (mq-run.path fires on the very
    creation of the .tmp file; the daemon polls every second) must neither take it as a hard link
    of someone else's file (failed/, body not kept: lost) nor read it: it leaves it to the next."""
    queue = _queue(tmp_path)
    real_link = os.link
    taken: List[int] = []

    def link_then_runner_pass(src: str, dst: str, *args: object, **kwargs: object) -> None:
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        if '/drop/' in dst:
            taken.append(DropIntake(queue)())  # the runner's pass, right between link and unlink

    monkeypatch.setattr(os, 'link', link_then_runner_pass)
    drop_id = drop_message(queue.path, MSG, '', ['admin@example.com'], fsync=False)  # "queued": exit 0
    monkeypatch.setattr(os, 'link', real_link)
    DropIntake(queue)()  # and the next pass
    assert taken == [0]  # in flight: left alone
    failed = [queue.read_meta('failed', i).failed_reason for i in _ids(queue, 'failed')]
    assert failed == [], f'the message the sender was told was queued is in failed/: {failed}'
    assert _ids(queue, 'new') == [drop_id]


def test_a_sender_killed_between_link_and_unlink_leaves_no_half_state(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md: "A crash leaves at most a .tmp file, which the runner removes after an
    hour." A sender killed right after link() leaves both names, and a complete message (written
    and synced before the link): a pass leaves it while the sender may still be at it, and once the
    temporary name is a minute old removes that name and takes the message in."""
    queue = _queue(tmp_path)
    drop_dir = Path(queue.path) / 'drop'
    content = b'Return-path: <>\r\nEnvelope-to: admin@example.com\r\nX-Queue-Meta-End: end\r\n' + MSG
    tmp = drop_dir / '.0123456789ab.1700000000.tmp'
    tmp.write_bytes(content)
    os.link(tmp, drop_dir / '0123456789ab.1700000000')  # ...and SIGKILL before unlink()
    assert DropIntake(queue)() == 0  # the sender may still be between link() and unlink()
    monkeypatch.setattr(maildir_drop, '_STALE_LINK', 0.0)  # (a minute later: the link's ctime is old)
    assert DropIntake(queue)() == 1
    assert not tmp.exists()
    bodies = [queue.read_message('failed', i)[1] for i in _ids(queue, 'failed')]
    assert bodies == [], 'a complete message of a crashed sender went to failed/ without its body'
    assert len(_ids(queue, 'new')) == 1


# --- objects the runner cannot remove ---------------------------------------------------------------


def test_directories_in_the_drop_area_add_no_dead_letters_and_cannot_stop_a_pass(tmp_path: Path) -> None:
    """Any user may ``mkdir drop/x`` (1733). Rejecting it as a drop failed to remove it, so every
    pass wrote another root-owned file to failed/; removing a deep tree with shutil.rmtree raised
    RecursionError (Python < 3.13), which ended every pass. Directories are nothing to deliver or
    keep: an empty one is removed, a tree left alone, and the pass goes on to real drops."""
    queue = _queue(tmp_path)
    drop_dir = Path(queue.path) / 'drop'
    for name in ('evil', 'nested'):
        (drop_dir / name).mkdir()
    (drop_dir / 'nested' / 'sub').mkdir()
    fds = [os.open(drop_dir, os.O_RDONLY)]
    try:
        for _ in range(1100):  # deeper than the recursion limit
            os.mkdir('d', dir_fd=fds[-1])
            fds.append(os.open('d', os.O_RDONLY, dir_fd=fds[-1]))
        drop_id = drop_message(queue.path, MSG, '', ['admin@example.com'], fsync=False)
        taken = [DropIntake(queue)() for _ in range(5)]
        assert taken == [1, 0, 0, 0, 0]
        assert _ids(queue, 'failed') == []
        assert _ids(queue, 'new') == [drop_id]
        assert not (drop_dir / 'evil').exists() and (drop_dir / 'nested').exists()
    finally:
        for parent in reversed(fds[:-1]):  # (pytest's own clean-up would recurse too)
            os.rmdir('d', dir_fd=parent)
        for fd in fds:
            os.close(fd)


# --- disk: quotas and sparse files ------------------------------------------------------------------


def test_a_sparse_drop_is_not_multiplied_into_root_owned_disk_space(tmp_path: Path) -> None:
    """operations.md, "Filling the disk": users can only fill drop/ between passes, so "put the
    spool on its own filesystem or give users a quota on it". But a drop that is not a valid
    message is kept in failed/ "its bytes as they were" -- written out in full by the runner, as
    the queue owner, outside any user quota and for ever. A sparse 60 MB file costs the user no
    block at all (``truncate -s 60M drop/x``); the runner turns each one into 60 MB of its own disk."""
    queue = _queue(tmp_path)
    sparse = Path(queue.path) / 'drop' / 'sparse'
    with open(sparse, 'wb') as fp:
        fp.truncate(60 * 1024 * 1024)  # under drop_max_size (64M)
    user_cost = sparse.stat().st_blocks * 512
    DropIntake(queue)()
    (kept,) = _ids(queue, 'failed')
    runner_cost = os.stat(os.path.join(queue.path, 'failed', kept)).st_blocks * 512
    assert runner_cost <= max(user_cost, 1 << 20), \
        f'a drop that cost its user {user_cost} bytes costs the queue owner {runner_cost} bytes'


# --- two takers ----------------------------------------------------------------------------------


def test_two_runners_taking_the_same_drop_deliver_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent runners are supported (docs/reliability.md: 4 mq-run processes, each message once;
    mq-run.timer/.path next to a cron line or ``mq-sendmail -q``). take_drops() has no claim: two
    passes read the same drop; if the first stores, delivers and completes it before the second
    calls accept(), _queue_id() finds the id nowhere and the second stores it again: the
    recipient gets the message twice."""
    queue = _queue(tmp_path)
    drop_message(queue.path, MSG, '', ['admin@example.com'], fsync=False)
    real_accept = maildir_drop.accept
    with SMTPTestServer() as server:
        mailer = SMTPMailer(server.hostname, server.port, tls='none', timeout=5)
        runner_a = QueueRunner(queue, mailer=mailer, intake=DropIntake(queue))
        calls: List[int] = []

        def slow_accept(*args: object, **kwargs: object) -> str:
            if not calls:
                calls.append(1)
                runner_a.run_once()  # runner A takes the same drop and delivers it meanwhile
            return real_accept(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(maildir_drop, 'accept', slow_accept)
        runner_b = QueueRunner(queue, mailer=mailer, intake=DropIntake(queue))
        runner_b.run_once()
        monkeypatch.setattr(maildir_drop, 'accept', real_accept)
        runner_a.run_once()
        received = len(server.received)
    assert received == 1, f'one drop delivered {received} times'


# --- the privilege design: a dedicated queue owner -------------------------------------------------


def _setup_as(owner: Tuple[int, int], base: Path) -> Path:
    home = base / 'owned'
    home.mkdir()
    os.chown(home, *owner)
    queue_dir = home / 'spool'
    done = as_user(owner, [script('mq-queue'), 'setup', '--drop-area', '-d', str(queue_dir)], base)
    assert done.returncode == 0, done.stderr
    return queue_dir


@needs_root
def test_a_dedicated_queue_owner_leaves_the_drops_it_cannot_read(users: Dict[str, Tuple[int, int]],
                                                                 base: Path) -> None:
    """Every drop is 0600 and owned by its sender: only root can read it, so the drop area needs
    mq-run to run as root (docs/install.md). A dedicated owner's mq-run must not throw the users'
    messages (mq-sendmail exited 0 for them) into failed/ as "cannot open": they stay, and the
    operator is told why; root's pass then delivers them."""
    alice, owner = users['mqdropa'], users['mqdropb']
    queue_dir = _setup_as(owner, base)
    down = write_config(base / 'down.conf', f'smtp_hostname = 127.0.0.1\nsmtp_port = 9\nsmtp_tls = none\n'
                        f'queue_dir = {queue_dir}\n', 0o644)
    sent = as_user(alice, [script('mq-sendmail'), '-C', down, 'admin@example.com'], base, input=MSG)
    assert sent.returncode == 0, sent.stderr  # "queued"
    with SMTPTestServer() as server:
        config = write_config(base / 'mq.conf', f'smtp_hostname = {server.hostname}\nsmtp_port = {server.port}\n'
                              f'smtp_tls = none\nqueue_dir = {queue_dir}\n', 0o644)
        ran = as_user(owner, [script('mq-run'), '-C', config], base)
        assert ran.returncode == 0, ran.stderr
        assert server.received == []
        assert b'must run as root' in ran.stderr and len(ran.stderr.splitlines()) == 1, ran.stderr
        assert not any((queue_dir / 'failed').iterdir())
        as_root = as_user((0, 0), [script('mq-run'), '-C', config], base)
        assert as_root.returncode == 0, as_root.stderr
        received = [m.rcpt_tos for m in server.received]
    assert received == [['admin@example.com']]


@needs_root
def test_roots_mail_reaches_a_dedicated_queue_owner(users: Dict[str, Tuple[int, int]], base: Path) -> None:
    """With a dedicated queue owner, root's mq-sendmail (cron, smartd) finds the smarthost away and
    writes the queue directly (root ignores the 0700): new/<id> is root's and 0600, so the owner's
    mq-run can never claim it ("cannot claim ...: Permission denied", exit 0) -- it stays for
    ever. Root should use the drop area (its uid is trusted there) or give the file to the owner."""
    owner = users['mqdropb']
    queue_dir = _setup_as(owner, base)
    down = write_config(base / 'down.conf', f'smtp_hostname = 127.0.0.1\nsmtp_port = 9\nsmtp_tls = none\n'
                        f'queue_dir = {queue_dir}\n', 0o644)
    sent = subprocess.run([script('mq-sendmail'), '-C', down, 'admin@example.com'], input=MSG, capture_output=True,
                          timeout=60)
    assert sent.returncode == 0, sent.stderr
    with SMTPTestServer() as server:
        config = write_config(base / 'mq.conf', f'smtp_hostname = {server.hostname}\nsmtp_port = {server.port}\n'
                              f'smtp_tls = none\nqueue_dir = {queue_dir}\n', 0o644)
        ran = as_user(owner, [script('mq-run'), '-C', config], base)
        received = len(server.received)
    assert received == 1, ran.stderr.decode()


# --- a careless operator ---------------------------------------------------------------------------


@needs_root
def test_setup_drop_area_on_an_existing_queue_does_not_expose_queued_mail(users: Dict[str, Tuple[int, int]],
                                                                          base: Path) -> None:
    """docs/operations.md: after ``mq-queue setup --drop-area`` new/ etc. are "0700, root only" and
    reading others' mail is "not possible". Setting up the drop area on an existing queue (a
    1.0.0 queue: "whatever the umask allowed, often world-readable mail", docs/upgrading.md; or
    one made with ``mkdir -p``) opens the queue directory to 0711 but leaves the state
    directories and files as they are: whoever knows or guesses nothing can now read them all."""
    alice = users['mqdropa']
    queue_dir = base / 'spool'
    queue_dir.mkdir(mode=0o700)  # the old queue: closed at the top, as 1.0.0 / mkdir -p left it below
    os.chmod(queue_dir, 0o700)
    for name in ('new', 'cur', 'tmp'):
        (queue_dir / name).mkdir(mode=0o755)
        os.chmod(queue_dir / name, 0o755)
    old = queue_dir / 'new' / 'a1b2c3d4e5f6.1700000000'
    old.write_bytes(b'Return-path: <root@example.org>\r\nEnvelope-to: boss@example.org\r\n'
                    b'X-Queue-Meta-End: end\r\nSubject: salaries\r\n\r\nconfidential\r\n')
    os.chmod(old, 0o644)
    assert as_user(alice, ['cat', str(old)], base).returncode != 0  # closed before the set-up
    done = subprocess.run([script('mq-queue'), 'setup', '--drop-area', '-d', str(queue_dir)], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    listed = as_user(alice, ['ls', str(queue_dir / 'new')], base)
    read = as_user(alice, ['cat', str(old)], base)
    assert (listed.returncode, read.stdout) != (0, old.read_bytes()), \
        f'after setup --drop-area a user lists new/ ({listed.stdout!r}) and reads queued mail'
    modes = {name: stat.S_IMODE((queue_dir / name).stat().st_mode) for name in ('new', 'cur', 'tmp')}
    assert set(modes.values()) == {0o700}, modes


# --- one user's flood stalls the runner --------------------------------------------------------------


@needs_root
def test_the_daemon_stops_on_sigterm_while_a_user_floods_the_drop_area(users: Dict[str, Tuple[int, int]],
                                                                      base: Path) -> None:
    """cli.md/--daemon: "stop cleanly on SIGTERM/SIGINT" (in-flight messages get a 2 s grace). The
    intake takes *every* drop before a pass delivers anything and never looks at the stop event:
    one user who writes 60 000 tiny files into drop/ (no limit per user, no limit per pass) keeps
    the daemon deaf to SIGTERM -- and everybody's queued mail waiting -- until all are taken."""
    alice = users['mqdropa']
    queue_dir = base / 'spool'
    subprocess.run([script('mq-queue'), 'setup', '--drop-area', '-d', str(queue_dir)], check=True, capture_output=True)
    flood = as_user(alice, ['sh', '-c', f'cd {queue_dir}/drop && seq 1 60000 | xargs touch'], base)
    assert flood.returncode == 0, flood.stderr
    config = write_config(base / 'mq.conf', f'smtp_hostname = 127.0.0.1\nsmtp_port = 9\nsmtp_tls = none\n'
                          f'queue_dir = {queue_dir}\n', 0o600)
    daemon = subprocess.Popen([script('mq-run'), '-C', config, '--daemon', '--quiet'], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(os.listdir(queue_dir / 'failed')) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)  # the intake is under way
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=5)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
        left = len(os.listdir(queue_dir / 'drop'))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
    assert stopped, f'mq-run --daemon ignored SIGTERM for 5 s while taking drops ({left} still waiting)'


def test_a_sender_whose_temporary_name_the_runner_removed_is_told_queued(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender slow between link() and unlink() (a long fsync, a stopped process) may find its
    temporary name already removed by a runner that took it for dead: the drop is queued, so the
    sender must say so (a failure would make its caller send the message again)."""
    queue = _queue(tmp_path)
    real_link = os.link
    monkeypatch.setattr(maildir_drop, '_STALE_LINK', 0.0)

    def link_then_runner_pass(src: str, dst: str, *args: object, **kwargs: object) -> None:
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        if '/drop/' in dst:
            DropIntake(queue)()

    monkeypatch.setattr(os, 'link', link_then_runner_pass)
    drop_id = drop_message(queue.path, MSG, '', ['admin@example.com'], fsync=False)  # no error
    monkeypatch.setattr(os, 'link', real_link)
    assert _ids(queue, 'new') == [drop_id]
    assert DropIntake(queue)() == 0
