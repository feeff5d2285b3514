"""Issue 12: log_target = stderr|file|syslog|journal, served by sockets of the test; systemd units."""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from schwarz.mailqueue.app import configure_logging
from schwarz.mailqueue.cli.mq_setup import UNITS, data_text
from schwarz.mailqueue.config import Settings
from schwarz.mailqueue.logs import DELIVERY_LOG, JOURNAL_SOCKET_ENV, QUEUE_LOG, SYSLOG_SOCKET_ENV, log_event

from helpers import script

EVENT = {'status': 'deferred', 'to': 'a@example.org', 'queue_id': 'abc.1', 'smtp': '451 try\nlater'}


@pytest.fixture
def datagram_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / 'log.sock'))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def parse_journal(data: bytes) -> Dict[str, str]:
    """The native journal protocol: KEY=value lines, or KEY, newline, 64-bit length, value, newline."""
    fields: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b'\n', pos)
        line = data[pos:end]
        if b'=' in line:
            key, _, value = line.partition(b'=')
            fields[key.decode()] = value.decode()
            pos = end + 1
        else:
            size = int.from_bytes(data[end + 1:end + 9], 'little')
            fields[line.decode()] = data[end + 9:end + 9 + size].decode()
            pos = end + 9 + size + 1
    return fields


def test_syslog_target(datagram_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SYSLOG_SOCKET_ENV, datagram_socket.getsockname())
    configure_logging(Settings(log_target='syslog'))
    log_event(__import__('logging').getLogger(DELIVERY_LOG), EVENT)
    line = datagram_socket.recv(65536).decode()
    # <PRI> with facility mail (2) and severity info (6): 2 * 8 + 6 = 22
    assert line.startswith('<22>') and ': status=deferred to=a@example.org queue_id=abc.1' in line


def test_journal_target_with_structured_fields(datagram_socket: socket.socket,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(JOURNAL_SOCKET_ENV, datagram_socket.getsockname())
    configure_logging(Settings(log_target='journal'))
    log_event(__import__('logging').getLogger(QUEUE_LOG), EVENT)
    fields = parse_journal(datagram_socket.recv(65536))
    assert fields['MQ_STATUS'] == 'deferred' and fields['MQ_QUEUE_ID'] == 'abc.1'
    assert fields['MQ_SMTP'] == '451 try\nlater'  # the binary form keeps the line break
    assert fields['PRIORITY'] == '6' and fields['SYSLOG_FACILITY'] == '2'
    assert fields['MESSAGE'].startswith('status=deferred')


def test_journal_falls_back_to_syslog(tmp_path: Path, datagram_socket: socket.socket,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(JOURNAL_SOCKET_ENV, str(tmp_path / 'no-journal'))
    monkeypatch.setenv(SYSLOG_SOCKET_ENV, datagram_socket.getsockname())
    configure_logging(Settings(log_target='journal'))
    log_event(__import__('logging').getLogger(DELIVERY_LOG), EVENT)
    assert datagram_socket.recv(65536).startswith(b'<22>')


def test_mq_run_logs_to_the_journal_of_the_test(tmp_path: Path, datagram_socket: socket.socket,
                                                smtp_server) -> None:
    from schwarz.mailqueue.queue.maildir import MaildirQueue

    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir), fsync=False).enqueue(b'Subject: x\r\n\r\nbody\r\n', 'a@example.org',
                                                      ['b@example.org'])
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nsmtp_hostname = {smtp_server.hostname}\nsmtp_port = {smtp_server.port}\n'
                      f'smtp_tls = none\nqueue_dir = {queue_dir}\nlog_target = journal\n')
    env = {**os.environ, JOURNAL_SOCKET_ENV: datagram_socket.getsockname()}
    result = subprocess.run([script('mq-run'), '-C', str(config)], capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    fields = parse_journal(datagram_socket.recv(65536))
    assert fields['MQ_STATUS'] == 'sent' and fields['SYSLOG_IDENTIFIER'] == 'mq-run'


def test_a_log_file_the_sender_may_not_write_is_not_a_warning(tmp_path: Path) -> None:
    # A sender who is not the queue's owner: as root, the check runs as nobody (setpriv).
    target = tmp_path / 'ro'
    target.mkdir(mode=0o755)  # nobody may look in, not write
    os.chmod(tmp_path, 0o755)
    code = ('from schwarz.mailqueue.app import configure_logging\n'
            'from schwarz.mailqueue.config import Settings\n'
            f'configure_logging(Settings(delivery_log={str(target / "delivery.log")!r}))\n'
            'import logging; logging.getLogger("mailqueue").warning("probe")\n')
    prefix = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] if os.getuid() == 0 else []
    result = subprocess.run([*prefix, sys.executable, '-c', code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # only our probe line: nothing about the log file the sender may not write
    assert result.stderr.decode().strip().endswith('probe') and b'delivery' not in result.stderr


def test_log_target_is_checked() -> None:
    from schwarz.mailqueue.config import ConfigError, parse_config_text

    with pytest.raises(ConfigError, match='log_target'):
        parse_config_text('[mqrunner]\nlog_target = kafka\n')


# --- the systemd units shipped in the wheel --------------------------------------------------------


def rendered_units(tmp_path: Path) -> List[Path]:
    units = tmp_path / 'units'
    result = subprocess.run([script('mq-queue'), 'setup', '--units', str(units), '-d', str(tmp_path / 'spool')],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [units / name for name in UNITS]


def test_units_parse_with_the_expected_sections(tmp_path: Path) -> None:
    expected = {'.service': {'Unit', 'Service'}, '.timer': {'Unit', 'Timer', 'Install'},
                '.path': {'Unit', 'Path', 'Install'}}
    for path in rendered_units(tmp_path):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        assert expected[path.suffix] <= set(parser.sections()), path.name
        text = path.read_text()
        assert '/opt/mailqueue-runner' not in text and str(tmp_path / 'spool') in text or path.suffix == '.timer'
        if path.suffix == '.service':
            assert parser['Service']['ExecStart'].split()[0] == str(Path(script('mq-run')))
            assert parser['Service']['ReadWritePaths'] == str(tmp_path / 'spool')
    path_unit = data_text('mq-run.path')
    assert 'PathChanged=/var/spool/mailqueue/drop' in path_unit


@pytest.mark.skipif(not shutil.which('systemd-analyze'), reason='systemd-analyze is not installed')
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    paths = rendered_units(tmp_path)
    (tmp_path / 'spool' / 'drop').mkdir(parents=True, exist_ok=True)
    result = subprocess.run(['systemd-analyze', 'verify', '--man=no', *map(str, paths)], capture_output=True,
                            timeout=120, text=True)
    # Lines about other units of this host (it may not be booted with systemd) are not ours.
    ours = [line for line in result.stderr.splitlines() if 'mq-run' in line]
    assert not ours and result.returncode == 0, result.stderr


def test_log_files_are_created_for_the_owner_and_group_only(tmp_path: Path) -> None:
    """Who sent mail to whom (queue_log, delivery_log) is not for every local user: 0640 whatever
    the umask. A file that exists keeps the mode its operator gave it."""
    old = os.umask(0o022)
    try:
        configure_logging(Settings(delivery_log=str(tmp_path / 'delivery.log'),
                                   queue_log=str(tmp_path / 'queue.log')))
        log_event(logging.getLogger(QUEUE_LOG), EVENT)
        assert (tmp_path / 'queue.log').stat().st_mode & 0o777 == 0o640
        assert (tmp_path / 'delivery.log').stat().st_mode & 0o777 == 0o640
        assert 'queue_id=abc.1' in (tmp_path / 'queue.log').read_text()
        os.chmod(tmp_path / 'queue.log', 0o644)
        configure_logging(Settings(queue_log=str(tmp_path / 'queue.log')))
        assert (tmp_path / 'queue.log').stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        configure_logging(Settings())
