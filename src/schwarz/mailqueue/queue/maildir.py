"""The maildir queue: the whole on-disk protocol in one place.

Layout: ``tmp/`` (being written), ``new/`` (waiting), ``cur/`` (claimed),
``hold/`` (parked by an admin), ``failed/`` (dead letters). A file's name is
its queue id and never changes.

Durable write: create in ``tmp/`` with O_EXCL, write, fsync, rename into the
target directory, fsync that directory. Only then is success reported, so a
crash leaves either no message or a complete one.

Claim: open the file, take an exclusive ``flock`` without blocking, check that
the locked inode is still the one at that path, then rename it to ``cur/``.
The lock (per open file description) is held until the message leaves ``cur/``.
Whoever holds a file's lock owns it; a file in ``cur/`` whose lock can be taken
was abandoned by a crashed owner and goes back to ``new/``. Every rewrite is
written to ``tmp/`` and locked *before* it replaces the old file, so the path
in ``cur/`` is never unlocked while its owner is alive.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import stat
import threading
import time
import weakref
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

from ..message import message_bytes_from
from ..result import SendResult
from .backend import STATES, QueuedMessage, QueueEntry
from .format import (
    FAILED_REASON,
    LAST_ERROR,
    QueueFileError,
    QueueMeta,
    parse_message_envelope,
    parse_queue_bytes,
    serialize_meta,
)

__all__ = ['MaildirBackend', 'MaildirQueue', 'QueueWriteError', 'enqueue_message']

_SUBDIRS = ('tmp',) + STATES
_O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
_O_NONBLOCK = getattr(os, 'O_NONBLOCK', 0)


class QueueWriteError(OSError):
    """The message could not be stored durably; nothing was left behind in the queue."""


def _new_id() -> str:
    # Random first so that a short prefix is unique; time second for humans.
    return f'{secrets.token_hex(6)}.{int(time.time())}'


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class MaildirQueue:
    """A queue directory. Safe to share between threads and processes."""

    def __init__(self, path: str, *, create: bool = True, fsync: bool = True,
                 stale_after: Optional[timedelta] = None) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        # Only for filesystems whose locks cannot be trusted (some network filesystems).
        self.stale_after = stale_after
        self._dir_fds: Dict[str, int] = {}
        self._dir_lock = threading.Lock()
        self._closer: Optional[_BackgroundCloser] = None
        _all_queues.add(self)
        if create:
            self.ensure_dirs()

    def __repr__(self) -> str:
        return f'MaildirQueue({self.path!r})'

    # --- directories ------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        try:
            _make_parents(self.path)
            try:
                os.mkdir(self.path, 0o700)
            except FileExistsError:
                pass
            for name in _SUBDIRS:
                sub = os.path.join(self.path, name)
                try:
                    os.mkdir(sub, 0o700)
                except FileExistsError:
                    pass
                self._check_dir(name)
        except QueueWriteError:
            raise
        except OSError as exc:
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'cannot create queue directory {self.path}: {exc.strerror or exc}') from None

    def _dir(self, state: str) -> str:
        return os.path.join(self.path, state)

    def _check_dir(self, state: str) -> None:
        """Refuse a state directory that was swapped for a symlink (or anything else) after start-up."""
        path = self._dir(state)
        try:
            mode = os.lstat(path).st_mode
        except OSError as exc:
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'queue directory {path}: {exc.strerror or exc}') from None
        if stat.S_ISLNK(mode):
            raise QueueWriteError(errno.ELOOP, f'queue directory {path} is a symlink; refusing to use it')
        if not stat.S_ISDIR(mode):
            raise QueueWriteError(errno.ENOTDIR, f'{path} is not a directory')

    def _file(self, state: str, msg_id: str) -> str:
        if not msg_id or '/' in msg_id or msg_id.startswith('.'):
            raise ValueError(f'invalid queue id {msg_id!r}')
        return f'{self.path}/{state}/{msg_id}'  # called several times per message: no os.path.join

    def _fsync_dir(self, state: str) -> None:
        if not self.fsync:
            return
        fd = self._dir_fds.get(state)
        if fd is None:
            with self._dir_lock:
                fd = self._dir_fds.get(state)
                if fd is None:
                    fd = os.open(self._dir(state), os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
                    self._dir_fds[state] = fd
        os.fsync(fd)

    def close(self) -> None:
        self.flush()
        with self._dir_lock:
            for fd in self._dir_fds.values():
                os.close(fd)
            self._dir_fds.clear()

    def changed_marker(self) -> float:
        """new/'s modification time: every enqueue, release or recovery renames a file into it."""
        return os.stat(self._dir('new')).st_mtime_ns / 1e9

    def flush(self) -> None:
        """Wait until files removed by ``complete()`` are fully released."""
        if self._closer is not None:
            self._closer.flush()

    # --- durable writes ---------------------------------------------------------------------

    def _write_tmp(self, msg_id: str, content: bytes, *, lock: bool) -> Tuple[int, str]:
        """Write ``content`` to tmp/ and fsync it. Returns an open fd (locked if asked)."""
        tmp_path = self._file('tmp', msg_id)
        self._check_dir('tmp')
        try:
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
        except OSError as exc:
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'cannot create {tmp_path}: {exc.strerror or exc}') from None
        try:
            if lock:
                fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, content)
            if self.fsync:
                # A failed fsync is not retried: the page cache state is unknown afterwards.
                os.fsync(fd)
        except OSError as exc:
            _close_quietly(fd)
            _unlink_quietly(tmp_path)
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'cannot write queue file {tmp_path}: {exc.strerror or exc}') from None
        return fd, tmp_path

    def _publish(self, fd: int, tmp_path: str, state: str, msg_id: str, *, keep_fd: bool) -> str:
        target = self._file(state, msg_id)
        try:
            self._check_dir(state)
            os.rename(tmp_path, target)
        except OSError as exc:
            _close_quietly(fd)
            _unlink_quietly(tmp_path)
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'cannot move queue file into {self._dir(state)}: {exc.strerror or exc}') \
                from None
        try:
            self._fsync_dir(state)
        except OSError as exc:
            # Whether the rename is on disk is unknown, and the caller is about to be told that
            # nothing was queued: take the file back so a retry cannot make a duplicate. (fsync
            # is not tried again: after a failure its result would mean nothing.)
            _unlink_quietly(target)
            _close_quietly(fd)
            raise QueueWriteError(exc.errno or errno.EIO,
                                  f'cannot sync queue directory {self._dir(state)}: {exc.strerror or exc}') \
                from None
        if not keep_fd:
            # Written, synced and published: an error from close() cannot undo that.
            _close_quietly(fd)
        return target

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *, claimed: bool = False,
                queue_date: Optional[datetime] = None,
                extra: Optional[Dict[str, str]] = None) -> QueuedMessage | str:
        """Store a message durably in new/ (or claimed, in cur/). Returns the id or the claimed message."""
        meta = QueueMeta(from_addr=sender or '', to_addrs=list(recipients),
                         queue_date=queue_date or datetime.now(timezone.utc), extra=dict(extra or {}))
        if not meta.to_addrs:
            raise ValueError('cannot queue a message without recipients')
        content = serialize_meta(meta) + msg_bytes
        msg_id = _new_id()
        state = 'cur' if claimed else 'new'
        fd, tmp_path = self._write_tmp(msg_id, content, lock=claimed)
        path = self._publish(fd, tmp_path, state, msg_id, keep_fd=claimed)
        if claimed:
            return QueuedMessage(self, msg_id, meta, msg_bytes, path, fd)
        return msg_id

    def store_failed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        """Keep a dead-letter copy (e.g. for permanently refused recipients) with the reason."""
        meta = QueueMeta(from_addr=sender or '', to_addrs=list(recipients),
                         queue_date=datetime.now(timezone.utc), extra={FAILED_REASON: reason})
        msg_id = _new_id()
        fd, tmp_path = self._write_tmp(msg_id, serialize_meta(meta) + msg_bytes, lock=False)
        self._publish(fd, tmp_path, 'failed', msg_id, keep_fd=False)
        return msg_id

    # --- claiming ---------------------------------------------------------------------------

    def _lock_file(self, state: str, msg_id: str) -> Optional[Tuple[int, int]]:
        """Open and lock the file at state/msg_id: (fd, size); None if it is gone or someone else owns it."""
        path = self._file(state, msg_id)
        # Look before opening: a symlink is never followed, and a directory, FIFO or device
        # node is never opened (opening some devices has side effects).
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(mode):
            self._move_foreign(state, msg_id, mode)
        try:
            fd = os.open(path, os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat
                self._move_foreign(state, msg_id, stat.S_IFLNK)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            st_path = os.lstat(path)
        except FileNotFoundError:
            os.close(fd)
            return None
        st_fd = os.fstat(fd)
        if (st_path.st_ino, st_path.st_dev) != (st_fd.st_ino, st_fd.st_dev):
            os.close(fd)
            return None
        if not stat.S_ISREG(st_fd.st_mode):
            os.close(fd)
            raise QueueFileError(f'{path} is not a regular file')
        return fd, st_fd.st_size

    def claim(self, msg_id: str, state: str = 'new',
              want: Optional[Callable[[QueueMeta], bool]] = None) -> Optional[QueuedMessage]:
        """Own a message: lock it and move it to cur/. None when it is gone or owned by someone else.

        ``want(meta)`` is asked while the file is locked but not yet moved; returning
        False leaves it where it is (a runner skipping a message that is not due
        costs one read, no renames). Raises ``QueueFileError`` for a corrupt file,
        which is moved to failed/ with the reason first.
        """
        self._check_dir(state)
        self._check_dir('cur')
        locked = self._lock_file(state, msg_id)
        if locked is None:
            return None
        fd, size = locked
        try:
            data = _read_all(fd, size)
            try:
                meta, msg_bytes = parse_queue_bytes(data)
                if not meta.to_addrs:
                    raise QueueFileError('no recipients in Envelope-to')
            except QueueFileError as exc:
                problem: Optional[QueueFileError] = exc
            else:
                problem = None
                if want is not None and not want(meta):
                    os.close(fd)
                    return None
            cur_path = self._file('cur', msg_id)
            if state != 'cur':
                os.utime(fd)  # mtime = claim time, for the stale_after fallback
                os.rename(self._file(state, msg_id), cur_path)
        except BaseException:
            os.close(fd)
            raise
        if problem is not None:
            self._quarantine_fd(fd, msg_id, data, f'corrupt queue file: {problem}')
            raise problem
        return QueuedMessage(self, msg_id, meta, msg_bytes, cur_path, fd)

    def _replace_locked(self, msg: QueuedMessage, content: bytes, target_state: str) -> None:
        """Atomically swap the claimed file for ``content`` and move it to ``target_state``."""
        old_fd = msg._handle
        # A unique temporary name: a rewrite interrupted by a crash leaves its tmp file behind,
        # and the next rewrite of the same message must not trip over it.
        fd, tmp_path = self._write_tmp(f'{msg.msg_id}.{secrets.token_hex(4)}', content, lock=True)
        cur_path = self._file('cur', msg.msg_id)
        try:
            os.rename(tmp_path, cur_path)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp_path)
            raise QueueWriteError(exc.errno or errno.EIO, f'cannot update {cur_path}: {exc}') from None
        msg._handle = fd
        if old_fd is not None:
            os.close(old_fd)
        self._move_claimed(msg, target_state)

    def _move_claimed(self, msg: QueuedMessage, target_state: str) -> None:
        cur_path = self._file('cur', msg.msg_id)
        target = self._file(target_state, msg.msg_id)
        try:
            os.rename(cur_path, target)
            self._fsync_dir(target_state)
            if target_state != 'cur':
                self._fsync_dir('cur')
        finally:
            self._drop_handle(msg)
        msg.path = target

    def _drop_handle(self, msg: QueuedMessage) -> None:
        fd, msg._handle = msg._handle, None
        if fd is not None:
            os.close(fd)

    def complete(self, msg: QueuedMessage) -> None:
        """Delivered: remove the file. (A crash before this is the at-least-once window.)"""
        if not msg.is_claimed:
            raise ValueError(f'{msg.msg_id} is not claimed')
        fd, msg._handle = msg._handle, None
        try:
            os.unlink(self._file('cur', msg.msg_id))
        except FileNotFoundError:
            # only a misconfigured stale_claim_timeout (or an admin) takes a live claim away
            logging.getLogger('mailqueue').error(
                'queue file %s vanished from cur/ while claimed: if it was put back into new/, it will be '
                'delivered again', msg.msg_id)
        except BaseException:
            os.close(fd)
            raise
        # Once unlinked nobody can find the file, so the lock no longer matters; but the last
        # close frees the inode's blocks, which costs ~100 us on ext4 with online discard.
        # A helper thread does that off the delivery path (the kernel closes it if we die).
        if self._closer is None:
            with self._dir_lock:
                if self._closer is None:
                    self._closer = _BackgroundCloser()
        self._closer.close_later(fd)

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str,
              attempt_time: datetime) -> None:
        """Temporary failure: keep only ``recipients``, count the attempt, back to new/."""
        meta = msg.meta
        meta.to_addrs = list(recipients)
        meta.retries += 1
        meta.last_delivery_attempt = attempt_time
        meta.extra[LAST_ERROR] = error
        self._replace_locked(msg, serialize_meta(meta) + msg.msg_bytes, 'new')

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str:
        """Dead letter: to failed/ with the reason (and only ``recipients`` if given)."""
        meta = msg.meta
        if recipients is not None:
            meta.to_addrs = list(recipients)
        meta.extra[FAILED_REASON] = reason
        self._replace_locked(msg, serialize_meta(meta) + msg.msg_bytes, 'failed')
        return msg.msg_id

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False) -> None:
        """Admin moves (hold, release, requeue) of a claimed message."""
        if target_state not in STATES:
            raise ValueError(f'unknown state {target_state!r}')
        if reset_retries:
            meta = msg.meta
            meta.retries = 0
            meta.last_delivery_attempt = None
            meta.extra.pop(FAILED_REASON, None)
            meta.extra.pop(LAST_ERROR, None)
            self._replace_locked(msg, serialize_meta(meta) + msg.msg_bytes, target_state)
        else:
            self._move_claimed(msg, target_state)

    def release(self, msg: QueuedMessage) -> None:
        """Give a claimed message back unchanged (e.g. on shutdown)."""
        if msg.is_claimed:
            self._move_claimed(msg, 'new')

    def delete(self, msg: QueuedMessage) -> None:
        self.complete(msg)

    def _quarantine_fd(self, fd: int, msg_id: str, data: bytes, reason: str) -> None:
        meta = QueueMeta(from_addr='', to_addrs=[], queue_date=datetime.now(timezone.utc),
                         extra={FAILED_REASON: reason})
        holder = QueuedMessage(self, msg_id, meta, data, self._file('cur', msg_id), fd)
        self._replace_locked(holder, serialize_meta(meta) + data, 'failed')

    def quarantine_foreign(self, state: str, name: str, reason: str) -> None:
        """Move something that is not a queue file (symlink, directory, ...) out of the way, unfollowed."""
        source = self._file(state, name)
        target = self._file('failed', f'{name}.foreign')
        os.rename(source, target)  # rename() acts on the link or directory itself, never on its target
        try:
            self._fsync_dir('failed')
            self._fsync_dir(state)
        except OSError:
            pass  # no message is at stake; at worst the entry reappears in state/ after a crash

    def _move_foreign(self, state: str, name: str, mode: int) -> NoReturn:
        """Raise QueueFileError for a non-file entry; from new/, cur/ and hold/ it goes to failed/ first."""
        path = self._file(state, name)
        what = ('a symlink' if stat.S_ISLNK(mode) else 'a directory' if stat.S_ISDIR(mode)
                else 'not a regular file')
        reason = f'{path} is {what}; not following it'
        if state != 'failed':
            try:
                self.quarantine_foreign(state, name, reason)
            except FileNotFoundError:
                pass  # gone meanwhile
            except OSError as exc:
                reason += f' (could not move it to failed/: {exc.strerror or exc})'
            else:
                reason += f'; moved to failed/{name}.foreign'
        raise QueueFileError(reason)

    # --- recovery ---------------------------------------------------------------------------

    def recover_stale(self) -> int:
        """Move abandoned claims (nobody holds the lock) from cur/ back to new/."""
        recovered = 0
        for msg_id in self.iter_ids('cur'):
            try:
                locked = self._lock_file('cur', msg_id)
            except QueueFileError:
                continue
            if locked is None:
                if self.stale_after is None or not self._older_than('cur', msg_id, self.stale_after):
                    continue
                fd = os.open(self._file('cur', msg_id), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
            else:
                fd = locked[0]
            try:
                os.rename(self._file('cur', msg_id), self._file('new', msg_id))
                recovered += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        if recovered:
            self._fsync_dir('new')
        self._clean_tmp()
        return recovered

    def _older_than(self, state: str, msg_id: str, age: timedelta) -> bool:
        try:
            mtime = os.lstat(self._file(state, msg_id)).st_mtime
        except FileNotFoundError:
            return False
        return time.time() - mtime > age.total_seconds()

    def _clean_tmp(self, max_age: float = 3600) -> None:
        """Remove leftovers of writers that died before publishing (never locked ones in use)."""
        for name in self.iter_ids('tmp'):
            path = self._file('tmp', name)
            try:
                if time.time() - os.lstat(path).st_mtime < max_age:
                    continue
                fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            except OSError:
                pass
            finally:
                os.close(fd)

    # --- reading without claiming ----------------------------------------------------------

    def iter_ids(self, state: str = 'new') -> Iterator[str]:
        """Stream the names in one state directory (no sorting: memory stays flat)."""
        try:
            dir_fd = os.open(self._dir(state), os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._check_dir(state)  # raises QueueWriteError naming the problem
            raise
        try:
            with os.scandir(dir_fd) as it:
                for entry in it:
                    if not entry.name.startswith('.'):
                        yield entry.name
        finally:
            os.close(dir_fd)

    def read_meta(self, state: str, msg_id: str) -> QueueMeta:
        with open(self._file(state, msg_id), 'rb', opener=_nofollow_opener) as fp:
            return parse_message_envelope(fp)

    def read_message(self, state: str, msg_id: str) -> Tuple[QueueMeta, bytes]:
        with open(self._file(state, msg_id), 'rb', opener=_nofollow_opener) as fp:
            return parse_queue_bytes(fp.read())

    def entries(self, states: Sequence[str] = STATES) -> Iterator[QueueEntry]:
        for state in states:
            for msg_id in self.iter_ids(state):
                path = self._file(state, msg_id)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                meta: Optional[QueueMeta] = None
                error: Optional[str] = None
                if not stat.S_ISREG(st.st_mode):
                    error = 'not a regular file'
                else:
                    try:
                        meta = self.read_meta(state, msg_id)
                    except FileNotFoundError:
                        continue
                    except (QueueFileError, OSError) as exc:
                        error = str(exc)
                yield QueueEntry(msg_id, state, path, st.st_size, st.st_mtime, meta, error)

    def find(self, prefix: str, states: Sequence[str] = STATES) -> List[Tuple[str, str]]:
        """(state, id) pairs whose id starts with ``prefix``."""
        return [(state, msg_id) for state in states for msg_id in self.iter_ids(state)
                if msg_id.startswith(prefix)]


class _BackgroundCloser:
    """Closes file descriptors in a daemon thread, in order."""

    def __init__(self) -> None:
        import queue

        self._fds: queue.SimpleQueue[Optional[threading.Event] | int] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name='mq-closer', daemon=True)
        self._thread.start()

    def close_later(self, fd: int) -> None:
        self._fds.put(fd)

    def flush(self) -> None:
        done = threading.Event()
        self._fds.put(done)
        done.wait()

    def _run(self) -> None:
        while True:
            item = self._fds.get()
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                try:
                    os.close(item)
                except OSError:
                    pass


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC)


def _read_all(fd: int, size: int) -> bytes:
    """The whole file. Published queue files never change (rewrites replace them), so the size
    seen under our lock is the size: one pread is enough unless the read comes back short."""
    data = os.pread(fd, size, 0)
    if len(data) == size:
        return data
    chunks = [data]
    offset = len(data)
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _make_parents(path: str) -> None:
    """Create missing parents of ``path`` as 0755: os.makedirs() would make them 0777 minus the
    umask, i.e. world-writable under umask 0, letting anyone swap the queue directory."""
    missing = []
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        next_parent = os.path.dirname(parent)
        if next_parent == parent:
            break
        parent = next_parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # on Linux the descriptor is released even when close() reports an error


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_queues: Dict[str, MaildirQueue] = {}
_queues_lock = threading.Lock()
_all_queues: weakref.WeakSet[MaildirQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (pre-fork web servers) has no closer thread and fresh locks.
    global _queues_lock
    _queues_lock = threading.Lock()
    for queue in list(_all_queues):
        queue._closer = None
        queue._dir_lock = threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_queue(path: str) -> MaildirQueue:
    """One ``MaildirQueue`` per directory per process (they cache directory fds)."""
    key = os.path.abspath(path)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = MaildirQueue(key)
        return queue


def enqueue_message(msg: object, queue_path: str, sender: str, recipients: Sequence[str] | str,
                    return_msg: bool = False, in_progress: bool = False,
                    **queue_args: object) -> QueuedMessage | str | bool:
    """Durably queue ``msg``. ``in_progress=True, return_msg=True``: return it claimed, for sending now."""
    if isinstance(recipients, str):
        recipients = [recipients]
    queue = get_queue(queue_path)
    queue_date = queue_args.get('queue_date')
    result = queue.enqueue(message_bytes_from(msg), sender, list(recipients), claimed=in_progress,
                           queue_date=queue_date if isinstance(queue_date, datetime) else None)
    if return_msg:
        if isinstance(result, str):
            return _Unclaimed(queue, result)
        return result
    if isinstance(result, QueuedMessage):
        # Claimed but not wanted by the caller: hand it to the runner.
        queue.release(result)
        return result.msg_id
    return result


class _Unclaimed(str):
    """Id of a message queued without claiming; str for compatibility, knows its queue."""

    queue: MaildirQueue

    def __new__(cls, queue: MaildirQueue, msg_id: str) -> _Unclaimed:
        obj = super().__new__(cls, msg_id)
        obj.queue = queue
        return obj


class MaildirBackend:
    """Transport that queues the message for ``mq-run`` (always succeeds unless the disk fails)."""

    transport_name = 'maildir'
    # MessageHandler: never queue a message that is already in a queue; fallback target for refusals
    is_queue = True

    def __init__(self, queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self._queue: Optional[MaildirQueue] = None

    @property
    def queue(self) -> MaildirQueue:
        if self._queue is None:
            self._queue = get_queue(self.queue_dir)
        return self._queue

    def __repr__(self) -> str:
        return f'MaildirBackend({self.queue_dir!r})'

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes,
             last_error: Optional[str] = None) -> SendResult:
        try:
            msg_id = self.queue.enqueue(msg_bytes, from_addr, list(to_addrs),
                                        extra={LAST_ERROR: last_error} if last_error else None)
        except QueueWriteError as exc:
            return SendResult(transport='maildir', queued=False, error=str(exc),
                              deferred={a: (451, str(exc)) for a in to_addrs})
        return SendResult(transport='maildir', queued=True, queued_to=list(to_addrs),
                          queue_id=str(msg_id), host=self.queue.path)

    def close(self) -> None:
        pass
