"""The one address parser (``schwarz.mailqueue.addresses``) and every entry point that uses it.

Budgets of the property tests come from ``_hyp.examples`` (``HYPOTHESIS_MAX_EXAMPLES``, or
``HYPOTHESIS_PROFILE=long`` for a longer run by hand).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _addr import ATEXT, addresses, local_names
from schwarz.mailqueue import DebugMailer, MessageHandler, enqueue_message, send_all_queued_messages
from schwarz.mailqueue.addresses import (
    Address,
    InvalidAddressError,
    parse_address,
    parse_address_list,
    parse_mailbox,
    parse_mailboxes,
    parse_smtp_path,
)
from schwarz.mailqueue.aliases import AliasesError, resolve_recipients
from schwarz.mailqueue.message import validate_address
from schwarz.mailqueue.queue.format import QueueFileError, parse_queue_bytes
from test_cli_helpers import write_config

from _hyp import examples

# --- tables ---------------------------------------------------------------------------------

VALID = [
    # text, local part, domain, needs SMTPUTF8
    ('a@x', 'a', 'x', False),
    ('first.last@example.org', 'first.last', 'example.org', False),
    ("!#$%&'*+/=?^_`{|}~-@example.org", "!#$%&'*+/=?^_`{|}~-", 'example.org', False),
    ('"john smith"@example.org', '"john smith"', 'example.org', False),
    ('"a@b"@example.org', '"a@b"', 'example.org', False),
    ('"a\\"b"@example.org', '"a\\"b"', 'example.org', False),
    ('"a>b"@example.org', '"a>b"', 'example.org', False),
    ('""@example.org', '""', 'example.org', False),
    ('"-oQ/tmp"@example.org', '"-oQ/tmp"', 'example.org', False),
    ('a@[192.0.2.1]', 'a', '[192.0.2.1]', False),
    ('a@[IPv6:2001:db8::1]', 'a', '[IPv6:2001:db8::1]', False),
    ('a@[ipv6:::ffff:192.0.2.1]', 'a', '[ipv6:::ffff:192.0.2.1]', False),
    ('a@xn--bcher-kva.example', 'a', 'xn--bcher-kva.example', False),
    ('jörg@bücher.example', 'jörg', 'bücher.example', True),
    ('用户@例子.广告', '用户', '例子.广告', True),
    ('"jö rg"@example.org', '"jö rg"', 'example.org', True),
    ('a' * 64 + '@example.org', 'a' * 64, 'example.org', False),
    ('a@' + 'b' * 63 + '.example', 'a', 'b' * 63 + '.example', False),
]

INVALID = [
    # text, fragment of the reason
    ('', 'empty address'),
    ('bob"@partner.example', 'double quote'),
    ('"bob@partner.example', 'quoted'),
    ('"bob"x@partner.example', 'quoted local part'),
    ('a@b@c', 'more than one "@"'),
    ('a@', 'domain'),
    ('@', 'empty'),
    ('@example.org', 'local part'),
    ('a@b..c', 'empty label'),
    ('a@.b', 'empty label'),
    ('a@b.', 'empty label'),
    ('a..b@x', 'empty part'),
    ('.a@x', 'empty part'),
    ('a.@x', 'empty part'),
    ('a@[1.2.3.4', 'closing "]"'),
    ('a@[1.2.3.256]', 'not an IPv4 address'),
    ('a@[01.2.3.4]', 'not an IPv4 address'),
    ('a@[2001:db8::1]', 'IPv6'),
    ('a@[IPv6:2001:db8::g]', 'not an IPv6 address'),
    ('a@[IPv6:fe80::1%eth0]', 'zone'),
    ('a@[x-tag:stuff]', 'unsupported address literal'),
    ('a@[]', 'closing'),
    ('a\t@example.org', 'TAB'),
    ('a@exa\tmple.org', 'TAB'),
    ('a@example.org\r\nRCPT TO:<evil@example.org>', 'line break'),
    ('a@example.org\r', 'line break'),
    ('a@example.org\n', 'line break'),
    ('a\x00@example.org', 'NUL'),
    ('a\x7f@example.org', 'control character'),
    ('a\x85@example.org', 'U+0085'),
    ('"a\x01"@example.org', 'control character'),
    ('a\udcff@example.org', 'UTF-8'),
    ('a b@example.org', 'white space'),
    ('a@example.org> NOTIFY=NEVER', 'not allowed in a domain'),
    ('<a@example.org>', 'angle brackets'),
    ('<>', 'angle brackets'),
    ('a,b@example.org', "','"),
    ('"a,b"@example.org', 'comma'),
    ('"a\\,b"@example.org', 'comma'),
    ('-oQ/tmp@example.org', 'starts with "-"'),
    ('a@-example.org', 'starts or ends with "-"'),
    ('a@example-.org', 'starts or ends with "-"'),
    ('a@exa_mple.org', "'_'"),
    ('a@example.org ', 'not allowed in a domain'),
    (' a@example.org', 'white space'),
    ('a\u00a0b@example.org', 'U+00A0'),
    ('a\u202eb@example.org', 'U+202E'),
    ('a@exa\u200bmple.org', 'U+200B'),
    ('"a\\é"@example.org', 'backslash'),
    ('root', 'local name is not accepted'),
    ('a' * 65 + '@example.org', 'longer than 64'),
    ('a@' + 'b' * 64 + '.example', 'longer than 63'),
    ('a@' + '.'.join(['b' * 60] * 5), 'longer than 255'),
    ('a' * 60 + '@' + '.'.join(['b' * 60] * 3) + '.bbbbbbbbbbbb', 'longer than 254'),
]


@pytest.mark.parametrize('text,local,domain,utf8', VALID)
def test_valid_addresses_keep_their_parts_exactly(text: str, local: str, domain: str, utf8: bool) -> None:
    address = parse_address(text)
    assert address == Address(local, domain)
    assert str(address) == text
    assert address.needs_smtputf8 is utf8
    assert validate_address(text) == text
    assert parse_address_list(text) == [address]
    assert parse_smtp_path(f'<{text}>') == (address, '')


@pytest.mark.parametrize('text,fragment', INVALID)
def test_invalid_addresses_are_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidAddressError) as excinfo:
        parse_address(text)
    assert fragment in str(excinfo.value)
    assert str(excinfo.value).startswith('malformed address')
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(InvalidAddressError):
        validate_address(text)


def test_null_sender_and_local_names_only_where_allowed() -> None:
    assert parse_address('', allow_null=True) == Address('', '')
    assert parse_address('', allow_null=True).is_null
    root = parse_address('root', allow_local=True)
    assert root == Address('root', '') and root.is_local_name and str(root) == 'root'
    assert parse_address('www-data', allow_local=True) == Address('www-data', '')
    assert parse_address('first.last', allow_local=True) == Address('first.last', '')
    for bad in ('"quoted name"', 'bob"', '-oi', 'a..b', 'a b', 'a\tb'):
        with pytest.raises(InvalidAddressError):
            parse_address(bad, allow_local=True)
    with pytest.raises(InvalidAddressError):
        parse_address('root')
    with pytest.raises(InvalidAddressError):
        validate_address('root')
    assert validate_address('root', allow_local=True) == 'root'
    assert validate_address('', allow_empty=True) == ''


# --- header syntax ----------------------------------------------------------------------------

HEADER_LISTS = [
    ('A <a@x>, b@x', [('A', 'a@x'), (None, 'b@x')]),
    ('a@x, b@y', [(None, 'a@x'), (None, 'b@y')]),
    ('"Smith, John" <j@x>', [('Smith, John', 'j@x')]),
    ('"Smith \\"JJ\\" John" <j@x>', [('Smith "JJ" John', 'j@x')]),
    ('John Q. Public <jqp@example.org>', [('John Q. Public', 'jqp@example.org')]),
    ('=?utf-8?q?J=C3=B6rg?= <j@x>', [('=?utf-8?q?J=C3=B6rg?=', 'j@x')]),
    ('Jörg Müller <jörg@bücher.example>', [('Jörg Müller', 'jörg@bücher.example')]),
    ('a@x (a comment)', [(None, 'a@x')]),
    ('(comment (nested)) a@x', [(None, 'a@x')]),
    ('Name (c) <a@x> (c)', [('Name', 'a@x')]),
    ('< a@x >', [(None, 'a@x')]),
    ('<@relay.example,@other.example:a@x>', [(None, 'a@x')]),
    ('"john smith"@example.org', [(None, '"john smith"@example.org')]),
    ('Quoted <"a,b c"@x>'.replace(',', ''), [('Quoted', '"ab c"@x')]),
    ('undisclosed-recipients:;', []),
    ('undisclosed-recipients:', []),
    ('team: a@x, B <b@y>;, c@z', [(None, 'a@x'), ('B', 'b@y'), (None, 'c@z')]),
    ('a@x,\tb@y', [(None, 'a@x'), (None, 'b@y')]),
    (',, a@x ,', [(None, 'a@x')]),
    ('', []),
    ('a@[192.0.2.1]', [(None, 'a@[192.0.2.1]')]),
]

BAD_HEADER_LISTS = [
    'John Smith', 'foo@bar.example baz', 'a@example.com (comment) extra', 'a@example.com b@example.com',
    'a@', '<>', 'A <a@x', 'A a@x', 'a@x>', 'a@x; b@y', 'a @x', 'a@ x', 'a(comment)@x', 'bob"@partner.example',
    'a@b@c', '@', '@example.org', 'a@b..c', 'a@[1.2.3.4', '"unterminated <a@x>', 'a@x (unterminated',
    'mailto:bob@x', 'g1: g2: a@x;;', '<a@x> <b@y>', 'a@x\r\nBcc: evil@x', 'a@x\x00', 'root', 'Admin <root>',
]


@pytest.mark.parametrize('value,expected', HEADER_LISTS)
def test_header_address_lists(value: str, expected: List[Tuple[Optional[str], str]]) -> None:
    assert [(m.display_name, str(m.address)) for m in parse_mailboxes(value)] == expected


@pytest.mark.parametrize('value', BAD_HEADER_LISTS)
def test_malformed_header_lists_are_refused_not_guessed(value: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_address_list(value)


def test_local_names_in_header_lists_only_when_allowed() -> None:
    assert [str(a) for a in parse_address_list('root, Admin <postmaster>, a@x', allow_local=True)] == [
        'root', 'postmaster', 'a@x']
    assert parse_address_list('team: root;', allow_local=True) == [Address('root', '')]
    for bad in ('John Smith', 'bob"', '"quoted name"', 'root>', 'a b'):
        with pytest.raises(InvalidAddressError):
            parse_address_list(bad, allow_local=True)


def test_parse_mailbox_wants_exactly_one() -> None:
    assert parse_mailbox('Me <me@site.example>') == ('Me', Address('me', 'site.example'))
    assert parse_mailbox('a@b.example') == (None, Address('a', 'b.example'))
    assert parse_mailbox('"Doe, John" <a@b.example>') == ('Doe, John', Address('a', 'b.example'))
    for bad in ('', 'a@x, b@x', 'group:;'):
        with pytest.raises(InvalidAddressError):
            parse_mailbox(bad)


# --- SMTP paths (sendmail -bs) ------------------------------------------------------------------


@pytest.mark.parametrize('argument,expected', [
    ('<a@x>', ('a@x', '')),
    ('<a@x> SIZE=100 BODY=8BITMIME', ('a@x', 'SIZE=100 BODY=8BITMIME')),
    (' <a@x>', ('a@x', '')),
    ('a@x', ('a@x', '')),
    ('<"a>b c"@x>', ('"a>b c"@x', '')),
    ('<@relay.example,@r2.example:a@x>', ('a@x', '')),
    ('<>', ('', '')),
    ('<Postmaster>', ('Postmaster', '')),
])
def test_smtp_paths(argument: str, expected: Tuple[str, str]) -> None:
    address, params = parse_smtp_path(argument, allow_null=True, allow_local=True)
    assert (str(address), params) == expected


@pytest.mark.parametrize('argument', ['<a@x', '<a@x>SIZE=1', '<a b@x>', '<a@x> \r\nRCPT TO:<b@y>', '<@relay a@x>',
                                      '<a@x>> NOTIFY=NEVER', '<<a@x>>', '', '<"a@x>'])
def test_bad_smtp_paths(argument: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_smtp_path(argument, allow_null=True, allow_local=True)


def test_null_path_only_where_allowed() -> None:
    with pytest.raises(InvalidAddressError):
        parse_smtp_path('<>')


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=examples(500), deadline=None)
@given(address=addresses, name=st.text(st.sampled_from(ATEXT + ' .'), max_size=20))
@example(address=Address('"a\\"b"', 'x'), name='')
@example(address=Address('a', '[IPv6:::]'), name='x')
def test_valid_addresses_round_trip_in_every_syntax(address: Address, name: str) -> None:
    text = str(address)
    assert parse_address(text) == address
    assert address.needs_smtputf8 == (not text.isascii())
    assert parse_smtp_path(f'<{text}> SIZE=1') == (address, 'SIZE=1')
    assert parse_address_list(text) == [address]
    assert parse_address_list(f' {text} (comment), <{text}>,{text}') == [address] * 3
    quoted_name = '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'
    assert parse_mailbox(f'{quoted_name} <{text}>') == (name or None, address)
    assert parse_address_list(f'group: {quoted_name} <{text}>, {text};') == [address] * 2


_CONTROLS = [chr(c) for c in range(0x20)] + ['\x7f'] + [chr(c) for c in range(0x80, 0xA0)]


def _mutations(address: Address) -> List[str]:
    """Texts made from a valid address that no parser may accept, each for its own reason."""
    local, domain = address
    text = str(address)
    bad = [
        f'{text}@{domain}',                          # a second "@"
        f'{local}@@{domain}',
        f'{local}@',                                 # no domain
        f'@{domain}',                                # no local part
        f'{local}@{domain}>',                        # a stray bracket
        f'<{text}',
        f'{text} NOTIFY=NEVER',
        f'-{text}',                                  # looks like an option
        f'{local}@{"x" * 64}.{domain}' if not domain.startswith('[') else f'{local}@[{domain}',
    ]
    if domain.startswith('['):
        bad += [f'{local}@{domain[:-1]}', f'{local}@{domain}]', f'{local}@{domain[1:]}', f'{local}@[{domain}']
    else:
        bad += [f'{local}@{domain}.', f'{local}@.{domain}', f'{local}@{domain}..x', f'{local}@{domain}_x']
    if local.startswith('"'):
        bad += [f'{local[:-1]}@{domain}', f'x{local}@{domain}', f'{local}x@{domain}', f'"{local}@{domain}']
    else:
        bad += [f'{local}"@{domain}', f'.{local}@{domain}', f'{local}.@{domain}', f'{local} x@{domain}',
                f'{local}..x@{domain}', f'{"x" * 65}.{local}@{domain}']
    return bad


@settings(max_examples=examples(300), deadline=None)
@given(address=addresses, data=st.data())
def test_everything_else_is_refused(address: Address, data: st.DataObject) -> None:
    for text in _mutations(address):
        with pytest.raises(InvalidAddressError):
            parse_address(text)
    # a control character anywhere, also in a header list or an SMTP path
    text = str(address)
    position = data.draw(st.integers(0, len(text)), label='position')
    control = data.draw(st.sampled_from(_CONTROLS), label='control')
    broken = text[:position] + control + text[position:]
    with pytest.raises(InvalidAddressError):
        parse_address(broken)
    with pytest.raises(InvalidAddressError):
        parse_smtp_path(f'<{broken}>')
    if control != '\t' or 0 < position < len(text):
        # (a TAB around an address in a header is folding white space)
        with pytest.raises(InvalidAddressError):
            parse_address_list(broken)


# An oracle written from the RFC 5321 ABNF, independent of the parser: for short texts over an
# alphabet of the characters that matter, the parser accepts exactly what the oracle accepts.
_O_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-é]"
_O_DOT_STRING = rf'{_O_ATEXT}+(?:\.{_O_ATEXT}+)*'
_O_QUOTED = r'"(?:[\x20\x21\x23-\x2b\x2d-\x5b\x5d-\x7eé]|\\[\x20-\x2b\x2d-\x7e])*"'  # no comma: our rule
_O_LABEL = r'[A-Za-z0-9é](?:[A-Za-z0-9\-é]*[A-Za-z0-9é])?'
_O_MAILBOX = re.compile(rf'(?:{_O_DOT_STRING}|{_O_QUOTED})@(?:{_O_LABEL}(?:\.{_O_LABEL})*|\[[^\[\]\\]*\])')


def _oracle(text: str) -> bool:
    if not _O_MAILBOX.fullmatch(text) or text.startswith('-'):
        return False
    local, _, domain = text.rpartition('@')
    if len(local.encode()) > 64 or len(domain.encode()) > 255 or len(text.encode()) > 254:
        return False
    if domain.startswith('['):
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == 'ipv6:':
                return '%' not in literal and ipaddress.ip_address(literal[5:]).version == 6
            return ipaddress.ip_address(literal).version == 4
        except ValueError:
            return False
    return all(len(label.encode()) <= 63 for label in domain.split('.'))


_soup = st.lists(st.sampled_from([
    'a', 'Z', '0', '9', '.', '..', '@', '@', '"', '\\', ' ', '-', ',', '[', ']', ':', 'é', '\t', '\r', '\n', '\x00',
    '(', ')', '<', '>', '!', '~', '1.2.3.4', 'IPv6:', '::1', 'x.example', 'bob', '"a b"', '\\"', '\x85', '_',
]), max_size=12).map(''.join)


@settings(max_examples=examples(1000), deadline=None)
@given(text=_soup)
@example(text='bob"@x.example')
@example(text='"a b"@[1.2.3.4]')
@example(text='a@[IPv6:::1]')
@example(text='"\\,"@a')
def test_parser_accepts_exactly_what_the_rfc_grammar_does(text: str) -> None:
    try:
        parse_address(text)
        accepted = True
    except InvalidAddressError:
        accepted = False
    assert accepted == _oracle(text), text


# --- aliases ---------------------------------------------------------------------------------------


def test_alias_targets_and_qualified_names_follow_the_same_rules() -> None:
    aliases = {'root': ['admin@example.org', '"john smith"@example.org'], 'bad': ['bob"@partner.example'],
               'double': ['a@b@c'], 'spaced': ['"a b"'], 'tab': ['a\t@example.org']}
    assert resolve_recipients(['root', 'www-data'], aliases, default_domain='example.net') == [
        'admin@example.org', '"john smith"@example.org', 'www-data@example.net']
    for name in ('bad', 'double', 'spaced', 'tab'):
        with pytest.raises(AliasesError) as excinfo:
            resolve_recipients([name], aliases, default_domain='example.net')
        assert f"via alias '{name}'" in str(excinfo.value)
    with pytest.raises(AliasesError):
        resolve_recipients(['x' * 65], {}, default_domain='example.net')
    # a valid address from the caller is an address even when it starts like a pipe or a file;
    # in an aliases file such a target stays a pipe (never run: we only relay)
    assert resolve_recipients(['|x@example.org', '/y@example.org', 'root'], aliases) == [
        '|x@example.org', '/y@example.org', 'admin@example.org', '"john smith"@example.org']
    with pytest.raises(AliasesError, match='pipe'):
        resolve_recipients(['pipe'], {'pipe': ['|x@example.org']})
    with pytest.raises(ValueError):
        resolve_recipients(['root'], aliases, default_domain='exa mple.net')
    with pytest.raises(ValueError):
        resolve_recipients(['root'], aliases, default_domain='example..net')


# --- the Python API and the queue -------------------------------------------------------------


@pytest.mark.parametrize('sender,recipients', [
    ('bad address@example.org', ['a@example.org']),
    ('a@example.org', ['bob"@partner.example']),
    ('a@example.org', ['root']),
    ('a@example.org', ['a@example.org\r\nRCPT TO:<evil@example.org>']),
    ('<a@example.org>', ['a@example.org']),
])
def test_api_refuses_bad_envelopes_before_sending(sender: str, recipients: List[str], tmp_path: Path) -> None:
    mailer = DebugMailer()
    with pytest.raises(InvalidAddressError):
        MessageHandler([mailer]).send_message(b'Subject: x\r\n\r\nbody', sender=sender, recipients=recipients)
    with pytest.raises(ValueError):
        enqueue_message(b'Subject: x\r\n\r\nbody', str(tmp_path / 'queue'), sender, recipients)
    assert mailer.sent_mails == []
    assert not list((tmp_path / 'queue').glob('*/*'))


def test_api_keeps_quoted_and_non_ascii_addresses_as_given() -> None:
    mailer = DebugMailer()
    recipients = ['"john smith"@example.org', 'jörg@bücher.example', 'a@[192.0.2.1]']
    result = MessageHandler([mailer]).send_message(b'Subject: x\r\n\r\nbody', sender='', recipients=recipients)
    assert result
    assert mailer.sent_mails == [('', recipients, b'Subject: x\r\n\r\nbody')]


QUEUE_FILE = (b'Return-path: <%s>\r\nEnvelope-to: %s\r\nX-Queue-Date: Wed, 05 Jun 2019 14:10:32 +0200\r\n'
              b'X-Queue-Meta-End: end\r\nSubject: x\r\n\r\nbody\r\n')


@pytest.mark.parametrize('sender,recipients,fragment', [
    (b'a@example.org', b'b@example.org\rRCPT TO:<evil@example.org>', 'line break'),
    (b'a@example.org', b'b@example.org> NOTIFY=NEVER', 'not allowed in a domain'),
    (b'a@example.org', b'b@example.org,root', 'local name'),
    (b'a@example.org', b'b@\xff.example', 'not UTF-8'),
    (b'a@example.org\x00', b'b@example.org', 'NUL'),
    (b'a@b@example.org', b'b@example.org', 'more than one'),
])
def test_queue_files_with_bad_envelopes_go_to_failed_with_the_reason(
        sender: bytes, recipients: bytes, fragment: str, tmp_path: Path) -> None:
    data = QUEUE_FILE % (sender, recipients)
    with pytest.raises(QueueFileError) as excinfo:
        parse_queue_bytes(data)
    assert fragment in str(excinfo.value)

    queue_dir = tmp_path / 'queue'
    enqueue_message(b'Subject: ok\r\n\r\nbody\r\n', str(queue_dir), 'a@example.org', ['ok@example.org'])
    (queue_dir / 'new' / 'corrupt-1').write_bytes(data)
    mailer = DebugMailer()
    send_all_queued_messages(str(queue_dir), mailer=mailer)
    # the good message went out, the bad one to nobody
    assert [rcpts for _, rcpts, _ in mailer.sent_mails] == [['ok@example.org']]
    assert os.listdir(queue_dir / 'new') == [] and os.listdir(queue_dir / 'cur') == []
    [failed] = os.listdir(queue_dir / 'failed')
    assert failed == 'corrupt-1'
    meta, rest = parse_queue_bytes((queue_dir / 'failed' / failed).read_bytes())
    assert meta.failed_reason is not None and fragment in meta.failed_reason
    assert rest == data  # the original is kept for inspection


def test_queue_files_of_version_1_still_read(tmp_path: Path) -> None:
    meta, _ = parse_queue_bytes(QUEUE_FILE % (b'foo@site.example', b'bar@site.example, baz@site.example,'))
    assert (meta.from_addr, meta.to_addrs) == ('foo@site.example', ['bar@site.example', 'baz@site.example'])
    meta, _ = parse_queue_bytes(QUEUE_FILE % (b'', '"a b"@x.example,jörg@bücher.example'.encode()))
    assert (meta.from_addr, meta.to_addrs) == ('', ['"a b"@x.example', 'jörg@bücher.example'])


# --- mq-sendmail argument vectors, in process ------------------------------------------------------

ALIAS_TARGETS = {'root': ['admin@example.org'], 'postmaster': ['admin@example.org'],
                 'team': ['alice@example.org', 'bob@example.org']}
DEFAULT_DOMAIN = 'example.net'
BAD_ARGS = ['bob"@partner.example', 'a@b@c', 'a@', '@', '@example.org', 'a@b..c', 'a@[1.2.3.4', 'al\tice@example.org',
            'alice@example.org\t', 'a@x\r\nRCPT TO:<evil@example.org>', 'John Smith', 'a@example.org b@example.org',
            'A <a@x', '"quoted name"', '-oQ/tmp@example.org', 'a@x; b@y', '"a,b"@example.org', 'bad\x00@x']


@pytest.fixture(scope='module')
def sendmail_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp('sendmail-fuzz')
    # the SMTP settings are never used: the transport chain is replaced by a DebugMailer
    yield str(write_config(directory, default_domain=DEFAULT_DOMAIN))


def run_sendmail(argv: Sequence[str], config: str,
                 message: bytes = b'Subject: x\n\nbody\n') -> Tuple[int, List[Tuple[str, List[str], bytes]]]:
    """``mq-sendmail -C config argv...`` in this process, with a ``DebugMailer`` as the transport."""
    from schwarz.mailqueue.cli import mq_sendmail

    mailer = DebugMailer()
    stdin = io.TextIOWrapper(io.BytesIO(message))
    with mock.patch('schwarz.mailqueue.submit.build_transports', return_value=[mailer]), \
            mock.patch.object(sys, 'stdin', stdin), mock.patch.object(sys, 'stderr', io.StringIO()), \
            mock.patch.dict(os.environ, {'LOGNAME': 'tester'}):
        code = mq_sendmail.main(['-C', config, *argv])
    return code, mailer.sent_mails


def _key(address: str) -> str:
    local, _, domain = address.rpartition('@')
    return f'{local}@{domain.lower()}'


def _dedupe(addresses: Sequence[str]) -> List[str]:
    seen = set()
    result = []
    for address in addresses:
        if _key(address) not in seen:
            seen.add(_key(address))
            result.append(address)
    return result


_plain = addresses.filter(lambda a: a.domain.isascii() and a.local_part.isascii()).map(str)
# (argument, the recipients it stands for): built from the grammar, never by the parser under test
_good_args = st.one_of(
    _plain.map(lambda a: (a, [a])),
    _plain.map(lambda a: (f'Some Name <{a}>', [a])),
    st.tuples(_plain, _plain).map(lambda p: (f'{p[0]}, "Name, Two" <{p[1]}>', list(p))),
    st.sampled_from(sorted(ALIAS_TARGETS)).map(lambda n: (n, ALIAS_TARGETS[n])),
    # (a name starting with "/" or "|" means a file or a pipe to sendmail: refused as such, 78)
    local_names.filter(lambda n: n.isascii() and n.lower() not in ALIAS_TARGETS and n[0] not in '/|').map(
        lambda n: (n, [f'{n}@{DEFAULT_DOMAIN}'])),
)
_options = st.lists(st.sampled_from([['-i'], ['-oi'], ['-odi'], ['-oem'], ['-FCronDaemon'], ['-f', 'me@site.example'],
                                     ['-f', 'root'], ['-B8BITMIME']]), max_size=3)


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(options=_options, good=st.lists(_good_args, min_size=1, max_size=4),
       bad=st.lists(st.sampled_from(BAD_ARGS), max_size=2), data=st.data())
def test_sendmail_sends_exactly_to_the_given_recipients(sendmail_config: str, options: List[List[str]],
                                                         good: List[Tuple[str, List[str]]], bad: List[str],
                                                         data: st.DataObject) -> None:
    args = [arg for arg, _ in good]
    for bad_arg in bad:
        args.insert(data.draw(st.integers(0, len(args)), label='position'), bad_arg)
    argv = [word for option in options for word in option] + ['--'] + args
    code, sent = run_sendmail(argv, sendmail_config)
    if bad:
        assert (code, sent) == (64, [])
        return
    assert code == 0
    [(_, recipients, _)] = sent
    assert recipients == _dedupe([r for _, expected in good for r in expected])


# A recipient that appears in an argument as a whole: not glued to a quote, "@" or other text
# (a comment may stand right before or after it).
def _given_in(address: str, args: Sequence[str]) -> bool:
    pattern = re.compile(r'(?:^|[\s,<:;)])' + re.escape(address) + r'(?:$|[\s,>;(])')
    return any(pattern.search(arg) for arg in args)


def _derived_from_local_name(recipient: str, args: Sequence[str]) -> bool:
    for name, targets in ALIAS_TARGETS.items():
        if recipient in targets and any(_given_in(spelling, args) for spelling in (name, name.upper())):
            return True
    local, _, domain = recipient.rpartition('@')
    return domain == DEFAULT_DOMAIN and _given_in(local, args)


_arg_soup = st.lists(st.sampled_from([
    'alice', 'root', 'team', '@', 'example.org', 'partner.example', '.', '..', '"', ',', ' ', '<', '>', '\t', '(', ')',
    ':', ';', '[', ']', '1.2.3.4', '\\', '-', 'é', 'Name ', '\r\n',
]), min_size=1, max_size=10).map(''.join)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(_arg_soup, min_size=1, max_size=3))
@example(args=['bob"@partner.example'])
@example(args=['alice"@partner.example'])
@example(args=['"alice@partner.example"'])
@example(args=['alice@example.org\tbob@example.org'])
@example(args=['()alice'])
def test_fuzzed_sendmail_arguments_never_reach_anyone_not_given(sendmail_config: str, args: List[str]) -> None:
    code, sent = run_sendmail(['--', *args], sendmail_config)
    assert code in (0, 64), code
    if code != 0:
        assert sent == []
        return
    for _, recipients, _ in sent:
        for recipient in recipients:
            assert _given_in(recipient, args) or _derived_from_local_name(recipient, args), (recipient, args)


@pytest.mark.parametrize('sender', ['bob"@partner.example', 'a@b@c', 'a@', '@example.org', 'a\t@x', 'A <a@x'])
def test_sendmail_bad_sender_exits_64_without_sending(sendmail_config: str, sender: str) -> None:
    assert run_sendmail(['-f', sender, 'alice@example.org'], sendmail_config) == (64, [])


@pytest.mark.parametrize('sender,expected', [('<>', ''), ('', ''), ('<me@site.example>', 'me@site.example'),
                                             ('Me <me@site.example>', 'me@site.example'),
                                             ('root', f'root@{DEFAULT_DOMAIN}')])
def test_sendmail_sender_spellings(sendmail_config: str, sender: str, expected: str) -> None:
    code, sent = run_sendmail(['-f', sender, 'alice@example.org'], sendmail_config)
    assert code == 0
    assert sent[0][:2] == (expected, ['alice@example.org'])


@pytest.mark.parametrize('to', [b'bob"@partner.example', b'a@b@c', b'a@', b'@', b'@example.org', b'a@b..c',
                                b'a@[1.2.3.4', b'al\tice@example.org', b'John Smith'])
def test_sendmail_t_refuses_the_same_addresses_in_headers_with_65(sendmail_config: str, to: bytes) -> None:
    message = b'To: ' + to + b'\nSubject: x\n\nbody\n'
    assert run_sendmail(['-t', '-i'], sendmail_config, message) == (65, [])


def test_sendmail_t_resolves_header_local_names_and_keeps_quoted_local_parts(sendmail_config: str) -> None:
    message = b'To: team, "John Smith" <"john smith"@example.org>\nCc: root\nSubject: x\n\nbody\n'
    code, sent = run_sendmail(['-t', '-i'], sendmail_config, message)
    assert code == 0
    assert sent[0][1] == ['alice@example.org', 'bob@example.org', '"john smith"@example.org', 'admin@example.org']
