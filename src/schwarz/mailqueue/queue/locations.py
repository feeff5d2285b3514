"""``open_queue(location)``: from a location string to a store.

- a path, or ``maildir:///path``: the maildir store (embedded default);
- ``memory://name``: the in-memory store (tests; one per name and process);
- ``postgresql://...``: the PostgreSQL store (extra ``[postgres]``).

Each store module is imported only when a location of its kind is opened, so
``mq-sendmail`` with a maildir never loads a database driver. A new store adds
one entry to ``_OPENERS``.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from .contract import QueueStore

__all__ = ['check_not_keywords', 'describe_location', 'init_store', 'known_schemes', 'open_queue', 'query_start',
           'split_location']

# scheme -> (module, factory function taking the rest of the location)
_OPENERS: Dict[str, Tuple[str, str]] = {
    'maildir': ('maildir', 'get_queue'),
    'memory': ('memory', 'memory_queue'),
    'postgresql': ('postgres', 'open_postgres_queue'),
    'postgres': ('postgres', 'open_postgres_queue'),
}


def split_location(location: str) -> Tuple[str, str]:
    """``(scheme, rest)``: a plain path is ``('maildir', path)``; ``maildir:///x`` is ``('maildir', '/x')``."""
    scheme, sep, rest = location.partition('://')
    if not sep or '/' in scheme or not scheme.replace('+', '').replace('-', '').isalnum():
        return 'maildir', location
    scheme = scheme.lower()
    if scheme == 'maildir':
        return scheme, rest  # maildir:///var/spool/x -> /var/spool/x (maildir://relative is relative)
    if scheme in ('postgresql', 'postgres'):
        return scheme, location  # libpq takes the whole URI
    return scheme, rest


def known_schemes() -> List[str]:
    return sorted(_OPENERS)


# libpq's other form, ``host=db dbname=mail user=mq``: not a path, and not accepted. A string made
# only of ``word=value`` pairs is taken for one (a directory could be named so, but hardly
# "host=db dbname=mail"); an absolute path never is.
# (patterns, not compiled here: mq-sendmail imports this module on every start)
_PAIR = r"""[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']*)"""
_PAIRS = rf'\s*{_PAIR}(?:\s+{_PAIR})*\s*'
_KEYWORDS = r'(?i)(?:^|\s)(?:host|hostaddr|dbname|user|password|port|service|sslmode)\s*='


def check_not_keywords(location: str) -> None:
    """A ValueError for a libpq ``key=value`` string (it would be taken for a queue directory)."""
    if location.startswith(('/', '~', '.')) or not re.fullmatch(_PAIRS, location):
        return
    if re.search(_KEYWORDS, location) or len(location.split()) > 1:
        raise ValueError(f'{describe_location(location)} looks like a libpq key=value string; write the '
                         f'PostgreSQL queue as a URI: postgresql://user@host/dbname?sslmode=... (docs/postgresql.md)')


def open_queue(location: Union[str, QueueStore], **options: object) -> QueueStore:
    """The store at ``location`` (an already open store is returned as it is).

    ``options`` are store settings that not every store has (e.g. ``stale_after``,
    the maildir's fallback for untrustworthy locks); a store ignores those it lacks.
    """
    if not isinstance(location, str):
        return location
    if not location.strip():
        raise ValueError('empty queue location')
    scheme, rest = split_location(location)
    opener = _OPENERS.get(scheme)
    if opener is None:
        known = ', '.join(sorted(_OPENERS))
        raise ValueError(f'unknown queue location scheme {scheme!r} in {describe_location(location)} '
                         f'(known: {known}, or a path)')
    if scheme == 'maildir':
        check_not_keywords(rest)
    module_name, factory_name = opener
    try:
        module = importlib.import_module(f'{__package__}.{module_name}')
    except ImportError as exc:
        raise ValueError(f'queue location {describe_location(location)} needs an optional dependency: {exc}; '
                         f'install mailqueue-runner[postgres]') from None
    factory: Callable[..., QueueStore] = getattr(module, factory_name)
    return factory(rest, **options)


def init_store(location: str) -> str:
    """Create or upgrade the store at ``location`` (``mq-queue init``); what was done, for humans.

    Idempotent: running it on a current store changes nothing.
    """
    scheme, rest = split_location(location)
    if scheme in ('postgresql', 'postgres'):
        from .postgres import init_schema

        before, after = init_schema(location)
        if before == after:
            return f'schema is current (version {after})'
        return f'schema created (version {after})' if before == 0 else f'schema upgraded: version {before} -> {after}'
    store = open_queue(location)  # the maildir creates its directories; memory needs nothing
    store.check()
    return 'ready'


def query_start(location: str) -> int:
    """Where a URI's query begins (its ``?``), or -1: after the user info, which may hold a ``?``
    (libpq: the user info ends at the first ``@`` before any ``/``)."""
    _scheme, sep, rest = location.partition('://')
    found = re.match(r'[^@/]*@', rest) if sep else None
    return location.find('?', len(location) - len(rest) + found.end() if found else 0)


def has_raw_at(location: str) -> bool:
    """The password of a ``scheme://user:pass@host`` location holds an unescaped ``@``: libpq
    would read part of it as the host (and print it in its error)."""
    _scheme, sep, rest = location.partition('://')
    # libpq: the user info ends at the first '@' before any '/' (a '?' does not end it); the
    # host that follows runs to the first '/' or '?' and cannot hold an '@'
    found = re.match(r'[^@/]*@', rest) if sep else None
    return bool(found) and '@' in re.split(r'[/?]', rest[found.end():], maxsplit=1)[0]  # type: ignore[union-attr]


def describe_location(location: str) -> str:
    """The location without a password (for messages and logs), also when it is malformed."""
    # libpq's key=value form
    location = re.sub(r"(?i)(^|\s)((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r'\1\2***', location)
    scheme, sep, rest = location.partition('://')
    if not sep:
        return location
    # libpq: the user info ends at the first '@' before any '/'; but a second '@' there most
    # likely belongs to a password with a raw '@' (libpq would read the rest as host or query;
    # has_raw_at refuses the clear cases): all of it is masked, if need be a query value too
    found = re.match(r'([^/]*)@', rest) if rest.split('/', 1)[0].count('@') > 1 else re.match(r'([^@/]*)@', rest)
    if found:
        user, colon, _password = found.group(1).partition(':')
        if colon:
            rest = f'{user}:***@{rest[found.end():]}'
    else:
        # no user info for libpq; but "user:pass/word@host" is a mistyped password, not a port
        authority = re.split(r'[/?]', rest, maxsplit=1)[0]
        ports = [part.partition(':')[2] for part in re.sub(r'\[[^\]]*\]', '', authority).split(',')]
        query_at = rest.find('?')
        at = rest.rfind('@', 0, query_at if query_at >= 0 else len(rest))
        if at > 0 and any(port and not port.isdigit() for port in ports):
            rest = f'{authority.partition(":")[0]}:***@{rest[at + 1:]}'
    path, query, params = rest.partition('?')
    if query:
        params = '&'.join(_masked_param(part) for part in params.split('&'))
    return f'{scheme}://{path}{query}{params}'


def _masked_param(part: str) -> str:
    from urllib.parse import unquote  # (only for a location with a query: not at mq-sendmail's start)

    key, equals, _value = part.partition('=')
    return f'{key}=***' if equals and unquote(key).strip().lower() in ('password', 'sslpassword') else part
