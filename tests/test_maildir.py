from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from schwarz.mailqueue import enqueue_message
from schwarz.mailqueue.queue.format import QueueFileError, parse_queue_bytes
from schwarz.mailqueue.queue.maildir import MaildirQueue

MSG = b'Subject: test\r\n\r\nbody\r\n'


def files(queue: MaildirQueue, state: str) -> list[str]:
    return sorted(os.listdir(os.path.join(queue.path, state)))


def test_enqueue_is_private_and_complete(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = queue.enqueue(MSG, 'a@x', ['b@x'])
    assert files(queue, 'new') == [msg_id]
    assert files(queue, 'tmp') == []
    path = os.path.join(queue.path, 'new', str(msg_id))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for sub in ('tmp', 'new', 'cur', 'hold', 'failed'):
        assert stat.S_IMODE(os.stat(os.path.join(queue.path, sub)).st_mode) == 0o700
    meta, body = parse_queue_bytes(open(path, 'rb').read())
    assert body == MSG and meta.to_addrs == ['b@x'] and meta.from_addr == 'a@x'


def test_claim_is_exclusive_and_complete_removes(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x']))
    other = MaildirQueue(str(tmp_path / 'q'))
    msg = queue.claim(msg_id)
    assert msg is not None and files(queue, 'cur') == [msg_id]
    assert other.claim(msg_id) is None
    assert other.claim(msg_id, state='cur') is None  # locked by us
    assert other.recover_stale() == 0
    queue.complete(msg)
    assert files(queue, 'cur') == [] and files(queue, 'new') == []


def test_defer_rewrites_recipients_and_counts_attempt(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x', 'c@x']))
    msg = queue.claim(msg_id)
    assert msg is not None
    now = datetime(2026, 11, 29, 1, 0, tzinfo=timezone.utc)
    queue.defer(msg, ['c@x'], 'c@x: 451 later', now)
    meta, body = queue.read_message('new', msg_id)
    assert (meta.to_addrs, meta.retries, meta.last_delivery_attempt, body) == (['c@x'], 1, now, MSG)
    assert meta.last_error == 'c@x: 451 later'
    assert files(queue, 'cur') == [] and files(queue, 'tmp') == []


def test_fail_moves_to_failed_with_reason(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x']))
    msg = queue.claim(msg_id)
    assert msg is not None
    queue.fail(msg, 'b@x: 550 no such user')
    meta, _ = queue.read_message('failed', msg_id)
    assert meta.failed_reason == 'b@x: 550 no such user'


def test_corrupt_file_goes_to_failed_and_is_kept(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    with open(os.path.join(queue.path, 'new', 'garbage'), 'wb') as fp:
        fp.write(b'not a queue file at all')
    with pytest.raises(QueueFileError):
        queue.claim('garbage')
    assert files(queue, 'new') == [] and files(queue, 'cur') == []
    meta, body = queue.read_message('failed', 'garbage')
    assert 'corrupt queue file' in (meta.failed_reason or '')
    assert body == b'not a queue file at all'


def test_symlink_in_new_is_not_followed(tmp_path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    secret = tmp_path / 'secret'
    secret.write_bytes(b'do not read me')
    os.symlink(secret, os.path.join(queue.path, 'new', 'link'))
    with pytest.raises(QueueFileError, match='symlink'):
        queue.claim('link')
    assert secret.read_bytes() == b'do not read me'


def test_in_progress_enqueue_holds_claim_until_done(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    msg = enqueue_message(MSG, queue_dir, sender='a@x', recipients=('b@x',), in_progress=True, return_msg=True)
    queue = MaildirQueue(queue_dir)
    assert files(queue, 'cur') == [msg.msg_id]
    assert queue.recover_stale() == 0  # its owner (us) holds the lock
    msg.backend.release(msg)
    assert files(queue, 'new') == [msg.msg_id]


def test_claim_abandoned_by_crashed_process_is_recovered(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    script = textwrap.dedent(f'''
        import os, sys
        from schwarz.mailqueue import enqueue_message
        msg = enqueue_message(b'x', {queue_dir!r}, sender='a@x', recipients=['b@x'], in_progress=True,
                              return_msg=True)
        print(msg.msg_id, flush=True)
        os._exit(9)  # crash while holding the claim
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, timeout=30)
    msg_id = out.stdout.decode().strip()
    queue = MaildirQueue(queue_dir)
    assert files(queue, 'cur') == [msg_id]
    assert queue.recover_stale() == 1
    assert files(queue, 'new') == [msg_id]


CRASH_WRITER = '''
import sys
from schwarz.mailqueue.queue.maildir import MaildirQueue
queue = MaildirQueue(sys.argv[1])
body = b'Subject: crash test\\r\\n\\r\\n' + b'x' * int(sys.argv[2])
n = 0
while True:
    msg_id = queue.enqueue(body + b'%d' % n, 'a@x', ['b@x'])
    # acknowledged: only now is the message promised to exist
    sys.stdout.write(msg_id + '\\n')
    sys.stdout.flush()
    n += 1
'''


def test_sigkill_during_enqueue_never_leaves_partial_files(tmp_path) -> None:
    """A writer is SIGKILLed at random moments; every file in new/ parses, nothing acknowledged is lost."""
    import random

    queue_dir = str(tmp_path / 'q')
    rng = random.Random(1234)
    acknowledged: list[str] = []
    kills = 25
    for round_no in range(kills):
        size = rng.choice([10, 5000, 200_000])
        proc = subprocess.Popen([sys.executable, '-c', CRASH_WRITER, queue_dir, str(size)],
                                stdout=subprocess.PIPE)
        time.sleep(0.15 + rng.random() * 0.25)
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        lines = out.decode().split('\n')
        acknowledged.extend(line for line in lines[:-1] if line)  # last item may be a torn line
        del round_no
    queue = MaildirQueue(queue_dir)
    present = set(files(queue, 'new'))
    for name in present:
        meta, body = queue.read_message('new', name)
        assert meta.to_addrs == ['b@x'] and body.startswith(b'Subject: crash test\r\n\r\n')
    missing = [m for m in acknowledged if m not in present]
    assert not missing, f'{len(missing)} acknowledged messages lost'
    assert len(acknowledged) > kills  # the writers did real work between kills


def test_time_limit_fallback_only_when_configured(tmp_path) -> None:
    from datetime import timedelta
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x']))
    msg = queue.claim(msg_id)  # lock held: the claim is alive
    assert msg is not None
    old = time.time() - 3600
    os.utime(os.path.join(queue.path, 'cur', msg_id), (old, old))
    assert MaildirQueue(queue.path).recover_stale() == 0  # locks are trusted by default
    untrusting = MaildirQueue(queue.path, stale_after=timedelta(minutes=30))
    assert untrusting.recover_stale() == 1
    assert files(queue, 'new') == [msg_id]


def test_rewrite_after_crash_left_a_tmp_file(tmp_path) -> None:
    """A runner killed mid-rewrite leaves tmp/ debris; later rewrites of that message still work."""
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = str(queue.enqueue(MSG, 'a@x', ['b@x', 'c@x']))
    for name in (msg_id, f'{msg_id}.deadbeef'):
        (tmp_path / 'q' / 'tmp' / name).write_bytes(b'partial')
    msg = queue.claim(msg_id)
    assert msg is not None
    queue.defer(msg, ['c@x'], '451 later', datetime.now(timezone.utc))
    msg = queue.claim(msg_id)
    assert msg is not None
    queue.fail(msg, '550 no')
    assert queue.read_meta('failed', msg_id).to_addrs == ['c@x']


def _closer_threads() -> int:
    import threading

    return sum(1 for thread in threading.enumerate() if thread.name == 'mq-closer' and thread.is_alive())


def _complete_one(queue: MaildirQueue) -> None:
    msg_id = queue.enqueue(b'Subject: x\r\n\r\nbody\r\n', 'a@example.org', ['b@example.org'])
    msg = queue.claim(msg_id)
    assert msg is not None
    queue.complete(msg)


def test_a_queue_leaves_no_closer_thread_behind(tmp_path) -> None:
    """complete() closes files in a helper thread; close(), or dropping the queue, ends it."""
    import gc

    before = _closer_threads()
    queue = MaildirQueue(str(tmp_path / 'closed'), fsync=False)
    _complete_one(queue)
    assert _closer_threads() == before + 1
    queue.close()
    dropped = MaildirQueue(str(tmp_path / 'dropped'), fsync=False)
    _complete_one(dropped)
    del dropped
    gc.collect()
    deadline = time.monotonic() + 5
    while _closer_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _closer_threads() == before
