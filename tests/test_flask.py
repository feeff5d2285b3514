"""The Flask-Mailman backend against real Flask-Mailman and the test SMTP server (issue 14)."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from flask import Flask
from flask_mailman import EmailMessage, EmailMultiAlternatives, Mail

from schwarz.mailqueue.config import ConfigError
from schwarz.mailqueue.flask_mailman import EmailBackend, RecipientsFailed
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue_runner import one_shot_queue_run
from schwarz.mailqueue.testutils import SMTPTestServer

BACKEND = 'schwarz.mailqueue.flask_mailman.EmailBackend'


def make_app(server: SMTPTestServer, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=BACKEND, MAIL_SERVER=server.hostname, MAIL_PORT=server.port,
                      MAIL_DEFAULT_SENDER='Shop <shop@example.org>', **config)
    return app


@pytest.fixture
def queue_dir(tmp_path: Path) -> str:
    return str(tmp_path / 'queue')


@pytest.fixture
def app(smtp_server: SMTPTestServer, queue_dir: str) -> Iterator[Flask]:
    app = make_app(smtp_server, MAILQUEUE={'queue_dir': queue_dir, 'smtp_tls': 'none'})
    with app.app_context():
        yield app


@pytest.fixture
def mail(app: Flask) -> Mail:
    return Mail(app)


def counts(location: str) -> Dict[str, int]:
    return {state: count.count for state, count in open_queue(location).stats().items()}


def test_delivered_when_up(mail: Mail, smtp_server: SMTPTestServer) -> None:
    message = EmailMultiAlternatives('Grüße', 'Körper\n', None, ['Zoë <zoe@bücher.example>'], bcc=['b@example.org'])
    message.attach_alternative('<b>Körper</b>', 'text/html')
    message.attach('data.bin', bytes(range(256)), 'application/octet-stream')
    assert message.send() == 1
    got = smtp_server.wait_for_messages(1)[0]
    assert got.mail_from == 'shop@example.org'  # MAIL_DEFAULT_SENDER, as Flask-Mailman fills it in
    assert got.rcpt_tos == ['zoe@xn--bcher-kva.example', 'b@example.org']
    parsed = got.as_message()
    assert parsed['Subject'] == 'Grüße' and 'Bcc' not in parsed
    assert [part.get_content() for part in parsed.iter_attachments()] == [bytes(range(256))]
    assert b'\n' not in got.data.replace(b'\r\n', b'')


def test_queued_when_down_and_delivered_by_the_runner(mail: Mail, smtp_server: SMTPTestServer,
                                                      queue_dir: str) -> None:
    smtp_server.stop()
    assert mail.send_mail('Later', 'body', None, ['bob@example.org']) == 1
    assert counts(queue_dir)['new'] == 1
    smtp_server.start()
    stats = one_shot_queue_run(queue_dir, settings={'smtp_hostname': smtp_server.hostname,
                                                    'smtp_port': smtp_server.port, 'smtp_tls': 'none',
                                                    'basic_logging_configured': True}, options={'progress': False})
    assert stats.sent == 1
    assert smtp_server.wait_for_messages(1)[0].rcpt_tos == ['bob@example.org']
    assert counts(queue_dir)['new'] == 0


def test_a_250_451_550_mix(mail: Mail, smtp_server: SMTPTestServer, queue_dir: str) -> None:
    smtp_server.set_recipient_reply('later@example.org', 451)
    smtp_server.set_recipient_reply('never@example.org', 550)
    to = ['ok@example.org', 'later@example.org', 'never@example.org']
    with pytest.raises(RecipientsFailed) as info:
        mail.send_mail('Mix', 'body', None, to)
    assert isinstance(info.value, smtplib.SMTPRecipientsRefused)
    assert list(info.value.recipients) == ['never@example.org'] and info.value.sent == 1
    assert [m.rcpt_tos for m in smtp_server.received] == [['ok@example.org']]
    assert counts(queue_dir)['new'] == 1 and counts(queue_dir)['failed'] == 1
    smtp_server.set_recipient_reply('later@example.org', 451)
    smtp_server.set_recipient_reply('never@example.org', 550)
    assert mail.send_mail('Mix', 'body', None, to, fail_silently=True) == 1


def test_fail_silently_without_a_queue(smtp_server: SMTPTestServer) -> None:
    app = make_app(smtp_server, MAILQUEUE={'smtp_tls': 'none'})
    with app.app_context():
        mail = Mail(app)
        smtp_server.stop()
        assert mail.send_mail('x', 'body', None, ['a@example.org'], fail_silently=True) == 0
        with pytest.raises(RecipientsFailed, match='not queued'):
            mail.send_mail('x', 'body', None, ['a@example.org'])


def test_one_connection_between_open_and_close(mail: Mail, smtp_server: SMTPTestServer) -> None:
    with mail.get_connection() as conn:
        assert isinstance(conn, EmailBackend)
        for i in range(3):
            EmailMessage(f'm{i}', 'body', None, ['a@example.org'], connection=conn).send()
        assert conn.send_messages([EmailMessage('x', 'y', None, ['b@example.org']) for _ in range(2)]) == 2
    assert len(smtp_server.wait_for_messages(5)) == 5
    assert smtp_server.connection_count == 1


def test_configuration_sources(smtp_server: SMTPTestServer, queue_dir: str, tmp_path: Path) -> None:
    # MAIL_* keys, then MAILQUEUE, then get_connection() keyword options
    app = make_app(smtp_server, MAIL_USE_TLS=True, MAIL_TIMEOUT=7, MAIL_USERNAME='u', MAIL_PASSWORD='p',
                   MAILQUEUE={'queue_dir': queue_dir, 'mode': 'queue', 'smtp_timeout': 9})
    with app.app_context():
        mail = Mail(app)
        conn = mail.get_connection(password='override')
        settings = conn.config.settings
        assert (settings.smtp_hostname, settings.smtp_port) == (smtp_server.hostname, smtp_server.port)
        assert settings.smtp_tls == 'starttls' and settings.smtp_timeout == 9
        assert (settings.smtp_username, settings.smtp_password) == ('u', 'override')
        assert conn.config.mode == 'queue'
        assert mail.send_mail('q', 'body', None, ['a@example.org']) == 1
    assert counts(queue_dir)['new'] == 1 and smtp_server.received == []
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nsmtp_hostname = {smtp_server.hostname}\nsmtp_port = {smtp_server.port}\n'
                      f'smtp_tls = none\n')
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=BACKEND, MAILQUEUE=str(config))
    with app.app_context():
        assert Mail(app).send_mail('cfg', 'body', 'me@example.org', ['a@example.org']) == 1
    assert smtp_server.wait_for_messages(1)[0].mail_from == 'me@example.org'
    # MAIL_USERNAME without MAIL_PASSWORD: Flask-Mailman's SMTP backend does not log in, nor do we
    app = make_app(smtp_server, MAIL_USERNAME='u', MAILQUEUE={'smtp_tls': 'none'})
    with app.app_context():
        settings = Mail(app).get_connection().config.settings
        assert (settings.smtp_username, settings.smtp_password) == (None, None)
    # a config file naming the smarthost is used whole: MAIL_* (another smarthost's) do not mix in
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=BACKEND, MAILQUEUE=str(config), MAIL_SERVER='smtp.other.example',
                      MAIL_PORT=465, MAIL_USE_SSL=True, MAIL_USERNAME='other')
    with app.app_context():
        settings = Mail(app).get_connection().config.settings
        assert (settings.smtp_hostname, settings.smtp_port, settings.smtp_tls, settings.smtp_username) == (
            smtp_server.hostname, smtp_server.port, 'none', None)


@pytest.mark.parametrize('config, problem', [
    ({'MAILQUEUE': {'nonsense': 1}}, 'nonsense: unknown option'),
    ({'MAILQUEUE': {'mode': 'queue'}}, 'needs a queue'),
    ({'MAIL_SSL_CERTFILE': '/x.pem'}, 'client certificates'),
])
def test_bad_configuration(smtp_server: SMTPTestServer, config: Dict[str, Any], problem: str) -> None:
    app = make_app(smtp_server, **config)
    with app.app_context():
        with pytest.raises(ConfigError, match=problem):
            Mail(app).get_connection()
