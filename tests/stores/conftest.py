"""The store contract suite: every test in ``tests/stores/`` runs against every registered store.

Tests here use the ``QueueStore`` contract only (SPEC §11.1): no paths, no file locks,
no SQL. What differs between stores is described here, once, by a ``StoreKind``:

- ``open``: a context manager giving a fresh, empty store (and cleaning it up);
- ``reopen``: a second handle on the same queue, as a second runner in this process
  would open it (a new ``MaildirQueue`` on the same directory, a new connection...);
- capabilities: ``supports_processes`` (other processes may open ``store.location``
  and share the queue), ``claim_owner`` (what "the owner of a claim died" means for
  this store: a ``'process'`` that exits, or a ``'thread'`` that ends).

Adding a store (e.g. PostgreSQL) is one ``register_store(StoreKind(...))`` call below;
tests that need a capability the store lacks are not generated for it (``@requires_processes``):
nothing is skipped, so a skip in this suite always means something is wrong.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List

import pytest

from schwarz.mailqueue.queue.contract import QueueStore
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.memory import MemoryQueue

CHILD_SCRIPT = str(Path(__file__).with_name('_child.py'))
CHILD_TIMEOUT = 20.0


@dataclass(frozen=True)
class StoreKind:
    name: str
    open: Callable[[Path], ContextManager[QueueStore]]
    reopen: Callable[[QueueStore], QueueStore]
    supports_processes: bool = False
    claim_owner: str = 'process'  # 'process' or 'thread'
    summarizes: bool = False  # offers contract.Summarizing (aggregates mq-queue stats itself)


STORE_KINDS: Dict[str, StoreKind] = {}


def register_store(kind: StoreKind) -> None:
    assert kind.name not in STORE_KINDS, kind.name
    assert kind.claim_owner in ('process', 'thread'), kind.claim_owner
    STORE_KINDS[kind.name] = kind


# --- the stores ---------------------------------------------------------------------------


@contextlib.contextmanager
def _maildir(tmp_path: Path) -> Iterator[QueueStore]:
    # fsync off: the durability protocol has tests of its own (tests/test_fs_faults.py)
    store = MaildirQueue(str(tmp_path / 'queue'), fsync=False)
    try:
        yield store
    finally:
        store.close()


def _maildir_reopen(store: QueueStore) -> QueueStore:
    return MaildirQueue(store.location, fsync=False)


@contextlib.contextmanager
def _memory(tmp_path: Path) -> Iterator[QueueStore]:
    store = MemoryQueue(f'test-{tmp_path.name}')
    try:
        yield store
    finally:
        store.close()


register_store(StoreKind('maildir', _maildir, _maildir_reopen, supports_processes=True, claim_owner='process'))
# one instance is the whole queue; a second "handle" is the same object
register_store(StoreKind('memory', _memory, lambda store: store, supports_processes=False, claim_owner='thread'))


@contextlib.contextmanager
def _postgresql(tmp_path: Path) -> Iterator[QueueStore]:
    # a schema of its own on the test server (tests/_pg.py: found or started; never skipped)
    from _pg import fresh_location
    from schwarz.mailqueue.queue.postgres import PostgresQueue

    store = PostgresQueue(fresh_location())
    try:
        yield store
    finally:
        store.close()


def _postgresql_reopen(store: QueueStore) -> QueueStore:
    from schwarz.mailqueue.queue.postgres import PostgresQueue

    return PostgresQueue(store.location)  # another owner: its own connections and advisory lock


register_store(StoreKind('postgresql', _postgresql, _postgresql_reopen, supports_processes=True,
                         claim_owner='process', summarizes=True))


# --- fixtures -----------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'requires_processes: the store must be shareable between processes')
    config.addinivalue_line('markers', 'requires_summary: the store must offer contract.Summarizing')


requires_processes = pytest.mark.requires_processes
requires_summary = pytest.mark.requires_summary
# marker -> the StoreKind capability it needs
_CAPABILITIES = {'requires_processes': 'supports_processes', 'requires_summary': 'summarizes'}


class StoreHarness:
    """One fresh store plus what the tests need to know about its kind."""

    def __init__(self, kind: StoreKind, store: QueueStore) -> None:
        self.kind = kind
        self.store = store
        self._handles: List[QueueStore] = []
        self._children: List[Child] = []

    def other_handle(self) -> QueueStore:
        """Another handle on the same queue (closed by the fixture)."""
        handle = self.kind.reopen(self.store)
        if handle is not self.store:
            self._handles.append(handle)
        return handle

    def child(self) -> Child:
        """A process with the store opened from its location (stores that support processes)."""
        assert self.kind.supports_processes, f'{self.kind.name} cannot be shared with other processes'
        child = Child(self.store.location)
        self._children.append(child)
        return child

    def claim_and_die(self, msg_id: str) -> None:
        """Let an owner claim ``msg_id`` and die without releasing it."""
        if self.kind.claim_owner == 'process':
            child = self.child()
            assert child.ask(f'claim {msg_id}') == f'claimed {msg_id}'
            child.die()
        else:
            got: List[object] = []
            thread = threading.Thread(target=lambda: got.append(self.store.claim(msg_id)))
            thread.start()
            thread.join()
            assert got and got[0] is not None

    def close(self) -> None:
        for child in self._children:
            child.kill()
        for handle in self._handles:
            handle.close()


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # A process test for a store that lives in one process is not a test: leave it out, don't skip it.
    keep: List[pytest.Item] = []
    dropped: List[pytest.Item] = []
    for item in items:
        callspec = getattr(item, 'callspec', None)
        name = callspec.params.get('store_kind') if callspec is not None else None
        kind = STORE_KINDS.get(name) if isinstance(name, str) else None
        lacking = kind is not None and any(
            item.get_closest_marker(marker) and not getattr(kind, capability)
            for marker, capability in _CAPABILITIES.items())
        (dropped if lacking else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=sorted(STORE_KINDS))
def store_kind(request: pytest.FixtureRequest) -> StoreKind:
    return STORE_KINDS[request.param]


@pytest.fixture
def harness(store_kind: StoreKind, tmp_path: Path) -> Iterator[StoreHarness]:
    with store_kind.open(tmp_path) as store:
        harness = StoreHarness(store_kind, store)
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def store(harness: StoreHarness) -> QueueStore:
    return harness.store


# --- other processes ------------------------------------------------------------------------


class Child:
    """A process that opens the store from its location and obeys one-line commands (see _child.py)."""

    def __init__(self, location: str) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2] / 'src')
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [src, env.get('PYTHONPATH')]))
        self.proc = subprocess.Popen([sys.executable, CHILD_SCRIPT, location], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self._buffer = b''
        self._ready = False

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b'\n')
        self.proc.stdin.flush()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + CHILD_TIMEOUT
        while b'\n' not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            assert ready, f'child {self.proc.pid} did not answer within {CHILD_TIMEOUT} s'
            chunk = os.read(fd, 65536)
            assert chunk, f'child {self.proc.pid} exited with {self.proc.wait()}'
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b'\n')
        return line.decode()

    def wait_ready(self) -> None:
        if not self._ready:
            line = self._line()
            assert line == 'ready', line
            self._ready = True

    def receive(self) -> str:
        self.wait_ready()
        return self._line()

    def ask(self, command: str) -> str:
        self.send(command)
        return self.receive()

    def die(self) -> None:
        """Exit at once, releasing nothing (the kernel drops what the process held)."""
        self.send('die')
        assert self.proc.wait(CHILD_TIMEOUT) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
