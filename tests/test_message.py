from __future__ import annotations

import pytest

from schwarz.mailqueue.message import (
    InvalidAddressError,
    dot_stuff,
    extract_recipients,
    get_header,
    normalize_line_endings,
    remove_headers,
    split_header_block,
    validate_address,
)


def test_normalize_turns_every_line_break_into_crlf() -> None:
    assert normalize_line_endings(b'a\nb\rc\r\nd') == b'a\r\nb\r\nc\r\nd'
    assert normalize_line_endings(b'\r\r\n\n') == b'\r\n\r\n\r\n'


def test_dot_stuffing_and_final_crlf() -> None:
    assert dot_stuff(b'.start\r\nmid\r\n.\r\n..x') == b'..start\r\nmid\r\n..\r\n...x\r\n'
    assert dot_stuff(b'') == b''


def test_header_block_ends_at_first_non_header_line() -> None:
    data = b'Subject: s\nnot a header line\nBcc: hidden@example.org\n\nbody'
    headers, body = split_header_block(data)
    assert headers == b'Subject: s\n'
    assert body.startswith(b'not a header line')
    assert get_header(data, 'Bcc') == []


def test_remove_headers_keeps_other_bytes_identical() -> None:
    data = b'To: a@x\r\nBcc: b@x,\r\n c@x\r\nSubject:  folded\r\n  more\r\n\r\nBcc: body@x\r\n'
    assert remove_headers(data, ['bcc']) == b'To: a@x\r\nSubject:  folded\r\n  more\r\n\r\nBcc: body@x\r\n'


def test_extract_recipients_from_to_cc_bcc() -> None:
    data = b'To: A <a@x>, b@x\nCc: c@x\nBcc: d@x, a@x\nSubject: hi\n\nbody'
    assert extract_recipients(data) == ['a@x', 'b@x', 'c@x', 'd@x']


@pytest.mark.parametrize('address', ['a@x\r\nRCPT TO:<evil@x>', '-oQ/tmp@x', 'a b@x', '<a@x>', ''])
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        validate_address(address)


def test_empty_sender_allowed_when_asked() -> None:
    assert validate_address('', allow_empty=True) == ''


@pytest.mark.parametrize('value,expected', [
    ('A <a@x>, b@x', ['a@x', 'b@x']),
    ('"Smith, John" <j@x>', ['j@x']),
    ('a@x (a comment)', ['a@x']),
    ('undisclosed-recipients:;', []),
    ('team: a@x, b@y;', ['a@x', 'b@y']),
    ('root', ['root']),
])
def test_address_lists(value: str, expected: list) -> None:
    from schwarz.mailqueue.message import parse_address_list
    assert parse_address_list(value) == expected


@pytest.mark.parametrize('value', ['John Smith', 'foo@bar.example baz', 'a@example.com (comment) extra',
                                   'a@example.com b@example.com', 'a@', '<>', 'A <a@x'])
def test_malformed_address_lists_are_refused_not_guessed(value: str) -> None:
    from schwarz.mailqueue.message import parse_address_list
    with pytest.raises(InvalidAddressError):
        parse_address_list(value)
