"""The administrator (mq-queue) racing running deliveries and dying mid-action: nothing held or
failed is ever delivered because of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import List

from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD, NEW
from schwarz.mailqueue.queue.maildir import MaildirQueue

from helpers import script

ENV = {'PATH': f'{os.path.dirname(script("mq-queue"))}:/usr/bin:/bin', 'LANG': 'C.UTF-8'}


def body(n: int) -> bytes:
    return b'Subject: race %d\r\nMessage-ID: <race%d@example.org>\r\n\r\nbody %d\r\n' % (n, n, n)


def _states(store: MaildirQueue) -> List[str]:
    return [state for state, _msg_id in store.ids()]


def _copy(source: Path, target: Path, home: Path) -> subprocess.Popen[bytes]:
    MaildirQueue(str(target))  # an existing target queue
    return subprocess.Popen([script('mq-queue'), '--queue-dir', str(source), '--wait', '5', 'copy',
                             '--to', str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**ENV, 'HOME': str(home)})


def test_copy_waiting_for_a_delivery_that_fails_the_message_resurrects_the_dead_letter(tmp_path: Path) -> None:
    """copy waits for a message a runner is delivering; the runner refuses it (failed/): the copy must
    stay failed ("failed stays failed"), not land in new/ of the target to be delivered again."""
    source = MaildirQueue(str(tmp_path / 'src'))
    target_dir = tmp_path / 'dst'
    msg_id = source.enqueue(body(1), 'a@example.org', ['r@example.org'])
    runner_claim = source.claim(msg_id)  # a runner delivering it right now
    assert runner_claim is not None
    proc = _copy(tmp_path / 'src', target_dir, tmp_path)
    time.sleep(0.7)  # mq-queue is waiting for the claim
    source.fail(runner_claim, '550 5.1.1 no such user')  # the server refused it: a dead letter
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    target = MaildirQueue(str(target_dir))
    assert _states(source) == []
    assert _states(target) == [FAILED], f'copied into {_states(target)}; {out!r}'


def test_copy_waiting_for_a_claim_that_ends_in_hold_releases_the_held_message(tmp_path: Path) -> None:
    """A second admin holds the message while copy waits for it: the copy must stay held."""
    source = MaildirQueue(str(tmp_path / 'src'))
    target_dir = tmp_path / 'dst'
    msg_id = source.enqueue(body(2), 'a@example.org', ['r@example.org'])
    other_admin = source.claim(msg_id)  # `mq-queue hold` (or a runner's partial-delivery hold) in progress
    assert other_admin is not None
    proc = _copy(tmp_path / 'src', target_dir, tmp_path)
    time.sleep(0.7)
    source.move(other_admin, HELD)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    target = MaildirQueue(str(target_dir))
    assert _states(target) == [HELD], f'copied into {_states(target)}; {out!r}'


def test_sigkilled_copy_of_held_messages_puts_one_back_into_new(tmp_path: Path) -> None:
    """Killing mq-queue while it holds the claim of a held message: recovery must give it back to
    hold/ (held messages are never delivered), as the PostgreSQL store does (claimed_from)."""
    queue_dir = tmp_path / 'src'
    source = MaildirQueue(str(queue_dir))
    for n in range(400):
        msg = source.claim(source.enqueue(body(n), 'a@example.org', [f'r{n}@example.org']))
        assert msg is not None
        source.move(msg, HELD)
    caught = False
    for _attempt in range(10):
        proc = _copy(queue_dir, tmp_path / 'dst', tmp_path)
        time.sleep(0.4 + 0.05 * _attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if CLAIMED in _states(source):
            caught = True
            break
    assert caught, 'mq-queue was never killed while holding a claim'
    source.recover()  # what the next mq-run does first
    assert NEW not in _states(source), 'a held message went to new/: the next run delivers it'
