"""Security checks: secrets stay secret, queue files stay private, TLS is verified.

Secrets are looked for in every form they travel in: the password itself, the
base64 of the password (AUTH LOGIN), the base64 of ``\\0user\\0password`` (AUTH
PLAIN), and the output of ``smtp_password_command``. They must not appear in any
log record at any level (a handler on the root logger at DEBUG, with the
``mailqueue`` loggers propagating), in exception text, in reprs, or on disk in
the queue.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import stat
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from schwarz.mailqueue import MaildirBackend, MessageHandler, SMTPMailer, init_smtp_mailer
from schwarz.mailqueue.app import init_app
from schwarz.mailqueue.config import ConfigError, load_config, parse_config_text
from schwarz.mailqueue.queue.format import QueueFileError
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.runner import QueueRunner
from schwarz.mailqueue.smtp.client import SMTPConnection, TLSMode
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: secret test\r\nMessage-ID: <sec@example.org>\r\n\r\nbody\r\n'
USER = 'mailer@example.org'
SECRET = 'S3cr3t%p4ss-w0rd_\u00e4\u00f6'  # '%' (no interpolation) and non-ASCII (UTF-8 AUTH)
CMD_SECRET = 'Cmd0utput-T0k3n-xyz'
_FORMATTER = logging.Formatter('%(name)s %(levelname)s %(message)s')


def secret_forms(user: str, secret: str) -> List[str]:
    raw = secret.encode('utf-8')
    forms = [secret, base64.b64encode(raw).decode(), base64.b64encode(b'\0' + user.encode() + b'\0' + raw).decode(),
             base64.b64encode(user.encode() + b'\0' + raw).decode(), raw.hex()]
    # In the middle of a longer base64 text a secret shows up at one of three alignments.
    for shift in (1, 2):
        encoded = base64.b64encode(b'\0' * shift + raw).decode()
        forms.append(encoded[4:-4])
    return forms


def assert_no_secret(text: str, secret: str = SECRET, user: str = USER) -> None:
    for form in secret_forms(user, secret):
        assert form not in text, f'secret (as {form!r}) found in: {text[:300]!r}'


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return '\n'.join(_FORMATTER.format(r) + ' ' + repr(r.args) for r in self.records)


@pytest.fixture
def all_logs() -> Iterator[_Collect]:
    """Every record at every level from every logger (ours propagate to the root)."""
    collect = _Collect()
    root = logging.getLogger()
    names = ('mailqueue', 'mailqueue.smtp', 'mailqueue.delivery_log', 'mailqueue.queue_log')
    saved = [(logging.getLogger(n), logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    root_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    for logger, _, _ in saved:
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
    try:
        yield collect
    finally:
        root.removeHandler(collect)
        root.setLevel(root_level)
        for logger, level, propagate in saved:
            logger.setLevel(level)
            logger.propagate = propagate


def test_auth_delivery_and_failed_auth_leak_nothing(all_logs: _Collect, tmp_path: Path) -> None:
    with SMTPTestServer(auth={USER: SECRET}, auth_required=True) as server:
        with SMTPMailer(server.hostname, server.port, tls='none', username=USER, password=SECRET,
                        timeout=5) as mailer:
            result = mailer.send('a@example.org', ['b@example.org'], MSG)
            assert result, result
            texts = [repr(mailer), repr(result), str({name: getattr(result, name) for name in dir(result)})]
        bad = SMTPMailer(server.hostname, server.port, tls='none', username=USER, password='not-' + SECRET,
                         timeout=5)
        refused = bad.send('a@example.org', ['b@example.org'], MSG)
        assert not refused and '535' in (refused.error or '') and refused.connection_failed
        texts += [repr(bad), repr(refused), refused.error or '', str(refused.deferred)]
        assert server.auth_logins == [USER] and len(server.received) == 1
        assert 'AUTH' in server.commands
    # The dialog really was logged at DEBUG (so the absence of secrets means something) ...
    dialog = [r.getMessage() for r in all_logs.records if r.name == 'mailqueue.smtp']
    assert any(line.endswith('> AUTH PLAIN ***') for line in dialog), dialog
    assert any('< 235' in line for line in dialog) and any('< 535' in line for line in dialog)
    # ... and nothing anywhere carries the password, for the right and the wrong one.
    for text in [all_logs.text(), *texts]:
        assert_no_secret(text)
        assert_no_secret(text, secret='not-' + SECRET)


def _login_only_connection(server: SMTPTestServer, password: str) -> Any:
    """Our SMTP connection to the real server, told after EHLO that only AUTH LOGIN is on offer."""
    from schwarz.mailqueue.smtp.wire import SMTPWire

    conn = SMTPConnection(server.hostname, server.port, tls=TLSMode.NONE, username=USER, password=password)
    wire = SMTPWire.connect(server.hostname, server.port, 5, logging.getLogger('mailqueue.smtp'))
    assert wire.read_reply()[0] == 220
    conn._wire = wire
    conn._ehlo()
    wire.features['auth'] = 'LOGIN'
    return conn


def test_auth_login_mechanism_is_redacted_too(all_logs: _Collect) -> None:
    """AUTH LOGIN: user name and password go out as separate base64 lines after 334 challenges."""
    from schwarz.mailqueue.smtp.errors import AuthenticationError

    with SMTPTestServer(auth={USER: SECRET}, auth_required=True) as server:
        for password, expected in ((SECRET, 235), ('wrong-' + SECRET, 535)):
            conn = _login_only_connection(server, password)
            try:
                conn._authenticate()
                code = 235
            except AuthenticationError as exc:
                code = exc.reply.code
                assert_no_secret(str(exc), secret=password)
            finally:
                conn.close()
            assert code == expected
        assert server.auth_logins == [USER]
    dialog = [r.getMessage() for r in all_logs.records if r.name == 'mailqueue.smtp']
    assert any(line.endswith('> AUTH LOGIN') for line in dialog), dialog
    assert sum(line.endswith('> ***') for line in dialog) == 4  # user name and password, twice
    assert_no_secret(all_logs.text())
    assert_no_secret(all_logs.text(), secret='wrong-' + SECRET)


def test_password_command_output_never_leaks(all_logs: _Collect, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    with SMTPTestServer(auth={USER: CMD_SECRET}, auth_required=True) as server:
        # The command also prints the secret on stderr: that must not reach ours either.
        secret_file = tmp_path / 'token'
        secret_file.write_text(CMD_SECRET + '\n')
        command = f'cat {secret_file}; cat {secret_file} >&2'
        config = tmp_path / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = {server.hostname}\nsmtp_port = {server.port}\n'
                          f'smtp_tls = none\nsmtp_username = {USER}\nsmtp_password_command = {command}\n')
        os.chmod(config, 0o600)
        settings = load_config(str(config))
        assert settings.password() == CMD_SECRET
        mailer = init_smtp_mailer(settings)
        with mailer:
            assert mailer.send('a@example.org', ['b@example.org'], MSG)
        assert server.auth_logins == [USER]
        texts = [repr(settings), repr(mailer), str(settings.warnings)]

        failing = parse_config_text(f'[mqrunner]\nsmtp_username = {USER}\n'
                                    f'smtp_password_command = cat {secret_file}; exit 3\n', path='mq.conf')
        with pytest.raises(ConfigError) as info:
            init_smtp_mailer(failing)
        texts += [str(info.value), repr(info.value)]
        assert 'status 3' in str(info.value)
    captured = capfd.readouterr()
    for text in [all_logs.text(), captured.out, captured.err, *texts]:
        assert_no_secret(text, secret=CMD_SECRET)


def test_queue_files_never_hold_credentials(all_logs: _Collect, tmp_path: Path) -> None:
    """Wrong password: queued with the server's reply as last error, but no secret on disk."""
    queue_dir = str(tmp_path / 'q')
    with SMTPTestServer(auth={USER: SECRET}, auth_required=True) as server:
        wrong = 'wrong-' + SECRET
        handler = MessageHandler([SMTPMailer(server.hostname, server.port, tls='none', username=USER, password=wrong,
                                             timeout=5), MaildirBackend(queue_dir)])
        result = handler.send_message(MSG, sender='a@example.org', recipients=['b@example.org'])
        assert result and result.queued
        runner = QueueRunner(MaildirQueue(queue_dir), mailer=SMTPMailer(
            server.hostname, server.port, tls='none', username=USER, password=wrong, timeout=5), force=True)
        stats = runner.run_once()
        assert stats.deferred == 1
    files = [p for p in Path(queue_dir).rglob('*') if p.is_file()]
    assert files, 'the message should be queued'
    contents = b''.join(p.read_bytes() for p in files)
    assert b'X-Queue-Last-Error:' in contents and b'535' in contents  # the reply is kept, the secret not
    for text in (contents.decode('utf-8', 'replace'), all_logs.text()):
        assert_no_secret(text, secret=wrong)


# --- configuration files -------------------------------------------------------------------------


@pytest.mark.parametrize('mode,warns', [(0o644, True), (0o640, True), (0o604, True), (0o600, False),
                                        (0o400, False)])
def test_config_readable_by_others_with_password_warns(tmp_path: Path, mode: int, warns: bool,
                                                       all_logs: _Collect) -> None:
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nsmtp_hostname = smtp.example.com\nsmtp_username = {USER}\n'
                      f'smtp_password = {SECRET}\n', encoding='utf-8')
    os.chmod(config, mode)
    settings = load_config(str(config))
    assert settings.smtp_password == SECRET
    assert bool(settings.warnings) == warns
    # basic_logging_configured: the wrapper API; our loggers keep propagating to the root.
    app = init_app(str(config), settings={'basic_logging_configured': True}, load_plugins=False)
    app.close()
    warnings = [r for r in all_logs.records if r.levelno == logging.WARNING and str(config) in r.getMessage()]
    assert bool(warnings) == warns
    if warns:
        assert 'chmod 600' in warnings[0].getMessage()
    assert_no_secret(all_logs.text() + repr(settings) + str(settings.warnings))


def test_config_without_password_may_be_world_readable(tmp_path: Path) -> None:
    config = tmp_path / 'mq.conf'
    config.write_text('[mqrunner]\nsmtp_hostname = smtp.example.com\nqueue_dir = /tmp/q\n')
    os.chmod(config, 0o644)
    assert load_config(str(config)).warnings == []


# --- file modes ----------------------------------------------------------------------------------


def test_queue_files_0600_and_directories_0700_under_umask_0(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    old_umask = os.umask(0)
    try:
        queue_dir = tmp_path / 'spool' / 'mail' / 'q'  # two missing parents as well
        queue = MaildirQueue(str(queue_dir))
        waiting = str(queue.enqueue(MSG, 'a@x', ['b@x']))
        claimed = queue.enqueue_claimed(MSG, 'a@x', ['c@x'])
        queue.store_failed(MSG, 'a@x', ['d@x'], '550 no such user')
        msg = queue.claim(waiting)
        assert msg is not None and msg.queue_date is not None
        queue.defer(msg, ['b@x'], '451 later', msg.queue_date)  # rewritten via tmp/
        (queue_dir / 'new' / 'junk').write_bytes(b'not a queue file')
        os.chmod(queue_dir / 'new' / 'junk', 0o666)
        with pytest.raises(QueueFileError):
            queue.claim('junk')  # quarantined: rewritten into failed/ by us
        assert not isinstance(claimed, str)
        queue.fail(claimed, '550 refused')
        handler = MessageHandler([SMTPMailer(smtp_server.hostname, smtp_server.port, timeout=5),
                                  MaildirBackend(str(queue_dir))])
        smtp_server.set_recipient_reply('e@x', 451)
        assert handler.send_message(MSG, sender='a@x', recipients=['e@x'])
        queue.close()
    finally:
        os.umask(old_umask)
    files = [p for p in queue_dir.rglob('*') if p.is_file()]
    assert len(files) >= 5
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [queue_dir, *(p for p in queue_dir.rglob('*') if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    # Parents the queue had to create are not writable by anyone else either.
    for parent in (tmp_path / 'spool', tmp_path / 'spool' / 'mail'):
        assert not stat.S_IMODE(parent.stat().st_mode) & (stat.S_IWGRP | stat.S_IWOTH), parent


# --- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('port,tls', [(587, None), (587, 'starttls'), (465, None), (25, 'opportunistic')])
def test_tls_verification_is_on_by_default_for_remote_hosts(port: int, tls: str) -> None:
    # Verification is decided by the address really connected to, never by how the name looks.
    for name in ('smtp.example.com', '127.mail.example.com', 'localhost.evil.example'):
        mailer = SMTPMailer(name, port, tls=tls)
        context = mailer.context_for(peer_is_loopback=False)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        from_config = init_smtp_mailer({'smtp_hostname': name, 'smtp_port': str(port)})
        assert isinstance(from_config, SMTPMailer)  # no accounts configured: a single mailer
        assert from_config.context_for(peer_is_loopback=False).verify_mode == ssl.CERT_REQUIRED
        connection = SMTPConnection(name, port)
        assert connection._context(False).verify_mode == ssl.CERT_REQUIRED
    # a peer that IS loopback (127.0.0.1, ::1, whatever name led there) is not verified by default
    assert SMTPMailer('smtp.example.com', port, tls=tls).context_for(peer_is_loopback=True).verify_mode == \
        ssl.CERT_NONE
    assert SMTPMailer('smtp.example.com', port, tls=tls, tls_verify=True).context_for(True).verify_mode == \
        ssl.CERT_REQUIRED


@pytest.mark.parametrize('mode', ['starttls', 'implicit'])
def test_tls_verification_failure_is_reported_and_credentials_never_sent(mode: str, all_logs: _Collect) -> None:
    with SMTPTestServer(tls=mode, auth={USER: SECRET}) as server:
        mailer = SMTPMailer(server.hostname, server.port, tls=mode, tls_verify=True, username=USER, password=SECRET,
                            timeout=5)
        result = mailer.send('a@example.org', ['b@example.org'], MSG)
        assert not result and result.connection_failed
        assert set(result.deferred) == {'b@example.org'} and not result.refused  # temporary: retried later
        error = result.error or ''
        assert 'certificate verification failed' in error and f'{server.hostname}:{server.port}' in error
        # No fallback to plain text: nothing after the failed handshake, above all no AUTH.
        assert server.received == [] and server.auth_logins == []
        assert not {'AUTH', 'MAIL', 'RCPT', 'DATA'} & set(server.commands)
        # Positive control: the same server verifies fine against its own certificate.
        with SMTPMailer('localhost', server.port, tls=mode, tls_verify=True, cafile=server.cert_path,
                        username=USER, password=SECRET, timeout=5) as trusting:
            assert trusting.send('a@example.org', ['b@example.org'], MSG)
        assert server.auth_logins == [USER]
    assert_no_secret(all_logs.text() + repr(mailer) + error)
