"""Message bytes and envelope, plus the few header edits we ever make.

Everything here is pure: no I/O beyond reading an already-open file object.
The message bytes are never re-serialised through the ``email`` package, so
DKIM signatures and the exact header folding survive.
"""

from __future__ import annotations

import re
from typing import IO, Any, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .addresses import InvalidAddressError, parse_address
from .addresses import parse_address_list as _parse_address_list

__all__ = [
    'InvalidAddressError',
    'MessageSource',
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

# No quoted names in it: a string here is compiled (typing.ForwardRef) on every import, about 1 ms.
MessageSource = Union[bytes, bytearray, memoryview, IO[bytes], Any]

_LINE_BREAK = re.compile(rb'\r\n|\r|\n')
_LEADING_DOT = re.compile(rb'^\.', re.MULTILINE)
# A header field name: printable ASCII except colon (RFC 5322 2.2).
_FIELD_NAME = re.compile(rb'^[\x21-\x39\x3b-\x7e]+$')


def validate_address(address: str, *, allow_empty: bool = False, allow_local: bool = False) -> str:
    """``address`` unchanged if it is a valid envelope address; else ``InvalidAddressError``.

    A thin wrapper around ``addresses.parse_address`` for code that works with plain
    strings: ``allow_empty`` accepts the null sender, ``allow_local`` a name without ``@``.
    """
    if address is None:
        raise InvalidAddressError('', 'missing address')
    return str(parse_address(address, allow_null=allow_empty, allow_local=allow_local))


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
            # "Bcc : x" is a field too (RFC 5322 obsolete syntax; sendmail and Postfix take it)
            if not sep or not _FIELD_NAME.match(name.rstrip(b' \t')):
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


def parse_address_list(value: str, *, allow_local: bool = True) -> List[str]:
    """The addresses in one To/Cc/Bcc value; ``InvalidAddressError`` unless every item is one address.

    Stricter than ``email.utils.getaddresses``, which turns ``John Smith`` into
    ``JohnSmith`` and ``a@x.example b`` into ``a@x.exampleb``: sending to an
    address invented from a typo is worse than refusing the message. Local names
    (``To: root``) are accepted by default because ``sendmail -t`` resolves them.
    """
    return [str(addr) for addr in _parse_address_list(value, allow_local=allow_local)]


def extract_recipients(data: bytes, header_names: Sequence[str] = ('To', 'Cc', 'Bcc')) -> List[str]:
    """Addresses from To/Cc/Bcc, in order, without duplicates (for ``sendmail -t``)."""
    result: List[str] = []
    seen: Set[Tuple[str, str]] = set()
    for name in header_names:
        for value in get_header(data, name):
            for addr in _parse_address_list(value, allow_local=True):
                # the local part is case-sensitive (RFC 5321 2.4), the domain is not
                key = (addr.local_part, addr.domain.lower())
                if key not in seen:
                    seen.add(key)
                    result.append(str(addr))
    return result


def qualify_local_addresses(data: bytes, domain: str, names: Sequence[str] = ('From', 'To', 'Cc')) -> bytes:
    """Bare local names in the ``names`` fields become ``name@domain``; other fields stay byte-identical.

    A field that is not ASCII, or whose addresses all have a domain, is not touched.
    """
    from .headers import qualify_address_text

    header_block, body = split_header_block(data)
    wanted = {n.lower().encode('ascii') for n in names}
    changed = False
    fields = []
    for field_name, raw in _iter_fields(header_block):
        if field_name in wanted:
            try:
                text = raw.decode('ascii')
            except UnicodeDecodeError:
                fields.append(raw)
                continue
            name, _, value = text.partition(':')
            qualified = qualify_address_text(value, domain)
            if qualified != value:
                raw = (name + ':' + qualified).encode('ascii')
                changed = True
        fields.append(raw)
    return b''.join(fields) + body if changed else data
