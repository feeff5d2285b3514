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

__all__ = ['describe_location', 'init_store', 'known_schemes', 'open_queue', 'split_location']

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
        raise ValueError(f'unknown queue location scheme {scheme!r} in {location!r} (known: {known}, or a path)')
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


def describe_location(location: str) -> str:
    """The location without a password (for messages and logs)."""
    scheme, sep, rest = location.partition('://')
    if not sep:
        return location
    authority, slash, path = rest.partition('/')
    userinfo, at, host = authority.rpartition('@')
    if at and ':' in userinfo:
        authority = f'{userinfo.split(":", 1)[0]}:***@{host}'
    # libpq also takes the password as a query parameter
    path = re.sub(r'(?i)(^|[?&])(password=)[^&]*', r'\1\2***', path)
    return f'{scheme}://{authority}{slash}{path}'
