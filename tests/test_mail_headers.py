"""Header building (``schwarz.mailqueue.headers``): checked against the stdlib's email parser."""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import quopri
import re
import time
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schwarz.mailqueue.headers import (
    HeaderValueError,
    body_transfer_encoding,
    build_text_message,
    check_header_text,
    domain_of,
    encode_header_text,
    ensure_header_separator,
    format_address,
    format_address_list,
    format_date,
    make_message_id,
    prepend_header,
)

from _hyp import examples

header_text = st.text(st.characters(blacklist_categories=('Cs', 'Cc')), max_size=300)


def decode(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value.replace('\r\n', ''))))


def test_format_date_is_rfc5322_and_exact() -> None:
    stamp = 1_700_000_000.0
    text = format_date(stamp)
    assert re.fullmatch(r'(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) '
                        r'\d{4} \d\d:\d\d:\d\d [+-]\d{4}', text)
    assert email.utils.parsedate_to_datetime(text).timestamp() == stamp
    assert abs(email.utils.parsedate_to_datetime(format_date()).timestamp() - time.time()) < 5


def test_message_ids_are_unique_and_well_formed() -> None:
    ids = {make_message_id('site.example') for _ in range(1000)}
    assert len(ids) == 1000
    for msgid in ids:
        assert re.fullmatch(r'<[0-9a-f]+\.[0-9a-f]{24}@site\.example>', msgid)
    with pytest.raises(ValueError):
        make_message_id('bad domain')
    assert (domain_of('a@Site.Example'), domain_of('root'), domain_of('')) == ('Site.Example', None, None)


@settings(max_examples=examples(300), deadline=None)
@given(header_text, st.integers(min_value=0, max_value=20))
def test_encoded_header_text_round_trips_and_respects_line_limits(text: str, name_length: int) -> None:
    encoded = encode_header_text(text, name_length=name_length)
    assert encoded.isascii()
    lines = encoded.split('\r\n')
    for index, line in enumerate(lines):
        width = len(line) + (name_length if index == 0 else 0)
        if '=?' in encoded:
            assert width <= 76, (index, line)
        if index:
            assert line.startswith(' ')
    if '=?' in encoded:
        assert decode(encoded) == text
    else:
        assert encoded.replace('\r\n ', ' ') == text


def test_plain_ascii_subject_stays_readable_and_is_folded_at_spaces() -> None:
    assert encode_header_text('Cron <root@host> backup', name_length=9) == 'Cron <root@host> backup'
    long = ' '.join(['word'] * 30)
    folded = encode_header_text(long, name_length=9)
    assert all(len(line) <= 78 for line in ('Subject: ' + folded).split('\r\n'))
    assert folded.replace('\r\n ', ' ') == long
    # text that looks like an encoded word must not be read as one
    assert decode(encode_header_text('=?utf-8?q?x?=')) == '=?utf-8?q?x?='


@pytest.mark.parametrize('bad', ['a\nb', 'a\rb', 'a\r\nBcc: x@y', 'a\x00b'])
def test_line_breaks_are_header_injection(bad: str) -> None:
    with pytest.raises(HeaderValueError):
        check_header_text('subject', bad)
    with pytest.raises(HeaderValueError):
        encode_header_text(bad)
    with pytest.raises(HeaderValueError):
        format_address(bad, 'a@b.example')
    with pytest.raises(HeaderValueError):
        format_address(None, bad)
    with pytest.raises(HeaderValueError):
        prepend_header(b'x', 'Subject', bad)


@pytest.mark.parametrize('name, expected', [
    ('Cron Daemon', 'Cron Daemon <a@b.example>'),
    ('Doe, John', '"Doe, John" <a@b.example>'),
    ('say "hi"', '"say \\"hi\\"" <a@b.example>'),
    ('', 'a@b.example'),
])
def test_format_address_quotes_as_needed(name: str, expected: str) -> None:
    assert format_address(name, 'a@b.example') == expected
    assert email.utils.parseaddr(expected) == (name, 'a@b.example')


def test_format_address_encodes_non_ascii_names() -> None:
    value = format_address('Jörg Müller – Überwachung der Großrechner im Rechenzentrum', 'jm@site.example',
                           name_length=6)
    assert value.isascii()
    assert all(len(line) <= 76 for line in ('From: ' + value).split('\r\n'))
    name = 'Jörg Müller – Überwachung der Großrechner im Rechenzentrum'
    phrase, _, address = value.replace('\r\n', '').rpartition(' ')
    # RFC 2047 6.2: white space between encoded words is not part of the text
    assert (decode(phrase), address) == (name, '<jm@site.example>')
    # Python's parser keeps that white space in phrases; words are split after spaces of the text so
    # that such readers only see a doubled space, never one inside a word
    msg = BytesParser(policy=email.policy.default).parsebytes(f'From: {value}\r\n\r\n'.encode())
    assert msg['From'].addresses[0].display_name.split() == name.split()
    assert msg['From'].addresses[0].addr_spec == 'jm@site.example'


def test_address_list_folds_after_commas() -> None:
    addresses = [f'user{i}@example.org' for i in range(12)]
    value = format_address_list(addresses, name_length=4)
    assert all(len(line) <= 78 for line in ('To: ' + value).split('\r\n'))
    assert [a for _, a in email.utils.getaddresses([value.replace('\r\n', '')])] == addresses


def test_prepend_header_keeps_the_messages_line_endings() -> None:
    assert prepend_header(b'Subject: x\n\nbody\n', 'Date', 'now') == b'Date: now\nSubject: x\n\nbody\n'
    assert prepend_header(b'Subject: x\r\n\r\n', 'To', 'a@x,\r\n b@y') == b'To: a@x,\r\n b@y\r\nSubject: x\r\n\r\n'
    assert prepend_header(b'Subject: x\n\n', 'To', 'a@x,\r\n b@y') == b'To: a@x,\n b@y\nSubject: x\n\n'
    assert prepend_header(b'', 'Date', 'now') == b'Date: now\r\n'


@pytest.mark.parametrize('data, header_end, expected', [
    (b'To: a\nSubject: b\n\nbody\n', 16, b'To: a\nSubject: b\n\nbody\n'),
    (b'To: a\nbroken\nBcc: c\n', 6, b'To: a\n\nbroken\nBcc: c\n'),
    (b'just text\r\nBcc: c\r\n', 0, b'\r\njust text\r\nBcc: c\r\n'),
    (b'To: a\nSubject: b\n', 16, b'To: a\nSubject: b\n'),
    (b'', 0, b''),
])
def test_ensure_header_separator(data: bytes, header_end: int, expected: bytes) -> None:
    assert ensure_header_separator(data, header_end) == expected


@pytest.mark.parametrize('body, charset, cte', [
    (b'plain text\n', 'utf-8', '7bit'),
    ('Grüße\n'.encode(), 'utf-8', '8bit'),
    (b'', 'utf-8', '7bit'),
    (b'caf\xe9\n', 'unknown-8bit', '8bit'),
    (b'x' * 999 + b'\n', 'utf-8', 'quoted-printable'),
    (b'nul \x00 byte\n', 'utf-8', 'quoted-printable'),
    (b'bare\rcr\n', 'utf-8', 'quoted-printable'),
])
def test_body_transfer_encoding(body: bytes, charset: str, cte: str) -> None:
    got_charset, got_cte, encoded = body_transfer_encoding(body)
    assert (got_charset, got_cte) == (charset, cte)
    if cte == 'quoted-printable':
        assert max(len(line) for line in encoded.split(b'\r\n')) <= 76
        assert quopri.decodestring(encoded) == body.replace(b'\n', b'\r\n')
    else:
        assert encoded == body


def test_build_text_message_parses_cleanly() -> None:
    raw = build_text_message(from_addr='me@site.example', from_name='Mé', to=['a@example.org', 'b@example.org'],
                             cc=['c@example.org'], subject='Ünïcödé ✓', body='Zeile ä\n'.encode())
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert msg.defects == []
    assert str(msg['Subject']) == 'Ünïcödé ✓'
    assert msg['From'].addresses[0].display_name == 'Mé'
    assert [a.addr_spec for a in msg['To'].addresses] == ['a@example.org', 'b@example.org']
    assert msg['Cc'] == 'c@example.org'
    assert msg.get_content_type() == 'text/plain'
    assert msg.get_content_charset() == 'utf-8'
    assert msg.get_content() == 'Zeile ä\r\n'
    assert msg['Message-ID'].endswith('@site.example>')
    assert b'\r\n' in raw and b'\n' not in raw.replace(b'\r\n', b'')
