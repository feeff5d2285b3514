"""Hostile content and envelopes through the PostgreSQL store, end to end (SPEC §10, §11.2).

Messages go in through ``enqueue_message`` (own connection, and ``connection=`` with psycopg 3
and psycopg 2) and ``mq-sendmail`` with the smarthost down, come out through ``mq-run`` to an
SMTP test server, and are compared byte for byte with what was submitted (after the documented
normalisations: CRLF line ends, lines over 998 octets folded, dot-stuffing undone by the
server). Also ``mq-queue copy`` maildir -> PostgreSQL -> maildir, and the data-type edges of the
table (timestamps outside Python's range in the session's time zone, ``integer`` retries, text
and jsonb columns that refuse NUL).
"""

from __future__ import annotations

import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict

import psycopg
import pytest

from _pg import fresh_location
from schwarz.mailqueue import enqueue_message
from schwarz.mailqueue.queue.contract import FAILED, HELD, NEW
from schwarz.mailqueue.queue.format import serialize_message_with_queue_data
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.pg_location import split_location
from schwarz.mailqueue.smtp.client import fold_long_lines
from schwarz.mailqueue.testutils import SMTPTestServer
from test_postgres import sql

from helpers import run, script, write_config

HOSTILE: Dict[str, bytes] = {
    'nul': b'Subject: nul\r\n\r\nx\x00y\x00\r\n',
    'barecr': b'Subject: cr\r\n\r\nx\ry\r\r\n',
    'barelf': b'Subject: lf\n\nx\ny\n',
    'eightbit': b'Subject: \xff\xfe\r\n\r\n\x80\x81\xc3(\r\n',
    'longline': b'Subject: long\r\n\r\n' + b'x' * 100_000 + b'\r\n',
    'noheaders': b'just a body\r\n.\r\n..\r\n.x\r\n',
    'ourmeta': (b'X-Queue-Meta-End: end\r\nReturn-path: <evil@example.net>\r\nEnvelope-to: evil@example.net\r\n'
                b'X-Queue-Retries: 99\r\n\r\nX-Queue-Meta-End: end\r\n'
                b'X-Queue-Date: Fri, 29 Nov 2026 01:30:00 +0000\r\n'),
}


def normalised(data: bytes) -> bytes:
    """What the server must receive: CRLF line ends, lines over 998 octets folded (docs/reliability.md)."""
    data = re.sub(rb'\r\n|\r|\n', b'\r\n', data)
    return fold_long_lines(data)


def mq_run(config: str, **env: str) -> None:
    proc = run([script('mq-run'), '-C', config], env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


# --- what is fine: the bytes survive every way in ------------------------------------------------


@pytest.mark.parametrize('way', ['api', 'psycopg', 'psycopg2'])
def test_hostile_bytes_arrive_as_submitted(way: str, tmp_path: Path) -> None:
    location = fresh_location()
    conninfo = split_location(location)[0]
    for name, data in HOSTILE.items():
        recipients = [f'{name}@example.org']
        if way == 'api':
            enqueue_message(data, location, sender='', recipients=recipients)
        elif way == 'psycopg':
            with psycopg.connect(conninfo) as conn:  # commits on leaving the block
                enqueue_message(data, location, sender='', recipients=recipients, connection=conn)
        else:
            import psycopg2

            conn2 = psycopg2.connect(conninfo)
            try:
                enqueue_message(data, location, sender='', recipients=recipients, connection=conn2)
                conn2.commit()
            finally:
                conn2.close()
    with SMTPTestServer() as server:
        mq_run(write_config(tmp_path / 'mq.conf', server, queue_url=location))
        got = {received.rcpt_tos[0].split('@')[0]: received for received in server.received}
    assert sorted(got) == sorted(HOSTILE)
    for name, data in HOSTILE.items():
        assert got[name].mail_from == '<>'
        assert got[name].data == normalised(data), name
    assert sql(location, 'SELECT count(*) FROM messages') == [(0,)]


def test_mq_sendmail_with_the_smarthost_down_keeps_50_mb_and_hostile_bytes(tmp_path: Path) -> None:
    location = fresh_location()

    class Down:
        hostname = '127.0.0.1'
        port = free_port()

    down = write_config(tmp_path / 'down.conf', Down, queue_url=location)
    big = b'Subject: big\r\n\r\n' + (bytes(range(1, 256)).replace(b'\n', b'').replace(b'\r', b'') + b'\r\n') * 206_000
    assert len(big) > 50 * 1024 * 1024
    cases = dict(HOSTILE, big=big)
    for name, data in cases.items():
        proc = run([script('mq-sendmail'), '-C', down, '-i', '-f', 'sender@example.org', f'{name}@example.org'],
                   input=data, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert sql(location, 'SELECT count(*) FROM messages WHERE retries = 1') == [(len(cases),)]
    with SMTPTestServer(data_size_limit=None) as server:
        mq_run(write_config(tmp_path / 'mq.conf', server, queue_url=location))
        got = {received.rcpt_tos[0].split('@')[0]: received.data for received in server.received}
    assert sorted(got) == sorted(cases)
    for name, data in cases.items():
        # documented (docs/cli.md): an empty line where the header block ends at a non-header line
        expected = b'\r\n' + data if name == 'noheaders' else data
        assert got[name] == normalised(expected), name


def test_odd_envelopes_arrive_as_queued(tmp_path: Path) -> None:
    import psycopg2

    location = fresh_location()
    conninfo = split_location(location)[0]
    many = [f'r{i}@example.org' for i in range(10_000)]
    envelopes = [('"q\\"s"@example.org', ['"x y"@example.org', '"a\\"b"@example.org']),
                 ('sénder@exämple.org', ['ünï@exämple.org']), ('', many)]
    body = b'Message-ID: <"a\\"b\'c"@example.org>\r\nSubject: env\r\n\r\nbody\r\n'
    conn2 = psycopg2.connect(conninfo)
    try:
        for sender, recipients in envelopes:
            enqueue_message(body, location, sender=sender, recipients=recipients, connection=conn2)
        conn2.commit()
    finally:
        conn2.close()
    with SMTPTestServer() as server:
        mq_run(write_config(tmp_path / 'mq.conf', server, queue_url=location))
        got = sorted((received.mail_from, received.rcpt_tos, received.smtp_utf8, received.data)
                     for received in server.received)
    assert got == sorted([('"q\\"s"@example.org', envelopes[0][1], False, body),
                          ('sénder@exämple.org', envelopes[1][1], True, body), ('<>', many, False, body)])


def test_copy_maildir_to_postgres_and_back_keeps_the_bytes(tmp_path: Path) -> None:
    source, back = tmp_path / 'source', tmp_path / 'back'
    location = fresh_location()
    for where in (source, back):
        assert run([script('mq-queue'), '--queue-dir', str(where), 'init']).returncode == 0
    maildir = open_queue(str(source))
    cases = dict(HOSTILE, empty=b'')
    for name, data in cases.items():
        maildir.enqueue(data, '', [f'{name}@example.org'], extra={'X-Queue-Hold-Reason': 'café \u2603'})
    for frm, to in ((str(source), location), (location, str(back))):
        proc = run([script('mq-queue'), '--queue-dir', frm, 'copy', '--to', to])
        assert proc.returncode == 0, proc.stderr
    result = open_queue(str(back))
    got = {}
    for entry in result.entries():
        view = result.view(entry.msg_id)
        assert view is not None and entry.state == NEW and entry.meta is not None
        got[entry.meta.to_addrs[0].split('@')[0]] = view[1]
        assert entry.meta.extra['X-Queue-Hold-Reason'] == 'café \u2603'
    assert got == cases
    assert sql(location, 'SELECT count(*) FROM messages') == [(0,)]
    assert list(maildir.entries()) == []


# --- defects -------------------------------------------------------------------------------------


@pytest.mark.parametrize('code', [451, 550])
def test_a_nul_in_a_server_reply_is_recorded_as_the_maildir_records_it(code: int, tmp_path: Path) -> None:
    """The maildir replaces NUL in meta values (format._clean); the PostgreSQL store passes it on
    to a text/jsonb column, which refuses it: the defer/fail cannot be written, the message goes
    to hold with the recipient who already has it still listed (a release re-sends to him)."""
    location = fresh_location()
    msg_id = enqueue_message(b'Subject: x\r\n\r\nbody\r\n', location, sender='s@example.org',
                             recipients=['good@example.org', 'bad@example.org'])
    with SMTPTestServer() as server:
        server.set_recipient_reply('bad@example.org', code, 'no\x00such user')
        mq_run(write_config(tmp_path / 'mq.conf', server, queue_url=location))
        assert [received.rcpt_tos for received in server.received] == [['good@example.org']]
    entry = open_queue(location).entry(msg_id)
    assert entry is not None and entry.meta is not None
    assert entry.meta.to_addrs == ['bad@example.org']
    assert entry.state == (NEW if code == 451 else FAILED), (entry.state, entry.meta)
    assert entry.state != HELD


@pytest.mark.parametrize('queue_date, tz', [
    (datetime(1, 1, 1, 0, 30, tzinfo=timezone.utc), 'America/New_York'),
    (datetime(9999, 12, 31, 23, 30, tzinfo=timezone.utc), 'Pacific/Kiritimati'),
])
def test_a_queue_date_at_the_edge_of_the_calendar_does_not_stop_the_queue(
        queue_date: datetime, tz: str, tmp_path: Path) -> None:
    """psycopg reads timestamptz in the session's time zone (PGTZ, or the server's `timezone`), where
    such a date is outside Python's years 1..9999: a claim that took such a row could not read it
    and no message would be delivered at all. So no store takes one (the maildir could not read
    it back either); the rest of the queue goes on under any session time zone."""
    location = fresh_location()
    with pytest.raises(ValueError, match='out of range'):
        enqueue_message(b'Subject: odd\r\n\r\nx\r\n', location, sender='s@example.org',
                        recipients=['odd@example.org'], queue_date=queue_date)
    with pytest.raises(ValueError, match='out of range'):
        enqueue_message(b'Subject: odd\r\n\r\nx\r\n', str(tmp_path / 'maildir'), sender='s@example.org',
                        recipients=['odd@example.org'], queue_date=queue_date)
    for i in range(3):
        enqueue_message(b'Subject: ok\r\n\r\nx\r\n', location, sender='s@example.org',
                        recipients=[f'good{i}@example.org'])
    with SMTPTestServer() as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_url=location)
        proc = run([script('mq-run'), '-C', config], env={'PGTZ': tz}, timeout=60)
        delivered = sorted(rcpt for received in server.received for rcpt in received.rcpt_tos)
    assert proc.returncode == 0, proc.stderr
    assert {'good0@example.org', 'good1@example.org', 'good2@example.org'} <= set(delivered)
    listing = run([script('mq-queue'), '--queue-dir', location, 'list', '--json'], env={'PGTZ': tz})
    assert listing.returncode == 0, listing.stderr


def test_copying_a_maildir_message_with_many_retries_into_postgres(tmp_path: Path) -> None:
    """The maildir keeps any X-Retries; the PostgreSQL column is `integer`: the copy's second
    step fails (integer out of range), leaves a parked half-copy behind and aborts the whole
    migration, again on every re-run, so the messages after it are never copied."""
    source = tmp_path / 'source'
    assert run([script('mq-queue'), '--queue-dir', str(source), 'init']).returncode == 0
    raw = serialize_message_with_queue_data(b'Subject: r\r\n\r\nr\r\n', 's@example.org', ['many@example.org'],
                                            retries=3_000_000_000)
    (source / 'new' / 'manyretries').write_bytes(raw)
    maildir = open_queue(str(source))
    for i in range(3):
        maildir.enqueue(b'Subject: n\r\n\r\nn\r\n', 's@example.org', [f'n{i}@example.org'])
    location = fresh_location()
    proc = run([script('mq-queue'), '--queue-dir', str(source), 'copy', '--to', location])
    assert proc.returncode == 0, proc.stderr
    rows = sql(location, 'SELECT recipients[1], state FROM messages ORDER BY 1')
    assert rows == [('many@example.org', 'new')] + [(f'n{i}@example.org', 'new') for i in range(3)]
    assert list(maildir.entries()) == []


def test_a_deferral_at_the_retries_limit_is_recorded(tmp_path: Path) -> None:
    """retries = 2**31 - 1 (e.g. from a copied queue): the deferral's retries + 1 overflows the
    `integer` column; the runner logs `status=deferred`, but the row is put back unchanged, with
    no error shown, and the attempt and its error are never recorded."""
    location = fresh_location()
    msg_id = enqueue_message(b'Subject: x\r\n\r\nbody\r\n', location, sender='s@example.org',
                             recipients=['a@example.org'])
    sql(location, 'UPDATE messages SET retries = 2147483647')
    with SMTPTestServer() as server:
        server.set_reply('RCPT', 451, 'try later')
        mq_run(write_config(tmp_path / 'mq.conf', server, queue_url=location))
    entry = open_queue(location).entry(msg_id)
    assert entry is not None and entry.state == NEW and entry.meta is not None
    assert entry.meta.last_error is not None and 'try later' in entry.meta.last_error, entry.meta
