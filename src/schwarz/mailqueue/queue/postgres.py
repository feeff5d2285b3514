"""The PostgreSQL queue store (SPEC §11.2): many runners on many hosts share one queue.

Imported only when a ``postgresql://`` (or ``postgres://``) location is opened; it is the
only module that imports psycopg (extra ``[postgres]``).

Location: any libpq URI, plus our own query parameters, which are removed before the URI
goes to libpq:

- ``mq_schema=NAME``: the PostgreSQL schema holding the tables (default ``mailqueue``);
- ``mq_lease=SECONDS``: lease duration, the fallback when a runner's liveness cannot be
  seen (default 120; a heartbeat renews the leases of live runners every sixth of it);
- ``mq_pooling=transaction``: behind PgBouncer in transaction mode (no session advisory
  locks, no LISTEN, no prepared statements; recovery waits for the lease deadline).

The same settings can be given to ``open_postgres_queue(location, schema=..., lease=...,
pooling=...)``.

How it works (docs/postgresql.md has the operator's view):

- one table ``messages`` per schema; a message's state, envelope, schedule and lease are
  columns, its bytes a ``bytea`` that is never rewritten (out of line and uncompressed once a
  row exceeds about 2 kB, so updates of the small columns do not copy it);
- ``claim_due`` is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`` statement
  that sets a lease (owner, random token, deadline); every statement runs in autocommit, so
  no transaction stays open while SMTP talks;
- every later change is conditional on the lease token: zero rows changed means the lease
  was lost (``ClaimLost``), and nothing was touched;
- each store instance holds a session advisory lock from its first claim; a lease whose
  owner's lock is free belongs to a dead owner and ``recover()`` takes it back at once (on the
  owner's own machine, an ended owner process is recognised even before the server notices).
  A heartbeat thread extends the deadlines of the leases this instance holds every sixth of
  the lease; the deadline alone decides behind a transaction pooler;
- inserts into ``new`` ``NOTIFY`` (a trigger; PostgreSQL folds repeated notifications of one
  transaction into one) while a runner waits in ``wait_for_work`` (it ``LISTEN``\\ s and holds
  an advisory lock that tells the trigger so); with nobody waiting they skip it, since a
  notifying commit takes a lock for the whole server;
- ``complete`` deletes the row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import select
import socket
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.pq.abc import PGconn

from ..errors import BadLocation, ClaimLost, CorruptMessage, QueueMisconfigured, QueueUnavailable, StoreNotInitialised
from .contract import (
    CLAIMED,
    FAILED,
    NEW,
    NEXT_ATTEMPT,
    STATES,
    ClaimBatch,
    QueuedMessage,
    QueueEntry,
    StateCount,
    StoreSummary,
    apply_move,
    entering_meta,
    record_attempt,
)
from .format import (
    FAILED_REASON,
    LAST_ERROR,
    ORIGINAL_DATE,
    QueueMeta,
    check_date,
    check_envelope,
    check_meta,
    clean_value,
    format_date,
    parse_date,
)
from .locations import describe_location
from .pg_location import DEFAULT_LEASE, DEFAULT_SCHEMA, check_schema_name, read_location, split_location
from .schedule import CLOCK_SKEW_TOLERANCE, RetryPolicy

__all__ = [
    'DEFAULT_LEASE',
    'DEFAULT_SCHEMA',
    'SCHEMA_VERSION',
    'PostgresQueue',
    'SchemaMissing',
    'enqueue_in_transaction',
    'init_schema',
    'open_postgres_queue',
    'schema_version',
]

log = logging.getLogger('mailqueue')

#: the schema version this code needs; ``init_schema`` creates or upgrades to it
SCHEMA_VERSION = 2
_MAX_IDLE = 8  # idle connections kept per store instance and kind
_RETRY_WAIT_LOCK = 0.2  # seconds: a waiting runner without the wait lock tries to get it this often
_LOST_AFTER_DELIVERY = ('queue entry %s was delivered, but its lease was no longer ours (taken back or removed); '
                        'it may be delivered twice')
_SETTLE_TIMEOUT = 60.0  # seconds to wait for the server's answer to a completion sent earlier
# Session settings of the runner's connections (claim, complete, defer, release), not of those
# that enqueue or administer:
# - synchronous_commit off: such a commit returns before its WAL reaches the disk, so a server
#   crash (not a runner's) can forget the last fraction of a second of claims and completions.
#   Each such loss makes a message due again: a duplicate, never a loss (docs/postgresql.md,
#   duplicate windows). Enqueues stay synchronous: an accepted message is on disk.
# - enable_bitmapscan off: on a small table without statistics yet the planner would sort every
#   due row for each claim instead of reading the due index in order.
# - plan_cache_mode force_generic_plan: the claim's parameters (now, the limit) made PostgreSQL
#   plan it afresh on every execution (0.8 ms: half the server's time per claimed message); its
#   generic plan reads the due index in order as the custom ones do, at any size of the queue.
_RUNNER_SETTINGS = 'SET synchronous_commit = off; SET enable_bitmapscan = off; SET plan_cache_mode = force_generic_plan'
# Durations in SQL are clamped to this (100 years): a longer one means "never" and would
# overflow PostgreSQL's interval/timestamp arithmetic.
_MAX_SECONDS = 100 * 365.25 * 86400


class SchemaMissing(StoreNotInitialised):
    """The queue schema does not exist or is older than this code needs: run ``mq-queue init``."""


# --- locations ----------------------------------------------------------------------------------


def _shown(location: str) -> str:
    """The location without secrets, for logs and messages (other processes can open it too)."""
    return describe_location(location)


def _without_quotes(exc: BaseException) -> str:
    """libpq's complaint about a location without the parts it quotes (one may be the password)."""
    text = _first_line(exc)
    text = re.sub(r'(?:\s+in URI)?:\s*"[^"]*"?\s*\Z', '', text)  # the offending value at the end
    return re.sub(r'"[^"]*"', '"…"', text).strip() or 'cannot be parsed'


def _connect_error(location: str, exc: BaseException) -> QueueUnavailable:
    """Refused before anything was sent (an invalid setting, e.g. ``sslmode=bogus``): exit 78;
    the server down, unknown or refusing us: 75 (it may be back, or just being set up)."""
    text = _first_line(exc)
    return (QueueMisconfigured if _rejected_setting(text) else QueueUnavailable)(
        f'PostgreSQL queue {location}: cannot connect: {text}')


def _rejected_setting(text: str) -> bool:
    """Whether libpq (or psycopg) refused the connection settings before talking to a server."""
    if text.startswith('bad value for'):  # psycopg's own check (connect_timeout)
        return True
    if not text.startswith('connection is bad:'):
        return False
    # "… to server at X failed: Connection refused / FATAL: …" is the server side (75), but
    # "failed: invalid integer value …" is a setting; without "failed:" nothing was tried
    failed, sep, why = text.partition(' failed: ')
    return not sep or why.startswith('invalid ')


def _connect_kwargs(conninfo: str, pooling: str) -> Dict[str, Any]:
    """Connection settings we add unless the location sets them: TCP keepalives, a name, a timeout."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise BadLocation(f'invalid PostgreSQL location {_shown(conninfo)}: {_without_quotes(exc)}') from None
    wanted: Dict[str, Any] = {
        'keepalives': 1, 'keepalives_idle': 30, 'keepalives_interval': 10, 'keepalives_count': 3,
        'connect_timeout': 10, 'application_name': 'mailqueue-runner',
    }
    kwargs = {key: value for key, value in wanted.items() if key not in given}
    kwargs['autocommit'] = True
    if pooling == 'transaction':
        kwargs['prepare_threshold'] = None  # PgBouncer < 1.21 in transaction mode cannot keep them
    return kwargs


# --- SQL --------------------------------------------------------------------------------------


# the sort key of the due index: rows without a recorded next attempt come first
_DUE_KEY = "coalesce(next_attempt, '-infinity'::timestamptz)"


def _q(schema: str) -> str:
    return '"' + check_schema_name(schema) + '"'


def _migrations(schema: str) -> List[Tuple[int, str]]:
    """``(version, script)``: each script brings the schema from ``version - 1`` to ``version``."""
    s = _q(schema)
    v1 = f"""
CREATE TABLE {s}.messages (
    id           text COLLATE "C" PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('new', 'cur', 'hold', 'failed')),
    sender       text NOT NULL,
    recipients   text[] NOT NULL,
    msg          bytea NOT NULL,
    size         bigint NOT NULL,
    queue_date   timestamptz NOT NULL,
    last_attempt timestamptz,
    retries      integer NOT NULL DEFAULT 0,
    next_attempt timestamptz,
    last_error   text,
    extra        jsonb NOT NULL DEFAULT '{{}}',
    changed_at   timestamptz NOT NULL DEFAULT now(),
    claimed_from text CHECK (claimed_from IN ('new', 'hold', 'failed')),
    lease_owner  text,
    lease_key    bigint,
    lease_token  uuid,
    lease_until  timestamptz,
    pass_id      uuid,
    CONSTRAINT lease_iff_claimed CHECK ((state = 'cur') = (lease_token IS NOT NULL AND lease_until IS NOT NULL))
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);
ALTER TABLE {s}.messages ALTER COLUMN msg SET STORAGE EXTERNAL;
COMMENT ON TABLE {s}.messages IS 'mailqueue-runner: queued mail (completion deletes the row)';
-- due and ready: never tried (or due by the policy) first, then by next attempt; the claim's range scan
CREATE INDEX messages_due ON {s}.messages (({_DUE_KEY}), queue_date, id) WHERE state = 'new';
-- due although the next attempt lies ahead: the lifetime ran out, or a clock was wrong when it was written
CREATE INDEX messages_expiry ON {s}.messages (queue_date) WHERE state = 'new';
CREATE INDEX messages_skew ON {s}.messages (last_attempt) WHERE state = 'new' AND last_attempt IS NOT NULL;
CREATE INDEX messages_leased ON {s}.messages (lease_token) WHERE state = 'cur';
CREATE FUNCTION {s}.notify_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('{schema}', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_notify AFTER INSERT ON {s}.messages
    FOR EACH ROW WHEN (NEW.state = 'new') EXECUTE FUNCTION {s}.notify_new();
"""
    # v2: NOTIFY only while a runner waits. A transaction that notifies takes a lock for the
    # whole server at commit, so notifying enqueues commit one after another (no group commit):
    # 4 enqueuing processes reached 2 600 messages/s with it, 3 400 without. A waiting runner
    # holds the advisory lock _wait_key(schema) exclusively (wait_for_work); an insert that gets
    # it shared knows nobody waits, and holds it until its commit, so a runner that starts to
    # wait meanwhile finds the row when it looks once more after taking the lock.
    v2 = f"""
CREATE OR REPLACE FUNCTION {s}.notify_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared({_wait_key(schema)}) THEN
        PERFORM pg_catalog.pg_notify('{schema}', '');
    END IF;
    RETURN NULL;
END
$$;
"""
    return [(1, v1), (2, v2)]


def _wait_key(schema: str) -> int:
    """The advisory lock a runner waiting for new mail in ``schema`` holds (a positive bigint)."""
    return int.from_bytes(hashlib.sha256(f'mailqueue-wait:{schema}'.encode()).digest()[:8], 'big') >> 1


# An advisory lock with a bigint key shows its high half in classid, its low half in objid.
_LIVE_KEYS = """(SELECT (l.classid::int8 << 32) | l.objid::int8 FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))"""
# a lease nobody can be working on: past its deadline, or its owner's session is gone
_ABANDONED = f"(lease_until <= now() OR (lease_key IS NOT NULL AND lease_key NOT IN {_LIVE_KEYS}))"
_META = 'sender, recipients, queue_date, last_attempt, retries, next_attempt, last_error, extra'
_ENTRY = (f"id, state, size, changed_at, {_META}, "
          f"CASE WHEN state = 'cur' THEN NOT {_ABANDONED} END AS active, lease_owner")
_STATE_ORDER = "CASE state WHEN 'new' THEN 0 WHEN 'cur' THEN 1 WHEN 'hold' THEN 2 ELSE 3 END"
_CLEAR_LEASE = ('claimed_from = NULL, lease_owner = NULL, lease_key = NULL, lease_token = NULL, '
                'lease_until = NULL, changed_at = now()')
_SET_LEASE = ("lease_token = gen_random_uuid(), lease_key = %(key)s, lease_owner = %(owner)s, "
              "lease_until = now() + %(lease)s * interval '1 second', changed_at = now()")

# Due at %(now)s under the caller's RetryPolicy: exactly contract.is_due, as one predicate.
# claim_due splits it in two index range scans: rows whose due key (next attempt, or -infinity
# without one) is not after now, checked with the whole predicate; and the few rows whose next
# attempt lies ahead but that are due all the same (_DUE_AHEAD).
_DUE = """(
    (next_attempt IS NOT NULL AND next_attempt <= %(now)s)
    OR (next_attempt IS NULL AND (retries <= 0 OR last_attempt IS NULL
        OR last_attempt + least(%(min_delay)s * power(2::float8, least(retries - 1, 64)), %(max_delay)s)
                          * interval '1 second' <= %(now)s))
    OR last_attempt > %(now)s + %(skew)s * interval '1 second'
    OR queue_date + %(lifetime)s * interval '1 second' <= %(now)s
    OR (%(max_attempts)s::integer IS NOT NULL AND retries >= %(max_attempts)s::integer)
)"""


# (both ranges have an index of their own; a policy with max_attempts adds a condition without one)
_DUE_AHEAD = """(
    queue_date <= %(now)s - %(lifetime)s * interval '1 second'
    OR last_attempt > %(now)s + %(skew)s * interval '1 second'{max_attempts}
)"""


def _count_oldest(counted: StateCount, msg_id: str, queue_date: Optional[datetime], original: Optional[str]) -> None:
    """Let ``msg_id`` be the oldest of its state if it first entered the queue before the one so far."""
    born = queue_date
    if original is not None:
        try:
            born = parse_date(original)
        except (TypeError, ValueError):
            pass  # as the maildir's listing does: the queue date then
    if born is not None and (counted.oldest is None or (born, msg_id) < (counted.oldest, counted.oldest_id or '')):
        counted.oldest, counted.oldest_id = born, msg_id


def _policy_params(policy: RetryPolicy, now: datetime) -> Dict[str, Any]:
    """The parameters of ``_DUE``."""
    return {
        'now': _utc(now), 'min_delay': _seconds(policy.min_delay), 'max_delay': _seconds(policy.max_delay),
        'lifetime': _seconds(policy.max_queue_lifetime), 'skew': CLOCK_SKEW_TOLERANCE.total_seconds(),
        'max_attempts': policy.max_attempts,
    }


def _insert_sql(schema: str) -> str:
    return (f'INSERT INTO {_q(schema)}.messages (id, state, sender, recipients, msg, size, queue_date, '
            f'last_error, extra) VALUES (%s, %s, %s, %s::text[], %s, %s, %s, %s, %s::jsonb)')


def _retries(count: int) -> int:
    """The column is an ``integer``; a maildir file may say more (a count that high only ever
    means "very many": the policy has long given up)."""
    return min(max(int(count), 0), 2**31 - 1)


def _seconds(delta: timedelta) -> float:
    return min(max(delta.total_seconds(), 0.0), _MAX_SECONDS)


def _utc(value: Optional[datetime]) -> Optional[datetime]:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _new_id() -> str:
    return secrets.token_hex(8)


def _split_extra(extra: Dict[str, str]) -> Tuple[Dict[str, str], Optional[str], Optional[datetime]]:
    """``(jsonb extra, last_error, next_attempt)``: two meta values have columns of their own."""
    # the maildir's rule for meta values (one line, no NUL, UTF-8): text and jsonb refuse NUL, and
    # a value that cannot be written must not stop a deferral (the message would be held instead)
    rest = {name: clean_value(value) for name, value in extra.items()}
    last_error = rest.pop(LAST_ERROR, None)
    recorded = rest.pop(NEXT_ATTEMPT, None)
    next_attempt: Optional[datetime] = None
    if recorded:
        try:
            next_attempt = parse_date(recorded)
        except ValueError:
            next_attempt = None  # unreadable: the policy decides, as in a queue file
    return rest, last_error, next_attempt


def _meta_from(row: Sequence[Any]) -> QueueMeta:
    """QueueMeta from the ``_META`` columns."""
    sender, recipients, queue_date, last_attempt, retries, next_attempt, last_error, extra = row
    meta = QueueMeta(sender, list(recipients), _utc(queue_date), _utc(last_attempt), int(retries),
                     {str(k): str(v) for k, v in (extra or {}).items()})
    if last_error is not None:
        meta.extra[LAST_ERROR] = last_error
    if next_attempt is not None:
        meta.extra[NEXT_ATTEMPT] = format_date(_utc(next_attempt))  # type: ignore[arg-type]
    return meta


def _copy(meta: QueueMeta) -> QueueMeta:
    return QueueMeta(meta.from_addr, list(meta.to_addrs), meta.queue_date, meta.last_delivery_attempt,
                     meta.retries, dict(meta.extra))


# --- schema management ------------------------------------------------------------------------


def _version_of(conn: psycopg.Connection[Any], schema: str) -> Optional[int]:
    """The schema's version; None when there is no queue schema."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'{_q(schema)}.schema_version']).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(f'SELECT max(version) FROM {_q(schema)}.schema_version').fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _missing(schema: str, where: str, found: Optional[int]) -> SchemaMissing:
    if found is None or found == 0:
        problem = f'the queue schema "{schema}" does not exist in {where} (or holds no queue tables)'
    else:
        problem = f'the queue schema "{schema}" in {where} is at version {found}, this version needs {SCHEMA_VERSION}'
    return SchemaMissing(f'{problem}; run `mq-queue init` (with a role that may create it)')


def init_schema(location: str, *, schema: Optional[str] = None) -> Tuple[int, int]:
    """Create or upgrade the queue schema; ``(version before, version after)`` (0: there was none).

    Idempotent and safe to run from several hosts at once (one transaction, serialized by an
    advisory lock). ``mq-queue init`` calls it. ``QueueUnavailable`` when the database cannot
    be reached or the schema is newer than this code.
    """
    conninfo, schema, _, pooling = read_location(location, schema, None, None)
    kwargs = _connect_kwargs(conninfo, pooling)
    kwargs['autocommit'] = False
    s = _q(schema)
    try:
        with psycopg.connect(conninfo, **kwargs) as conn:
            with conn.transaction():
                conn.execute('SELECT pg_advisory_xact_lock(%s)', [_init_lock_key(schema)])
                if not conn.execute('SELECT 1 FROM pg_namespace WHERE nspname = %s', [schema]).fetchone():
                    conn.execute(f'CREATE SCHEMA {s}')  # an admin owning the schema needs no CREATE on the database
                conn.execute(f'CREATE TABLE IF NOT EXISTS {s}.schema_version ('
                             f'version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
                before = _version_of(conn, schema) or 0
                if before > SCHEMA_VERSION:
                    raise QueueMisconfigured(f'the queue schema "{schema}" is at version {before}, newer than this '
                                             f'mailqueue-runner knows ({SCHEMA_VERSION}): upgrade mailqueue-runner')
                for version, script in _migrations(schema):
                    if version > before:
                        conn.execute(script)
                        conn.execute(f'INSERT INTO {s}.schema_version (version) VALUES (%s)', [version])
    except pg_errors.InsufficientPrivilege as exc:
        raise QueueMisconfigured(f'PostgreSQL queue {_shown(location)}: cannot initialise: {_first_line(exc)} '
                                 f'(see docs/postgresql.md: roles)') from None
    except psycopg.Error as exc:
        if _rejected_setting(_first_line(exc)):
            raise _connect_error(_shown(location), exc) from None
        raise QueueUnavailable(f'PostgreSQL queue {_shown(location)}: cannot initialise: {_first_line(exc)}') from None
    return before, SCHEMA_VERSION


def schema_version(location: str, *, schema: Optional[str] = None) -> Optional[int]:
    """The version of the queue schema at ``location``; None when there is none."""
    conninfo, schema, _, pooling = read_location(location, schema, None, None)
    try:
        with psycopg.connect(conninfo, **_connect_kwargs(conninfo, pooling)) as conn:
            return _version_of(conn, schema)
    except psycopg.Error as exc:
        raise QueueUnavailable(f'PostgreSQL queue {_shown(location)}: {_first_line(exc)}') from None


def _init_lock_key(schema: str) -> int:
    return int.from_bytes(('mqinit:' + schema).encode()[:8].ljust(8, b'\0'), 'big') >> 1


# --- owners on this machine -------------------------------------------------------------------
#
# A lease names its owner as 'host:pid:machine:start' (machine: boot id and PID namespace;
# start: the process's start time). The owner's advisory lock is the truth for every host, but
# its server session ends a moment after the process: on the owner's own machine a process that
# no longer exists (or whose pid now belongs to a younger process) is known dead at once, as
# the kernel releases a dead process's flock at once.


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding='ascii', errors='replace') as f:
            return f.read()
    except OSError:
        return None


def _machine() -> str:
    """This machine and PID namespace ('' where /proc cannot tell: no shortcut there)."""
    boot = _read('/proc/sys/kernel/random/boot_id')
    try:
        namespace = os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return ''
    if not boot:
        return ''
    return hashlib.sha256(f'{boot.strip()}:{namespace}'.encode()).hexdigest()[:16]


def _start_time(pid: int) -> Optional[str]:
    stat = _read(f'/proc/{pid}/stat')
    if stat is None:
        return None
    fields = stat.rpartition(')')[2].split()
    if len(fields) <= 19 or fields[0] in ('Z', 'X'):  # a zombie has ended: only its parent has not looked yet
        return None
    return fields[19]  # field 22 of proc(5): starttime


_MACHINE = _machine()


def _owner_name() -> str:
    pid = os.getpid()
    return f'{socket.gethostname()}:{pid}:{_MACHINE}:{_start_time(pid) or ""}'


def _owner_gone(owner: Optional[str]) -> bool:
    """True only for an owner on this machine whose process has ended; False when unsure."""
    if not owner or not _MACHINE:
        return False
    parts = owner.rsplit(':', 3)
    if len(parts) != 4 or parts[2] != _MACHINE or not parts[1].isdigit() or not parts[3]:
        return False
    return _start_time(int(parts[1])) != parts[3]


def _wait_for(fd: int, event: int, timeout: float) -> None:
    """Until ``fd`` is ready for ``event`` (select.POLLIN/POLLOUT) or ``timeout`` seconds pass."""
    poller = select.poll()  # (select.select fails on descriptors above 1023)
    poller.register(fd, event)
    poller.poll(timeout * 1000)


def _first_line_of(message: bytes) -> str:
    return message.decode('utf-8', 'replace').strip().splitlines()[0] if message.strip() else 'unknown error'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- transactional enqueue --------------------------------------------------------------------


def enqueue_in_transaction(connection: Any, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                           schema: Optional[str] = None, location: Optional[str] = None,
                           queue_date: Optional[datetime] = None, extra: Optional[Dict[str, str]] = None) -> str:
    """Queue a message through the application's own DB-API connection (psycopg 2 or 3); the id.

    Nothing is committed here: the message exists if and only if the caller's transaction
    commits (transactional outbox). A runner is woken up at commit (the insert trigger's NOTIFY).
    A failing insert leaves the caller's transaction aborted, so the application's own
    changes cannot commit without their mail.

    The queue's schema: ``schema``, else the ``mq_schema`` of ``location`` (a queue location;
    only its schema is used, the connection is the caller's), else ``mailqueue``.
    """
    if schema is None:
        schema = split_location(location)[1].get('schema') if location else None
    schema = check_schema_name(schema or DEFAULT_SCHEMA)
    if not recipients:
        raise ValueError('cannot queue a message without recipients')
    sender = sender or ''
    check_envelope(sender, list(recipients))
    check_date('queue date', queue_date)
    rest, last_error, _ = _split_extra(dict(extra or {}))
    msg_bytes = bytes(msg_bytes)
    msg_id = _new_id()
    params = (msg_id, NEW, sender, list(recipients), msg_bytes, len(msg_bytes),
              _utc(queue_date) or datetime.now(timezone.utc), last_error, json.dumps(rest))
    cursor = connection.cursor()
    try:
        cursor.execute(_insert_sql(schema), params)
    except Exception as exc:
        code = getattr(exc, 'sqlstate', None) or getattr(exc, 'pgcode', None)
        if code in ('42P01', '3F000'):  # undefined_table, invalid_schema_name
            raise _missing(schema, 'the database of this connection', None) from exc
        if code == '42501':  # insufficient_privilege: as through a location, an operator must act
            raise QueueMisconfigured(f'cannot queue the message in schema "{schema}": {_first_line(exc)} '
                                     f'(see docs/postgresql.md: roles)') from exc
        if code is not None:
            raise QueueUnavailable(f'cannot queue the message in schema "{schema}": {_first_line(exc)}') from exc
        raise
    finally:
        close = getattr(cursor, 'close', None)
        if close is not None:
            close()
    return msg_id


# --- the store --------------------------------------------------------------------------------


class PostgresQueue:
    """A queue in a PostgreSQL schema. Thread-safe; one instance per runner process is enough.

    Claims belong to the instance (its owner key). Connections are opened on first use and
    pooled (autocommit; one per concurrently working thread, a few kept idle). An instance
    can be used again after ``close()`` (it reconnects); in a forked child it starts afresh.
    """

    kind = 'postgresql'
    #: seconds: a pooled connection idle for longer is checked before use
    ping_after = 10.0
    #: seconds: how often ``wait_for_work`` looks for claims of dead runners while it waits
    abandoned_check = 1.0

    def __init__(self, location: str, *, schema: Optional[str] = None, lease: Optional[object] = None,
                 pooling: Optional[str] = None, **ignored: object) -> None:
        self._conninfo, self.schema, self.lease, self.pooling = read_location(location, schema, lease, pooling)
        self._kwargs = _connect_kwargs(self._conninfo, self.pooling)
        self.location = _shown(location)
        self._raw_location = location
        self._table = f'{_q(self.schema)}.messages'
        self.channel = self.schema  # NOTIFY channel of inserts into new
        self._wait_key = _wait_key(self.schema)
        self._lock = threading.Lock()
        order = f'{_DUE_KEY}, queue_date, id'  # the due index
        self._sql_claim_all = self._claim_sql('TRUE', order)
        self._sql_claim_due = self._claim_sql(f'{_DUE_KEY} <= %(now)s AND {_DUE}', order)
        self._sql_claim_ahead = self._claim_sql(
            f"next_attempt > %(now)s AND {_DUE_AHEAD.format(max_attempts='')}", 'queue_date, id')
        self._sql_claim_ahead_attempts = self._claim_sql(
            f"next_attempt > %(now)s AND {_DUE_AHEAD.format(max_attempts=' OR retries >= %(max_attempts)s')}",
            'queue_date, id')
        self._reset()

    def _reset(self) -> None:
        """Fresh per-process state (also in a forked child: the parent's connections are not ours)."""
        self._pid = os.getpid()
        # (connection, idle since) by kind: False for enqueue/admin, True for the runner's
        self._idle: Dict[bool, List[Tuple[psycopg.Connection[Any], float]]] = {False: [], True: []}
        # counts _drop_idle's: a connection lent out before one may have lost its session as well
        # and goes back to no pool (a statement sent on it could not tell whether it ran)
        self._generation = 0
        self._checked = False
        self._owner_lock = threading.Lock()
        self._owner_conn: Optional[psycopg.Connection[Any]] = None
        self._owner_key: Optional[int] = None
        self._owner_name = _owner_name()
        self._heartbeat: Optional[threading.Thread] = None
        self._stop = threading.Event()
        # lease token -> claimed message; a message dropped without ending its claim stops being
        # renewed and its lease runs out (the counterpart of a garbage-collected file lock)
        self._leases: weakref.WeakValueDictionary[uuid.UUID, QueuedMessage] = weakref.WeakValueDictionary()
        self._leases_lock = threading.Lock()
        self._pass_id = uuid.uuid4()
        self._listen_lock = threading.Lock()
        self._listen_conn: Optional[psycopg.Connection[Any]] = None
        self._checked_abandoned = 0.0  # monotonic time of wait_for_work's last look for dead runners
        self._waiting = False  # the listener session holds _wait_key: enqueues notify us
        self._unnoticed = False  # a pass ended without the wait lock: something may have slipped by
        self._refused: Optional[QueueMisconfigured] = None  # a statement refused for want of a privilege
        # complete(wait=False): a libpq connection that sends the DELETE and reads its result later
        self._completer_lock = threading.Lock()
        self._completer: Optional[PGconn] = None
        self._completer_used = 0.0  # monotonic time of its last statement
        # (id, lease token) of the completion that awaits the server's answer
        self._in_flight: Optional[Tuple[str, uuid.UUID]] = None

    def __repr__(self) -> str:
        return f'PostgresQueue({self.location!r})'

    # --- connections --------------------------------------------------------------------------

    def _forked(self) -> None:
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    # psycopg never closes a connection of another process; just forget them
                    self._reset()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, **self._kwargs)
        except psycopg.Error as exc:
            raise _connect_error(self.location, exc) from None

    def _pooled(self, runner: bool) -> Optional[psycopg.Connection[Any]]:
        """An idle connection that still works (one idle for a while is asked first: the server
        may have restarted, and a statement sent on a dead connection cannot tell whether it ran)."""
        idle = self._idle[runner]
        while True:
            with self._lock:
                if not idle:
                    return None
                conn, since = idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since < self.ping_after:
                return conn
            try:
                conn.execute('SELECT 1')
                return conn
            except psycopg.Error:
                conn.close()

    @contextmanager
    def _conn(self, runner: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; database errors become queue errors.

        ``runner``: one with ``_RUNNER_SETTINGS`` (behind a transaction pooler, where session
        settings would leak to other clients, an ordinary one).
        """
        self._forked()
        if self._in_flight is not None:
            self._settle()  # what this store completed is gone for whatever it does next
        runner = runner and self.pooling == 'session'
        generation = self._generation
        conn = self._pooled(runner)
        try:
            with self._translated():
                if conn is None:
                    conn = self._connect()
                    if runner:
                        conn.execute(_RUNNER_SETTINGS)
                if not self._checked:
                    self._check_version(conn)
                yield conn
        finally:
            kept = False
            if conn is not None and conn.closed and os.getpid() == self._pid:
                # lost (a server restart, a failover, an admin ending our sessions): the idle
                # ones are most likely gone too, and a statement sent on one cannot tell
                self._drop_idle()
            if (conn is not None and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
                    and os.getpid() == self._pid):
                with self._lock:
                    if len(self._idle[runner]) < _MAX_IDLE and generation == self._generation:
                        self._idle[runner].append((conn, time.monotonic()))
                        kept = True
            if conn is not None and not kept and os.getpid() == self._pid:
                conn.close()

    def _drop_idle(self) -> None:
        if os.getpid() != self._pid:
            return  # (a forked child must not close its parent's connections)
        with self._lock:
            self._generation += 1
            idle = [conn for pool in self._idle.values() for conn, _since in pool]
            for pool in self._idle.values():
                pool.clear()
        for conn in idle:
            conn.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName, pg_errors.UndefinedColumn):
            self._checked = False
            raise _missing(self.schema, self.location, None) from None
        except pg_errors.InsufficientPrivilege as exc:
            refused = QueueMisconfigured(f'PostgreSQL queue {self.location}: {_first_line(exc)} '
                                         f'(see docs/postgresql.md: roles)')
            # a runner whose role lost a privilege (say DELETE) must stop claiming: it would go on
            # delivering mail whose removal it cannot record, each message again after its lease
            self._refused = refused
            raise refused from None
        except psycopg.Error as exc:
            raise QueueUnavailable(f'PostgreSQL queue {self.location}: {_first_line(exc)}') from None

    def _check_version(self, conn: psycopg.Connection[Any]) -> None:
        found = _version_of(conn, self.schema)
        if found is None or found < SCHEMA_VERSION:
            raise _missing(self.schema, self.location, found)
        if found > SCHEMA_VERSION:
            raise QueueMisconfigured(f'PostgreSQL queue {self.location}: the schema "{self.schema}" is at version '
                                     f'{found}, newer than this mailqueue-runner knows ({SCHEMA_VERSION}): '
                                     f'upgrade mailqueue-runner')
        self._checked = True

    # --- the owner: advisory lock and heartbeat -------------------------------------------------

    def _owner(self) -> Optional[int]:
        """Our advisory lock key, taken on first claim (None behind a transaction pooler)."""
        self._forked()
        if self.pooling == 'transaction':
            self._start_heartbeat()
            return None
        with self._owner_lock:
            conn = self._owner_conn
            if conn is None or conn.closed:
                self._owner_conn = None
                conn = self._connect()
                try:
                    with self._translated():
                        key = self._owner_key or (secrets.randbits(62) + 1)
                        while not conn.execute('SELECT pg_try_advisory_lock(%s)', [key]).fetchone()[0]:  # type: ignore[index]
                            key = secrets.randbits(62) + 1  # taken (by a session of ours that lingers?)
                except BaseException:
                    conn.close()
                    raise
                self._owner_conn, self._owner_key = conn, key
            self._start_heartbeat()
            return self._owner_key

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name='mq-pg-heartbeat', daemon=True)
            self._heartbeat.start()

    @property
    def heartbeat_interval(self) -> float:
        return self.lease / 6

    def _beat(self) -> None:
        """Renew our leases every sixth of the lease; re-take the advisory lock after a reconnect."""
        stop = self._stop
        while not stop.wait(self.heartbeat_interval):
            try:
                self.renew_leases()
            except Exception as exc:  # keep beating: the next try may reach the server again
                log.warning('PostgreSQL queue %s: cannot renew leases: %s', self.location, exc)

    def renew_leases(self) -> int:
        """Extend the deadline of every lease this instance holds; how many (the heartbeat calls it)."""
        with self._leases_lock:
            tokens = list(self._leases.keys())
        if self.pooling == 'transaction':
            if not tokens:
                return 0
            with self._conn() as pooled:
                return self._renew(pooled, tokens)
        for attempt in (1, 2):
            self._owner()  # (re)connects and takes the lock again when the session was lost
            with self._owner_lock:
                conn = self._owner_conn
                if conn is None:
                    return 0  # closed meanwhile
                try:
                    with self._translated():
                        if not tokens:
                            conn.execute('SELECT 1')  # notice a lost session early
                            return 0
                        return self._renew(conn, tokens)
                except QueueUnavailable:
                    if attempt == 2 or not conn.closed:
                        raise
                    self._owner_conn = None  # the session is gone, and its lock with it: once more
        return 0  # pragma: no cover - the loop returns or raises

    def _renew(self, conn: psycopg.Connection[Any], tokens: List[uuid.UUID]) -> int:
        cur = conn.execute(f"UPDATE {self._table} SET lease_until = now() + %s * interval '1 second' "
                           f"WHERE state = 'cur' AND lease_token = ANY(%s)", [self.lease, tokens])
        return cur.rowcount

    def _lease_params(self) -> Dict[str, Any]:
        return {'key': self._owner(), 'owner': self._owner_name, 'lease': self.lease}

    def _claimed(self, msg_id: str, token: uuid.UUID, meta: QueueMeta, msg_bytes: bytes) -> QueuedMessage:
        msg = QueuedMessage(self, msg_id, meta, bytes(msg_bytes), token)
        with self._leases_lock:
            self._leases[token] = msg
        return msg

    def _ended(self, msg: QueuedMessage) -> None:
        token = msg.token
        msg.token = None
        if isinstance(token, uuid.UUID):
            with self._leases_lock:
                self._leases.pop(token, None)

    # --- writing new messages ---------------------------------------------------------------

    def _insert(self, conn: psycopg.Connection[Any], state: str, msg_bytes: bytes, meta: QueueMeta,
                lease: Optional[Dict[str, Any]] = None) -> Tuple[str, Optional[uuid.UUID]]:
        """Insert a row (the callers have checked the envelope); ``(id, lease token or None)``."""
        rest, last_error, next_attempt = _split_extra(meta.extra)
        for _ in range(5):
            msg_id = _new_id()
            params: Dict[str, Any] = {
                'id': msg_id, 'state': state, 'sender': meta.from_addr, 'recipients': list(meta.to_addrs),
                'msg': msg_bytes, 'size': len(msg_bytes), 'queue_date': _utc(meta.queue_date),
                'last_error': last_error, 'extra': json.dumps(rest), 'next_attempt': next_attempt,
                'last_attempt': _utc(meta.last_delivery_attempt), 'retries': _retries(meta.retries),
            }
            if lease is None:
                sql = (f'INSERT INTO {self._table} (id, state, sender, recipients, msg, size, queue_date, '
                       f'last_error, extra, next_attempt, last_attempt, retries) VALUES (%(id)s, %(state)s, '
                       f'%(sender)s, %(recipients)s::text[], %(msg)s, %(size)s, %(queue_date)s, %(last_error)s, '
                       f'%(extra)s::jsonb, %(next_attempt)s, %(last_attempt)s, %(retries)s)')
                # no RETURNING here: an enqueue-only role may not SELECT
            else:
                params.update(lease)
                sql = (f'INSERT INTO {self._table} (id, state, sender, recipients, msg, size, queue_date, '
                       f'last_error, extra, next_attempt, claimed_from, lease_token, lease_key, lease_owner, '
                       f'lease_until, changed_at) VALUES (%(id)s, %(state)s, %(sender)s, %(recipients)s::text[], '
                       f'%(msg)s, %(size)s, %(queue_date)s, %(last_error)s, %(extra)s::jsonb, %(next_attempt)s, '
                       f"'new', gen_random_uuid(), %(key)s, %(owner)s, now() + %(lease)s * interval '1 second', "
                       f'now()) RETURNING lease_token')
            try:
                cur = conn.execute(sql, params)
            except pg_errors.UniqueViolation:
                continue  # 64 random bits met an existing id: draw again
            row = cur.fetchone() if lease is not None else None
            return msg_id, (row[0] if row else None)
        raise QueueUnavailable(f'PostgreSQL queue {self.location}: cannot find a free message id')

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                queue_date: Optional[datetime] = None, extra: Optional[Dict[str, str]] = None,
                attempted: Optional[datetime] = None, retries: Optional[int] = None) -> str:
        meta = entering_meta(sender, recipients, queue_date=queue_date, extra=extra, attempted=attempted,
                             retries=retries)
        check_meta(meta)  # refused before connecting
        with self._conn() as conn:
            return self._insert(conn, NEW, bytes(msg_bytes), meta)[0]

    def enqueue_claimed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                        queue_date: Optional[datetime] = None) -> QueuedMessage:
        if not recipients:
            raise ValueError('cannot queue a message without recipients')
        meta = QueueMeta(sender or '', list(recipients), queue_date or datetime.now(timezone.utc))
        check_meta(meta)
        lease = self._lease_params()
        with self._conn() as conn:
            msg_id, token = self._insert(conn, CLAIMED, bytes(msg_bytes), meta, lease)
        assert token is not None
        return self._claimed(msg_id, token, meta, msg_bytes)

    def store_dead_letter(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        meta = QueueMeta(sender or '', list(recipients), datetime.now(timezone.utc), extra={FAILED_REASON: reason})
        check_meta(meta)
        with self._conn() as conn:
            return self._insert(conn, FAILED, bytes(msg_bytes), meta)[0]

    # --- claiming ---------------------------------------------------------------------------

    def _claim_sql(self, due: str, order: str) -> str:
        """One statement: pick and lease up to %(limit)s rows matching ``due``, skipping rows others lock."""
        return (f"UPDATE {self._table} AS m SET state = 'cur', claimed_from = 'new', pass_id = %(pass)s, "
                f"{_SET_LEASE} FROM (SELECT id FROM {self._table} WHERE state = 'new' "
                f"AND pass_id IS DISTINCT FROM %(pass)s AND {due} ORDER BY {order} "
                f"LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS due "
                f"WHERE m.id = due.id RETURNING m.id, m.lease_token, m.msg, "
                + ', '.join(f'm.{column.strip()}' for column in _META.split(',')))

    def claim_due(self, limit: int, *, now: datetime, policy: RetryPolicy,
                  force: bool = False) -> ClaimBatch:
        batch = ClaimBatch()
        if limit <= 0:
            return batch
        params = self._lease_params()
        params.update(_policy_params(policy, now))
        params.update({'pass': self._pass_id})
        while True:
            rows = self._claim_rows(params, limit, force, policy)
            if rows:
                self._stop_waiting()  # busy: enqueues need not NOTIFY us
            elif not self._waiting:
                # what commits from now until wait_for_work takes the wait lock does not NOTIFY
                self._unnoticed = True
            rows.sort(key=lambda row: (row[5], row[0]))  # queue date, id
            for row in rows:
                msg_id, token, msg_bytes = row[0], row[1], row[2]
                meta = _meta_from(row[3:])
                msg = self._claimed(msg_id, token, meta, msg_bytes)
                if self._corrupt(msg):
                    batch.corrupt += 1
                    continue
                batch.append(msg)
            if not rows:
                self._pass_id = uuid.uuid4()  # an empty batch ends the pass
            # only corrupt rows (now failed): an empty batch would end the caller's pass early
            if batch or not rows:
                return batch

    def _claim_rows(self, params: Dict[str, Any], limit: int, force: bool, policy: RetryPolicy) -> List[Any]:
        with self._conn(runner=True) as conn:
            refused, self._refused = self._refused, None
            if refused is not None:  # (also one found settling a completion just now)
                raise refused  # once: a process that goes on (not a daemon) may find it granted again
            params['limit'] = int(limit)
            if force:
                return conn.execute(self._sql_claim_all, params).fetchall()
            rows = conn.execute(self._sql_claim_due, params).fetchall()
        if len(rows) < limit:
            # the end of the due range: what is due although its next attempt lies ahead. On an
            # ordinary connection: its OR of two ranges needs the bitmap scans the runner's lack
            params['limit'] = limit - len(rows)
            ahead = self._sql_claim_ahead if policy.max_attempts is None else self._sql_claim_ahead_attempts
            try:
                with self._conn() as conn:
                    rows += conn.execute(ahead, params).fetchall()
            except QueueUnavailable:
                if not rows:
                    raise
                # what the first statement claimed is ours: deliver it (unknown to us, it would
                # wait a whole lease); the next claim tries the rest again
                log.warning('PostgreSQL queue %s: the end-of-pass claim failed; going on with %d message(s)',
                            self.location, len(rows))
        return rows

    def _corrupt(self, msg: QueuedMessage) -> bool:
        """A row that we could not have queued (written around us): to failed, never to SMTP."""
        try:
            check_envelope(msg.meta.from_addr, msg.meta.to_addrs)
        except ValueError as exc:
            log.error('queue entry %s moved to failed: invalid envelope: %s', msg.msg_id, exc)
            try:
                self.fail(msg, f'invalid envelope: {exc}')
            except ClaimLost:
                pass
            return True
        return False

    def claim(self, msg_id: str, state: str = NEW) -> Optional[QueuedMessage]:
        if state not in STATES:
            return None
        params = self._lease_params()
        params.update({'id': msg_id, 'state': state})
        returning = f'RETURNING lease_token, msg, {_META}'
        with self._conn() as conn:
            if state != CLAIMED:
                row = conn.execute(f"UPDATE {self._table} SET state = 'cur', claimed_from = state, {_SET_LEASE} "
                                   f"WHERE id = %(id)s AND state = %(state)s {returning}", params).fetchone()
            else:
                # take over an abandoned claim: first find its token (liveness read after the
                # snapshot), then change the row only if that lease is still the same one
                found = conn.execute(f"SELECT lease_token, {_ABANDONED}, lease_owner FROM {self._table} "
                                     f"WHERE id = %(id)s AND state = 'cur'", params).fetchone()
                if found is None or not (found[1] or _owner_gone(found[2])):
                    return None
                params['old'] = found[0]
                row = conn.execute(f"UPDATE {self._table} SET claimed_from = 'new', {_SET_LEASE} "
                                   f"WHERE id = %(id)s AND state = 'cur' AND lease_token = %(old)s {returning}",
                                   params).fetchone()
        if row is None:
            return None
        msg = self._claimed(msg_id, row[0], _meta_from(row[2:]), row[1])
        if self._corrupt(msg):
            raise CorruptMessage(f'{msg_id}: invalid envelope; moved to failed')
        return msg

    # --- ending a claim ---------------------------------------------------------------------

    def _token(self, msg: QueuedMessage) -> uuid.UUID:
        token = msg.token
        if not isinstance(token, uuid.UUID):
            msg.token = None
            raise ClaimLost(f'{msg.msg_id} is no longer claimed by us')
        return token

    def _lost(self, msg: QueuedMessage) -> ClaimLost:
        self._ended(msg)
        return ClaimLost(f'{msg.msg_id}: the lease is no longer ours (taken back, or removed); nothing changed')

    def _write(self, msg: QueuedMessage, state: str, meta: QueueMeta) -> None:
        """End the claim: store ``meta`` and move to ``state``, if the lease is still ours."""
        token = self._token(msg)
        rest, last_error, next_attempt = _split_extra(meta.extra)
        params = {
            'id': msg.msg_id, 'token': token, 'state': state, 'sender': meta.from_addr,
            'recipients': list(meta.to_addrs), 'queue_date': _utc(meta.queue_date) or datetime.now(timezone.utc),
            'last_attempt': _utc(meta.last_delivery_attempt), 'retries': _retries(meta.retries),
            'next_attempt': next_attempt, 'last_error': last_error, 'extra': json.dumps(rest),
        }
        with self._conn() as conn:
            cur = conn.execute(
                f"UPDATE {self._table} SET state = %(state)s, sender = %(sender)s, "
                f"recipients = %(recipients)s::text[], queue_date = %(queue_date)s, "
                f"last_attempt = %(last_attempt)s, retries = %(retries)s, "
                f"next_attempt = %(next_attempt)s, last_error = %(last_error)s, extra = %(extra)s::jsonb, "
                f"{_CLEAR_LEASE} WHERE id = %(id)s AND state = 'cur' AND lease_token = %(token)s", params)
            if cur.rowcount != 1:
                raise self._lost(msg)
            if state == NEW:
                self._notify(conn)
        self._ended(msg)
        msg.meta = meta

    def _notify(self, conn: psycopg.Connection[Any]) -> None:
        """Wake waiting runners, if any wait (the condition of the insert trigger)."""
        if self.pooling != 'transaction':
            conn.execute("SELECT CASE WHEN pg_try_advisory_xact_lock_shared(%s) THEN NULL "
                         "ELSE pg_notify(%s, '') END", [self._wait_key, self.channel])

    def complete(self, msg: QueuedMessage, *, wait: bool = True) -> None:
        token = self._token(msg)
        if not wait and self.pooling == 'session':
            self._send_completion(msg, token)
            return
        if self._delete_now(msg.msg_id, token) != 1:
            raise self._lost(msg)
        self._ended(msg)

    # --- complete(wait=False) ---------------------------------------------------------------
    #
    # The DELETE is sent at once and its answer read before this store's next statement (or the
    # next such completion), so a worker starts its next delivery a round trip earlier. The
    # server runs a statement it has received even if this process dies right after sending it:
    # the duplicate window stays what it is (a crash between the 250 and the send).

    def _completer_conn(self) -> PGconn:
        pg = self._completer
        if pg is not None and pg.status == pq.ConnStatus.OK:
            if time.monotonic() - self._completer_used < self.ping_after:
                return pg
            # idle for a while: the server may have restarted, and a statement written to a dead
            # connection is simply lost; a fresh connection costs less than finding out
            pg.finish()
        self._completer = None
        settings = {k: v for k, v in self._kwargs.items() if k not in ('autocommit', 'prepare_threshold')}
        pg = pq.PGconn.connect(make_conninfo(self._conninfo, **settings).encode())
        try:
            if pg.status != pq.ConnStatus.OK:
                raise QueueUnavailable(f'PostgreSQL queue {self.location}: cannot connect: '
                                       f'{_first_line_of(pg.error_message)}')
            for result in (pg.exec_(_RUNNER_SETTINGS.encode()),
                           pg.prepare(b'mq_complete', f"DELETE FROM {self._table} WHERE id = $1 AND state = 'cur' "
                                                      f"AND lease_token = $2".encode())):
                if result.status != pq.ExecStatus.COMMAND_OK:
                    raise QueueUnavailable(f'PostgreSQL queue {self.location}: '
                                           f'{_first_line_of(result.error_message)}')
        except BaseException:
            pg.finish()
            raise
        self._completer = pg
        return pg

    def _send_completion(self, msg: QueuedMessage, token: uuid.UUID) -> None:
        self._forked()
        with self._completer_lock:
            self._settle_locked()
            try:
                pg = self._completer_conn()
                pg.send_query_prepared(b'mq_complete', [msg.msg_id.encode(), str(token).encode()])
                while pg.flush():  # (blocking mode: returns 0 once everything is sent)
                    _wait_for(pg.socket, select.POLLOUT, _SETTLE_TIMEOUT)
            except (psycopg.Error, QueueUnavailable, OSError):
                self._drop_completer()
                # as complete(wait=True) would, errors included (the claim then stays ours)
                if self._delete_now(msg.msg_id, token) != 1:
                    log.warning(_LOST_AFTER_DELIVERY, msg.msg_id)
            else:
                self._in_flight = (msg.msg_id, token)
                self._completer_used = time.monotonic()
        self._ended(msg)

    def _delete_now(self, msg_id: str, token: uuid.UUID) -> int:
        """The completion's DELETE, waiting for its answer; rows deleted (0: the lease was lost)."""
        with self._conn(runner=True) as conn:
            return conn.execute(f"DELETE FROM {self._table} WHERE id = %s AND state = 'cur' AND lease_token = %s",
                                [msg_id, token]).rowcount

    def _settle(self) -> None:
        with self._completer_lock:
            self._settle_locked()

    def _settle_locked(self) -> None:
        """Read the answer to the completion in flight; a lost lease or an error is logged."""
        in_flight, pg = self._in_flight, self._completer
        if in_flight is None:
            return
        self._in_flight = None
        msg_id, token = in_flight
        deleted: Optional[int] = None
        try:
            if pg is None:
                raise psycopg.OperationalError('connection closed')
            deadline = time.monotonic() + _SETTLE_TIMEOUT
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                if time.monotonic() > deadline:
                    raise psycopg.OperationalError('no answer from the server')
                _wait_for(pg.socket, select.POLLIN, 1.0)  # (pq's own blocking calls would hold the GIL)
            result = pg.get_result()
            while pg.get_result() is not None:
                pass
            if result is not None and result.status == pq.ExecStatus.COMMAND_OK:
                deleted = result.command_tuples or 0
        except (psycopg.Error, OSError):
            self._drop_completer()
        if deleted is None:
            # no answer (a lost connection, an error): the DELETE is conditional, so once more
            try:
                deleted = self._delete_now(msg_id, token)
            except QueueUnavailable as exc:
                log.error('queue entry %s was delivered, but its removal cannot be recorded (%s); it will be '
                          'delivered again after its lease', msg_id, exc)
                return
        if deleted != 1:
            log.warning(_LOST_AFTER_DELIVERY, msg_id)

    def _drop_completer(self) -> None:
        pg, self._completer, self._in_flight = self._completer, None, None
        if pg is not None:
            pg.finish()

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str, attempt_time: datetime,
              next_attempt: Optional[datetime] = None) -> None:
        self._token(msg)
        meta = _copy(msg.meta)
        record_attempt(meta, recipients, error, attempt_time, next_attempt)
        token = self._token(msg)
        rest, _, _ = _split_extra(meta.extra)
        params = {
            'id': msg.msg_id, 'token': token, 'recipients': list(meta.to_addrs),
            'retries': _retries(meta.retries), 'last_attempt': _utc(attempt_time), 'error': clean_value(error),
            'next_attempt': _utc(next_attempt),
            'sender': meta.from_addr, 'queue_date': _utc(meta.queue_date) or datetime.now(timezone.utc),
            'extra': json.dumps(rest),
        }
        with self._conn(runner=True) as conn:
            cur = conn.execute(
                f"UPDATE {self._table} SET state = 'new', recipients = %(recipients)s::text[], retries = %(retries)s, "
                f"last_attempt = %(last_attempt)s, last_error = %(error)s, next_attempt = %(next_attempt)s, "
                f"sender = %(sender)s, queue_date = %(queue_date)s, extra = %(extra)s::jsonb, {_CLEAR_LEASE} "
                f"WHERE id = %(id)s AND state = 'cur' AND lease_token = %(token)s", params)
        if cur.rowcount != 1:
            raise self._lost(msg)
        self._ended(msg)
        msg.meta = meta

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str:
        self._token(msg)
        meta = _copy(msg.meta)
        if recipients is not None:
            meta.to_addrs = list(recipients)
        meta.extra[FAILED_REASON] = reason
        self._write(msg, FAILED, meta)
        return msg.msg_id

    def release(self, msg: QueuedMessage) -> None:
        if msg.token is None:
            return
        token = self._token(msg)
        with self._conn(runner=True) as conn:
            row = conn.execute(
                f"UPDATE {self._table} SET state = coalesce(claimed_from, 'new'), {_CLEAR_LEASE} "
                f"WHERE id = %s AND state = 'cur' AND lease_token = %s RETURNING state, {_META}",
                [msg.msg_id, token]).fetchone()
            if row is None:
                raise self._lost(msg)
            if row[0] == NEW:
                self._notify(conn)
        self._ended(msg)
        msg.meta = _meta_from(row[1:])  # unchanged: what is stored, whatever the caller did to msg.meta

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False,
             due_now: bool = False, queue_date: Optional[datetime] = None,
             extra: Optional[Dict[str, Optional[str]]] = None) -> None:
        if target_state not in STATES or target_state == CLAIMED:
            raise ValueError(f'cannot move a message to state {target_state!r}')
        self._token(msg)
        meta = _copy(msg.meta)
        apply_move(meta, reset_retries=reset_retries, due_now=due_now, queue_date=queue_date, extra=extra)
        self._write(msg, target_state, meta)

    def rewrite(self, msg: QueuedMessage, *, sender: Optional[str] = None,
                recipients: Optional[Sequence[str]] = None) -> None:
        token = self._token(msg)
        new_sender = msg.meta.from_addr if sender is None else sender
        new_recipients = list(msg.meta.to_addrs if recipients is None else recipients)
        check_envelope(new_sender, new_recipients)  # refused before anything changes
        with self._conn() as conn:
            cur = conn.execute(f"UPDATE {self._table} SET sender = %s, recipients = %s::text[] "
                               f"WHERE id = %s AND state = 'cur' AND lease_token = %s",
                               [new_sender, new_recipients, msg.msg_id, token])
        if cur.rowcount != 1:
            raise self._lost(msg)
        msg.meta.from_addr = new_sender
        msg.meta.to_addrs = new_recipients

    # --- looking without claiming -----------------------------------------------------------

    @staticmethod
    def _entry_from(row: Sequence[Any]) -> QueueEntry:
        msg_id, state, size, changed_at, *meta_columns, active, owner = row
        if active and _owner_gone(owner):
            active = False
        return QueueEntry(msg_id, state, int(size), changed_at.timestamp(), _meta_from(meta_columns),
                          active=active)

    def entry(self, msg_id: str) -> Optional[QueueEntry]:
        with self._conn() as conn:
            row = conn.execute(f'SELECT {_ENTRY} FROM {self._table} WHERE id = %s', [msg_id]).fetchone()
        return None if row is None else self._entry_from(row)

    def view(self, msg_id: str) -> Optional[Tuple[QueueEntry, bytes]]:
        with self._conn() as conn:
            row = conn.execute(f'SELECT {_ENTRY}, msg FROM {self._table} WHERE id = %s', [msg_id]).fetchone()
        return None if row is None else (self._entry_from(row[:-1]), bytes(row[-1]))

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Tuple[Any, ...]]:
        """Rows of ``sql`` through a server-side cursor: memory stays flat however many there are."""
        with self._conn() as conn:
            with conn.transaction():
                with conn.cursor(name=f'mq_stream_{secrets.token_hex(4)}') as cursor:
                    cursor.itersize = 500
                    cursor.execute(sql, params)
                    yield from cursor

    def entries(self, states: Sequence[str] = STATES) -> Iterator[QueueEntry]:
        wanted = [state for state in STATES if state in states]
        if not wanted:
            return
        sql = (f'SELECT {_ENTRY} FROM {self._table} WHERE state = ANY(%s) '
               f'ORDER BY {_STATE_ORDER}, changed_at, id')
        for row in self._stream(sql, [wanted]):
            yield self._entry_from(row)

    def ids(self, states: Sequence[str] = STATES) -> Iterator[Tuple[str, str]]:
        wanted = [state for state in STATES if state in states]
        if not wanted:
            return
        yield from self._stream(f'SELECT state, id FROM {self._table} WHERE state = ANY(%s)', [wanted])

    def stats(self) -> Dict[str, StateCount]:
        counts = {state: StateCount() for state in STATES}
        with self._conn() as conn:
            rows = conn.execute(f'SELECT state, count(*), coalesce(sum(size), 0), min(queue_date) '
                                f'FROM {self._table} GROUP BY state').fetchall()
        for state, count, size, oldest in rows:
            counts[state] = StateCount(int(count), int(size), _utc(oldest))
        return counts

    def summary(self, policy: RetryPolicy, now: datetime) -> StoreSummary:
        """``mq-queue stats`` in two scans of the table, whatever its size.

        The oldest message of a state counts from its original queue date where an admin's
        requeue kept one (a text in ``extra``, parsed here as the maildir listing parses it);
        those rows are streamed and compared here, the rest is aggregated by the server.
        """
        params = _policy_params(policy, now)
        params['orig'] = ORIGINAL_DATE
        counts = {state: StateCount() for state in STATES}
        result = StoreSummary(counts)
        with self._conn() as conn, conn.transaction():
            # one snapshot for both scans: the oldest waiting message is the next one claimed
            conn.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
            rows = conn.execute(
                f"SELECT state, count(*), coalesce(sum(size), 0), "
                f"min(queue_date) FILTER (WHERE NOT extra ? %(orig)s), "
                f"count(*) FILTER (WHERE extra ? %(orig)s), "
                f"count(*) FILTER (WHERE state = 'new' AND retries > 0), "
                f"count(*) FILTER (WHERE state = 'new' AND {_DUE}) "
                f"FROM {self._table} GROUP BY state", params).fetchall()
            # by owner: a claim of a process of this machine that has ended is not active, as
            # in the listing, although the server may not have noticed its session end yet
            for owner, active in conn.execute(f"SELECT lease_owner, count(*) FROM {self._table} "
                                              f"WHERE state = 'cur' AND NOT {_ABANDONED} GROUP BY lease_owner"):
                if not _owner_gone(owner):
                    result.active += int(active)
            oldest: List[Tuple[str, datetime]] = []
            with_original = 0
            for state, count, size, first, originals, deferred, due in rows:
                counts[state] = StateCount(int(count), int(size))
                result.deferred += int(deferred)
                result.due += int(due)
                with_original += int(originals)
                if first is not None:
                    oldest.append((state, first))
            if not oldest and not with_original:
                return result
            # the ids of the oldest rows, and every row with an original date, in one more scan
            pairs = ' OR '.join('(state = %s AND queue_date = %s AND NOT extra ? %s)' for _ in oldest) or 'FALSE'
            values: List[Any] = [value for state, first in oldest for value in (state, first, ORIGINAL_DATE)]
            # streamed: after `mq-queue requeue --all` every row has an original date
            with conn.cursor(name=f'mq_summary_{secrets.token_hex(4)}') as cursor:
                cursor.itersize = 2000
                cursor.execute(f"SELECT state, id, queue_date, extra ->> %s FROM {self._table} "
                               f"WHERE extra ? %s OR {pairs}", [ORIGINAL_DATE, ORIGINAL_DATE, *values])
                for state, msg_id, queue_date, original in cursor:
                    _count_oldest(counts[state], msg_id, _utc(queue_date), original)
        return result

    def resolve(self, prefix: str, states: Sequence[str] = STATES) -> List[Tuple[str, str]]:
        wanted = [state for state in STATES if state in states]
        if not wanted:
            return []
        pattern = prefix.replace('\\', '\\\\').replace('%', '\\%').replace('_', '\\_') + '%'
        with self._conn() as conn:
            rows = conn.execute(f"SELECT state, id FROM {self._table} WHERE id LIKE %s ESCAPE '\\' "
                                f"AND state = ANY(%s) ORDER BY id", [pattern, wanted]).fetchall()
        return [(state, msg_id) for state, msg_id in rows]

    def delete(self, msg_id: str, state: str) -> Optional[bool]:
        if state not in STATES:
            return None
        with self._conn() as conn:
            if state != CLAIMED:
                cur = conn.execute(f'DELETE FROM {self._table} WHERE id = %s AND state = %s', [msg_id, state])
                return True if cur.rowcount == 1 else None
            found = conn.execute(f"SELECT lease_token, {_ABANDONED}, lease_owner FROM {self._table} "
                                 f"WHERE id = %s AND state = 'cur'", [msg_id]).fetchone()
            if found is None:
                return None
            token, abandoned, owner = found
            if not (abandoned or _owner_gone(owner)):
                return False
            cur = conn.execute(f"DELETE FROM {self._table} WHERE id = %s AND state = 'cur' AND lease_token = %s",
                               [msg_id, token])
            if cur.rowcount == 1:
                return True
            # it changed meanwhile (taken over, or released): say what it is now
            again = conn.execute(f'SELECT state FROM {self._table} WHERE id = %s', [msg_id]).fetchone()
            return None if again is None or again[0] != CLAIMED else False

    # --- housekeeping -----------------------------------------------------------------------

    def identity(self) -> str:
        """The server (its start time: two servers never share one to the microsecond), the
        database and the schema, whatever host name, port or socket reached them."""
        with self._conn() as conn:
            row = conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::text, d.oid::text, "
                               "coalesce(n.oid::text, '') FROM pg_database d "
                               "LEFT JOIN pg_namespace n ON n.nspname = %s "
                               "WHERE d.datname = current_database()", [self.schema]).fetchone()
        # (the start time as a number: its text would follow the session's time zone)
        return 'postgresql:' + ':'.join(row or ())

    def check(self) -> None:
        """The database answers, the schema is current, and our role may claim and change messages."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT current_user, has_table_privilege(%(t)s, 'SELECT') AND has_table_privilege(%(t)s, 'INSERT') "
                "AND has_table_privilege(%(t)s, 'UPDATE') AND has_table_privilege(%(t)s, 'DELETE')",
                {'t': self._table}).fetchone()
        if row is None or not row[1]:
            who = row[0] if row else '?'
            raise QueueMisconfigured(f'PostgreSQL queue {self.location}: role {who} may not claim and change '
                                     f'messages in {self._table} (see docs/postgresql.md: roles)')

    def recover(self) -> int:
        """Leases whose owner's session is gone, or past their deadline, go back where they came from."""
        # a runner's work (a recovery the server forgets in a crash is simply done again)
        with self._conn(runner=True) as conn:
            # liveness is read after the statement's snapshot: every lease it sees was taken
            # while its owner already held the lock, so a live owner is never taken for dead
            leases = conn.execute(f"SELECT id, lease_token, {_ABANDONED}, lease_owner FROM {self._table} "
                                  f"WHERE state = 'cur'").fetchall()
            dead = [(msg_id, token) for msg_id, token, abandoned, owner in leases
                    if abandoned or _owner_gone(owner)]
            if not dead:
                return 0
            # rows someone else is changing right now are skipped (never a lock wait, so never a deadlock)
            cur = conn.execute(
                f"UPDATE {self._table} AS m SET state = coalesce(m.claimed_from, 'new'), {_CLEAR_LEASE} "
                f"FROM (SELECT t.id FROM {self._table} AS t JOIN unnest(%s::text[], %s::uuid[]) AS dead(id, token) "
                f"ON t.id = dead.id AND t.lease_token = dead.token WHERE t.state = 'cur' "
                f"FOR UPDATE OF t SKIP LOCKED) AS dead WHERE m.id = dead.id",
                [[row[0] for row in dead], [row[1] for row in dead]])
            recovered = cur.rowcount
            if recovered:
                self._notify(conn)
        if recovered:
            log.info('PostgreSQL queue %s: %d claim(s) of dead runners taken back', self.location, recovered)
        return recovered

    def wait_for_work(self, timeout: float) -> bool:
        """``LISTEN`` for inserts into ``new``; True when one arrived within ``timeout`` seconds.

        Every ``abandoned_check`` seconds of the wait it also looks for claims of dead runners:
        True when there is one, so that the caller's next pass (``recover()``) takes them back
        within a second or two of the crash, even while no new mail arrives.

        Without LISTEN (``mq_pooling=transaction``, or the connection is gone) it just waits
        and says True: the caller looks for due messages, which is the polling fallback. The
        same when it could not take the wait lock (see the v2 migration): then enqueues may
        have skipped NOTIFY.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self.pooling == 'transaction':
            time.sleep(max(0.0, timeout))
            return True
        with self._listen_lock:
            self._forked()
            try:
                conn = self._listener()
                while True:
                    if not self._waiting and self._take_wait_lock(conn) and self._unnoticed:
                        # what committed since the last empty pass did not NOTIFY: look once more
                        # (an empty pass keeps the lock, so this happens once per busy spell)
                        self._unnoticed = False
                        return True
                    remaining = deadline - time.monotonic()
                    # without the lock (an enqueue is committing, or another runner waits) try again soon
                    step = self.abandoned_check if self._waiting else min(self.abandoned_check, _RETRY_WAIT_LOCK)
                    for _ in conn.notifies(timeout=max(0.0, min(remaining, step)), stop_after=1):
                        return True
                    if time.monotonic() - self._checked_abandoned >= self.abandoned_check:
                        self._checked_abandoned = time.monotonic()
                        try:
                            if self._abandoned_claims():
                                return True
                        except QueueUnavailable:
                            return True  # (not the listener's fault: the pass that follows tells)
                    if time.monotonic() >= deadline:
                        # without the lock (a long transaction that queued mail holds it shared, or
                        # another runner waits) enqueues need not NOTIFY: look for work anyway
                        return not self._waiting
            except (psycopg.Error, QueueUnavailable) as exc:
                log.warning('PostgreSQL queue %s: LISTEN failed (%s); polling instead', self.location,
                            _first_line(exc))
                self._drop_listener()
                time.sleep(max(0.0, deadline - time.monotonic()))
                return True

    def _take_wait_lock(self, conn: psycopg.Connection[Any]) -> bool:
        """Take the wait lock on the listener ``conn`` (under ``_listen_lock``); whether we hold it."""
        self._waiting = bool(conn.execute('SELECT pg_try_advisory_lock(%s)', [self._wait_key]).fetchone()[0])  # type: ignore[index]
        return self._waiting

    def _stop_waiting(self) -> None:
        """A pass found work: let enqueues skip NOTIFY again (the pass finds their rows itself)."""
        if not self._waiting or not self._listen_lock.acquire(blocking=False):
            return  # (another thread of ours is waiting: it keeps the lock)
        try:
            conn = self._listen_conn
            if conn is not None and not conn.closed and os.getpid() == self._pid:
                conn.execute('SELECT pg_advisory_unlock(%s)', [self._wait_key])
            self._waiting = False
            # until the next wait takes it again, enqueues skip NOTIFY: that wait looks once more
            # (also when this pass ends without a further claim, e.g. a batch found corrupt)
            self._unnoticed = True
        except psycopg.Error:
            self._drop_listener()
        finally:
            self._listen_lock.release()

    def _abandoned_claims(self) -> bool:
        """Whether some claim belongs to a dead owner (or is past its deadline)."""
        with self._conn() as conn:
            leases = conn.execute(f"SELECT {_ABANDONED}, lease_owner FROM {self._table} WHERE state = 'cur'"
                                  ).fetchall()
        return any(abandoned or _owner_gone(owner) for abandoned, owner in leases)

    def _listener(self) -> psycopg.Connection[Any]:
        conn = self._listen_conn
        if conn is None or conn.closed:
            conn = self._connect()
            conn.execute(f'LISTEN "{self.channel}"')
            self._listen_conn = conn
        return conn

    def _drop_listener(self) -> None:
        self._drop_idle()  # (what ended the listener's session has probably ended the others')
        conn, self._listen_conn = self._listen_conn, None
        if self._waiting:
            self._waiting = False  # a session lock ends with its session...
            self._unnoticed = True  # ... and until it is taken again, nothing notifies us
        if conn is not None and os.getpid() == self._pid:
            conn.close()

    def close(self) -> None:
        """Close every connection; leases still held become recoverable at once (the lock is gone)."""
        if os.getpid() != self._pid:
            self._reset()
            return
        self._stop.set()
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(5)
        self._heartbeat = None
        with self._owner_lock:
            conn, self._owner_conn = self._owner_conn, None
            self._owner_key = None
        if conn is not None:
            conn.close()
        with self._listen_lock:
            self._drop_listener()
        with self._completer_lock:
            self._settle_locked()
            self._drop_completer()
        with self._lock:
            self._generation += 1  # (nor do connections still lent out come back to a pool)
            idle, self._idle = self._idle, {False: [], True: []}
        for conn, _ in idle[False] + idle[True]:
            conn.close()


_queues: Dict[Tuple[str, str, float, str], PostgresQueue] = {}
_queues_lock = threading.Lock()


def open_postgres_queue(location: str, *, schema: Optional[str] = None, lease: Optional[object] = None,
                        pooling: Optional[str] = None, **options: object) -> PostgresQueue:
    """One store per location and process (``open_queue`` is called from several places).

    Connects on first use, not here. Options of other stores (``create``, ``stale_after``)
    are ignored: the schema is only ever created by ``init_schema`` (``mq-queue init``).
    """
    conninfo, schema, lease_seconds, mode = read_location(location, schema, lease, pooling)
    key = (conninfo, schema, lease_seconds, mode)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = PostgresQueue(location, schema=schema, lease=lease_seconds, pooling=mode)
        return queue
