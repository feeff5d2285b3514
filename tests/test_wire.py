"""The SMTP line protocol against scripted servers on 127.0.0.1 (replies aiosmtpd would never send)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Iterator, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schwarz.mailqueue import SMTPMailer
from schwarz.mailqueue.smtp.wire import ConnectionClosed, ProtocolError, SMTPWire, is_loopback_address

from _hyp import examples

LOG = logging.getLogger('mailqueue.smtp')


class ScriptedServer:
    """Accepts one connection, sends ``script`` lines one by one after each client line, then closes."""

    def __init__(self, greeting: bytes, replies: List[bytes]) -> None:
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.received: List[bytes] = []
        self.greeting = greeting
        self.replies = replies
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        with conn:
            conn.sendall(self.greeting)
            reader = conn.makefile('rb')
            for reply in self.replies:
                line = reader.readline()
                if not line:
                    return
                self.received.append(line)
                conn.sendall(reply)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def scripted() -> Iterator[type]:
    servers: List[ScriptedServer] = []

    def make(greeting: bytes, replies: List[bytes]) -> ScriptedServer:
        server = ScriptedServer(greeting, replies)
        servers.append(server)
        return server
    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


def test_multiline_replies_and_extensions(scripted) -> None:
    server = scripted(b'220-first\r\n220 second\r\n',
                      [b'250-hi\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 AUTH PLAIN\r\n'])
    wire = SMTPWire.connect('127.0.0.1', server.port, 5, LOG)
    assert wire.read_reply() == (220, 'first\nsecond')
    assert wire.ehlo('me')[0] == 250
    assert wire.features == {'pipelining': '', 'size': '1000', 'auth': 'PLAIN'}
    wire.close()


@pytest.mark.parametrize('greeting', [b'HTTP/1.1 400 Bad Request\r\n', b'22\r\n', b'220-a\r\n250 b\r\n'])
def test_garbage_is_a_protocol_error(scripted, greeting: bytes) -> None:
    server = scripted(greeting, [])
    wire = SMTPWire.connect('127.0.0.1', server.port, 5, LOG)
    with pytest.raises(ProtocolError):
        wire.read_reply()
    wire.close()


def test_eof_is_connection_closed(scripted) -> None:
    server = scripted(b'', [])
    wire = SMTPWire.connect('127.0.0.1', server.port, 5, LOG)
    server.thread.join(timeout=5)  # it accepted, sent nothing and closed: a clean EOF
    with pytest.raises(ConnectionClosed):
        wire.read_reply()
    wire.close()


def test_mailer_treats_a_non_smtp_server_as_temporary(scripted) -> None:
    server = scripted(b'SSH-2.0-OpenSSH_9.2\r\n', [])
    result = SMTPMailer('127.0.0.1', server.port, tls='none', timeout=5).send('a@x', ['b@x'], b'x')
    assert result.connection_failed and set(result.deferred) == {'b@x'} and not result.refused


def test_server_dropping_the_connection_after_data_means_retry(scripted) -> None:
    server = scripted(b'220 hi\r\n', [b'250 hi\r\n', b'250 ok\r\n', b'250 ok\r\n', b'354 go\r\n'])
    mailer = SMTPMailer('127.0.0.1', server.port, tls='none', timeout=5)
    result = mailer.send('a@x', ['b@x'], b'Subject: x\r\n\r\n')
    assert result.deferred == {'b@x': (451, 'connection lost while sending the message or waiting for the reply')}


def test_an_invalid_host_name_is_a_temporary_connection_failure() -> None:
    # a DNS label longer than 63 characters: the IDNA codec refuses it before any network traffic
    result = SMTPMailer('a' * 70 + '.example', 25, tls='none', timeout=2).send('a@x', ['b@x'], b'x')
    assert result.connection_failed and 'invalid host name' in (result.error or '')


# --- is_loopback_address: inet_pton instead of ipaddress, with the same verdicts --------------------


def _by_ipaddress(address: str) -> bool:
    """The earlier implementation, as the oracle."""
    try:
        ip = ipaddress.ip_address(address.split('%', 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, 'ipv4_mapped', None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


@pytest.mark.parametrize('address', [
    '127.0.0.1', '127.255.255.254', '127.1', '127.0.0.01', '0127.0.0.1', ' 127.0.0.1', '127.0.0.1 ', '128.0.0.1',
    '126.255.255.255', '0.0.0.0', '1.2.3.4', '::1', '::1%lo', '0:0:0:0:0:0:0:1', '::', '::2', '::ffff:127.0.0.1',
    '::ffff:7f00:1', '::ffff:127.9.8.7', '::ffff:10.0.0.1', '::127.0.0.1', 'fe80::1%eth0', '[::1]', 'localhost',
    '', '127.0.0.1\x00', '\u0661\u0662\u0667.0.0.1', '127.0.0.\u00b9', '::g', '1::1::1', '127.0.0.1/8',
])
def test_is_loopback_address_examples(address: str) -> None:
    assert is_loopback_address(address) == _by_ipaddress(address)


@settings(max_examples=examples(300), deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda ip: ip.exploded),
                 st.text(alphabet='0123456789abcdef.:%[]f ', max_size=45), st.text(max_size=20)))
def test_is_loopback_address_agrees_with_ipaddress(address: str) -> None:
    assert is_loopback_address(address) == _by_ipaddress(address)
