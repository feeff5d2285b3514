"""``python -m schwarz.mailqueue.demo``: the whole story on one machine, in a few seconds.

A local SMTP sink on 127.0.0.1 plays the smarthost. We send (delivered), stop
the sink and send again (queued durably on disk), start the sink again and let
the queue runner deliver. Nothing leaves this machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
from email.message import EmailMessage
from email.utils import make_msgid

from .handler import MessageHandler
from .queue.transport import MaildirBackend
from .runner import send_all_queued_messages
from .smtp.transport import SMTPMailer
from .testutils import SMTPTestServer

__all__ = ['main']


def _message(subject: str) -> bytes:
    msg = EmailMessage()
    msg['From'] = 'app@demo.example'
    msg['To'] = 'ops@demo.example'
    msg['Subject'] = subject
    msg['Message-ID'] = make_msgid(domain='demo.example')
    msg.set_content(f'{subject}\n')
    return msg.as_bytes()


def _step(text: str) -> None:
    print(f'==> {text}', flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix='mq-demo-') as tmp:
        queue_dir = os.path.join(tmp, 'queue')
        server = SMTPTestServer()
        server.start()
        try:
            _step(f'smarthost (local SMTP sink) listening on {server.hostname}:{server.port}')
            mailer = SMTPMailer(server.hostname, server.port, tls='none', timeout=5)
            handler = MessageHandler([mailer, MaildirBackend(queue_dir)], app='demo')

            result = handler.send_message(_message('first message'), sender='app@demo.example',
                                          recipient='ops@demo.example')
            assert result is not None
            _step(f'send #1: transport={result.transport} queued={result.queued} '
                  f'reply="{result.smtp_response}"; smarthost has {len(server.received)} message(s)')

            server.stop()
            mailer.close()
            _step('smarthost stopped')
            result = handler.send_message(_message('second message'), sender='app@demo.example',
                                          recipient='ops@demo.example')
            assert result is not None
            queued = sorted(os.listdir(os.path.join(queue_dir, 'new')))
            _step(f'send #2: transport={result.transport} queued={result.queued} error="{result.error}"')
            _step(f'queue {queue_dir}/new holds {len(queued)} file(s): {", ".join(queued)}')

            server.start()
            _step(f'smarthost back on {server.hostname}:{server.port}; running the queue (mq-run)')
            stats = send_all_queued_messages(queue_dir, mailer=SMTPMailer(server.hostname, server.port,
                                                                          tls='none', timeout=5))
            server.wait_for_messages(2)
            left = os.listdir(os.path.join(queue_dir, 'new')) + os.listdir(os.path.join(queue_dir, 'cur'))
            _step(f'queue run: sent={stats.sent} deferred={stats.deferred} failed={stats.failed}; '
                  f'{len(left)} message(s) left in the queue')
            subjects = [m.data.split(b'Subject: ', 1)[1].split(b'\n', 1)[0].strip().decode()
                        for m in server.received]
            _step(f'smarthost received {len(server.received)} message(s): {subjects}')
            ok = len(server.received) == 2 and not left and stats.sent == 1
            _step('demo ' + ('succeeded: nothing lost, nothing sent twice' if ok else 'FAILED'))
            return 0 if ok else 1
        finally:
            server.stop()


if __name__ == '__main__':
    sys.exit(main())
