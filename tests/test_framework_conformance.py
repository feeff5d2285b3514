"""What the frameworks' own backends and test suites expect of a mail backend, checked on ours.

From running Django 5.2's mail tests (the backend-agnostic ones) and Flask-Mailman's tests against
our backends: where ours differed, a test here, in our own words, against the test SMTP server.
"""

from __future__ import annotations

import copy
import pickle
import smtplib
import socket
from typing import Any, Dict, Iterator

import django
import pytest
from django.conf import settings

import _pg
from schwarz.mailqueue.testutils import SMTPTestServer

if not settings.configured:
    settings.configure(INSTALLED_APPS=['schwarz.mailqueue'], DATABASES={'default': _pg.django_database()},
                       DEFAULT_FROM_EMAIL='webmaster@example.org', USE_TZ=True)
    django.setup()

from django.core import mail  # noqa: E402  (after settings.configure)
from django.test import override_settings  # noqa: E402
from flask import Flask  # noqa: E402
from flask_mailman import EmailMessage as FlaskEmailMessage  # noqa: E402
from flask_mailman import Mail  # noqa: E402

from schwarz.mailqueue.django import RecipientsFailed  # noqa: E402

DJANGO_BACKEND = 'schwarz.mailqueue.django.EmailBackend'
FLASK_BACKEND = 'schwarz.mailqueue.flask_mailman.EmailBackend'


@pytest.fixture
def server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as srv:
        yield srv


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def django_settings(srv: SMTPTestServer, **extra: Any) -> Dict[str, Any]:
    return {'EMAIL_BACKEND': DJANGO_BACKEND,
            'MAILQUEUE': {'smtp_hostname': srv.hostname, 'smtp_port': srv.port, 'smtp_tls': 'none', **extra}}


# --- Flask-Mailman: the backend must take its settings from the Mail state it is given ----------------


def test_flask_backend_reads_the_mailman_state_like_flask_mailmans_smtp_backend(server: SMTPTestServer) -> None:
    # Flask-Mailman's backends read host, port, ... from ``mailman`` (``app.extensions['mailman']``,
    # built by ``Mail.init_mail`` with its defaults); its test suite changes them there (``mail_config``).
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAIL_SERVER=server.hostname, MAIL_PORT=unused_port(),
                      MAILQUEUE={'smtp_tls': 'none'})
    mail_ext = Mail(app)
    mail_ext.state.port = server.port
    with app.app_context():
        sent = FlaskEmailMessage('Subject', 'Body', 'from@example.com', ['to@example.com']).send()
    assert sent == 1
    assert [m.rcpt_tos for m in server.received] == [['to@example.com']]


def test_flask_backend_uses_flask_mailmans_default_smarthost() -> None:
    # Without MAIL_SERVER / MAIL_PORT Flask-Mailman (and its SMTP backend) use localhost:25; ours has no
    # smarthost at all and, with a queue, silently queues every message for a runner that cannot send it.
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAILQUEUE={'smtp_tls': 'none'})
    mail_ext = Mail(app)
    with app.app_context():
        backend = mail_ext.get_connection()
    assert (backend.config.settings.smtp_hostname, backend.config.settings.smtp_port) == ('localhost', 25)


def test_flask_get_connection_of_a_bound_mail_needs_no_app_context(server: SMTPTestServer) -> None:
    # ``Mail(app).get_connection()`` passes ``mailman``; Flask-Mailman's own backends need no app context then.
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAIL_SERVER=server.hostname, MAIL_PORT=server.port,
                      MAILQUEUE={'smtp_tls': 'none'})
    mail_ext = Mail(app)
    connection = mail_ext.get_connection()
    connection.close()


# --- both: a message without a sender --------------------------------------------------------------


def test_django_empty_from_email_is_an_invalid_address_not_the_null_sender(server: SMTPTestServer) -> None:
    # Django's SMTP backend: sanitize_address('') -> ValueError('Invalid address ""'). Ours sends the
    # message as a bounce (MAIL FROM:<>) without any From header.
    with override_settings(**django_settings(server)):
        message = mail.EmailMessage('Subject', 'Body', '', ['to@example.com'])
        message.from_email = ''  # (EmailMessage itself falls back to DEFAULT_FROM_EMAIL)
        with pytest.raises(ValueError, match='no sender'):
            mail.get_connection().send_messages([message])
    assert server.received == []


def test_flask_message_without_any_sender_is_not_sent_with_the_null_sender(server: SMTPTestServer) -> None:
    # No MAIL_DEFAULT_SENDER and no from_email: Flask-Mailman's SMTP backend sends MAIL FROM:<None>
    # (the server refuses it); ours sends MAIL FROM:<> and a message without From.
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAIL_SERVER=server.hostname, MAIL_PORT=server.port,
                      MAILQUEUE={'smtp_tls': 'none'})
    Mail(app)
    with app.app_context():
        message = FlaskEmailMessage('Subject', 'Body', None, ['to@example.com'])
        try:
            message.send()
        except ValueError:
            pass
    assert [m.mail_from for m in server.received if m.mail_from in ('', '<>')] == []


# --- RecipientsFailed must travel like the smtplib exception it claims to be ---------------------------


def _recipients_failed(server: SMTPTestServer) -> RecipientsFailed:
    server.set_recipient_reply('never@example.org', 550)
    with override_settings(**django_settings(server)):
        with pytest.raises(RecipientsFailed) as info:
            mail.send_mail('Subject', 'Body', 'from@example.org', ['never@example.org'])
    return info.value


def test_recipients_failed_can_be_pickled(server: SMTPTestServer) -> None:
    # smtplib.SMTPRecipientsRefused pickles; Celery (pickle serializer), multiprocessing and Django's
    # parallel test runner pickle exceptions raised by send_mail().
    exc = _recipients_failed(server)
    clone = pickle.loads(pickle.dumps(exc))
    assert isinstance(clone, RecipientsFailed) and isinstance(clone, smtplib.SMTPRecipientsRefused)
    reply = clone.refused['never@example.org'][1]
    assert clone.recipients == exc.recipients == {'never@example.org': (550, reply.encode())}
    assert (clone.refused, clone.deferred, clone.sent, clone.results) == (exc.refused, exc.deferred, 0, [])
    assert str(clone) == str(exc)


def test_recipients_failed_can_be_copied(server: SMTPTestServer) -> None:
    # copy.copy() of an exception calls cls(*exc.args); args is (recipients,) as for SMTPRecipientsRefused
    exc = _recipients_failed(server)
    clone = copy.copy(exc)
    assert clone.recipients == exc.recipients and clone.refused == exc.refused and clone.args == exc.args


def test_flask_mailmans_defaults_do_not_override_the_smarthost_of_a_config_file(server: SMTPTestServer,
                                                                                 tmp_path: Any) -> None:
    # the shared-file set-up of docs/frameworks.md: MAILQUEUE names mq-run's config file, no MAIL_SERVER
    conf = tmp_path / 'mailqueue.conf'
    conf.write_text(f'[mqrunner]\nsmtp_hostname = {server.hostname}\nsmtp_port = {server.port}\nsmtp_tls = none\n')
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAILQUEUE=str(conf))
    mail_ext = Mail(app)
    with app.app_context():
        assert mail_ext.send_mail('Subject', 'Body', 'from@example.com', ['to@example.com']) == 1
    assert [m.rcpt_tos for m in server.received] == [['to@example.com']]


def test_flask_backend_used_outside_an_app_context_says_so_instead_of_ignoring_mailqueue(tmp_path: Any) -> None:
    # MAILQUEUE cannot be read without the app: defaults in its place would send mail that is
    # configured to be queued only
    app = Flask(__name__)
    app.config.update(MAIL_BACKEND=FLASK_BACKEND, MAILQUEUE={'queue_dir': str(tmp_path / 'q'), 'mode': 'queue'})
    connection = Mail(app).get_connection()
    with pytest.raises(RuntimeError, match='application context'):
        connection.open()
    with app.app_context():
        connection.open()
        assert connection.config.mode == 'queue'
        connection.close()
