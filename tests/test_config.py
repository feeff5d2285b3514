from __future__ import annotations

import logging
import os
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
