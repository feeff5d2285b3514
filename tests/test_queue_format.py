from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schwarz.mailqueue import parse_message_envelope, serialize_message_with_queue_data
from schwarz.mailqueue.queue.format import QueueFileError, parse_queue_bytes

from _hyp import examples

# A queue file as mailqueue-runner 1.0.0 writes it (CRLF meta block, message bytes after it).
LEGACY_FILE = (
    b'Return-path: <foo@site.example>\r\n'
    b'Envelope-to: bar@site.example,baz@site.example\r\n'
    b'X-Queue-Date: Wed, 05 Jun 2019 14:10:32 +0200\r\n'
    b'X-Last-Attempt: Wed, 05 Jun 2019 15:10:32 +0200\r\n'
    b'X-Retries: 2\r\n'
    b'X-Queue-Meta-End: end\r\n'
    b'Subject: hello\n\nbody\n'
)


def test_reads_legacy_queue_file() -> None:
    fp = io.BytesIO(LEGACY_FILE)
    meta = parse_message_envelope(fp)
    assert meta.from_addr == 'foo@site.example'
    assert meta.to_addrs == ['bar@site.example', 'baz@site.example']
    assert meta.retries == 2
    assert meta.queue_date is not None and meta.queue_date.year == 2019
    assert meta.last_delivery_attempt is not None and meta.last_delivery_attempt.hour == 15
    assert fp.read() == b'Subject: hello\n\nbody\n'


def test_serialize_is_byte_compatible_and_round_trips() -> None:
    queue_date = datetime(2019, 6, 5, 12, 10, 32, tzinfo=timezone.utc)
    data = serialize_message_with_queue_data(b'Subject: x\r\n\r\nbody', 'a@x', ['b@x', 'c@x'],
                                             queue_date=queue_date, last=queue_date, retries=3)
    assert data.startswith(b'Return-path: <a@x>\r\nEnvelope-to: b@x,c@x\r\n'
                           b'X-Queue-Date: Wed, 05 Jun 2019 12:10:32 +0000\r\n')
    meta, body = parse_queue_bytes(data)
    assert body == b'Subject: x\r\n\r\nbody'
    assert (meta.from_addr, meta.to_addrs, meta.retries) == ('a@x', ['b@x', 'c@x'], 3)
    assert meta.last_delivery_attempt == queue_date


def test_null_sender_round_trips() -> None:
    meta, _ = parse_queue_bytes(serialize_message_with_queue_data(b'x', '', ['b@x']))
    assert meta.from_addr == ''


@pytest.mark.parametrize('data', [b'', b'Subject: no meta\r\n\r\nbody',
                                  b'Return-path: <a@x>\r\nX-Queue-Meta-End: end\r\n',
                                  b'Return-path: <a@x>\r\nEnvelope-to: b@x\r\nX-Retries: many\r\n'
                                  b'X-Queue-Meta-End: end\r\n'])
def test_corrupt_files_raise_queue_file_error(data: bytes) -> None:
    with pytest.raises(QueueFileError):
        parse_message_envelope(io.BytesIO(data))


def test_address_with_line_break_cannot_be_stored() -> None:
    with pytest.raises(ValueError):
        serialize_message_with_queue_data(b'x', 'a@x', ['b@x\r\nX-Retries: 0'])



@settings(max_examples=examples())
@given(moment=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
       offset=st.integers(-14 * 60, 14 * 60))
def test_fast_date_parser_agrees_with_email_utils(moment: datetime, offset: int) -> None:
    import email.utils

    from schwarz.mailqueue.queue.format import _parse_canonical_date, format_date, parse_date
    value = format_date(moment.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset))))
    fast = _parse_canonical_date(value)
    assert fast is not None
    assert fast == email.utils.parsedate_to_datetime(value) == parse_date(value)
    assert fast.utcoffset() == email.utils.parsedate_to_datetime(value).utcoffset()
