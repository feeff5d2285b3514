"""Mail addresses: the one parser and validator behind every way an address comes in.

Command-line recipients and ``-f``, ``To:``/``Cc:``/``Bcc:`` with ``-t``, ``MAIL``/``RCPT`` in
``sendmail -bs``, ``mq-mail``, the Python API, alias expansion and the envelope read back from
queue files all end up here, so an address refused in one place is refused everywhere.

Two grammars, one set of rules for the address itself:

* ``parse_address`` takes a bare RFC 5321 mailbox (``local-part@domain``), as the SMTP
  envelope and the queue files carry it: nothing around it, no comments, no display name.
* ``parse_address_list`` / ``parse_mailbox`` take RFC 5322 header syntax (display names,
  comments, quoted strings, angle brackets, groups) and yield the mailboxes in it. Unlike
  ``email.utils.getaddresses`` they never guess: ``John Smith`` or ``a@x.example b`` is an
  error, not the invented address ``JohnSmith`` or ``a@x.exampleb``.

The address itself (RFC 5321 4.1.2, 4.5.3.1, RFC 6531 for non-ASCII):

* local part: a dot-string (atoms of ``atext`` joined by single dots) or a quoted string;
  a quoted local part is kept exactly as given, quotes and backslashes included, so it
  reaches the server as the sender wrote it and is never re-read as something else;
* domain: dot-separated LDH labels (non-ASCII U-labels allowed) or an address literal
  ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``;
* at most 64 octets of local part, 255 of domain, 63 per label, 256 for the whole path
  including its angle brackets (UTF-8 octets);
* no control character anywhere (C0, DEL, C1), no invisible or white-space character
  outside quotes; non-ASCII is allowed, and ``Address.needs_smtputf8`` says that the
  address can only travel to a server offering SMTPUTF8.

Two rules of our own on top: an address may not start with ``-`` (it must never be
mistaken for an option, SPEC 10), and a quoted local part may not contain a comma (queue
files separate the recipients in ``Envelope-to`` with commas).

A bare local name without ``@`` (``root``) is accepted only when the caller asks for it
(``allow_local``): where aliases or qualification with a domain follow. It must be a
dot-string. The null sender (``<>``, an empty address) likewise only with ``allow_null``.

Pure and cheap to import: ``mq-sendmail`` loads this module on every cron mail, so it
needs nothing beyond ``typing``; ``ipaddress`` and ``unicodedata`` are imported only for
address literals and non-ASCII text.
"""

from __future__ import annotations

from typing import List, NoReturn, Optional, Tuple

__all__ = [
    'MAX_DOMAIN',
    'MAX_LABEL',
    'MAX_LOCAL_PART',
    'MAX_PATH',
    'Address',
    'InvalidAddressError',
    'Mailbox',
    'address_argument',
    'check_text',
    'needs_smtputf8',
    'parse_address',
    'parse_address_list',
    'parse_mailbox',
    'parse_mailboxes',
    'parse_smtp_path',
]

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
# The whole reverse-path or forward-path, "<" and ">" included (RFC 5321 4.5.3.1.3).
MAX_PATH = 256

_ALNUM = frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789')
_ATEXT = _ALNUM | frozenset("!#$%&'*+-/=?^_`{|}~")
_LDH = _ALNUM | frozenset('-')
_WSP = ' \t'
# Zero-width (non-)joiners are format characters that some scripts need inside words (IDNA
# allows them in context); every other invisible character is refused (bidi overrides spoof).
_JOINERS = frozenset('\u200c\u200d')


class InvalidAddressError(ValueError):
    """Text that is not an acceptable mail address (or list of them); ``str()`` says why.

    ``address`` is the text that was refused and ``reason`` the bare reason.
    """

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        shown = address if len(address) <= 200 else address[:200] + '...'
        super().__init__(f'malformed address {shown!r}: {reason}')


# Address and Mailbox are plain tuple subclasses rather than NamedTuples: typing.NamedTuple
# builds its classes with exec(), which costs mq-sendmail start-up time on every cron mail.


class Address(Tuple[str, str]):
    """One parsed address: ``(local_part, domain)``; ``str(address)`` is its envelope form.

    ``local_part`` is a dot-string or a quoted string (quotes and backslashes kept), '' for
    the null sender; ``domain`` a domain name or an address literal in brackets, '' for a
    bare local name and the null sender.
    """

    __slots__ = ()

    def __new__(cls, local_part: str, domain: str) -> Address:
        return tuple.__new__(cls, (local_part, domain))

    def __getnewargs__(self) -> Tuple[str, str]:
        return (self[0], self[1])

    def __repr__(self) -> str:
        return f'Address({self[0]!r}, {self[1]!r})'

    def __str__(self) -> str:
        return f'{self[0]}@{self[1]}' if self[1] else self[0]

    @property
    def local_part(self) -> str:
        return self[0]

    @property
    def domain(self) -> str:
        return self[1]

    @property
    def is_null(self) -> bool:
        """The null reverse-path ``<>`` (bounces and other automatic mail)."""
        return not self.local_part

    @property
    def is_local_name(self) -> bool:
        """A name without ``@`` that aliases or a default domain still have to turn into an address."""
        return bool(self.local_part) and not self.domain

    @property
    def is_quoted(self) -> bool:
        return self.local_part.startswith('"')

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith('[')

    @property
    def needs_smtputf8(self) -> bool:
        """Non-ASCII anywhere: the address can only be sent with SMTPUTF8 (RFC 6531)."""
        return not (self.local_part.isascii() and self.domain.isascii())


class Mailbox(Tuple[Optional[str], Address]):
    """``(display_name, address)``: an address from header syntax, with its display name (unquoted) if any."""

    __slots__ = ()

    def __new__(cls, display_name: Optional[str], address: Address) -> Mailbox:
        return tuple.__new__(cls, (display_name, address))

    def __getnewargs__(self) -> Tuple[Optional[str], Address]:
        return (self[0], self[1])

    def __repr__(self) -> str:
        return f'Mailbox({self[0]!r}, {self[1]!r})'

    @property
    def display_name(self) -> Optional[str]:
        return self[0]

    @property
    def address(self) -> Address:
        return self[1]


def needs_smtputf8(address: str) -> bool:
    """True when an (already validated) envelope address contains non-ASCII text."""
    return not address.isascii()


# --- characters --------------------------------------------------------------------------


def _char_problem(ch: str, *, allow_tab: bool) -> Optional[str]:
    """Why ``ch`` may not occur anywhere in address text (also not in names or comments)."""
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        if ch in '\r\n':
            return 'contains a line break (CR or LF)'
        if ch == '\t':
            return None if allow_tab else 'contains a TAB'
        if ch == '\x00':
            return 'contains a NUL character'
        return f'contains the control character {ch!r}'
    if 0x80 <= code <= 0x9F:
        return f'contains the control character U+{code:04X}'
    if 0xD800 <= code <= 0xDFFF:
        # what os.fsdecode() makes of bytes that are not UTF-8 (surrogateescape)
        return 'is not valid UTF-8'
    return None


def check_text(text: str, *, allow_tab: bool = False) -> None:
    """Refuse control characters (C0 except TAB when allowed, DEL, C1) and undecodable bytes.

    The first check for any text that is about to be parsed as addresses: a line break
    there is header or SMTP command injection, whatever the grammar would say.
    """
    if text.isprintable() and text.isascii():
        return  # the common case, checked at C speed
    for ch in text:
        problem = _char_problem(ch, allow_tab=allow_tab)
        if problem is not None:
            raise InvalidAddressError(text, problem)


def _visible_problem(text: str) -> Optional[str]:
    """Non-ASCII characters a mailbox may not contain: invisible ones, white space, unassigned."""
    import unicodedata

    for ch in text:
        if ch.isascii() or ch in _JOINERS:
            continue
        category = unicodedata.category(ch)
        if category[0] in 'CZ':
            return f'contains the invisible or white-space character U+{ord(ch):04X}'
    return None


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode('utf-8'))


# --- the parts of an address -------------------------------------------------------------


def _quoted_end(text: str, start: int) -> int:
    """Index just after the quoted string that starts at ``text[start]`` (a double quote); -1 if unterminated."""
    pos = start + 1
    length = len(text)
    while pos < length:
        ch = text[pos]
        if ch == '\\':
            pos += 2
            continue
        if ch == '"':
            return pos + 1
        pos += 1
    return -1


def _local_part_problem(local: str) -> Optional[str]:
    """Why ``local`` is not an RFC 5321 Dot-string or Quoted-string (None if it is one)."""
    if not local:
        return 'the local part (before "@") is empty'
    if _octets(local) > MAX_LOCAL_PART:
        return f'the local part is longer than {MAX_LOCAL_PART} octets'
    if local[0] == '"':
        if len(local) < 2 or _quoted_end(local, 0) != len(local):
            return 'the quoted local part is not one quoted string (stray or missing double quote)'
        pos = 1
        end = len(local) - 1
        while pos < end:
            ch = local[pos]
            if ch == '\\':
                pos += 1
                ch = local[pos]
                # quoted-pairSMTP is a backslash followed by printable ASCII or space only
                if not ' ' <= ch <= '~':
                    return f'a backslash in the quoted local part escapes {ch!r}'
            if ch == ',':
                return 'a comma in a quoted local part is not supported (queue files list recipients with commas)'
            if ch < ' ' or ch == '\x7f':
                return f'the quoted local part contains the control character {ch!r}'
            pos += 1
    else:
        for atom in local.split('.'):
            if not atom:
                return 'the local part has an empty part between dots (or starts or ends with a dot)'
            for ch in atom:
                if ch not in _ATEXT and ch.isascii():
                    if ch == '"':
                        return 'stray double quote in the local part (quote the whole local part or none of it)'
                    if ch == ' ' or ch == '\t':
                        return 'white space in the local part'
                    return f'{ch!r} is not allowed in an unquoted local part'
    if not local.isascii():
        return _visible_problem(local)
    return None


def _domain_problem(domain: str) -> Optional[str]:
    """Why ``domain`` is neither a domain name nor an address literal (None if it is one)."""
    if not domain:
        return 'the domain (after "@") is empty'
    if _octets(domain) > MAX_DOMAIN:
        return f'the domain is longer than {MAX_DOMAIN} octets'
    if domain[0] == '[':
        return _literal_problem(domain)
    for label in domain.split('.'):
        if not label:
            return 'the domain has an empty label (two dots in a row, or a leading or trailing dot)'
        if _octets(label) > MAX_LABEL:
            return f'a domain label is longer than {MAX_LABEL} octets'
        if label[0] == '-' or label[-1] == '-':
            return f'the domain label {label!r} starts or ends with "-"'
        if label.isascii():
            if not _LDH.issuperset(label):
                bad = next(ch for ch in label if ch not in _LDH)
                return f'{bad!r} is not allowed in a domain name (only letters, digits, "-" and ".")'
        else:
            problem = _u_label_problem(label)
            if problem:
                return problem
    return None


def _u_label_problem(label: str) -> Optional[str]:
    import unicodedata

    for ch in label:
        if ch.isascii():
            if ch not in _LDH:
                return f'{ch!r} is not allowed in a domain name (only letters, digits, "-" and ".")'
        elif unicodedata.category(ch)[0] not in 'LMN':
            return f'the character U+{ord(ch):04X} is not allowed in a domain name'
    return None


def _literal_problem(domain: str) -> Optional[str]:
    if not domain.endswith(']') or len(domain) < 3:
        return 'the address literal has no closing "]"'
    inner = domain[1:-1]
    if any(ch in '[]\\' or not '!' <= ch <= '~' for ch in inner):
        return 'the address literal contains characters no IP address has'
    import ipaddress

    tag, colon, value = inner.partition(':')
    if colon:
        if tag.lower() != 'ipv6':
            return f'unsupported address literal {domain!r} (only IPv4 and IPv6: are)'
        if '%' in value:
            return 'an IPv6 zone index has no meaning beyond this host'
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return f'{value!r} is not an IPv6 address'
        return None
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return f'{inner!r} is not an IPv4 address (an IPv6 literal is written [IPv6:...])'
    return None


def _make(text: str, local: str, domain: str, *, allow_local: bool) -> Address:
    """Validate the parts found by a parser and build the ``Address``."""
    if not domain:
        if not allow_local:
            raise InvalidAddressError(text, 'no "@domain" (a local name is not accepted here)')
        if local[:1] == '"':
            # aliases and qualification work on plain names; a quoted one would be re-read unquoted
            raise InvalidAddressError(text, 'a local name without "@domain" cannot be quoted')
    problem = _local_part_problem(local)
    if problem is None and domain:
        problem = _domain_problem(domain)
    if problem is not None:
        raise InvalidAddressError(text, problem)
    if local[0] == '-':
        raise InvalidAddressError(text, 'starts with "-" (it could be taken for an option)')
    if domain and _octets(local) + 1 + _octets(domain) + 2 > MAX_PATH:
        raise InvalidAddressError(text, f'longer than {MAX_PATH - 2} octets')
    return Address(local, domain)


# --- the envelope form -------------------------------------------------------------------


def parse_address(text: str, *, allow_null: bool = False, allow_local: bool = False) -> Address:
    """Parse one bare RFC 5321 mailbox (``local@domain``), exactly as the SMTP envelope carries it.

    No surrounding white space, angle brackets, comments or display name. ``allow_null``
    accepts the empty string as the null sender; ``allow_local`` a name without ``@``.
    Raises ``InvalidAddressError``.
    """
    if not isinstance(text, str):
        raise TypeError(f'an address must be a str, not {type(text).__name__}')
    check_text(text)
    if not text:
        if allow_null:
            return Address('', '')
        raise InvalidAddressError(text, 'empty address')
    if text[0] == '"':
        end = _quoted_end(text, 0)
        if end < 0:
            raise InvalidAddressError(text, 'unterminated quoted string (missing closing double quote)')
        local, rest = text[:end], text[end:]
        if rest and rest[0] != '@':
            raise InvalidAddressError(text, 'text between the quoted local part and "@"')
        domain = rest[1:]
        if rest and not domain:
            raise InvalidAddressError(text, 'the domain (after "@") is empty')
    else:
        local, at, domain = text.partition('@')
        if at and not domain:
            raise InvalidAddressError(text, 'the domain (after "@") is empty')
    if '@' in domain and domain[:1] != '[':
        raise InvalidAddressError(text, 'more than one "@" (a local part with "@" must be quoted)')
    if local == '<>' or local[:1] == '<':
        raise InvalidAddressError(text, 'angle brackets belong around the address, not in it')
    return _make(text, local, domain, allow_local=allow_local)


def parse_smtp_path(argument: str, *, allow_null: bool = False,
                    allow_local: bool = False) -> Tuple[Address, str]:
    """The path of ``MAIL FROM:`` / ``RCPT TO:`` (the text after the colon) and its parameters.

    ``<local@domain> PARAM=VALUE ...``: a source route (``<@relay:local@domain>``) is accepted
    and dropped as RFC 5321 4.1.1.3 says; a path without angle brackets is tolerated as many
    servers do. ``<>`` is the null sender when ``allow_null``. Returns ``(address, params)``.
    """
    check_text(argument)
    text = argument.lstrip(' ')
    if not text.startswith('<'):
        address, _, params = text.partition(' ')
        return parse_address(address, allow_null=False, allow_local=allow_local), params.strip()
    pos = 1
    length = len(text)
    while pos < length and text[pos] not in '>':
        if text[pos] == '"':
            end = _quoted_end(text, pos)
            if end < 0:
                raise InvalidAddressError(text, 'unterminated quoted string (missing closing double quote)')
            pos = end
        else:
            pos += 1
    if pos >= length:
        raise InvalidAddressError(text, 'no closing ">"')
    inner, rest = text[1:pos], text[pos + 1:]
    if rest and rest[0] != ' ':
        raise InvalidAddressError(text, 'text right after ">" (parameters are separated by a space)')
    if inner.startswith('@'):
        route, colon, inner = inner.partition(':')
        if not colon:
            raise InvalidAddressError(text, 'a source route ("@relay,...") must end with ":"')
        for hop in route.split(','):
            if not hop.startswith('@') or _domain_problem(hop[1:]) is not None:
                raise InvalidAddressError(text, f'malformed source route {route!r}')
    return parse_address(inner, allow_null=allow_null, allow_local=allow_local), rest.strip()


# --- header syntax (RFC 5322 address lists) -----------------------------------------------


class _Word:
    """One atom or quoted string of a header value, with where it ends."""

    __slots__ = ('text', 'quoted', 'end')

    def __init__(self, text: str, quoted: bool, end: int) -> None:
        self.text = text  # as written: quotes and backslashes of a quoted string included
        self.quoted = quoted
        self.end = end


class _ListParser:
    """Recursive descent over one header value (or one command-line argument)."""

    def __init__(self, text: str, allow_local: bool) -> None:
        self.text = text
        self.pos = 0
        self.allow_local = allow_local

    def error(self, reason: str) -> NoReturn:
        raise InvalidAddressError(self.text, reason)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ''

    def skip_cfws(self) -> None:
        """Skip white space and (nested) comments."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in _WSP:
                self.pos += 1
            elif ch == '(':
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        depth = 0
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            self.pos += 1
            if ch == '\\':
                self.pos += 1
            elif ch == '(':
                depth += 1
            elif ch == ')':
                depth -= 1
                if depth == 0:
                    return
        self.error('unterminated comment (missing ")")')

    def word(self) -> Optional[_Word]:
        """An atom (dots included: display names may hold ``J. Smith``) or a quoted string."""
        start = self.pos
        ch = self.peek()
        if ch == '"':
            end = _quoted_end(self.text, start)
            if end < 0:
                self.error('unterminated quoted string (missing closing double quote)')
            self.pos = end
            return _Word(self.text[start:end], True, end)
        text = self.text
        while self.pos < len(text) and (text[self.pos] in _ATEXT or text[self.pos] == '.'
                                        or not text[self.pos].isascii()):
            self.pos += 1
        if self.pos == start:
            return None
        return _Word(text[start:self.pos], False, self.pos)

    def domain(self) -> str:
        """The domain right after "@": no white space or comment before it or inside it."""
        start = self.pos
        text = self.text
        if self.peek() == '[':
            end = text.find(']', start)
            if end < 0:
                self.error('the address literal has no closing "]"')
            self.pos = end + 1
        else:
            while self.pos < len(text) and text[self.pos] not in '<>()[]:;@\\,"' and text[self.pos] not in _WSP:
                self.pos += 1
        if self.pos == start:
            self.error('the domain (after "@") is empty' if self.peek() in ('', ',', ';', '>') + tuple(_WSP)
                       else f'{self.peek()!r} where the domain should start')
        if self.peek() == '@':
            self.error('more than one "@" (a local part with "@" must be quoted)')
        return text[start:self.pos]

    def addr_spec(self, local: _Word) -> Address:
        """``local`` has just been read and an "@" is next: the domain must follow without a gap."""
        if local.end != self.pos:
            self.error('white space or a comment inside the address')
        self.pos += 1  # "@"
        return _make(self.text, local.text, self.domain(), allow_local=self.allow_local)

    def local_name(self, word: _Word, followers: Tuple[str, ...]) -> Address:
        """A name without "@domain" (``root``), where the caller allows one."""
        if not self.allow_local:
            self.error('no "@domain" (a local name is not accepted here)')
        if self.peek() not in followers:
            self.error(f'unexpected {self.peek()!r} after {word.text!r}')
        return _make(self.text, word.text, '', allow_local=True)

    def angle_addr(self, words: List[_Word]) -> Mailbox:
        self.pos += 1  # "<"
        self.skip_cfws()
        if self.peek() == '@':
            # obs-route (RFC 5322 4.4): "<@relay1,@relay2:user@example.org>", the route is ignored
            while self.peek() in ('@', ','):
                self.pos += 1
                if self.text[self.pos - 1] == '@':
                    self.domain()
                self.skip_cfws()
            if self.peek() != ':':
                self.error('malformed route in angle brackets')
            self.pos += 1
            self.skip_cfws()
        if self.peek() == '>':
            self.error('empty address "<>"')
        local = self.word()
        if local is None:
            self.error(f'unexpected {self.peek()!r} after "<"' if self.peek() else 'no closing ">"')
        if self.peek() == '@':
            address = self.addr_spec(local)
        else:
            self.skip_cfws()
            address = self.local_name(local, ('>',))
        self.skip_cfws()
        if self.peek() != '>':
            self.error('no closing ">"' if not self.peek() else f'unexpected {self.peek()!r} before ">"')
        self.pos += 1
        name = ' '.join(_unquote(w.text) if w.quoted else w.text for w in words) or None
        return Mailbox(name, address)

    def address(self, in_group: bool) -> List[Mailbox]:
        """One mailbox, or the members of one group."""
        words: List[_Word] = []
        while True:
            self.skip_cfws()
            word = self.word()
            if word is None:
                break
            words.append(word)
        ch = self.peek()
        if ch == '<':
            return [self.angle_addr(words)]
        if ch == '@':
            if not words:
                self.error('the local part (before "@") is empty')
            if len(words) > 1:
                self.error('a display name needs angle brackets around the address (Name <a@example.org>),'
                           ' or a comma is missing')
            return [Mailbox(None, self.addr_spec(words[0]))]
        if ch == ':' and words:
            if in_group:
                self.error('a group inside a group')
            self.pos += 1
            return self.group_members()
        if len(words) == 1:
            return [Mailbox(None, self.local_name(words[0], ('', ',', ';') if in_group else ('', ',')))]
        if not words:
            self.error(f'unexpected {ch!r}' if ch else 'no address')
        self.error('not one address: words without "@" (a missing comma, or a name without <address>?)')

    def group_members(self) -> List[Mailbox]:
        """``display-name ":" [mailbox-list] ";"``; ``undisclosed-recipients:;`` has none."""
        members: List[Mailbox] = []
        while True:
            self.skip_cfws()
            ch = self.peek()
            if ch == ';':
                self.pos += 1
                return members
            if not ch:
                # "undisclosed-recipients:" without its ";" is common; with members it is a typo
                if members:
                    self.error('a group ("name: addresses;") without its closing ";"')
                return members
            if ch == ',':
                self.pos += 1
                continue
            members.extend(self.address(in_group=True))
            self.skip_cfws()
            if self.peek() not in (',', ';', ''):
                self.error(f'unexpected {self.peek()!r} after an address (missing comma?)')

    def parse(self) -> List[Mailbox]:
        result: List[Mailbox] = []
        while True:
            self.skip_cfws()
            ch = self.peek()
            if not ch:
                return result
            if ch == ',':
                self.pos += 1  # empty list items are allowed (obs-addr-list)
                continue
            result.extend(self.address(in_group=False))
            self.skip_cfws()
            ch = self.peek()
            if ch == '@':
                self.error('more than one "@" (a local part with "@" must be quoted)')
            if ch and ch != ',':
                self.error(f'unexpected {ch!r} after an address (missing comma?)')


def _unquote(quoted: str) -> str:
    out: List[str] = []
    pos = 1
    end = len(quoted) - 1
    while pos < end:
        if quoted[pos] == '\\':
            pos += 1
        out.append(quoted[pos])
        pos += 1
    return ''.join(out)


def parse_mailboxes(value: str, *, allow_local: bool = False) -> List[Mailbox]:
    """Every mailbox of an RFC 5322 address list (``To:`` value, or a ``mail``-style argument).

    Display names, comments, quoted strings, angle brackets and groups are understood;
    group members count, empty groups and empty list items name no one. White space
    between the parts is allowed (TAB too: folded header lines), but not inside an
    address: ``a @example.org`` is refused rather than read as ``a@example.org``.
    """
    check_text(value, allow_tab=True)
    return _ListParser(value, allow_local).parse()


def parse_address_list(value: str, *, allow_local: bool = False) -> List[Address]:
    """The addresses of an RFC 5322 address list, in order (duplicates kept); see ``parse_mailboxes``."""
    return [mailbox.address for mailbox in parse_mailboxes(value, allow_local=allow_local)]


def parse_mailbox(value: str, *, allow_local: bool = False) -> Mailbox:
    """Exactly one mailbox (``a@example.org``, ``Name <a@example.org>``), as for a sender."""
    mailboxes = parse_mailboxes(value, allow_local=allow_local)
    if len(mailboxes) != 1:
        raise InvalidAddressError(value, 'expected exactly one address' if mailboxes else 'no address')
    return mailboxes[0]


def address_argument(value: str, *, allow_null: bool = False) -> str:
    """One address as a user gives it to a tool (``a@b``, ``<a@b>``, ``Name <a@b>``, or a local
    name, qualified or resolved later): its envelope form. ``allow_null``: empty or ``<>`` is the
    null sender, ``''``. The rule of every option that takes one address (``-f``, ``--to``, ...)."""
    check_text(value)
    text = value.strip(' ')
    if allow_null and text in ('', '<>'):
        return ''
    return str(parse_mailbox(text, allow_local=True).address)
