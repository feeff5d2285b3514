"""mq-run --daemon stops within seconds of SIGTERM, whatever the server does; nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import script, write_config

MSG = b'Subject: stalled\r\n\r\nbody\r\n'


def test_sigterm_stops_the_daemon_while_the_server_stalls(tmp_path) -> None:
    queue_dir = str(tmp_path / 'q')
    queue = MaildirQueue(queue_dir)
    queue.enqueue(MSG, 'a@x', ['stuck@x'])
    # The server takes 60 s to answer the end of data; the inactivity timeout is longer still.
    with SMTPTestServer(delays={'DATA': 60}) as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_dir=queue_dir, smtp_timeout=120)
        proc = subprocess.Popen([script('mq-run'), '-C', config, '--daemon'],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not os.listdir(os.path.join(queue_dir, 'cur')) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert os.listdir(os.path.join(queue_dir, 'cur')), 'delivery never started'
            time.sleep(0.5)  # the data is out, the runner waits for the reply
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert took < 5, f'daemon needed {took:.1f} s to stop'
    assert os.listdir(os.path.join(queue_dir, 'cur')) == []
    waiting = os.listdir(os.path.join(queue_dir, 'new'))
    assert len(waiting) == 1, 'the interrupted message must stay queued'
    assert os.listdir(os.path.join(queue_dir, 'failed')) == []
