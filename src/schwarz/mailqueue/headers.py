"""Building header fields and whole text messages: pure functions, no I/O.

Used by the command-line tools to add the headers a caller asked for (Date,
Message-ID, From, To) and by ``mq-mail`` to compose a text/plain message.
Nothing here imports the ``email`` package: ``mq-sendmail`` starts once per
cron mail and every import shows up in its start-up time.
"""

from __future__ import annotations

import os
import re
import time
from typing import List, Optional, Sequence, Tuple

__all__ = [
    'HeaderValueError',
    'not_utf8',
    'body_transfer_encoding',
    'build_text_message',
    'check_header_text',
    'domain_of',
    'encode_header_text',
    'ensure_header_separator',
    'format_address',
    'format_address_list',
    'format_date',
    'make_message_id',
    'prepend_header',
    'qualify_address_text',
]

_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')
_LINE_BREAK = re.compile(rb'\r\n|\r|\n')
# Patterns only some callers need stay strings: re caches them on first use, and mq-sendmail,
# which starts once per cron mail, does not compile what it never uses.
_LINES = rb'\r\n|\n'
# RFC 5322 atext plus the space between words: a display name made of these needs no quotes.
_PLAIN_PHRASE = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]+$"
# RFC 2047 2: a line holding encoded words is at most 76 characters long.
_MAX_ENCODED_LINE = 76
_MAX_LINE = 78
_SMTP_MAX_LINE = 998


class HeaderValueError(ValueError):
    """A header value that would break the header block (line breaks, NUL): header injection."""


def check_header_text(what: str, value: str) -> str:
    """Refuse text that could start a new header line or end the header block, and text that
    came as bytes that are not UTF-8 (an argument in another charset: it cannot be encoded)."""
    if any(ch in value for ch in '\r\n\x00'):
        raise HeaderValueError(f'{what} contains a line break or NUL: {value!r}')
    if not_utf8(value):
        raise HeaderValueError(f'{what} is not valid UTF-8: {ascii(value)}')
    return value


def not_utf8(text: str) -> bool:
    """Does ``text`` hold what ``os.fsdecode`` makes of bytes that are not UTF-8 (lone surrogates)?"""
    return not text.isascii() and any('\ud800' <= ch <= '\udfff' for ch in text)


def format_date(timestamp: Optional[float] = None) -> str:
    """RFC 5322 date in local time with a numeric offset (locale-independent English names)."""
    if timestamp is None:
        timestamp = time.time()
    tm = time.localtime(timestamp)
    offset = tm.tm_gmtoff or 0
    sign = '+' if offset >= 0 else '-'
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (f'{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year:04d} '
            f'{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}')


def domain_of(address: Optional[str]) -> Optional[str]:
    """The domain of ``local@domain`` (None for local names and the null sender)."""
    if not address or '@' not in address:
        return None
    domain = address.rpartition('@')[2].strip()
    return domain or None


def make_message_id(domain: str, *, timestamp: Optional[float] = None, random: Optional[bytes] = None) -> str:
    """``<time.random@domain>``: unique without coordination (96 random bits)."""
    if not domain or any(ch in domain for ch in '<>@ \t\r\n\x00'):
        raise ValueError(f'unusable Message-ID domain {domain!r}')
    if timestamp is None:
        timestamp = time.time()
    if random is None:
        random = os.urandom(12)
    return f'<{int(timestamp * 1000):x}.{random.hex()}@{domain}>'


def _word_length(raw_length: int) -> int:
    # '=?utf-8?b?' + base64 + '?='
    return 12 + 4 * ((raw_length + 2) // 3)


def _encoded_word(text: str) -> str:
    import binascii  # here: only non-ASCII text needs it, and mq-sendmail usually sees none

    return '=?utf-8?b?' + binascii.b2a_base64(text.encode('utf-8'), newline=False).decode('ascii') + '?='


def _fits(text: str, room: int) -> bool:
    return _word_length(len(text.encode('utf-8'))) <= room


def _encoded_words(text: str, first_width: int) -> List[str]:
    """Base64 encoded words for ``text``, never cutting a character in half.

    The first word fits on a line that already holds ``first_width`` columns;
    each further word gets a line of its own (RFC 2047: at most 76 columns
    per line holding encoded words). Words are split after a space of the text
    where possible (the space stays inside the earlier word): readers that
    wrongly keep the white space between encoded words then show a doubled
    space rather than a space inside a word.
    """
    words: List[str] = []
    room = _MAX_ENCODED_LINE - first_width
    chunk = ''
    for char in text:
        candidate = chunk + char
        while chunk and not _fits(candidate, room):
            cut = chunk.rfind(' ') + 1
            if not (0 < cut < len(chunk) and _fits(chunk[:cut], room)):
                cut = len(chunk)
                while cut > 1 and not _fits(chunk[:cut], room):
                    cut -= 1
            words.append(_encoded_word(chunk[:cut]))
            chunk = chunk[cut:]
            candidate = chunk + char
            room = _MAX_ENCODED_LINE - 1  # after the folding space
        chunk = candidate
    if chunk or not words:
        words.append(_encoded_word(chunk))
    return words


def _needs_encoding(text: str) -> bool:
    # '=?' in plain text would be taken for the start of an encoded word by readers.
    return not text.isascii() or '=?' in text or any(ord(ch) < 32 and ch != '\t' for ch in text)


def _fold(pieces: Sequence[str], first_width: int, limit: int = _MAX_LINE) -> str:
    """Join with spaces, breaking the line (CRLF + space) where it would grow beyond ``limit`` columns."""
    lines: List[str] = []
    current: Optional[str] = None
    width = first_width
    for piece in pieces:
        if current is None:
            current = piece
        elif current and piece and width + len(current) + 1 + len(piece) > limit:
            # (never before an empty piece: a continuation line of only white space is obsolete syntax)
            lines.append(current)
            current = piece
            width = 1  # the folding white space
        else:
            current = f'{current} {piece}'
    lines.append(current or '')
    return '\r\n '.join(lines)


def encode_header_text(text: str, *, name_length: int = 0) -> str:
    """Unstructured header text (Subject): RFC 2047 encoded when needed, folded (CRLF + space).

    ``name_length`` is the length of ``Name: `` on the first line.
    """
    check_header_text('header text', text)
    if _needs_encoding(text):
        return '\r\n '.join(_encoded_words(text, name_length))
    return _fold(text.split(' '), name_length)


def format_address(name: Optional[str], address: str, *, name_length: int = 0) -> str:
    """``Name <address>`` with the name quoted or RFC 2047 encoded as needed; bare address without name.

    A long result is folded (CRLF + space) like ``encode_header_text``.
    """
    check_header_text('address', address)
    if not name:
        return address
    check_header_text('name', name)
    limit = _MAX_LINE
    if _needs_encoding(name):
        words = _encoded_words(name, name_length)
        limit = _MAX_ENCODED_LINE
    elif re.match(_PLAIN_PHRASE, name):
        words = name.split(' ')
    else:
        words = ['"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"']
    return _fold(words + [f'<{address}>'], name_length, limit)


def format_address_list(addresses: Sequence[str], *, name_length: int = 0) -> str:
    """Comma separated addresses, folded after a comma when a line would exceed 78 columns."""
    for address in addresses:
        check_header_text('address', address)
    items = [address + ',' for address in addresses[:-1]] + list(addresses[-1:])
    return _fold(items, name_length)


def prepend_header(data: bytes, name: str, value: str) -> bytes:
    """Put ``Name: value`` first, in the line ending the message already uses.

    ``value`` may be folded (CRLF followed by a space or tab) but must not contain
    any other line break: that would be header injection.
    """
    unfolded = value.replace('\r\n ', ' ').replace('\r\n\t', '\t')
    if any(ch in unfolded for ch in '\r\n\x00'):
        raise HeaderValueError(f'{name} value contains a line break or NUL: {value!r}')
    if not_utf8(value):
        raise HeaderValueError(f'{name} value is not valid UTF-8: {ascii(value)}')
    first_break = _LINE_BREAK.search(data)
    eol = first_break.group() if first_break else b'\r\n'
    field = f'{name}: {value}'.encode().replace(b'\r\n', eol)
    return field + eol + data


def ensure_header_separator(data: bytes, header_end: int) -> bytes:
    """Insert the empty line that must end the header block, where it is missing.

    ``header_end`` is where our (MTA-like) parsing ended the header block. If a
    non-header line ended it instead of an empty line, a lenient reader further
    down the line could still read the lines after it as header fields (for
    example a ``Bcc:`` we did not strip). An explicit empty line makes every
    reader agree with us, as Postfix's cleanup does.
    """
    if header_end >= len(data):
        return data  # headers only, nothing follows
    if data.startswith(b'\n', header_end) or data.startswith(b'\r', header_end):
        return data  # an empty line already ends the headers
    first_break = _LINE_BREAK.search(data)
    eol = first_break.group() if first_break else b'\r\n'
    return data[:header_end] + eol + data[header_end:]


def body_transfer_encoding(body: bytes) -> Tuple[str, str, bytes]:
    """Pick charset and Content-Transfer-Encoding for a text body: ``(charset, cte, encoded body)``.

    UTF-8 text stays readable (7bit/8bit); text SMTP cannot carry as it is (NUL,
    bare CR, lines over 998 octets) becomes quoted-printable. Bytes that are not
    UTF-8 are passed on unchanged, labelled ``unknown-8bit`` (RFC 1428),
    rather than guessing their charset.
    """
    try:
        body.decode('utf-8')
        charset = 'utf-8'
    except UnicodeDecodeError:
        charset = 'unknown-8bit'
    lines = re.split(_LINES, body)
    needs_qp = (b'\x00' in body or b'\r' in body.replace(b'\r\n', b'')
                or max(len(line) for line in lines) > _SMTP_MAX_LINE)
    if needs_qp:
        import binascii

        # Line breaks are ours (CRLF); everything inside a line, bare CR included, gets encoded.
        # b2a_qp ends soft line breaks with a bare LF (every LF of the text itself is encoded).
        encoded = b'\r\n'.join(binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
                                .replace(b'\n', b'\r\n') for line in lines)
        return charset, 'quoted-printable', encoded
    return charset, ('7bit' if body.isascii() else '8bit'), body


def build_text_message(
    *,
    from_addr: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    subject: Optional[str] = None,
    body: bytes = b'',
    from_name: Optional[str] = None,
    date: Optional[str] = None,
    message_id: Optional[str] = None,
) -> bytes:
    """A complete text/plain message with CRLF line endings, as ``mail(1)`` would send it.

    Bcc recipients never appear here: they belong to the envelope only.
    """
    charset, cte, encoded_body = body_transfer_encoding(body)
    if date is None:
        date = format_date()
    if message_id is None:
        message_id = make_message_id(domain_of(from_addr) or 'localhost')
    headers = [f'From: {format_address(from_name, from_addr, name_length=6)}']
    if to:
        headers.append('To: ' + format_address_list(to, name_length=4))
    if cc:
        headers.append('Cc: ' + format_address_list(cc, name_length=4))
    if subject:
        headers.append('Subject: ' + encode_header_text(subject, name_length=9))
    headers += [
        f'Date: {check_header_text("date", date)}',
        f'Message-ID: {check_header_text("message id", message_id)}',
        'MIME-Version: 1.0',
        f'Content-Type: text/plain; charset={charset}',
        f'Content-Transfer-Encoding: {cte}',
    ]
    head = ('\r\n'.join(headers) + '\r\n\r\n').encode('utf-8')
    return head + _LINE_BREAK.sub(b'\r\n', encoded_body)


_LOCAL_NAME = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$"


def _top_level_spans(value: str) -> Optional[List[Tuple[int, int, List[Tuple[int, int]]]]]:
    """(start, end, angle spans) of each comma-separated item; None for group syntax or bad nesting.

    Quoted strings and comments are skipped, so a comma or ``<`` inside them counts for nothing.
    """
    items: List[Tuple[int, int, List[Tuple[int, int]]]] = []
    angles: List[Tuple[int, int]] = []
    start = 0
    i = 0
    depth = 0
    angle_open = -1
    while i < len(value):
        ch = value[i]
        if depth:
            if ch == '\\':
                i += 1
            elif ch == '(':
                depth += 1
            elif ch == ')':
                depth -= 1
        elif ch == '"':
            i += 1
            while i < len(value) and value[i] != '"':
                i += 2 if value[i] == '\\' else 1
            if i >= len(value):
                return None
        elif ch == '(':
            depth = 1
        elif ch == '<':
            angle_open = i
        elif ch == '>' and angle_open >= 0:
            angles.append((angle_open + 1, i))
            angle_open = -1
        elif ch in ':;':
            return None  # a group ("undisclosed-recipients:;"): left as it is
        elif ch == ',' and angle_open < 0:
            items.append((start, i, angles))
            start, angles = i + 1, []
        i += 1
    if depth or angle_open >= 0:
        return None
    items.append((start, len(value), angles))
    return items


def _without_comments(text: str) -> str:
    return re.sub(r'\([^()]*\)', ' ', text)


def qualify_address_text(value: str, domain: str) -> str:
    """Bare local names in an address list (``root``, ``"(Cron Daemon)" <root>``) get ``@domain``.

    Everything else stays as it was written (display names, comments, spacing, addresses that
    have a domain). What cannot be parsed simply (groups, unbalanced quotes) is left alone.
    """
    spans = _top_level_spans(value)
    if spans is None:
        return value
    inserts: List[int] = []
    for start, end, angles in spans:
        if angles:
            inner_start, inner_end = angles[-1]
            inner = value[inner_start:inner_end].strip()
            if inner and '@' not in inner and re.match(_LOCAL_NAME, inner):
                inserts.append(inner_start + len(value[inner_start:inner_end].rstrip()))
            continue
        item = value[start:end]
        bare = _without_comments(item).strip()
        if bare and '@' not in bare and re.match(_LOCAL_NAME, bare):
            position = item.find(bare)
            if position >= 0:
                inserts.append(start + position + len(bare))
    for position in sorted(inserts, reverse=True):
        value = value[:position] + '@' + domain + value[position:]
    return value
