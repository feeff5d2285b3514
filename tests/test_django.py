"""The Django backend against real Django and the test SMTP server (issue 14, SPEC §13).

Django is configured once for this test process (``settings.configure``); each test sets its
own backend options with ``override_settings``. Django 6.1+ (the current release, on Python
3.12+) also runs every backend test through ``MAILERS``; 4.2 (Python 3.9) and the 5.2 LTS use
``EMAIL_BACKEND`` + ``MAILQUEUE`` only. The database is the PostgreSQL test server of
``tests/_pg.py`` (the transactional tests; nothing else touches it).
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import django
import pytest
from django.conf import settings

import _pg
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import run, script, write_config

BACKEND = 'schwarz.mailqueue.django.EmailBackend'
HAS_MAILERS = django.VERSION >= (6, 1)


if not settings.configured:
    settings.configure(
        INSTALLED_APPS=['schwarz.mailqueue'],
        DATABASES={'default': _pg.django_database()},
        DEFAULT_FROM_EMAIL='webmaster@example.org',
        USE_TZ=True,
    )
    django.setup()

from django.core import mail  # noqa: E402  (after settings.configure)
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.test import override_settings  # noqa: E402

from schwarz.mailqueue.django import EmailBackend, RecipientsFailed, database_location  # noqa: E402
from schwarz.mailqueue.queue.locations import open_queue  # noqa: E402

STYLES = ['setting', 'mailers'] if HAS_MAILERS else ['setting']


def smtp_options(server: SMTPTestServer, **extra: Any) -> Dict[str, Any]:
    return {'smtp_hostname': server.hostname, 'smtp_port': server.port, 'smtp_tls': 'none', **extra}


def backend_settings(style: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Settings that make ``options`` the configuration of the default mail backend."""
    if style == 'mailers':
        return {'MAILERS': {'default': {'BACKEND': BACKEND, 'OPTIONS': options}}}
    return {'EMAIL_BACKEND': BACKEND, 'MAILQUEUE': options}


@pytest.fixture(params=STYLES)
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue_dir(tmp_path: Path) -> str:
    return str(tmp_path / 'queue')


@pytest.fixture
def configured(style: str, smtp_server: SMTPTestServer, queue_dir: str) -> Iterator[Dict[str, Any]]:
    """The default backend: SMTP to the test server, then the maildir queue."""
    options = smtp_options(smtp_server, queue_dir=queue_dir)
    with override_settings(**backend_settings(style, options)):
        yield options


def queue_counts(location: str) -> Dict[str, int]:
    store = open_queue(location)
    return {state: count.count for state, count in store.stats().items()}


def connection() -> Any:
    """The default backend, as Django code gets it (``mailers.default`` on 6.1+)."""
    if HAS_MAILERS and getattr(settings, 'MAILERS', None):
        return mail.mailers.default
    return mail.get_connection()


def send(subject: str, to: List[str], *, fail_silently: bool = False) -> int:
    """``send_mail`` the way each Django version wants it called (6.1: fail_silently is a MAILERS option)."""
    if HAS_MAILERS and getattr(settings, 'MAILERS', None):
        if fail_silently:
            entry = settings.MAILERS['default']
            options = dict(entry['OPTIONS'], fail_silently=True)
            with override_settings(MAILERS={'default': {'BACKEND': entry['BACKEND'], 'OPTIONS': options}}):
                return int(mail.send_mail(subject, 'body', 'sender@example.org', to))
        return int(mail.send_mail(subject, 'body', 'sender@example.org', to))
    return int(mail.send_mail(subject, 'body', 'sender@example.org', to, fail_silently=fail_silently))


# --- delivery ------------------------------------------------------------------------------------


def test_delivered_when_the_smarthost_is_up(configured: Dict[str, Any], smtp_server: SMTPTestServer,
                                            queue_dir: str) -> None:
    assert send('Hello', ['Bob <bob@example.org>', 'carol@example.org']) == 1
    received = smtp_server.wait_for_messages(1)
    assert received[0].mail_from == 'sender@example.org'
    assert received[0].rcpt_tos == ['bob@example.org', 'carol@example.org']
    assert received[0].as_message()['Subject'] == 'Hello'
    assert b'\n' not in received[0].data.replace(b'\r\n', b'')  # CRLF only, as Django's SMTP backend sends
    assert queue_counts(queue_dir)['new'] == 0


def test_attachments_and_non_ascii_as_django_builds_them(configured: Dict[str, Any],
                                                         smtp_server: SMTPTestServer) -> None:
    pdf = bytes(range(256)) * 40
    message = mail.EmailMultiAlternatives(
        'Grüße aus Köln – ✓', 'Körper mit Umlauten äöü\n', 'Wébmaster <web@exämple.org>',
        ['Zoë <zoe@bücher.example>', 'plain@example.org'], cc=['cc@example.org'], bcc=['hidden@example.org'],
        headers={'X-Tag': 'één'})
    message.attach_alternative('<p>Körper</p>', 'text/html')
    message.attach('rechnung.pdf', pdf, 'application/pdf')
    message.attach('notiz.txt', 'Grüße\n', 'text/plain')
    with connection() as conn:
        assert conn.send_messages([message]) == 1
    got = smtp_server.wait_for_messages(1)[0]
    # the envelope as Django's SMTP backend builds it: IDNA domains, Bcc only in the envelope
    assert got.mail_from == 'web@xn--exmple-cua.org'
    assert got.rcpt_tos == ['zoe@xn--bcher-kva.example', 'plain@example.org', 'cc@example.org',
                            'hidden@example.org']
    parsed = got.as_message()
    assert parsed['Subject'] == 'Grüße aus Köln – ✓'
    assert parsed['X-Tag'] == 'één'
    assert 'Bcc' not in parsed
    assert 'hidden@example.org' not in got.data.decode('ascii', 'replace')
    attachments = {part.get_filename(): part.get_content() for part in parsed.iter_attachments()}
    assert attachments['rechnung.pdf'] == pdf
    assert attachments['notiz.txt'].replace('\r\n', '\n') == 'Grüße\n'  # text travels with CRLF
    body = parsed.get_body(('plain',))
    assert body is not None and body.get_content().replace('\r\n', '\n') == 'Körper mit Umlauten äöü\n'
    html = parsed.get_body(('html',))
    assert html is not None and html.get_content().strip() == '<p>Körper</p>'
    # the same bytes as Django's own serialisation of that message (apart from its fresh Message-ID)
    for part in (b'Content-Type: application/pdf', b'Content-Disposition: attachment; filename="rechnung.pdf"'):
        assert part in got.data


def test_queued_when_the_smarthost_is_down_then_delivered_by_mq_run(
        configured: Dict[str, Any], smtp_server: SMTPTestServer, queue_dir: str, tmp_path: Path) -> None:
    smtp_server.stop()
    assert send('While down', ['bob@example.org']) == 1  # queued counts as sent, as Django users expect
    assert queue_counts(queue_dir)['new'] == 1
    smtp_server.start()
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    result = run([script('mq-run'), '-C', config])
    assert result.returncode == 0, result.stderr
    got = smtp_server.wait_for_messages(1)
    assert got[0].rcpt_tos == ['bob@example.org'] and got[0].as_message()['Subject'] == 'While down'
    assert queue_counts(queue_dir)['new'] == 0


def test_queued_then_delivered_by_the_management_command(configured: Dict[str, Any], smtp_server: SMTPTestServer,
                                                         queue_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    smtp_server.stop()
    assert send('While down', ['bob@example.org', 'carol@example.org']) == 1
    smtp_server.start()
    call_command('mailqueue', 'status')
    assert 'new              1' in capsys.readouterr().out
    call_command('mailqueue')
    assert 'sent 1, deferred 0, failed 0' in capsys.readouterr().out
    assert smtp_server.wait_for_messages(1)[0].rcpt_tos == ['bob@example.org', 'carol@example.org']
    call_command('mailqueue', 'status', json=True)
    assert json.loads(capsys.readouterr().out)['states']['new']['messages'] == 0


# --- per-recipient results -----------------------------------------------------------------------


def test_a_250_451_550_mix_is_reported_per_recipient(configured: Dict[str, Any], smtp_server: SMTPTestServer,
                                                      queue_dir: str) -> None:
    smtp_server.set_recipient_reply('later@example.org', 451)
    smtp_server.set_recipient_reply('never@example.org', 550, '5.1.1 no such user')
    with pytest.raises(RecipientsFailed) as info:
        send('Mix', ['ok@example.org', 'later@example.org', 'never@example.org'])
    exc = info.value
    # what Django code already catches: smtplib's exception, with smtplib's recipients mapping
    assert isinstance(exc, smtplib.SMTPRecipientsRefused)
    assert exc.recipients == {'never@example.org': (550, b'5.1.1 no such user')}
    assert exc.refused == {'never@example.org': (550, '5.1.1 no such user')}
    assert exc.deferred == {}
    assert exc.sent == 1  # the message reached ok@ and the queue (for later@)
    [(message, result)] = exc.results
    assert message.subject == 'Mix'
    assert result.accepted == ['ok@example.org'] and result.queued_to == ['later@example.org']
    assert [m.rcpt_tos for m in smtp_server.received] == [['ok@example.org']]
    counts = queue_counts(queue_dir)
    assert counts['new'] == 1  # later@, for mq-run
    assert counts['failed'] == 1  # the dead letter for never@
    store = open_queue(queue_dir)
    [(_state, queued_id)] = list(store.ids(['new']))
    entry = store.entry(queued_id)
    assert entry is not None and entry.meta is not None and entry.meta.to_addrs == ['later@example.org']


def test_the_mix_with_fail_silently_returns_the_count(configured: Dict[str, Any], smtp_server: SMTPTestServer,
                                                      queue_dir: str) -> None:
    smtp_server.set_recipient_reply('later@example.org', 451)
    smtp_server.set_recipient_reply('never@example.org', 550)
    assert send('Mix', ['ok@example.org', 'later@example.org', 'never@example.org'], fail_silently=True) == 1
    smtp_server.set_recipient_reply('never@example.org', 550)
    assert send('All refused', ['never@example.org'], fail_silently=True) == 0


@pytest.mark.parametrize('fail_silently', [False, True])
def test_without_a_queue_a_temporary_failure_is_not_hidden(style: str, smtp_server: SMTPTestServer,
                                                           fail_silently: bool) -> None:
    with override_settings(**backend_settings(style, smtp_options(smtp_server))):
        smtp_server.stop()
        if fail_silently:
            assert send('Lost?', ['bob@example.org'], fail_silently=True) == 0
            return
        with pytest.raises(RecipientsFailed) as info:
            send('Lost?', ['bob@example.org'])
        assert list(info.value.deferred) == ['bob@example.org']
        assert 'not queued' in str(info.value)
        assert info.value.sent == 0


def test_a_malformed_address_is_an_error_as_with_djangos_smtp_backend(configured: Dict[str, Any]) -> None:
    with pytest.raises(ValueError, match='Invalid address'):  # Django's words
        send('x', ['not an address'], fail_silently=True)


# --- connections ---------------------------------------------------------------------------------


def test_one_connection_for_many_messages_between_open_and_close(configured: Dict[str, Any],
                                                                 smtp_server: SMTPTestServer) -> None:
    conn = connection()
    assert conn.open() is True
    assert conn.open() is False
    try:
        for i in range(3):
            mail.EmailMessage(f'm{i}', 'body', 'sender@example.org', ['bob@example.org'], connection=conn).send()
        batch = [mail.EmailMessage(f'b{i}', 'body', 'sender@example.org', ['bob@example.org']) for i in range(4)]
        assert conn.send_messages(batch) == 4
    finally:
        conn.close()
    assert len(smtp_server.wait_for_messages(7)) == 7
    assert smtp_server.connection_count == 1
    # without open(): each send_messages() opens and closes its own connection, as Django's backend
    conn.send_messages([mail.EmailMessage('alone', 'body', 'sender@example.org', ['bob@example.org'])])
    smtp_server.wait_for_messages(8)
    assert smtp_server.connection_count == 2
    assert conn.send_messages([]) == 0


def test_a_message_without_recipients_is_skipped(configured: Dict[str, Any], smtp_server: SMTPTestServer) -> None:
    with connection() as conn:
        assert conn.send_messages([mail.EmailMessage('none', 'body', 'sender@example.org', [])]) == 0
    assert smtp_server.received == []


# --- options -------------------------------------------------------------------------------------


def test_queue_only_mode(style: str, smtp_server: SMTPTestServer, queue_dir: str) -> None:
    with override_settings(**backend_settings(style, smtp_options(smtp_server, queue_dir=queue_dir, mode='queue'))):
        assert send('Later', ['bob@example.org']) == 1
        assert smtp_server.received == []
        assert queue_counts(queue_dir)['new'] == 1
        call_command('mailqueue', verbosity=0)
    assert smtp_server.wait_for_messages(1)[0].rcpt_tos == ['bob@example.org']


def test_options_from_a_config_file(smtp_server: SMTPTestServer, queue_dir: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    for value in ({'config': config}, config, {'config': Path(config), 'mode': 'queue'}):
        with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=value):
            assert mail.send_mail('cfg', 'body', 'sender@example.org', ['bob@example.org']) == 1
    assert len(smtp_server.wait_for_messages(2)) == 2
    assert queue_counts(queue_dir)['new'] == 1


def test_keyword_options_and_djangos_smtp_option_names(smtp_server: SMTPTestServer) -> None:
    """``get_connection(**kwargs)`` (and MAILERS OPTIONS) may use Django's SMTP names; ``None`` means unset."""
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE={'smtp_hostname': 'wrong.invalid', 'smtp_tls': 'none'}):
        conn = mail.get_connection(host=smtp_server.hostname, port=smtp_server.port, username=None, password=None,
                                   use_tls=False, timeout=5)
        assert conn.config.settings.smtp_hostname == smtp_server.hostname
        assert conn.config.settings.smtp_timeout == 5
        assert conn.send_messages([mail.EmailMessage('kw', 'b', 'sender@example.org', ['bob@example.org'])]) == 1
    assert EmailBackend(use_tls=True).config.settings.smtp_tls == 'starttls'
    assert EmailBackend(use_ssl=True, port=465).config.settings.smtp_tls == 'implicit'


def test_djangos_email_settings_are_used_as_by_its_smtp_backend(tmp_path: Path) -> None:
    """A project that only changes EMAIL_BACKEND keeps its EMAIL_* settings: with EMAIL_USE_TLS
    and a login our backend went to localhost:25 without TLS and without logging in."""
    with SMTPTestServer(tls='starttls', auth={'app': 's3cret'}, auth_required=True) as server:
        with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST=server.hostname, EMAIL_PORT=server.port,
                               EMAIL_USE_TLS=True, EMAIL_HOST_USER='app', EMAIL_HOST_PASSWORD='s3cret',
                               EMAIL_TIMEOUT=7, MAILQUEUE={'smtp_tls_verify': False}):
            assert mail.get_connection().config.settings.smtp_timeout == 7
            assert mail.send_mail('s', 'b', 'sender@example.org', ['bob@example.org']) == 1
        [received] = server.received
        assert received.tls and received.auth_login == 'app'
    # MAILQUEUE wins over EMAIL_*; Django's defaults (localhost:25) never override a config file
    with SMTPTestServer() as server:
        config = write_config(tmp_path / 'mq.conf', server)
        with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE={'config': config}):
            settings_used = mail.get_connection().config.settings
            assert (settings_used.smtp_hostname, settings_used.smtp_port) == (server.hostname, server.port)
        with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST='wrong.invalid',
                               MAILQUEUE={'smtp_hostname': server.hostname, 'smtp_port': server.port,
                                          'smtp_tls': 'none'}):
            assert mail.send_mail('s', 'b', 'sender@example.org', ['bob@example.org']) == 1
        assert len(server.received) == 1
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE={}):
        settings_used = mail.get_connection().config.settings
        assert (settings_used.smtp_hostname, settings_used.smtp_port) == ('localhost', 25)  # Django's default
    with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_SSL_CERTFILE='/etc/ssl/client.pem'):
        with pytest.raises(ImproperlyConfigured, match='client certificates are not supported'):
            mail.get_connection()  # not silently ignored
    with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_USE_TLS=True, EMAIL_USE_SSL=True):
        with pytest.raises(ValueError, match='mutually exclusive'):  # Django's SMTP backend: a ValueError
            mail.get_connection()


def test_email_settings_never_mix_with_a_smarthost_named_elsewhere(tmp_path: Path) -> None:
    """EMAIL_* describe a smarthost as a whole: below MAILQUEUE and get_connection(), and not at
    all when a config file or MAILQUEUE names one (else STARTTLS on the file's implicit-TLS port,
    with another smarthost's login)."""
    config = tmp_path / 'mq.conf'
    config.write_text('[mqrunner]\nsmtp_hostname = smtp.file.example\nsmtp_port = 465\nsmtp_tls = implicit\n')
    email = {'EMAIL_HOST': 'smtp.email.example', 'EMAIL_USE_TLS': True, 'EMAIL_HOST_USER': 'emailuser',
             'EMAIL_HOST_PASSWORD': 'pw'}
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=str(config), **email):
        used = mail.get_connection().config.settings
        assert (used.smtp_hostname, used.smtp_port, used.smtp_tls, used.smtp_username) == (
            'smtp.file.example', 465, 'implicit', None)
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE={'smtp_hostname': 'smtp.mq.example',
                                                             'smtp_username': 'mquser'}, **email):
        assert mail.get_connection(username='kwuser').config.settings.smtp_username == 'kwuser'
        assert mail.get_connection().config.settings.smtp_username == 'mquser'
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE={'use_ssl': True}, **email):
        used = mail.get_connection(username='kwuser').config.settings
        assert (used.smtp_hostname, used.smtp_tls, used.smtp_username) == ('smtp.email.example', 'implicit', 'kwuser')


@pytest.mark.parametrize('options, problem', [
    ({'smtp_hostnme': 'x'}, 'smtp_hostnme: unknown option'),
    ({'mode': 'later'}, "unknown mode 'later'"),
    ({'mode': 'queue'}, 'needs a queue'),
    ({'smtp_port': 'seventy'}, 'smtp_port: invalid value'),
    ({'use_tls': True, 'use_ssl': True}, 'mutually exclusive'),
    ({'ssl_certfile': '/x.pem'}, 'client certificates are not supported'),
    ({'database': 'default', 'mode': 'send'}, 'needs mode "queue"'),
    ({'database': 'other', 'mode': 'queue'}, "no database 'other'"),
    ({'database': 'default', 'schema': 'Mail-Queue'}, 'invalid PostgreSQL schema name'),
    ({'queue_dir': '/tmp/q', 'schema': 'mq'}, 'schema: only with database'),
])
def test_a_bad_option_is_improperly_configured(options: Dict[str, Any], problem: str) -> None:
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=options):
        with pytest.raises(ImproperlyConfigured, match='MAILQUEUE') as info:
            mail.get_connection()
    assert problem in str(info.value)
    if HAS_MAILERS:
        from django.core.mail import InvalidMailer

        with override_settings(MAILERS={'default': {'BACKEND': BACKEND, 'OPTIONS': options}}):
            with pytest.raises(InvalidMailer, match=r"MAILERS\['default'\]"):
                mail.mailers.default  # noqa: B018


def test_with_mailers_only_the_options_count(smtp_server: SMTPTestServer) -> None:
    """A MAILERS entry's OPTIONS are its whole configuration (Django's rule); MAILQUEUE is not read."""
    with override_settings(MAILQUEUE={'smtp_hostname': 'wrong.invalid'}):
        backend = EmailBackend(alias='transactional', **smtp_options(smtp_server))
        assert backend.config.settings.smtp_hostname == smtp_server.hostname
        assert backend.alias == 'transactional'
        assert backend.sender.app == 'django:transactional'


def _test_mailers_with_send_mail_using(smtp_server: SMTPTestServer, queue_dir: str) -> None:
    mailers = {'default': {'BACKEND': BACKEND, 'OPTIONS': smtp_options(smtp_server, queue_dir=queue_dir)},
               'bulk': {'BACKEND': BACKEND, 'OPTIONS': smtp_options(smtp_server, queue_dir=queue_dir,
                                                                     mode='queue')}}
    with override_settings(MAILERS=mailers):
        assert mail.send_mail('now', 'b', 'sender@example.org', ['a@example.org']) == 1
        assert mail.send_mail('later', 'b', 'sender@example.org', ['b@example.org'], using='bulk') == 1
        assert [m.rcpt_tos for m in smtp_server.wait_for_messages(1)] == [['a@example.org']]
        assert queue_counts(queue_dir)['new'] == 1
        with pytest.raises(Exception, match='several MAILERS'):
            call_command('mailqueue')
        call_command('mailqueue', mailer='bulk', verbosity=0)
    assert len(smtp_server.wait_for_messages(2)) == 2


if HAS_MAILERS:  # Django 6.1+ only (defined, not skipped, where it applies)
    test_mailers_with_send_mail_using = _test_mailers_with_send_mail_using


# --- the management command ----------------------------------------------------------------------


def test_the_management_command_without_a_queue(smtp_server: SMTPTestServer) -> None:
    from django.core.management.base import CommandError

    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=smtp_options(smtp_server)):
        with pytest.raises(CommandError, match='no queue configured') as info:
            call_command('mailqueue')
    assert info.value.returncode == 78


def test_the_management_command_as_a_daemon(smtp_server: SMTPTestServer, queue_dir: str, tmp_path: Path) -> None:
    """``manage.py mailqueue --daemon`` picks up new mail within seconds and stops cleanly on SIGTERM."""
    (tmp_path / 'mq_test_settings.py').write_text(textwrap.dedent(f'''
        INSTALLED_APPS = ['schwarz.mailqueue']
        EMAIL_BACKEND = {BACKEND!r}
        MAILQUEUE = {smtp_options(smtp_server, queue_dir=queue_dir)!r}
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]),
               DJANGO_SETTINGS_MODULE='mq_test_settings')
    proc = subprocess.Popen([sys.executable, '-m', 'django', 'mailqueue', '--daemon'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=smtp_options(smtp_server, queue_dir=queue_dir,
                                                                           mode='queue')):
            assert mail.send_mail('daemon', 'b', 'sender@example.org', ['bob@example.org']) == 1
        assert smtp_server.wait_for_messages(1, timeout=20)[0].rcpt_tos == ['bob@example.org']
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert queue_counts(queue_dir)['new'] == 0


# --- transactional mail with PostgreSQL ----------------------------------------------------------


class Rollback(Exception):
    pass


@pytest.fixture
def pg_schema() -> Iterator[str]:
    from schwarz.mailqueue.queue.pg_location import split_location

    location = _pg.fresh_location()  # fails with the reason when there is no PostgreSQL: never skipped
    yield split_location(location)[1]['schema']
    connections.close_all()


def pg_count(schema: str) -> int:
    store = open_queue(database_location('default', schema))
    try:
        return sum(count.count for count in store.stats().values())
    finally:
        store.close()


def test_transactional_mail_exists_exactly_when_the_transaction_commits(
        style: str, smtp_server: SMTPTestServer, pg_schema: str) -> None:
    options = smtp_options(smtp_server, database='default', schema=pg_schema)
    with override_settings(**backend_settings(style, options)):
        with pytest.raises(Rollback):
            with transaction.atomic():
                assert send('Rolled back', ['bob@example.org']) == 1
                assert pg_count(pg_schema) == 0  # not visible to other connections before the commit
                raise Rollback
        assert pg_count(pg_schema) == 0
        with transaction.atomic():
            assert send('Committed', ['bob@example.org']) == 1
        assert pg_count(pg_schema) == 1
        assert smtp_server.received == []  # queue only: the runner delivers
        call_command('mailqueue', verbosity=0)
        call_command('mailqueue', verbosity=0)  # nothing left for a second pass
    received = smtp_server.wait_for_messages(1)
    time.sleep(0.2)
    assert len(smtp_server.received) == 1
    assert received[0].as_message()['Subject'] == 'Committed'
    assert pg_count(pg_schema) == 0


def test_transactional_mail_outside_a_transaction_commits_at_once(smtp_server: SMTPTestServer,
                                                                  pg_schema: str) -> None:
    options = smtp_options(smtp_server, database='default', schema=pg_schema)
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=options):
        assert mail.send_mail('autocommit', 'b', 'sender@example.org', ['a@example.org', 'b@example.org']) == 1
        assert pg_count(pg_schema) == 1


def test_a_failed_transactional_enqueue_is_raised_even_with_fail_silently(smtp_server: SMTPTestServer,
                                                                          pg_schema: str) -> None:
    from schwarz.mailqueue.errors import QueueUnavailable

    options = smtp_options(smtp_server, database='default', schema=pg_schema + '_missing')
    with override_settings(EMAIL_BACKEND=BACKEND, MAILQUEUE=options):
        with transaction.atomic():
            with pytest.raises(QueueUnavailable, match='manage.py mailqueue init'):
                mail.send_mail('x', 'b', 'sender@example.org', ['a@example.org'], fail_silently=True)
            # a savepoint was rolled back, not the application's transaction
            with connections['default'].cursor() as cursor:
                cursor.execute('SELECT 1')
        call_command('mailqueue', 'init', verbosity=0)
        assert mail.send_mail('x', 'b', 'sender@example.org', ['a@example.org']) == 1
        assert pg_count(pg_schema + '_missing') == 1
    _pg._schemas.append(pg_schema + '_missing')  # dropped at exit with the others


def test_database_location_carries_djangos_connection_settings() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from schwarz.mailqueue.django import location_for_database
    from schwarz.mailqueue.queue.pg_location import split_location

    location = database_location('default', 'mq_x')
    assert location.startswith('postgresql://') and location.endswith('mq_schema=mq_x')
    other = location_for_database({
        'ENGINE': 'django.db.backends.postgresql', 'NAME': 'app db', 'USER': 'mäx', 'PASSWORD': 'p@ss:/w&x=1',
        'HOST': '/var/run/postgresql', 'PORT': '5433',
        'OPTIONS': {'sslmode': 'require', 'isolation_level': 1, 'server_side_binding': True}})
    conninfo, ours = split_location(other)
    assert ours == {'schema': 'mailqueue'}
    assert conninfo_to_dict(conninfo) == {'user': 'mäx', 'password': 'p@ss:/w&x=1', 'dbname': 'app db',
                                          'host': '/var/run/postgresql', 'port': '5433', 'sslmode': 'require'}
    assert 'p@ss' not in __import__('schwarz.mailqueue.queue.locations', fromlist=['x']).describe_location(other)


def test_the_test_example_of_docs_frameworks_md(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / 'docs' / 'frameworks.md').read_text()
    start = text.index('```python\nfrom django.core import mail\nfrom django.core.management import call_command')
    code = text[start + len('```python\n'):text.index('```', start + 3)]
    namespace: Dict[str, Any] = {}
    exec(compile(code, 'docs/frameworks.md', 'exec'), namespace)
    namespace['test_order_mail_survives_a_smarthost_outage'](tmp_path)


def test_plugins_see_what_the_web_process_delivers(smtp_server: SMTPTestServer, queue_dir: str,
                                                   tmp_path: Path) -> None:
    """Plugins (entry points) are loaded once per process and get the signals of the backend's deliveries."""
    from test_sendmail_plugins import install_recorder

    env, log = install_recorder(tmp_path)
    options = smtp_options(smtp_server, queue_dir=queue_dir)
    code = textwrap.dedent(f'''
        import django
        from django.conf import settings
        settings.configure(EMAIL_BACKEND={BACKEND!r}, MAILQUEUE={options!r})
        django.setup()
        from django.core import mail
        assert mail.send_mail('one', 'b', 'web@example.org', ['a@example.org']) == 1
        assert mail.send_mail('two', 'b', 'web@example.org', ['a@example.org', 'never@example.org'],
                              fail_silently=True) == 1
    ''')
    smtp_server.set_recipient_reply('never@example.org', 550)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([env['PYTHONPATH'],
                                                                             os.environ.get('PYTHONPATH', '')])))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events == [
        {'event': 'successful', 'to': ['a@example.org'], 'sender': 'web@example.org'},
        {'event': 'failed', 'refused': ['never@example.org'], 'deferred': []},
        {'event': 'terminated'},
    ]
