"""Property-based tests of every parser and of the bytes that go on the wire.

Budgets come from ``_hyp.examples`` (``HYPOTHESIS_MAX_EXAMPLES``, or
``HYPOTHESIS_PROFILE=long`` for a longer run by hand).
"""

from __future__ import annotations

import io
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Iterator, List, Optional, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _addr import envelope_addresses
from schwarz.mailqueue.cli.common import EX_USAGE, CLIError
from schwarz.mailqueue.cli.sendmail_options import SendmailOptions, parse_args
from schwarz.mailqueue.config import KNOWN_KEYS, ConfigError, Settings, parse_config_text
from schwarz.mailqueue.message import dot_stuff, normalize_line_endings
from schwarz.mailqueue.queue.format import (
    FAILED_REASON,
    HOLD_REASON,
    LAST_ERROR,
    META_END,
    QueueFileError,
    QueueMeta,
    parse_message_envelope,
    parse_queue_bytes,
    serialize_message_with_queue_data,
)
from schwarz.mailqueue.queue.schedule import RetryPolicy
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.testutils import SMTPTestServer

from _hyp import examples

# --- strategies ---------------------------------------------------------------------------

# Valid envelope addresses of every shape (dot-strings, quoted local parts, Unicode, IP literals),
# composed from the RFC 5321 grammar in _addr: what the queue must store and give back unchanged.
addresses = envelope_addresses
senders = st.one_of(st.just(''), addresses)

# Fixed offsets in whole minutes (what an RFC 5322 date can carry), UTC among them.
offsets = st.one_of(
    st.just(timezone.utc),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)
aware_dates = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 12, 31), timezones=offsets)

# Pieces that stress line handling: every kind of line break, dots at line starts, the SMTP
# end-of-data sequence, the queue file's own end marker, NUL and 8-bit bytes.
_pieces = st.sampled_from([
    b'\r\n', b'\r', b'\n', b'\n\r', b'\r\r\n', b'.', b'..', b'.\r\n', b'\r\n.\r\n', b'\n.\n', b'\r.\r',
    META_END, META_END + b'\r\n', b'Subject: x', b'From x', b': ', b'\x00', b'\xff\xfe\x80', b'\xc3\xa9',
    b' ', b'\t', b'body', b'=', b'-',
])
line_soup = st.lists(st.one_of(_pieces, st.binary(max_size=40)), max_size=40).map(b''.join)
message_bytes = st.one_of(st.just(b''), line_soup, st.binary(max_size=3000))

meta_values = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, b: f'{a}X-Queue-Meta-End: end{b}', st.text(max_size=20), st.text(max_size=20)),
    st.just('X-Queue-Meta-End: end'),
)
extras = st.dictionaries(st.sampled_from([LAST_ERROR, FAILED_REASON, HOLD_REASON]), meta_values, max_size=3)


def _expected_meta_value(value: str) -> str:
    return re.sub(r'[\r\n\x00]', ' ', value).strip()


# --- queue file round trip -------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(
    msg=message_bytes,
    sender=senders,
    recipients=st.lists(addresses, max_size=5),
    queue_date=aware_dates,
    last=st.one_of(st.none(), aware_dates),
    retries=st.integers(0, 10**12),
    extra=extras,
)
@example(msg=b'', sender='', recipients=['a@b'], queue_date=datetime(2026, 1, 1, tzinfo=timezone.utc), last=None,
         retries=0, extra={})
@example(msg=b'X-Queue-Meta-End: end\r\nSubject: x\r\n\r\nbody', sender='a@b', recipients=['c@d'],
         queue_date=datetime(2026, 1, 1, tzinfo=timezone.utc), last=None, retries=0,
         extra={LAST_ERROR: '451 see X-Queue-Meta-End: end'})
def test_queue_file_round_trip(msg: bytes, sender: str, recipients: List[str], queue_date: datetime,
                               last: Optional[datetime], retries: int, extra: dict) -> None:
    data = serialize_message_with_queue_data(msg, sender, recipients, queue_date=queue_date, last=last,
                                             retries=retries, extra=extra)
    meta, body = parse_queue_bytes(data)
    assert body == msg
    assert meta.from_addr == sender
    assert meta.to_addrs == recipients
    expected_date = queue_date.replace(microsecond=0)
    assert meta.queue_date == expected_date and meta.queue_date is not None
    assert meta.queue_date.utcoffset() == expected_date.utcoffset()
    if last is None:
        assert meta.last_delivery_attempt is None
    else:
        assert meta.last_delivery_attempt == last.replace(microsecond=0)
    assert meta.retries == retries
    assert meta.extra == {name: _expected_meta_value(value) for name, value in extra.items()}

    # The streaming reader sees the same thing and leaves the file positioned at the message.
    fp = io.BytesIO(data)
    assert parse_message_envelope(fp) == meta
    assert fp.read() == msg


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    position = st.integers(0, len(data))
    return st.one_of(
        st.builds(lambda i, b: data[:i] + b + data[i:], position, st.one_of(_pieces, st.binary(max_size=8))),
        st.builds(lambda i, n: data[:i] + data[i + n:], position, st.integers(1, 40)),
        st.builds(lambda i: data[:i], position),
        st.builds(lambda i, b: data[:i] + b + data[i + len(b):], position, st.binary(min_size=1, max_size=4)),
    )


_VALID_FILE = serialize_message_with_queue_data(
    b'Subject: hi\r\n\r\nbody\r\n', 'a@example.org', ['b@example.org', 'c@example.org'],
    queue_date=datetime(2026, 11, 29, 1, 30, tzinfo=timezone.utc),
    last=datetime(2026, 11, 29, 2, 30, tzinfo=timezone.utc), retries=2, extra={LAST_ERROR: '451 later'})
corrupt_files = st.one_of(
    st.binary(max_size=400),
    line_soup,
    _mutations(_VALID_FILE),
    _mutations(_VALID_FILE).flatmap(_mutations),
)


@settings(max_examples=examples(400), deadline=None)
@given(data=corrupt_files)
@example(data=_VALID_FILE.replace(b'2026', b'9999'))
@example(data=_VALID_FILE.replace(b'29 Nov 2026', b'31 Dec 9999').replace(b'02:30:00', b'23:59:59'))
@example(data=_VALID_FILE.replace(b'+0000', b'+9999'))
def test_any_bytes_parse_or_raise_queue_file_error(data: bytes) -> None:
    """A corrupt or foreign file is a QueueFileError (moved aside), never another exception."""
    outcomes: List[Optional[Tuple[QueueMeta, bytes]]] = []
    for parse in (lambda: parse_queue_bytes(data), lambda: _envelope_and_rest(data)):
        try:
            outcomes.append(parse())
        except QueueFileError as exc:
            assert str(exc) and '\n' not in str(exc)
            outcomes.append(None)
    # Both readers agree: a file is never a message to one and corrupt to the other.
    assert outcomes[0] == outcomes[1]
    if outcomes[0] is None:
        return
    meta, _ = outcomes[0]
    assert isinstance(meta, QueueMeta) and all(isinstance(a, str) and a for a in meta.to_addrs)
    assert isinstance(meta.retries, int)
    # Dates read from a queue file can be scheduled: the backoff arithmetic must not overflow.
    policy = RetryPolicy()
    for value in (meta.queue_date, meta.last_delivery_attempt):
        if value is not None:
            assert value.tzinfo is not None
            value + policy.max_delay + policy.max_queue_lifetime
            value - policy.max_queue_lifetime


def _envelope_and_rest(data: bytes) -> Tuple[QueueMeta, bytes]:
    fp = io.BytesIO(data)
    meta = parse_message_envelope(fp)
    return meta, fp.read()


# --- line endings and dot-stuffing ------------------------------------------------------------

_BARE = re.compile(rb'\r(?!\n)|(?<!\r)\n')


def server_reads(stream: bytes) -> bytes:
    """What a server makes of the DATA stream (RFC 5321 4.5.2): lines up to '.', leading dot removed."""
    lines = []
    pos = 0
    while True:
        end = stream.find(b'\r\n', pos)
        assert end >= 0, 'DATA stream ended without the CRLF.CRLF terminator'
        line = stream[pos:end]
        pos = end + 2
        if line == b'.':
            break
        lines.append((line[1:] if line.startswith(b'.') else line) + b'\r\n')
    assert pos == len(stream), 'bytes after the end-of-data line'
    return b''.join(lines)


def expected_on_wire(msg: bytes) -> bytes:
    normalised = normalize_line_endings(msg)
    if normalised and not normalised.endswith(b'\r\n'):
        normalised += b'\r\n'
    return normalised


@settings(max_examples=examples(500), deadline=None)
@given(msg=message_bytes)
@example(msg=b'')
@example(msg=b'.')
@example(msg=b'\r\n.\r\n')
@example(msg=b'a\n.\nb')
@example(msg=b'a\r.\rb')
@example(msg=b'\r')
def test_data_stream_destuffs_to_normalised_message(msg: bytes) -> None:
    data = dot_stuff(normalize_line_endings(msg))
    stream = data + b'.\r\n'  # what SMTPConnection.send puts on the wire after DATA
    assert _BARE.search(stream) is None
    # The end-of-data sequence appears exactly once, at the very end (the CRLF before the first
    # line is the one that ended the DATA command).
    assert (b'\r\n' + stream).find(b'\r\n.\r\n') == len(stream) - 3
    assert server_reads(stream) == expected_on_wire(msg)
    assert normalize_line_endings(normalize_line_endings(msg)) == normalize_line_endings(msg)


# --- end to end through a real SMTPMailer --------------------------------------------------------


@pytest.fixture(scope='module')
def e2e() -> Iterator[Tuple[SMTPTestServer, SMTPMailer]]:
    with SMTPTestServer() as server:
        with SMTPMailer(server.hostname, server.port, tls='none', timeout=5) as mailer:
            yield server, mailer


# Lines stay well below the 1000-octet SMTP line limit the test server enforces.
_short_line = st.one_of(st.binary(max_size=60).map(lambda b: re.sub(rb'[\r\n]', b'', b)),
                        st.sampled_from([b'', b'.', b'..', b'.x', b'\x00', b'\xff\x80', META_END]))
wire_messages = st.builds(
    lambda lines, breaks: b''.join(line + brk for line, brk in zip(lines, breaks)),
    st.lists(_short_line, max_size=25),
    st.lists(st.sampled_from([b'\r\n', b'\n', b'\r', b'']), min_size=25, max_size=25),
)


@settings(max_examples=examples(30), deadline=None)
@given(msg=wire_messages, recipients=st.lists(st.sampled_from(['a@example.org', 'b@example.org', 'c@x']),
                                              min_size=1, max_size=3, unique=True))
@example(msg=b'', recipients=['a@example.org'])
@example(msg=b'.\r\n.\n.\r', recipients=['a@example.org'])
def test_smtp_delivery_is_byte_exact_after_normalisation(e2e: Tuple[SMTPTestServer, SMTPMailer], msg: bytes,
                                                         recipients: List[str]) -> None:
    server, mailer = e2e
    server.reset()
    result = mailer.send('s@example.org', recipients, msg)
    assert result, result
    assert result.accepted == recipients
    (received,) = server.received
    assert received.data == expected_on_wire(msg)
    assert (received.mail_from, received.rcpt_tos) == ('s@example.org', recipients)
    assert ('BODY=8BITMIME' in received.mail_options) == (not msg.isascii())


def test_e2e_reuses_one_connection(e2e: Tuple[SMTPTestServer, SMTPMailer]) -> None:
    """The property above went through one connection (examples are cheap, and reuse is exercised)."""
    server, mailer = e2e
    before = mailer.connections_opened
    for n in range(3):
        assert mailer.send('s@example.org', ['a@example.org'], b'n %d' % n)
    assert mailer.connections_opened == max(before, 1)


# --- configuration -------------------------------------------------------------------------------

_value_samples = st.sampled_from([
    '', '0', '1', '-1', '25', '65535', '65536', '1e309', 'nan', 'NaN', 'inf', '-inf', '0.0', '1e-9', 'yes', 'no',
    'maybe', '5m', '4h', '1h30m', '99999999999999999999d', '3000000d', '366d', '52w', '1' * 400, '1.2.3', '²',
    '١٢', 'starttls', 'implicit',
    'json', 'logfmt', '%', '%(x)s', '${x}', 'a\n  b', '\x00', 'ünïcödé', '-3m',
])
_keys = st.one_of(st.sampled_from(sorted(KNOWN_KEYS)), st.sampled_from(['SMTP_PORT', 'unknown', '']),
                  st.text(max_size=12))
_config_line = st.one_of(
    st.builds(lambda k, sep, v: f'{k}{sep}{v}', _keys, st.sampled_from([' = ', '=', ': ', ' ']),
              st.one_of(_value_samples, st.text(max_size=30))),
    st.sampled_from(['[mqrunner]', '[other]', '[', '#comment', ';comment', '  continued', '']),
    st.text(max_size=40),
)
config_texts = st.one_of(
    st.text(max_size=300),
    st.lists(_config_line, max_size=12).map(lambda lines: '[mqrunner]\n' + '\n'.join(lines)),
    st.lists(_config_line, max_size=12).map('\n'.join),
)


@settings(max_examples=examples(400), deadline=None)
@given(text=config_texts)
@example(text='[mqrunner]\nsmtp_timeout = nan\n')
@example(text='[mqrunner]\nsmtp_timeout = inf\n')
@example(text='[mqrunner]\nsmtp_rate_limit = nan\n')
@example(text='[mqrunner]\nretry_max_delay = 99999999999999d\n')
@example(text='[mqrunner]\nretry_max_delay = 3000000d\n')
@example(text='[mqrunner]\nmax_queue_lifetime = ' + '9' * 400 + '\n')
@example(text='[mqrunner]\nsmtp_port = 25\n  26\n')
def test_config_text_parses_or_raises_config_error(text: str) -> None:
    try:
        settings_ = parse_config_text(text, path='/etc/mq.conf')
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith('/etc/mq.conf') and '\n' not in message
        return
    assert isinstance(settings_, Settings)
    # Whatever parsed is usable: timeouts and rates are real positive numbers.
    assert math.isfinite(settings_.smtp_timeout) and settings_.smtp_timeout > 0
    if settings_.smtp_rate_limit is not None:
        assert math.isfinite(settings_.smtp_rate_limit) and settings_.smtp_rate_limit > 0
    try:
        policy = settings_.retry_policy()
    except ConfigError as exc:
        assert '\n' not in str(exc)
        return
    # ... and so is the schedule, for any date a queue file can carry (format.py: years up to 9000).
    for retries in (1, 64, 10**6):
        policy.next_attempt(datetime(9000, 12, 31, 23, 59, 59, tzinfo=timezone.utc), retries)


# --- retry schedule (what tests/test_schedule.py does not cover: next_attempt / is_due) -----------


@settings(max_examples=examples(300), deadline=None)
@given(last=aware_dates, min_s=st.integers(0, 10**6), extra_s=st.integers(0, 10**8), retries=st.integers(0, 10**4),
       later=st.integers(0, 10**9))
def test_next_attempt_is_monotonic_bounded_and_matches_is_due(last: datetime, min_s: int, extra_s: int,
                                                              retries: int, later: int) -> None:
    policy = RetryPolicy(timedelta(seconds=min_s), timedelta(seconds=min_s + extra_s))
    this = policy.next_attempt(last, retries)
    following = policy.next_attempt(last, retries + 1)
    assert following is not None
    if retries == 0:
        assert this is None and policy.is_due(last, 0, last)  # never tried: due at once
        this = last
    assert this is not None  # tried at least once: there is a next attempt
    assert last <= this <= following <= last + policy.max_delay
    if retries >= 1:
        assert this >= last + min(policy.min_delay, policy.max_delay)
    # is_due flips exactly once, at next_attempt, and stays due afterwards.
    assert policy.is_due(last, retries, this)
    assert policy.is_due(last, retries, this + timedelta(seconds=later))
    if this > last:
        assert not policy.is_due(last, retries, this - timedelta(microseconds=1))


# --- mq-sendmail argument parsing -----------------------------------------------------------------

_argv_tokens = st.one_of(
    st.sampled_from([
        '-t', '-i', '-oi', '-odi', '-oem', '-f', '-r', '-F', '-FCronDaemon', '-B8BITMIME', '-B', '-N', '-R', '-V',
        '-L', '-bm', '-bs', '-bp', '-bi', '-bv', '-bx', '-b', '-q', '-q30m', '-h', '-h17', '-v', '-n', '-C', '--',
        '-', '--config', '--config=x', '--aliases', '--read-envelope-from', '--set-date-header',
        '--set-date-header=off', '--set-msgid-header=maybe', '--help', '--version', '--verbose=1', '--bogus',
        '-ti', '-tix', '-O', '-OIgnoreDots=true', 'user', 'a@example.org', '-a@example.org', '\n', '', '-\x00',
    ]),
    st.text(max_size=12),
    st.builds(lambda p, s: p + s, st.sampled_from(['-', '--', '-o', '-b', '-q', '-h', '-O', '--set-to-header=']),
              st.text(max_size=8)),
)


@settings(max_examples=examples(400), deadline=None)
@given(argv=st.lists(_argv_tokens, max_size=8),
       prog=st.sampled_from(['mq-sendmail', '/usr/sbin/sendmail', 'mailq', '/usr/bin/newaliases']))
def test_sendmail_argv_parses_or_is_a_usage_error(argv: List[str], prog: str) -> None:
    try:
        opts = parse_args(argv, prog)
    except CLIError as exc:
        assert exc.exit_code == EX_USAGE and str(exc)
        if not any('\n' in arg or '\r' in arg for arg in argv):
            assert '\n' not in str(exc)
        return
    assert isinstance(opts, SendmailOptions)
    # Recipients are always the tail of argv: after '--' or from the first non-option on,
    # so an address can never be taken for an option and an option never for an address.
    if opts.recipients:
        count = len(opts.recipients)
        assert argv[-count:] == opts.recipients
        before = argv[:-count]
        first = opts.recipients[0]
        assert (before and before[-1] == '--') or not first.startswith('-') or first == '-'
