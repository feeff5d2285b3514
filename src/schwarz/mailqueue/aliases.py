"""Parse and resolve aliases(5) files (``/etc/aliases``) for the sendmail drop-in.

Parsing (``parse_aliases``) and resolution (``resolve_recipients``) are pure
functions; ``load_aliases`` is the only part that touches the file system.

Supported syntax::

    # whole-line comment
    postmaster: root
    root:       admin@example.com,
                "|/usr/bin/prog arg",
                :include:/etc/mail/staff.list

* a line starting with whitespace continues the previous entry
* blank lines and lines whose first non-blank character is ``#`` are ignored
  everywhere (also between continuation lines); there are no trailing comments
  because ``#`` may legally occur in addresses
* alias names are case-insensitive and stored in lower case
* targets are separated by commas; double quotes protect commas and whitespace
  and are kept verbatim in the parsed targets
* if an alias name is defined more than once the *later* definition wins (like
  a later assignment in a configuration file); definitions are not merged
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Callable, Optional, Union

from .addresses import InvalidAddressError, parse_address

__all__ = [
    'AliasesError',
    'UnresolvableRecipientError',
    'load_aliases',
    'parse_aliases',
    'resolve_recipients',
]

IncludeLoader = Callable[[str], str]
StrPath = Union[str, 'os.PathLike[str]']

_INCLUDE_PREFIX = ':include:'
# include files including each other would otherwise recurse forever
_MAX_INCLUDE_DEPTH = 10
_UNESCAPE_RE = re.compile(r'\\(.)', re.DOTALL)


class AliasesError(Exception):
    """Invalid aliases data or a recipient that cannot be resolved/relayed.

    ``source`` and ``lineno`` are set when the problem is tied to a location in
    an aliases or include file; ``str(exc)`` then starts with that location.
    """

    def __init__(self, message: str, source: Optional[str] = None, lineno: Optional[int] = None) -> None:
        self.message = message
        self.source = source
        self.lineno = lineno
        if source is not None and lineno is not None:
            text = f'{source}, line {lineno}: {message}'
        elif source is not None:
            text = f'{source}: {message}'
        else:
            text = message
        super().__init__(text)


class UnresolvableRecipientError(AliasesError):
    """Local names (no ``@``) which are neither an alias nor qualifiable with a domain."""

    def __init__(self, names: Union[str, Iterable[str]]) -> None:
        self.names: tuple[str, ...] = (names,) if isinstance(names, str) else tuple(names)
        listed = ', '.join(repr(name) for name in self.names)
        super().__init__(f'no alias and no domain for local recipient(s): {listed}')


# --- parsing -----------------------------------------------------------------


def parse_aliases(
    text: str,
    *,
    source: str = '<aliases>',
    include_loader: Optional[IncludeLoader] = None,
) -> dict[str, list[str]]:
    """Parse aliases(5) text into ``{lower-case name: [target, ...]}``.

    ``:include:PATH`` targets are replaced by the addresses listed in PATH when
    ``include_loader`` is given (it receives PATH verbatim and returns the file
    contents); without a loader they are kept as targets. Include files contain
    comma and/or newline separated targets and whole-line ``#`` comments; they
    may include further files.

    Raises ``AliasesError`` (naming ``source`` and the line number) for
    malformed entries and for include files that cannot be loaded.
    """
    aliases: dict[str, list[str]] = {}
    for lineno, entry in _logical_lines(text, source):
        name, rhs = _split_entry(entry, source, lineno)
        targets = [(lineno, target) for target in _split_targets(rhs, source, lineno)]
        if not targets:
            raise AliasesError(f'alias {name!r} has no targets', source, lineno)
        if include_loader is not None:
            targets = _expand_includes(targets, include_loader, source, include_stack=())
        aliases[name.lower()] = [target for _, target in targets]
    return aliases


def _logical_lines(text: str, source: str) -> Iterator[tuple[int, str]]:
    """Yield ``(first line number, joined text)`` for each entry."""
    start: Optional[int] = None
    parts: list[str] = []
    for lineno, raw_line in enumerate(text.split('\n'), start=1):
        line = raw_line.rstrip('\r')
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        if line[0].isspace():
            if start is None:
                raise AliasesError('continuation line without a preceding alias entry', source, lineno)
            parts.append(stripped)
            continue
        if start is not None:
            yield start, ' '.join(parts)
        start = lineno
        parts = [stripped]
    if start is not None:
        yield start, ' '.join(parts)


def _split_entry(entry: str, source: str, lineno: int) -> tuple[str, str]:
    if entry.startswith('"'):
        end = _closing_quote(entry, 0)
        if end is None:
            raise AliasesError('unterminated quoted alias name', source, lineno)
        name = _unquote(entry[: end + 1])
        rest = entry[end + 1 :].lstrip()
        if not rest.startswith(':'):
            raise AliasesError('expected ":" after quoted alias name', source, lineno)
        rhs = rest[1:]
    else:
        name, colon, rhs = entry.partition(':')
        if not colon:
            raise AliasesError(f'missing ":" in alias entry {entry!r}', source, lineno)
        name = name.strip()
        if any(ch.isspace() for ch in name):
            raise AliasesError(f'invalid alias name {name!r} (contains whitespace)', source, lineno)
    if not name:
        raise AliasesError('empty alias name', source, lineno)
    return name, rhs


def _split_targets(text: str, source: str, lineno: int) -> list[str]:
    """Split at commas outside double quotes; strip and drop empty items."""
    items: list[str] = []
    start = 0
    for index, char, quoted in _scan(text, source, lineno):
        if char == ',' and not quoted:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])

    targets: list[str] = []
    for item in items:
        target = item.strip()
        if not target:
            continue
        if target[: len(_INCLUDE_PREFIX)].lower() == _INCLUDE_PREFIX:
            # tolerate ":include: /path"
            target = _INCLUDE_PREFIX + target[len(_INCLUDE_PREFIX) :].lstrip()
        if any(char.isspace() and not quoted for _, char, quoted in _scan(target, source, lineno)):
            # "a b" is almost always a forgotten comma; guessing could misroute mail
            raise AliasesError(f'unquoted whitespace in target {target!r} (missing comma?)', source, lineno)
        targets.append(target)
    return targets


def _scan(text: str, source: str, lineno: int) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(index, char, inside_quotes)``; backslash escapes the next character."""
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
            yield index, char, True
        elif char == '\\':
            escaped = True
            yield index, char, quoted
        elif char == '"':
            quoted = not quoted
            yield index, char, True
        else:
            yield index, char, quoted
    if quoted:
        raise AliasesError(f'unterminated quote in {text.strip()!r}', source, lineno)


def _closing_quote(text: str, start: int) -> Optional[int]:
    escaped = False
    for index in range(start + 1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == '\\':
            escaped = True
        elif char == '"':
            return index
    return None


def _unquote(text: str) -> str:
    """Remove surrounding double quotes (if the whole text is quoted) and escapes."""
    if len(text) >= 2 and text[0] == '"' and _closing_quote(text, 0) == len(text) - 1:
        return _UNESCAPE_RE.sub(r'\1', text[1:-1]).strip()
    return text


def _include_path(target: str) -> Optional[str]:
    value = _unquote(target)
    if value[: len(_INCLUDE_PREFIX)].lower() != _INCLUDE_PREFIX:
        return None
    return value[len(_INCLUDE_PREFIX) :].strip()


def _expand_includes(
    targets: list[tuple[int, str]],
    loader: IncludeLoader,
    source: str,
    include_stack: tuple[str, ...],
) -> list[tuple[int, str]]:
    expanded: list[tuple[int, str]] = []
    for lineno, target in targets:
        path = _include_path(target)
        if path is None:
            expanded.append((lineno, target))
            continue
        if not path:
            raise AliasesError(f'{_INCLUDE_PREFIX} without a file name', source, lineno)
        if path in include_stack:
            raise AliasesError(f'include loop: {path!r} includes itself', source, lineno)
        if len(include_stack) >= _MAX_INCLUDE_DEPTH:
            raise AliasesError(f'includes nested deeper than {_MAX_INCLUDE_DEPTH} levels', source, lineno)
        try:
            content = loader(path)
        except (OSError, UnicodeError) as exc:
            raise AliasesError(f'cannot read include file {path!r}: {exc}', source, lineno) from exc
        included = _parse_include_text(content, path)
        expanded.extend(_expand_includes(included, loader, path, include_stack + (path,)))
    return expanded


def _parse_include_text(text: str, source: str) -> list[tuple[int, str]]:
    targets: list[tuple[int, str]] = []
    for lineno, raw_line in enumerate(text.split('\n'), start=1):
        line = raw_line.strip()
        if not line or line.startswith('#'):
            continue
        targets.extend((lineno, target) for target in _split_targets(line, source, lineno))
    return targets


# --- loading -------------------------------------------------------------------


def load_aliases(path: StrPath = '/etc/aliases') -> dict[str, list[str]]:
    """Read and parse an aliases file, expanding ``:include:`` files.

    A missing aliases file yields an empty table (many hosts have none).
    Relative include paths are relative to the aliases file's directory, also
    inside nested include files. Unreadable aliases or include files and
    syntax errors raise ``AliasesError``.
    """
    aliases_path = os.fspath(path)
    try:
        text = _read_text(aliases_path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AliasesError(f'cannot read aliases file: {exc}', aliases_path) from exc
    base_dir = os.path.dirname(os.path.abspath(aliases_path))

    def read_include(include_path: str) -> str:
        # os.path.join() keeps absolute include paths as they are
        return _read_text(os.path.join(base_dir, include_path))

    return parse_aliases(text, source=aliases_path, include_loader=read_include)


# far beyond any real aliases file; what is bigger (/dev/zero, a log file by mistake) is refused
_MAX_ALIASES_BYTES = 16 * 1024 * 1024


def _read_text(path: str) -> str:
    with open(path, 'rb') as fp:
        data = fp.read(_MAX_ALIASES_BYTES + 1)
    if len(data) > _MAX_ALIASES_BYTES:
        raise AliasesError(f'larger than {_MAX_ALIASES_BYTES // (1024 * 1024)} MB: not an aliases file', path)
    # Legacy files often carry Latin-1 umlauts in comments; refusing those would stop all
    # outgoing mail. Such bytes are kept undecoded (surrogateescape), so a comment still parses
    # while an address made of them is refused, not silently read as another address.
    return data.decode('utf-8', 'surrogateescape')


# --- resolving -----------------------------------------------------------------


class _Kind(Enum):
    ADDRESS = 'address'
    LOCAL = 'local name'
    LOCAL_NO_ALIAS = 'local name (\\-escaped)'
    PIPE = 'pipe'
    FILE = 'file'
    INCLUDE = 'include'


def _classify(target: str) -> tuple[_Kind, str]:
    value = _unquote(target.strip())
    if value.startswith('|'):
        return _Kind.PIPE, value
    if value[: len(_INCLUDE_PREFIX)].lower() == _INCLUDE_PREFIX:
        return _Kind.INCLUDE, value
    if value.startswith('/'):
        return _Kind.FILE, value
    if value.startswith('\\'):
        # sendmail: "\user" means the local user, bypassing alias expansion
        return _Kind.LOCAL_NO_ALIAS, value[1:]
    if '@' in value:
        return _Kind.ADDRESS, value
    return _Kind.LOCAL, value


def resolve_recipients(
    recipients: Iterable[str],
    aliases: Mapping[str, Sequence[str]],
    *,
    default_domain: Optional[str] = None,
    max_depth: int = 20,
) -> list[str]:
    """Expand local names through ``aliases`` into a list of mail addresses.

    Only names without ``@`` are looked up, in lower case (the keys of
    ``aliases`` must be lower case, as returned by ``parse_aliases``);
    addresses are final. The result preserves first-seen order and contains no duplicates
    (the domain is compared case-insensitively).

    * Each alias is expanded at most once per call, which bounds the work by
      the size of the table for any graph shape (like sendmail's duplicate
      suppression).
    * A name met again inside its own expansion chain (``root: root, x@y`` or
      ``a: b`` + ``b: a``) is not expanded again but kept as a local name.
    * Local names left at the end become ``name@default_domain``; without
      ``default_domain`` they raise ``UnresolvableRecipientError`` listing all
      of them -- mail must never be dropped silently.
    * Pipes (``|cmd``), files (``/path``), unexpanded ``:include:`` targets,
      aliases without targets and malformed addresses or local names (the rules
      of ``addresses.parse_address``) raise ``AliasesError``: we relay only valid
      addresses to an SMTP smarthost.
    * Expanding more than ``max_depth`` nested aliases raises ``AliasesError``.
    """
    if max_depth < 1:
        raise ValueError(f'max_depth must be at least 1, got {max_depth}')
    if default_domain is not None:
        default_domain = default_domain.strip()
        try:
            # the package-wide address rules; a local part is needed to check a domain with them
            parse_address(f'postmaster@{default_domain}')
        except InvalidAddressError:
            raise ValueError(f'invalid default_domain {default_domain!r}') from None

    result: list[str] = []
    result_keys: set[str] = set()
    unresolved: list[str] = []
    unresolved_keys: set[str] = set()
    expanded: set[str] = set()

    def add_address(address: str, owner: Optional[str]) -> None:
        try:
            parsed = parse_address(address)
        except InvalidAddressError as exc:
            raise AliasesError(f'{exc}{_via(owner)}') from None
        # the local part is case-sensitive (RFC 5321 2.4), the domain is not
        key = f'{parsed.local_part}@{parsed.domain.lower()}'
        if key not in result_keys:
            result_keys.add(key)
            result.append(address)

    def add_local(name: str, owner: Optional[str]) -> None:
        try:
            # a name that is no valid local part ("a b" from a quoted target) is never qualified
            parse_address(name, allow_local=True)
        except InvalidAddressError as exc:
            raise AliasesError(f'{exc}{_via(owner)}') from None
        if default_domain is not None:
            add_address(f'{name}@{default_domain}', owner)
        elif name.lower() not in unresolved_keys:
            unresolved_keys.add(name.lower())
            unresolved.append(name)

    # Explicit stack instead of recursion: callers may pass a large max_depth.
    # Each frame is (alias being expanded or None for the top level, remaining targets).
    stack: list[tuple[Optional[str], Iterator[str]]] = [(None, iter(recipients))]
    chain: set[str] = set()
    while stack:
        owner, remaining = stack[-1]
        target = next(remaining, None)
        if target is None:
            stack.pop()
            if owner is not None:
                chain.discard(owner)
            continue
        if not target.strip():
            if owner is None:
                continue  # empty command-line argument, nothing to deliver
            raise AliasesError(f'empty target{_via(owner)}')
        if owner is None and '@' in target and _is_address(target):
            # a valid address given by the caller is final, also when it starts like a pipe
            # ("|a@example.org") or a file; only aliases files name pipes and files
            kind, value = _Kind.ADDRESS, target
        else:
            kind, value = _classify(target)
        if kind is _Kind.ADDRESS:
            add_address(value, owner)
        elif kind is _Kind.LOCAL_NO_ALIAS:
            if not value:
                raise AliasesError(f'empty local name {target!r}{_via(owner)}')
            add_local(value, owner)
        elif kind is _Kind.LOCAL:
            key = value.lower()
            if not key:
                raise AliasesError(f'empty local name {target!r}{_via(owner)}')
            if key in chain:
                add_local(value, owner)
            elif key in expanded:
                continue
            elif key in aliases:
                if len(chain) >= max_depth:
                    raise AliasesError(
                        f'aliases nested deeper than {max_depth} levels while expanding {value!r}'
                        f'{_via(owner)}'
                    )
                alias_targets = aliases[key]
                if not alias_targets:
                    raise AliasesError(f'alias {key!r} has no targets')
                expanded.add(key)
                chain.add(key)
                stack.append((key, iter(alias_targets)))
            else:
                add_local(value, owner)
        else:
            raise AliasesError(
                f'cannot deliver to {kind.value} target {value!r}{_via(owner)}: '
                'mail is only relayed to the SMTP smarthost'
            )

    if unresolved:
        raise UnresolvableRecipientError(unresolved)
    return result


def _is_address(text: str) -> bool:
    try:
        parse_address(text)
    except InvalidAddressError:
        return False
    return True


def _via(owner: Optional[str]) -> str:
    return f' (via alias {owner!r})' if owner is not None else ''
