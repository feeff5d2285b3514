"""The administrator (mq-queue) racing running deliveries and dying mid-action: nothing held or
failed is ever delivered because of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from schwarz.mailqueue.queue.contract import CLAIMED, FAILED, HELD
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


def test_an_admin_tool_killed_while_it_holds_a_held_or_failed_message_gives_it_back(tmp_path: Path) -> None:
    """Killing mq-queue (copy, delete) while it holds the claim of a held or failed message:
    recovery must give it back to hold/ or failed/ (held messages are never delivered, failed
    ones not retried), as the PostgreSQL store does (claimed_from). The tool's claim is made by a
    child process that is SIGKILLed once it holds both."""
    queue_dir = tmp_path / 'src'
    source = MaildirQueue(str(queue_dir))
    ids = {}
    for state in (HELD, FAILED):
        msg = source.claim(source.enqueue(body(0), 'a@example.org', [f'{state}@example.org']))
        assert msg is not None
        source.move(msg, state)
        ids[state] = msg.msg_id
    child = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\n'
         'from schwarz.mailqueue.queue.maildir import MaildirQueue\n'
         'q = MaildirQueue(sys.argv[1])\n'
         'held = [q.claim(sys.argv[2], "hold"), q.claim(sys.argv[3], "failed")]\n'
         'print("claimed" if all(held) else "not claimed", flush=True)\n'
         'time.sleep(60)\n', str(queue_dir), ids[HELD], ids[FAILED]],
        stdout=subprocess.PIPE, env={**ENV})
    try:
        assert child.stdout is not None and child.stdout.readline() == b'claimed\n'
        assert _states(source) == [CLAIMED, CLAIMED]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert source.recover() == 2  # what the next mq-run does first
    assert source.locate(ids[HELD]) == HELD, 'a held message went to new/: the next run delivers it'
    assert source.locate(ids[FAILED]) == FAILED, 'a failed message went to new/: the next run retries it'
