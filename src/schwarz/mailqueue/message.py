"""Message bytes and envelope, plus the few header edits we ever make.

Everything here is pure: no I/O beyond reading an already-open file object.
The message bytes are never re-serialised through the ``email`` package, so
DKIM signatures and the exact header folding survive.
"""

from __future__ import annotations

import re
from typing import IO, Any, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    'InvalidAddressError',
    'MessageSource',
    'add_header',
    'dot_stuff',
    'extract_recipients',
    'parse_address_list',
    'get_header',
    'message_bytes_from',
    'normalize_line_endings',
    'remove_headers',
    'split_header_block',
    'validate_address',
]

MessageSource = Union[bytes, bytearray, memoryview, 'IO[bytes]', Any]

_LINE_BREAK = re.compile(rb'\r\n|\r|\n')
_LEADING_DOT = re.compile(rb'^\.', re.MULTILINE)
# A header field name: printable ASCII except colon (RFC 5322 2.2).
_FIELD_NAME = re.compile(rb'^[\x21-\x39\x3b-\x7e]+$')


class InvalidAddressError(ValueError):
    """An envelope address that would break or inject into the SMTP dialog."""


def validate_address(address: str, *, allow_empty: bool = False) -> str:
    """Refuse addresses that could inject SMTP commands or command-line options."""
    if address is None:
        raise InvalidAddressError('missing address')
    if not address:
        if allow_empty:
            return address
        raise InvalidAddressError('empty address')
    if any(ch in address for ch in '\r\n\x00'):
        raise InvalidAddressError(f'address contains a line break or NUL: {address!r}')
    if address.startswith('-'):
        raise InvalidAddressError(f'address starts with "-": {address!r}')
    # (a comma could not be stored in a queue file's Envelope-to)
    if any(ch in address for ch in '<>,') or address != address.strip() or ' ' in address:
        raise InvalidAddressError(f'malformed address: {address!r}')
    return address


def message_bytes_from(msg: MessageSource) -> bytes:
    """Accept bytes, an ``email.message.Message``, a binary file or a queued message."""
    if isinstance(msg, (bytes, bytearray, memoryview)):
        return bytes(msg)
    msg_bytes = getattr(msg, 'msg_bytes', None)
    if isinstance(msg_bytes, bytes):
        return msg_bytes
    if hasattr(msg, 'read'):
        data = msg.read()
        if isinstance(data, str):
            raise TypeError('message file must be opened in binary mode')
        return bytes(data)
    as_bytes = getattr(msg, 'as_bytes', None)
    if callable(as_bytes):
        # email.message.Message; policy-free serialisation keeps what the caller built.
        return bytes(as_bytes())
    raise TypeError(f'unsupported message type: {type(msg).__name__}')


def normalize_line_endings(data: bytes) -> bytes:
    """Every CR, LF and CRLF becomes CRLF: no bare CR/LF reaches the server (SMTP smuggling)."""
    if b'\r' not in data:
        return data.replace(b'\n', b'\r\n')
    crlf = data.count(b'\r\n')
    if crlf == data.count(b'\r') == data.count(b'\n'):
        return data  # already CRLF throughout (the common case for queued mail)
    return _LINE_BREAK.sub(b'\r\n', data)


def dot_stuff(data: bytes) -> bytes:
    """Prepare normalised message bytes for DATA: stuff leading dots, end with CRLF."""
    stuffed = _LEADING_DOT.sub(b'..', data) if data[:1] == b'.' or b'\n.' in data else data
    if stuffed and not stuffed.endswith(b'\r\n'):
        stuffed += b'\r\n'
    return stuffed


def split_header_block(data: bytes) -> Tuple[bytes, bytes]:
    """Split at the first empty line (any line ending); header block keeps its line endings.

    Like MTAs do, the header block also ends at the first line that is neither a
    header field nor a continuation line, so a ``Bcc:`` below such a line is body.
    """
    pos = 0
    length = len(data)
    while pos < length:
        match = _LINE_BREAK.search(data, pos)
        end = match.end() if match else length
        line = data[pos:match.start() if match else length]
        if line == b'':
            return data[:pos], data[pos:]
        if line[:1] in (b' ', b'\t'):
            if pos == 0:
                return b'', data
        else:
            name, sep, _ = line.partition(b':')
            if not sep or not _FIELD_NAME.match(name):
                return data[:pos], data[pos:]
        pos = end
    return data, b''


def _iter_fields(header_block: bytes) -> Iterable[Tuple[bytes, bytes]]:
    """Yield (name, raw field incl. continuation lines and line ending)."""
    current_name: Optional[bytes] = None
    current: List[bytes] = []
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b' ', b'\t') and current_name is not None:
            current.append(line)
            continue
        if current_name is not None:
            yield current_name, b''.join(current)
        current_name = line.split(b':', 1)[0].strip().lower()
        current = [line]
    if current_name is not None:
        yield current_name, b''.join(current)


def get_header(data: bytes, name: str) -> List[str]:
    """Values of every header field called ``name`` (unfolded, decoded leniently)."""
    header_block, _ = split_header_block(data)
    wanted = name.lower().encode('ascii')
    values = []
    for field_name, raw in _iter_fields(header_block):
        if field_name == wanted:
            value = raw.split(b':', 1)[1]
            value = _LINE_BREAK.sub(b'', value).strip()
            values.append(value.decode('utf-8', 'replace'))
    return values


def remove_headers(data: bytes, names: Sequence[str]) -> bytes:
    """Drop whole header fields (with continuation lines); the rest stays byte-identical."""
    header_block, body = split_header_block(data)
    unwanted = {n.lower().encode('ascii') for n in names}
    kept = [raw for field_name, raw in _iter_fields(header_block) if field_name not in unwanted]
    return b''.join(kept) + body


def add_header(data: bytes, name: str, value: str) -> bytes:
    """Prepend one header field, using the line ending the message already uses."""
    if any(ch in value for ch in '\r\n'):
        raise ValueError(f'header value for {name} contains a line break')
    first_break = _LINE_BREAK.search(data)
    eol = first_break.group() if first_break else b'\r\n'
    return name.encode('ascii') + b': ' + value.encode('utf-8') + eol + data


def _split_top_level(value: str, separator: str) -> List[str]:
    """Split at ``separator`` outside "quoted strings", (comments) and <angle brackets>."""
    items: List[str] = []
    current: List[str] = []
    depth_comment = 0
    in_quote = in_angle = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == '\\' and (in_quote or depth_comment):
            escaped = True
        elif in_quote:
            in_quote = ch != '"'
        elif ch == '"' and not depth_comment:
            in_quote = True
        elif ch == '(':
            depth_comment += 1
        elif ch == ')' and depth_comment:
            depth_comment -= 1
        elif not depth_comment and ch == '<':
            in_angle = True
        elif not depth_comment and ch == '>':
            in_angle = False
        elif ch == separator and not (in_quote or in_angle or depth_comment):
            items.append(''.join(current))
            current = []
            continue
        current.append(ch)
    items.append(''.join(current))
    return items


def _strip_comments(text: str) -> str:
    out: List[str] = []
    depth = 0
    in_quote = escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
            continue
        if ch == '\\' and (in_quote or depth):
            escaped = True
            if not depth:
                out.append(ch)
            continue
        if depth:
            depth += 1 if ch == '(' else -1 if ch == ')' else 0
            continue
        if ch == '"':
            in_quote = not in_quote
        elif ch == '(' and not in_quote:
            depth = 1
            continue
        out.append(ch)
    return ''.join(out)


def parse_address_list(value: str) -> List[str]:
    """The addresses in one To/Cc/Bcc value; ``InvalidAddressError`` for an item that is not one address.

    Stricter than ``email.utils.getaddresses``, which turns ``John Smith`` into
    ``JohnSmith`` and ``a@x.example b`` into ``a@x.exampleb``: sending to an
    address invented from a typo is worse than refusing the message.
    """
    addresses: List[str] = []
    for item in _split_top_level(value, ','):
        item = item.strip()
        # group syntax: "undisclosed-recipients:;" or "team: a@x, b@y;" (the ';' ends the group)
        head, colon, rest = item.partition(':')
        if colon and '<' not in head and '@' not in head and '"' not in head:
            item = rest.strip()
        item = item.rstrip(';').strip()
        if not item:
            continue
        bare = _strip_comments(item).strip()
        if '<' in bare:
            address = bare[bare.rindex('<') + 1:]
            if not address.endswith('>'):
                raise InvalidAddressError(f'malformed address: {item!r}')
            address = address[:-1].strip()
        else:
            address = bare
        if not address or any(ch.isspace() for ch in address) or address.count('@') > 1 and '"' not in address:
            raise InvalidAddressError(f'malformed address: {item!r}')
        if '@' in address and (address.startswith('@') or address.endswith('@')):
            raise InvalidAddressError(f'malformed address: {item!r}')
        addresses.append(validate_address(address))
    return addresses


def extract_recipients(data: bytes, header_names: Sequence[str] = ('To', 'Cc', 'Bcc')) -> List[str]:
    """Addresses from To/Cc/Bcc, in order, without duplicates (for ``sendmail -t``)."""
    result: List[str] = []
    seen = set()
    for name in header_names:
        for value in get_header(data, name):
            for addr in parse_address_list(value):
                if addr.lower() not in seen:
                    seen.add(addr.lower())
                    result.append(addr)
    return result
