"""``mq-mail`` as mail/mailx callers use it, and hostile or careless configuration files (SPEC §10:
a working configuration or one line naming the file and key, exit 78; never a hang or exit 70).
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path
from typing import List

import pytest

from schwarz.mailqueue.config import ConfigError, parse_config_text
from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, script, write_config


def mail(*args: str) -> List[str]:
    return [script('mq-mail'), *args]


def assert_config_error(proc: subprocess.CompletedProcess, path: Path, key: str) -> None:
    err = proc.stderr.decode('utf-8', 'replace')
    assert proc.returncode == 78, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1, err
    assert str(path) in err and key in err, err
    assert 'Traceback' not in err and 'topsecret' not in err, err


# --- mq-mail ---------------------------------------------------------------------------------


def test_subject_double_dash_is_an_option_value(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # getopt (mailx, s-nail, GNU mail): "-s --" takes "--" as the subject
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(mail('-C', str(config), '-s', '--', 'alice@example.org'), input=b'body\n', home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.rcpt_tos == ['alice@example.org']
    assert received.as_message()['Subject'] == '--'


# --- configuration -----------------------------------------------------------------------------


def _config(tmp_path: Path, text: str, name: str = 'mq.conf') -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


BASE = '[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = 25\n'


def test_include_of_itself_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / 'mq.conf'
    _config(tmp_path, BASE + f'include = {path}\n')
    proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert_config_error(proc, path, 'include')  # is: exit 70, RecursionError


def test_include_of_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / 'secret.fifo'
    os.mkfifo(fifo)
    path = _config(tmp_path, BASE + f'include = {fifo}\n')
    try:
        proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail('mq-mail hangs opening an included FIFO')
    assert_config_error(proc, fifo, 'include')


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_include_of_dev_zero_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path, BASE + 'include = /dev/zero\n')
    proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path,
                    preexec_fn=_limit_memory, timeout=15)
    assert_config_error(proc, Path('/dev/zero'), 'include')  # is: exit 70, MemoryError


def test_default_section_password_does_not_travel_to_accounts() -> None:
    text = ('[DEFAULT]\nsmtp_password = topsecret\n'
            '[mqrunner]\nsmtp_hostname = smarthost.example\n'
            '[account:other]\nsmtp_hostname = other-provider.example\nmatch_from = @other.example\n')
    try:
        settings = parse_config_text(text, '/etc/mq.conf')
    except ConfigError as exc:
        assert 'DEFAULT' in str(exc) and 'topsecret' not in str(exc)
        return
    # config.py: "never a host or a credential" is taken from [mqrunner] by an account
    assert settings.accounts[0].smtp_password is None


def test_duplicate_key_in_other_case_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, BASE + 'SMTP_PORT = 2525\n')
    proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert_config_error(proc, path, 'SMTP_PORT')  # is: silently port 2525


def test_one_setting_in_two_spellings_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, BASE + 'logging_conf = /etc/a.ini\nlogging_config = /etc/b.ini\n')
    proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert_config_error(proc, path, 'logging_config')  # was: the last one won
    assert b'also as logging_conf' in proc.stderr, proc.stderr


def test_tilde_in_aliases_path_is_expanded(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    (tmp_path / 'myaliases').write_text('root: alice@example.org\n')
    settings = ''.join(f'{k} = {v}\n' for k, v in smtp_server.settings_for_client().items())
    path = _config(tmp_path, f'[mqrunner]\n{settings}aliases = ~/myaliases\n')
    proc = run_tool(mail('-C', str(path), '-s', 'hi', 'root'), input=b'x\n', home=tmp_path)
    # queue_dir, include and smtp_oauth2_token_cache expand "~"; aliases gives
    # "~/myaliases: aliases file not found" (exit 78, neither the config file nor the key named)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.rcpt_tos == ['alice@example.org']


def test_world_writable_include_with_password_command_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / 'secret.conf'
    secret.write_text('[mqrunner]\nsmtp_username = u\nsmtp_password_command = echo topsecret\n')
    secret.chmod(0o666)  # any local user can make the queue owner (root) run a command
    path = _config(tmp_path, BASE + f'include = {secret}\n')
    proc = run_tool(mail('-C', str(path), 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert_config_error(proc, secret, 'include')


def test_a_config_file_saved_with_a_bom_is_read(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    settings = ''.join(f'{k} = {v}\n' for k, v in smtp_server.settings_for_client().items())
    path = tmp_path / 'mq.conf'
    path.write_bytes(b'\xef\xbb\xbf' + f'[mqrunner]\n{settings}'.encode())  # (Notepad's UTF-8)
    path.chmod(0o600)
    proc = run_tool(mail('-C', str(path), '-s', 'hi', 'alice@example.org'), input=b'x\n', home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [m.rcpt_tos for m in smtp_server.received] == [['alice@example.org']]


@pytest.mark.parametrize('tool, args', [('mq-mail', ['-C', '', '-s', 'x', 'a@example.org']),
                                        ('mq-sendmail', ['-C', '', 'a@example.org']),
                                        ('mq-run', ['--config=']), ('mq-queue', ['-C', '', 'list'])])
def test_an_empty_config_name_is_a_usage_error_not_the_default_file(tmp_path: Path, tool: str,
                                                                    args: List[str]) -> None:
    # a script passing "-C $CONF" with CONF unset must not quietly use ~/.mailqueue-runner.conf
    _config(tmp_path, BASE, name='.mailqueue-runner.conf')
    proc = run_tool([script(tool), *args], input=b'x\n', home=tmp_path)
    assert proc.returncode == 64, proc.stderr
    assert proc.stderr.decode().strip() == f'{tool}: the configuration file name (-C) is empty'


@pytest.mark.parametrize('query, problem', [('mq_shema=other', "unknown queue parameter 'mq_shema'"),
                                            ('mq_lease=1', 'mq_lease: 1 s is out of range'),
                                            ('mq_schema=1abc', "invalid PostgreSQL schema name '1abc'")])
def test_a_postgres_queue_url_is_checked_when_the_config_is_loaded(smtp_server: SMTPTestServer, tmp_path: Path,
                                                                    query: str, problem: str) -> None:
    # the smarthost takes the mail: a typo in the queue's parameters went unnoticed until the
    # day a message had to be queued
    settings = ''.join(f'{k} = {v}\n' for k, v in smtp_server.settings_for_client().items())
    path = _config(tmp_path, f'[mqrunner]\n{settings}queue_url = postgresql://app@127.0.0.1/mail?{query}\n')
    for argv in (mail('-C', str(path), '-s', 'hi', 'alice@example.org'),
                 [script('mq-sendmail'), '-C', str(path), 'alice@example.org']):
        proc = run_tool(argv, input=b'Subject: x\n\nx\n', home=tmp_path)
        assert_config_error(proc, path, 'queue_url')
        assert problem in proc.stderr.decode(), proc.stderr
    assert smtp_server.received == []
