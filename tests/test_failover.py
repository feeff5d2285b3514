"""Several smarthosts (issue 13): a connection-level failure (refused, timed out, TLS handshake) moves on
to the next host and the failed one rests; a server's verdict on a message never does, so no message
goes to two hosts. Every address of a host name (IPv6, then IPv4) is tried before the host counts as down."""

from __future__ import annotations

import logging
import socket
from typing import Any, Iterator, List, Tuple, Union

import pytest

from schwarz.mailqueue.bootstrap import build_smtp_transport
from schwarz.mailqueue.config import ConfigError, parse_config_text, settings_from_mapping
from schwarz.mailqueue.smtp.errors import is_unreachable_error
from schwarz.mailqueue.smtp.hosts import HostHealth, format_host, parse_hosts
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n'


def closed_port(host: str = '127.0.0.1') -> int:
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def second() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as server:
        yield server


def mailer(*hosts: Tuple[str, int], **options: Any) -> SMTPMailer:
    options.setdefault('tls', 'none')
    options.setdefault('timeout', 2)
    return SMTPMailer(hosts=list(hosts), **options)


def send(m: SMTPMailer, to: str = 'b@example.org') -> Any:
    with m:
        return m.send('a@example.org', [to], MSG)


# --- the host list --------------------------------------------------------------------------------

def test_host_lists_parse_in_order_with_ports() -> None:
    assert parse_hosts('a.example:587, b.example  [2001:db8::1]:465 ::1', 25) == [
        ('a.example', 587), ('b.example', 25), ('2001:db8::1', 465), ('::1', 25)]
    assert format_host(('2001:db8::1', 465)) == '[2001:db8::1]:465'
    for bad in ('', 'a:0', 'a:70000', 'a:x', '[::1', 'a:25, a:25', 'a/b'):
        with pytest.raises(ValueError):
            parse_hosts(bad)


def test_a_bad_host_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match='smtp_hostname: invalid value'):
        parse_config_text('[mqrunner]\nsmtp_hostname = a.example:587, b.example:99999\n')
    settings = parse_config_text('[mqrunner]\nsmtp_hostname = a.example:587, b.example\nsmtp_port = 2525\n')
    transport = build_smtp_transport(settings)
    assert isinstance(transport, SMTPMailer)  # no accounts: a single mailer
    assert transport.hosts == [('a.example', 587), ('b.example', 2525)]


# --- failover ---------------------------------------------------------------------------------------

def test_first_host_refuses_the_second_delivers_and_the_first_rests(second: SMTPTestServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with SMTPTestServer(drop_on=['CONNECT']) as first:  # accepts TCP, hangs up before the greeting
        health = HostHealth()
        m = mailer(('127.0.0.1', first.port), ('127.0.0.1', second.port), host_health=health)
        result = send(m)
        assert result and result.host == f'127.0.0.1:{second.port}'
        assert first.connection_count == 1 and len(second.received) == 1
        assert health.resting(('127.0.0.1', first.port))
        assert f'; using the next smarthost, 127.0.0.1:{second.port}' in caplog.text
        # a clone (another worker) starts with the host that works: the resting one is not tried
        assert send(m.clone())
        assert first.connection_count == 1 and len(second.received) == 2


def test_a_refused_connection_moves_on(second: SMTPTestServer) -> None:
    result = send(mailer(('127.0.0.1', closed_port()), ('127.0.0.1', second.port)))
    assert result.accepted == ['b@example.org'] and len(second.received) == 1


def test_first_host_times_out_the_second_delivers(second: SMTPTestServer) -> None:
    with SMTPTestServer(delays={'CONNECT': 5}) as first:  # no greeting within the timeout
        result = send(mailer(('127.0.0.1', first.port), ('127.0.0.1', second.port), timeout=0.5))
    assert result and result.host == f'127.0.0.1:{second.port}' and len(second.received) == 1


def test_first_host_fails_tls_the_second_delivers() -> None:
    with SMTPTestServer(tls='implicit') as first, SMTPTestServer(tls='implicit') as second:
        # certificates are checked (also on loopback) against the second server's only
        result = send(mailer(('127.0.0.1', first.port), ('127.0.0.1', second.port), tls='implicit',
                             tls_verify=True, cafile=second.cert_path))
        assert result, result
        assert result.host == f'127.0.0.1:{second.port}'
        assert first.received == [] and second.received[0].tls


def test_a_failed_host_is_preferred_again_after_its_rest() -> None:
    now = [0.0]
    health = HostHealth(rest=120, clock=lambda: now[0])
    hosts = [('127.0.0.1', 1), ('127.0.0.1', 2)]
    health.failed(hosts[0])
    assert health.order(hosts) == [hosts[1], hosts[0]]
    now[0] = 121
    assert health.order(hosts) == hosts
    assert health.succeeded(hosts[0]) is True  # it had failed: it is back
    assert health.succeeded(hosts[0]) is False


@pytest.mark.parametrize('command, code', [('MAIL', 550), ('RCPT', 550), ('DATA', 554), ('MAIL', 451),
                                           ('RCPT', 452)])
def test_a_reply_to_the_message_never_fails_over(second: SMTPTestServer, command: str, code: int) -> None:
    """Permanent is permanent, and a temporary verdict goes to the queue: never to the next host."""
    with SMTPTestServer(replies={command: code}) as first:
        result = send(mailer(('127.0.0.1', first.port), ('127.0.0.1', second.port)))
    assert not result and not result.connection_failed
    bucket = result.refused if code >= 500 else result.deferred
    assert list(bucket) == ['b@example.org'] and bucket['b@example.org'][0] == code
    assert second.connection_count == 0 and second.received == []


def test_a_connection_lost_during_data_is_not_sent_to_the_next_host(second: SMTPTestServer) -> None:
    with SMTPTestServer(disconnect_during_data=True) as first:
        result = send(mailer(('127.0.0.1', first.port), ('127.0.0.1', second.port)))
    assert list(result.deferred) == ['b@example.org']
    assert second.connection_count == 0  # the first may have the message: the queue retries later


def test_all_hosts_down_is_one_unreachable_error_naming_each() -> None:
    a, b = closed_port(), closed_port()
    result = send(mailer(('127.0.0.1', a), ('127.0.0.1', b)))
    assert result.connection_failed and list(result.deferred) == ['b@example.org']
    error = result.error or ''
    assert f'127.0.0.1:{a}' in error and f'127.0.0.1:{b}' in error and 'tried 2 hosts' in error
    code, text = result.deferred['b@example.org']
    assert is_unreachable_error(f'b@example.org: {code} {text}')


def test_failover_from_the_configuration(second: SMTPTestServer) -> None:
    settings = settings_from_mapping({'smtp_hostname': f'127.0.0.1:{closed_port()}, 127.0.0.1:{second.port}',
                                      'smtp_tls': 'none'})
    transport = build_smtp_transport(settings)
    assert isinstance(transport, SMTPMailer)  # no accounts: a single mailer
    result = send(transport)
    assert result and len(second.received) == 1


# --- every address of a host name ------------------------------------------------------------------

def _resolving(monkeypatch: pytest.MonkeyPatch, name: str, port: int, order: List[str]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, service: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, service, *args, **kwargs)
        infos: List[Tuple[socket.AddressFamily, socket.SocketKind, int, str,
                          Union[Tuple[str, int], Tuple[str, int, int, int]]]] = []
        for address in order:
            if ':' in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, '', (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, '', (address, port)))
        return infos

    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)


def _port_free_on_both() -> int:
    for _ in range(50):
        port = closed_port('127.0.0.1')
        try:
            with socket.socket(socket.AF_INET6) as sock:
                sock.bind(('::1', port))
        except OSError:
            continue
        return port
    raise AssertionError('no port free on both ::1 and 127.0.0.1')


@pytest.mark.parametrize('listening', ['127.0.0.1', '::1'])
def test_every_address_of_a_name_is_tried(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                          listening: str) -> None:
    """A name resolving to ::1 and 127.0.0.1, where only one of them accepts: the mail goes out."""
    port = _port_free_on_both()
    with SMTPTestServer(hostname=listening, port=port) as server:
        # the resolver's order is IPv4 first; IPv6 is tried first all the same
        _resolving(monkeypatch, 'dual.test', port, ['127.0.0.1', '::1'])
        caplog.set_level(logging.DEBUG, logger='mailqueue.smtp')
        result = send(mailer(('dual.test', port)))
        assert result, result
        assert len(server.received) == 1
    refused = [r.getMessage() for r in caplog.records if 'dual.test' in r.getMessage() and 'refused' in r.getMessage()]
    if listening == '127.0.0.1':
        assert refused and f'[::1]:{port}' in refused[0]  # IPv6 tried first, then IPv4
    else:
        assert not refused  # IPv6 first: it answered at once


def test_a_name_counts_as_down_only_when_every_address_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _port_free_on_both()
    _resolving(monkeypatch, 'dual.test', port, ['::1', '127.0.0.1'])
    result = send(mailer(('dual.test', port)))
    assert result.connection_failed
    assert f'[::1]:{port}' in (result.error or '') and f'127.0.0.1:{port}' in (result.error or '')


def test_when_every_host_fails_one_line_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """No warning per host on top of the error that names them all (a CLI printed three lines)."""
    caplog.set_level('INFO', logger='mailqueue')
    first, second = closed_port(), closed_port()
    result = send(mailer(('127.0.0.1', first), ('127.0.0.1', second)))
    assert not result
    [(_code, text)] = set(result.deferred.values())
    assert f'127.0.0.1:{first}' in text and f'127.0.0.1:{second}' in text
    assert [r for r in caplog.records if r.levelname == 'WARNING' and 'smarthost' in r.getMessage()] == []


def test_a_later_host_refusing_the_login_does_not_hide_the_earlier_ones(caplog: pytest.LogCaptureFixture) -> None:
    """Failover stops at a refused login (it would fail everywhere); the hosts tried before it
    are still named, once."""
    first = closed_port()
    with SMTPTestServer(auth={'app': 'right'}) as second:
        result = send(mailer(('127.0.0.1', first), ('127.0.0.1', second.port), username='app', password='wrong'))
    assert not result
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and f'127.0.0.1:{first}' in warnings[0], warnings
    assert f'the next smarthost, 127.0.0.1:{second.port}, failed too' in warnings[0]
    assert 'wrong' not in caplog.text
