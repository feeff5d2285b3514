"""A ``postgresql://`` queue location read without psycopg: our parameters apart from libpq's.

Pure string work, so that a configuration file's ``queue_url`` is checked when it is loaded
(``mq-sendmail`` would otherwise meet a typo in ``mq_schema`` only on the day it must queue)
without importing psycopg into every tool's start. ``postgres`` opens what this accepts.

Our parameters (each at most once, with a value), removed before the URI goes to libpq:
``mq_schema`` (default ``mailqueue``), ``mq_lease`` (seconds, default 120), ``mq_pooling``
(``session`` or ``transaction``).
"""

from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Tuple
from urllib.parse import unquote

from ..errors import BadLocation
from .locations import has_raw_at, query_start

__all__ = ['DEFAULT_LEASE', 'DEFAULT_SCHEMA', 'MIN_LEASE', 'PGSettings', 'check_schema_name', 'read_location',
           'split_location']

DEFAULT_SCHEMA = 'mailqueue'
DEFAULT_LEASE = 120.0  # seconds
MIN_LEASE = 5.0
_SCHEMA_NAME = re.compile(r'[a-z_][a-z0-9_]{0,62}\Z')
_OUR_PARAMS = ('schema', 'lease', 'pooling')


class PGSettings(NamedTuple):
    conninfo: str  # the libpq URI without our parameters
    schema: str
    lease: float  # seconds
    pooling: str  # 'session' or 'transaction'


def split_location(location: str) -> Tuple[str, Dict[str, str]]:
    """``(libpq URI without our parameters, {our parameter: value})``; ``mq_x=1`` -> ``{'x': '1'}``.

    The rest of the URI is kept byte for byte (libpq decodes its own percent-escapes).
    """
    if has_raw_at(location):
        raise BadLocation('the user info of the PostgreSQL location holds a raw "@": write it as %40 '
                          '(postgresql://user:pa%40ss@host/db)')
    at = query_start(location)
    base, query = (location[:at], location[at + 1:]) if at >= 0 else (location, '')
    ours: Dict[str, str] = {}
    kept: List[str] = []
    for part in query.split('&') if at >= 0 else []:
        if not part:
            continue
        key, _, value = part.partition('=')
        if key.startswith('mq_'):
            name = key[3:]
            if name not in _OUR_PARAMS:
                known = ', '.join(f'mq_{p}' for p in _OUR_PARAMS)
                raise BadLocation(f'unknown queue parameter {key!r} in the PostgreSQL location (known: {known})')
            if name in ours:
                raise BadLocation(f'queue parameter {key} given twice in the PostgreSQL location')
            if not value:
                raise BadLocation(f'queue parameter {key} without a value in the PostgreSQL location')
            ours[name] = unquote(value)
        else:
            kept.append(part)
    return base + ('?' + '&'.join(kept) if kept else ''), ours


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema or ''):
        raise BadLocation(f'invalid PostgreSQL schema name {schema!r} for the queue (a lower-case letter or _, '
                          f'then lower-case letters, digits and _; at most 63)')
    return schema


def read_location(location: str, schema: Optional[str] = None, lease: Optional[object] = None,
                  pooling: Optional[str] = None) -> PGSettings:
    """The location's settings, the keyword arguments winning over its parameters; ``BadLocation``."""
    conninfo, ours = split_location(location)
    schema = check_schema_name(schema or ours.get('schema') or DEFAULT_SCHEMA)
    raw_lease = lease if lease is not None else ours.get('lease', DEFAULT_LEASE)
    try:
        lease_seconds = float(raw_lease)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadLocation(f'mq_lease: not a number of seconds: {raw_lease!r}') from None
    if not MIN_LEASE <= lease_seconds <= 86400:
        raise BadLocation(f'mq_lease: {lease_seconds:g} s is out of range ({MIN_LEASE:g} to 86400)')
    mode = (pooling or ours.get('pooling') or 'session').lower()
    if mode not in ('session', 'transaction'):
        raise BadLocation(f'mq_pooling: {mode!r} is neither session nor transaction')
    return PGSettings(conninfo, schema, lease_seconds, mode)
