from __future__ import annotations

import logging
import os
import shutil
from datetime import timedelta

import pytest

from schwarz.mailqueue.app import init_app
from schwarz.mailqueue.config import ConfigError, load_config, parse_config_text


def write(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / 'mq.conf'
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_readme_config_parses_with_literal_percent(tmp_path) -> None:
    path = write(tmp_path, '[mqrunner]\nsmtp_hostname = hostname\nsmtp_port = 587\n'
                           'smtp_username = someuser@site.example\nsmtp_password = se%cret\n'
                           'queue_dir = /path/to/mailqueue\nfrom = user@host.example\n'
                           'logging_conf = /path/to/logging.conf\n')
    settings = load_config(path)
    assert (settings.smtp_hostname, settings.smtp_port, settings.smtp_password) == ('hostname', 587, 'se%cret')
    assert settings.from_addr == 'user@host.example' and settings.logging_config == '/path/to/logging.conf'
    assert settings.warnings == []


def test_typed_retry_keys() -> None:
    settings = parse_config_text('[mqrunner]\nretry_min_delay = 1m\nretry_max_delay = 2h\n'
                                 'max_queue_lifetime = 3d\nmax_attempts = 7\n')
    policy = settings.retry_policy()
    assert policy.min_delay == timedelta(minutes=1) and policy.max_attempts == 7
    assert policy.max_queue_lifetime == timedelta(days=3)


@pytest.mark.parametrize('text,needle', [
    ('[mqrunner]\nsmtp_hostnme = x\n', 'smtp_hostnme: unknown key'),
    ('[mqrunner]\nsmtp_port = many\n', 'smtp_port: invalid value'),
    ('[mqrunner]\nsmtp_tls = sometimes\n', 'smtp_tls: invalid value'),
    ('[mqrunner]\nretry_min_delay = soon\n', 'retry_min_delay'),
    ('smtp_hostname = x\n', 'malformed'),
    ('[other]\nx = 1\n', 'no [mqrunner] section'),
    ('[mqrunner]\nsmtp_password = a\nsmtp_password_command = echo b\n', 'not both'),
    ('[mqrunner]\nsmtp_username = u\n    smtp_password = MyRealPassword\n', 'smtp_username: value continues'),
    ('[mqrunner]\nfrom = bad address\n', 'from: invalid value'),
    ('[mqrunner]\nfrom = -oQ@x\n', 'from: invalid value'),
    ('[mqrunner]\ndefault_domain = ex ample.org\n', 'default_domain: invalid value'),
    ('[mqrunner]\ndefault_domain = -x\n', 'default_domain: invalid value'),
    ('[mqrunner]\nqueue_dir = relative/q\n', 'queue_dir: invalid value'),
])
def test_errors_name_file_and_key(tmp_path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path) and needle in message and '\n' not in message
    assert 'MyRealPassword' not in message


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match='file not found'):
        load_config(str(tmp_path / 'nope.conf'))


def test_world_readable_password_warns_without_leaking(tmp_path, caplog) -> None:
    path = write(tmp_path, '[mqrunner]\nsmtp_password = hunter2\n', mode=0o644)
    caplog.set_level(logging.WARNING)
    app = init_app(path, settings={'basic_logging_configured': True}, load_plugins=False)
    assert any('readable by other users' in w for w in app.settings.warnings)
    assert all('hunter2' not in r.getMessage() for r in caplog.records)
    assert 'hunter2' not in repr(app.settings)


def test_password_command_reads_no_stdin(tmp_path) -> None:
    settings = parse_config_text('[mqrunner]\nsmtp_password_command = cat; printf pw\n')
    assert settings.password() == 'pw'  # `cat` saw /dev/null, not our stdin
    failing = parse_config_text('[mqrunner]\nsmtp_password_command = exit 3\n')
    with pytest.raises(ConfigError, match='status 3'):
        failing.password()


def test_delivery_log_file_does_not_leak_to_console(tmp_path, smtp_server) -> None:
    """With delivery_log set, a quiet cron run prints nothing: lines go to the file only."""
    from schwarz.mailqueue.queue.maildir import MaildirQueue

    from helpers import run, script, write_config
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(b'Subject: x\r\n\r\nbody\r\n', 'a@x', ['b@x'])
    log = tmp_path / 'delivery.log'
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir, delivery_log=log)
    result = run([script('mq-run'), '-C', config])
    assert result.returncode == 0 and result.stderr == b'' and result.stdout == b''
    assert log.read_text().count('status=sent') == 1


def test_unwritable_log_file_never_stops_mail(tmp_path, smtp_server) -> None:
    from helpers import run, script, write_config
    config = write_config(tmp_path / 'mq.conf', smtp_server, delivery_log=tmp_path / 'missing-dir' / 'd.log')
    result = run([script('mq-sendmail'), '-C', config, 'a@example.org'], input=b'Subject: x\n\nbody\n')
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 1
    assert b'cannot open' in result.stderr and result.stderr.count(b'\n') == 1


# --- smtp_ca_file: a missing or unusable file is a configuration error at start ------------------------

# The permission bits only mean something to a user other than root. setpriv rather than a
# preexec_fn with os.setuid(): here the latter cannot exec the venv's interpreter afterwards.
AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']


def _ca_problem(base, kind: str) -> str:
    if kind == 'missing':
        return str(base / 'no-such-ca.pem')
    if kind == 'directory':
        (base / 'ca-dir').mkdir()
        return str(base / 'ca-dir')
    if kind == 'garbage':
        (base / 'garbage.pem').write_text('this is not a certificate\n')
        return str(base / 'garbage.pem')
    raise AssertionError(kind)


@pytest.mark.parametrize('kind,reason', [('missing', 'file not found'), ('directory', 'is a directory'),
                                         ('garbage', 'no usable certificates')])
def test_unusable_ca_file_is_a_config_error_at_start(tmp_path, smtp_server, kind: str, reason: str) -> None:
    from schwarz.mailqueue.queue.maildir import MaildirQueue

    from helpers import run, script, write_config
    queue_dir = tmp_path / 'q'
    queued = MaildirQueue(str(queue_dir)).enqueue(b'Subject: x\r\n\r\nbody\r\n', 'a@example.org', ['b@example.org'])
    ca_file = _ca_problem(tmp_path, kind)
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir, smtp_ca_file=ca_file)
    for args in (['mq-run'], ['mq-sendmail', '-i', 'c@example.org'], ['mq-send-test', '--to', 'c@example.org'],
                 ['mq-queue', 'retry', '--now', str(queued)]):
        result = run([script(args[0]), '-C', config, *args[1:]], input=b'Subject: y\n\nbody\n', timeout=30)
        stderr = result.stderr.decode()
        assert result.returncode == 78, (args, stderr)
        assert stderr.startswith(f'{args[0]}: {config}: smtp_ca_file: {ca_file}: {reason}'), stderr
        assert stderr.count('\n') == 1 and 'cannot connect' not in stderr
    assert smtp_server.received == [] and smtp_server.connection_count == 0
    # Nothing was queued by mq-sendmail, nothing was counted as an attempt by mq-run.
    assert os.listdir(queue_dir / 'new') == [str(queued)] and os.listdir(queue_dir / 'cur') == []
    assert b'X-Retries' not in (queue_dir / 'new' / str(queued)).read_bytes()


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which('setpriv'), reason='needs root and setpriv')
def test_ca_file_unreadable_for_the_user_is_a_config_error(smtp_server) -> None:
    import subprocess
    import tempfile

    from helpers import script, write_config
    base = tempfile.mkdtemp(prefix='mq-ca-')  # not under pytest's 0700 tmp dir: nobody must reach it
    try:
        os.chmod(base, 0o755)
        ca_file = os.path.join(base, 'ca.pem')
        with open(ca_file, 'w') as fp:
            fp.write('-----BEGIN CERTIFICATE-----\n')
        os.chmod(ca_file, 0o600)  # root's
        from pathlib import Path
        config = write_config(Path(base) / 'mq.conf', smtp_server, smtp_ca_file=ca_file)
        os.chmod(config, 0o644)
        result = subprocess.run([*AS_NOBODY, script('mq-send-test'), '-C', config, '--to', 'c@example.org'],
                                capture_output=True, timeout=30, cwd=base, env={**os.environ, 'HOME': base})
        assert result.returncode == 78, result.stderr
        assert result.stderr.decode() == f'mq-send-test: {config}: smtp_ca_file: {ca_file}: permission denied\n'
        assert smtp_server.connection_count == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_usable_ca_file_verifies_the_server(tmp_path) -> None:
    from schwarz.mailqueue.testutils import SMTPTestServer

    from helpers import run, script
    with SMTPTestServer(tls='starttls') as server:
        config = tmp_path / 'mq.conf'
        config.write_text(f'[mqrunner]\nsmtp_hostname = {server.hostname}\nsmtp_port = {server.port}\n'
                          f'smtp_tls = starttls\nsmtp_tls_verify = yes\nsmtp_ca_file = {server.cert_path}\n')
        result = run([script('mq-send-test'), '-C', str(config), '--to', 'c@example.org'], timeout=30)
        assert result.returncode == 0, result.stderr
        assert len(server.received) == 1
