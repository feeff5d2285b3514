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
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

from ..errors import ClaimLost, QueueUnavailable
from .contract import (
    STATES,
    ClaimBatch,
    QueuedMessage,
    QueueEntry,
    StateCount,
    apply_move,
    entering_meta,
    is_due,
    record_attempt,
)
from .format import (
    FAILED_REASON,
    QueueFileError,
    QueueMeta,
    check_envelope,
    parse_message_envelope,
    parse_queue_bytes,
    serialize_meta,
)

if TYPE_CHECKING:  # pragma: no cover
    from .schedule import RetryPolicy

__all__ = ['MaildirQueue', 'QueueWriteError', 'get_queue']

_SUBDIRS = ('tmp',) + STATES
_O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
_O_NONBLOCK = getattr(os, 'O_NONBLOCK', 0)
# where an abandoned claim goes back to when it was claimed from there (see _mark_origin)
_KEPT_ON_RECOVERY = ('hold', 'failed')


class QueueWriteError(QueueUnavailable, OSError):
    """The message could not be stored durably; nothing was left behind in the queue.

    Also an ``OSError`` (with ``errno``), as in 1.x.
    """


class _Claim:
    """What a maildir claim is: the locked file descriptor, and where the message came from."""

    __slots__ = ('fd', 'origin')

    def __init__(self, fd: int, origin: str) -> None:
        self.fd = fd
        self.origin = origin


def _claim_of(msg: QueuedMessage) -> _Claim:
    token = msg.token
    if token is None:
        raise ClaimLost(f'{msg.msg_id} is no longer claimed (its claim has ended)')
    if not isinstance(token, _Claim):
        raise ValueError(f'{msg.msg_id} is not claimed from a maildir queue')
    return token


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

    kind = 'maildir'

    def __init__(self, path: str, *, create: bool = True, fsync: bool = True,
                 stale_after: Optional[timedelta] = None) -> None:
        self.path = self.location = os.path.abspath(path)
        self.fsync = fsync
        # Only for filesystems whose locks cannot be trusted (some network filesystems).
        self.stale_after = stale_after
        self._dir_fds: Dict[str, int] = {}
        self._dir_lock = threading.Lock()
        self._closer: Optional[_BackgroundCloser] = None
        # claim_due walks new/ once per pass; the walk survives between calls
        self._scan: Optional[Iterator[str]] = None
        self._walk_started = 0
        self._scan_lock = threading.Lock()
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
        closer, self._closer = self._closer, None
        if closer is not None:
            closer.stop()
        with self._dir_lock:
            for fd in self._dir_fds.values():
                os.close(fd)
            self._dir_fds.clear()

    def changed_marker(self) -> float:
        """new/'s modification time: every enqueue, release or recovery renames a file into it.

        With a drop area (``maildir_drop``), a new drop counts too.
        """
        marker = os.stat(self._dir('new')).st_mtime_ns
        try:
            marker = max(marker, os.lstat(os.path.join(self.path, 'drop')).st_mtime_ns)
        except OSError:
            pass
        return marker / 1e9

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
            if os.geteuid() == 0:
                # root (a cron job's mq-sendmail) writing into a queue of a dedicated user: the file
                # must be the queue owner's, or that user's mq-run could never read it
                owner = os.lstat(self.path)
                if owner.st_uid != 0:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
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

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                queue_date: Optional[datetime] = None, extra: Optional[Dict[str, str]] = None,
                attempted: Optional[datetime] = None, retries: Optional[int] = None) -> str:
        """Store a message durably in new/; its id."""
        meta = entering_meta(sender, recipients, queue_date=queue_date, extra=extra, attempted=attempted,
                             retries=retries)
        return self.store_entry('new', _new_id(), serialize_meta(meta) + msg_bytes)

    def store_entry(self, state: str, msg_id: str, content: bytes) -> str:
        """Write a whole queue file (meta block and message) durably into ``state`` as ``msg_id``
        (which must not exist yet in tmp/); ``msg_id``."""
        fd, tmp_path = self._write_tmp(msg_id, content, lock=False)
        self._publish(fd, tmp_path, state, msg_id, keep_fd=False)
        return msg_id

    def enqueue_claimed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                        queue_date: Optional[datetime] = None) -> QueuedMessage:
        """Store durably, locked and in cur/: the caller owns it (conservative sending)."""
        meta = QueueMeta(from_addr=sender or '', to_addrs=list(recipients),
                         queue_date=queue_date or datetime.now(timezone.utc))
        if not meta.to_addrs:
            raise ValueError('cannot queue a message without recipients')
        msg_id = _new_id()
        fd, tmp_path = self._write_tmp(msg_id, serialize_meta(meta) + msg_bytes, lock=True)
        path = self._publish(fd, tmp_path, 'cur', msg_id, keep_fd=True)
        return QueuedMessage(self, msg_id, meta, msg_bytes, _Claim(fd, 'new'), path)

    def store_dead_letter(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        return self.store_failed(msg_bytes, sender, recipients, reason)

    def store_failed(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], reason: str) -> str:
        """Keep a dead-letter copy (e.g. for permanently refused recipients) with the reason."""
        meta = QueueMeta(from_addr=sender or '', to_addrs=list(recipients),
                         queue_date=datetime.now(timezone.utc), extra={FAILED_REASON: reason})
        return self.store_entry('failed', _new_id(), serialize_meta(meta) + msg_bytes)

    # --- claiming ---------------------------------------------------------------------------

    def _lock_file(self, state: str, msg_id: str) -> Optional[Tuple[int, os.stat_result]]:
        """Open and lock the file at state/msg_id: (fd, its stat); None if it is gone or someone else owns it."""
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
        return fd, st_fd

    def claim(self, msg_id: str, state: str = 'new',
              want: Optional[Callable[[QueueMeta], bool]] = None) -> Optional[QueuedMessage]:
        """Own a message: lock it and move it to cur/. None when it is gone or owned by someone else.

        ``want(meta)`` is asked while the file is locked but not yet moved; returning
        False leaves it where it is (a runner skipping a message that is not due
        costs one read, no renames). Raises ``QueueFileError`` for a corrupt file,
        which is moved to failed/ with the reason first.
        """
        return self._claim(msg_id, state, want)

    def _claim(self, msg_id: str, state: str, want: Optional[Callable[[QueueMeta], bool]],
               touched_before: Optional[int] = None) -> Optional[QueuedMessage]:
        self._check_dir(state)
        self._check_dir('cur')
        locked = self._lock_file(state, msg_id)
        if locked is None:
            return None
        fd, st = locked
        if touched_before is not None and st.st_mtime_ns >= touched_before:
            os.close(fd)  # claimed, deferred or released during this pass: not again in the same pass
            return None
        size = st.st_size
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
                if state in _KEPT_ON_RECOVERY:
                    self._mark_origin(msg_id, state)
        except BaseException:
            os.close(fd)
            raise
        if problem is not None:
            self._quarantine_fd(fd, msg_id, data, f'corrupt queue file: {problem}')
            raise problem
        return QueuedMessage(self, msg_id, meta, msg_bytes, _Claim(fd, state if state != 'cur' else 'new'),
                             cur_path)

    def claim_due(self, limit: int, *, now: datetime, policy: RetryPolicy,
                  force: bool = False) -> ClaimBatch:
        """Claim up to ``limit`` due messages, continuing one walk over new/ per pass.

        An empty list ends the pass; the next call starts a new walk. A message that is
        not due costs one locked read and no rename.
        """
        claimed = ClaimBatch()
        walk_started = self._walk_started

        def due(meta: QueueMeta) -> bool:
            wanted = force or is_due(meta, policy, now)
            if not wanted:
                claimed.not_due += 1
            return wanted

        with self._scan_lock:
            if self._scan is None:
                self._scan = self.iter_ids('new')
                # Claims, deferrals and releases set a file's mtime: whatever was touched after the
                # walk began is not taken again in the same pass, whatever order readdir() returns.
                self._walk_started = walk_started = time.time_ns()
            scan = self._scan
            while len(claimed) < limit:
                msg_id = next(scan, None)
                if msg_id is None:
                    # The walk is over. With nothing claimed this call ends the pass; otherwise
                    # the next call does (and a walk after that starts afresh).
                    self._scan = None if not claimed else iter(())
                    break
                try:
                    msg = self._claim(msg_id, 'new', due, walk_started)
                except QueueFileError as exc:
                    logging.getLogger('mailqueue').error('queue file %s moved to failed/: %s', msg_id, exc)
                    claimed.corrupt += 1
                    continue
                except OSError as exc:
                    logging.getLogger('mailqueue').error('cannot claim %s: %s', msg_id, exc)
                    continue
                if msg is not None:
                    claimed.append(msg)
        return claimed

    def _replace_locked(self, msg: QueuedMessage, content: bytes, target_state: str) -> None:
        """Atomically swap the claimed file for ``content`` and move it to ``target_state``."""
        claim = _claim_of(msg)
        old_fd = claim.fd
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
        claim.fd = fd
        os.close(old_fd)
        self._move_claimed(msg, target_state)

    # Claims from hold/ and failed/ (admin tools) leave a mark in cur/, so that recovering the
    # claim of a tool that died puts the message back there, not into new/ (a held message would
    # be delivered, a failed one retried). Made after the rename into cur/, removed before the
    # file leaves it: a mark never outlives its claim (a crash in between recovers into new/).

    def _origin_mark(self, msg_id: str, state: str) -> str:
        return os.path.join(self._dir('cur'), f'.{msg_id}.from-{state}')

    def _mark_origin(self, msg_id: str, state: str) -> None:
        os.close(os.open(self._origin_mark(msg_id, state), os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC,
                         0o600))

    def _unmark_origin(self, msg_id: str) -> None:
        for state in _KEPT_ON_RECOVERY:
            _unlink_quietly(self._origin_mark(msg_id, state))

    def _marked_origin(self, msg_id: str) -> str:
        for state in _KEPT_ON_RECOVERY:
            if os.path.lexists(self._origin_mark(msg_id, state)):
                return state
        return 'new'

    def _move_claimed(self, msg: QueuedMessage, target_state: str) -> None:
        _claim_of(msg)  # ClaimLost before anything moves
        self._unmark_origin(msg.msg_id)
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
        token, msg.token = msg.token, None
        if isinstance(token, _Claim):
            os.close(token.fd)

    def complete(self, msg: QueuedMessage, *, wait: bool = True) -> None:
        """Delivered: remove the file. (A crash before this is the at-least-once window.)"""
        fd = _claim_of(msg).fd  # ClaimLost when the claim has ended
        msg.token = None
        self._unmark_origin(msg.msg_id)
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
        closer = self._closer
        if closer is None:
            with self._dir_lock:
                closer = self._closer
                if closer is None:
                    closer = self._closer = _BackgroundCloser()
                    # a queue dropped without close() must not leave its thread behind
                    weakref.finalize(self, closer.stop)
        closer.close_later(fd)

    def defer(self, msg: QueuedMessage, recipients: Sequence[str], error: str, attempt_time: datetime,
              next_attempt: Optional[datetime] = None) -> None:
        """Temporary failure: keep only ``recipients``, count the attempt, back to new/."""
        _claim_of(msg)  # ClaimLost before anything changes
        record_attempt(msg.meta, recipients, error, attempt_time, next_attempt)
        self._replace_locked(msg, serialize_meta(msg.meta) + msg.msg_bytes, 'new')

    def fail(self, msg: QueuedMessage, reason: str, recipients: Optional[Sequence[str]] = None) -> str:
        """Dead letter: to failed/ with the reason (and only ``recipients`` if given)."""
        _claim_of(msg)  # ClaimLost before anything changes
        meta = msg.meta
        if recipients is not None:
            meta.to_addrs = list(recipients)
        meta.extra[FAILED_REASON] = reason
        self._replace_locked(msg, serialize_meta(meta) + msg.msg_bytes, 'failed')
        return msg.msg_id

    def move(self, msg: QueuedMessage, target_state: str, *, reset_retries: bool = False,
             due_now: bool = False, queue_date: Optional[datetime] = None,
             extra: Optional[Dict[str, Optional[str]]] = None) -> None:
        """Admin moves (hold, release, requeue, retry) of a claimed message.

        ``reset_retries`` forgets every attempt and error; ``due_now`` keeps the attempt
        count (and so later backoff) but makes it due at once; ``queue_date`` restarts (or
        shifts) the lifetime; ``extra`` sets meta values (None removes one).
        """
        if target_state not in STATES:
            raise ValueError(f'unknown state {target_state!r}')
        _claim_of(msg)  # ClaimLost before anything changes
        if not (reset_retries or due_now or extra or queue_date is not None):
            self._move_claimed(msg, target_state)
            return
        apply_move(msg.meta, reset_retries=reset_retries, due_now=due_now, queue_date=queue_date, extra=extra)
        self._replace_locked(msg, serialize_meta(msg.meta) + msg.msg_bytes, target_state)

    def rewrite(self, msg: QueuedMessage, *, sender: Optional[str] = None,
                recipients: Optional[Sequence[str]] = None) -> None:
        """New envelope for a claimed message; it stays claimed (in cur/)."""
        claim = _claim_of(msg)
        new_sender = msg.meta.from_addr if sender is None else sender
        new_recipients = list(msg.meta.to_addrs if recipients is None else recipients)
        check_envelope(new_sender, new_recipients)  # refused before anything changes
        msg.meta.from_addr = new_sender
        msg.meta.to_addrs = new_recipients
        fd, tmp_path = self._write_tmp(f'{msg.msg_id}.{secrets.token_hex(4)}',
                                       serialize_meta(msg.meta) + msg.msg_bytes, lock=True)
        try:
            os.rename(tmp_path, self._file('cur', msg.msg_id))
            self._fsync_dir('cur')
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp_path)
            raise QueueWriteError(exc.errno or errno.EIO, f'cannot update {msg.msg_id}: {exc}') from None
        os.close(claim.fd)
        claim.fd = fd

    def release(self, msg: QueuedMessage) -> None:
        """Give a claimed message back unchanged, to where it was claimed from."""
        if msg.is_claimed:
            self._move_claimed(msg, _claim_of(msg).origin)

    def _quarantine_fd(self, fd: int, msg_id: str, data: bytes, reason: str) -> None:
        meta = QueueMeta(from_addr='', to_addrs=[], queue_date=datetime.now(timezone.utc),
                         extra={FAILED_REASON: reason})
        holder = QueuedMessage(self, msg_id, meta, data, _Claim(fd, 'new'), self._file('cur', msg_id))
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

    def recover(self) -> int:
        return self.recover_stale()

    def recover_stale(self) -> int:
        """Move abandoned claims (nobody holds the lock) from cur/ back to new/ (to hold/ or failed/
        when an admin tool that claimed it from there died)."""
        recovered = 0
        back: Set[str] = set()
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
            origin = self._marked_origin(msg_id)
            try:
                os.rename(self._file('cur', msg_id), self._file(origin, msg_id))
                recovered += 1
                back.add(origin)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
            self._unmark_origin(msg_id)
        for state in back:
            self._fsync_dir(state)
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
                found = self._entry(state, msg_id)
                if found is not None:
                    yield found

    def _entry(self, state: str, msg_id: str) -> Optional[QueueEntry]:
        """The entry of state/msg_id (meta read without claiming); None if it is not there (any more)."""
        path = self._file(state, msg_id)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        meta: Optional[QueueMeta] = None
        error: Optional[str] = None
        if not stat.S_ISREG(st.st_mode):
            error = 'not a regular file'
        else:
            try:
                meta = self.read_meta(state, msg_id)
            except FileNotFoundError:
                return None
            except (QueueFileError, OSError) as exc:
                error = str(exc)
        active = _lock_held(path) if state == 'cur' else None
        return QueueEntry(msg_id, state, st.st_size, st.st_mtime, meta, error, path, active)

    def entry(self, msg_id: str) -> Optional[QueueEntry]:
        """One message as ``entries()`` shows it, wherever it is (followed while a runner moves it)."""
        for _attempt in range(20):
            state = self.locate(msg_id)
            if state is None:
                return None
            found = self._entry(state, msg_id)
            if found is not None:
                return found
        return None

    def ids(self, states: Sequence[str] = STATES) -> Iterator[Tuple[str, str]]:
        """``(state, id)`` of every file in ``states``, streamed (names only: no file is opened)."""
        for state in states:
            for msg_id in self.iter_ids(state):
                yield state, msg_id

    def resolve(self, prefix: str, states: Sequence[str] = STATES) -> List[Tuple[str, str]]:
        """(state, id) pairs whose id starts with ``prefix`` (names only: no file is opened)."""
        return [(state, msg_id) for state in states for msg_id in self.iter_ids(state)
                if msg_id.startswith(prefix)]

    def locate(self, msg_id: str) -> Optional[str]:
        """The state ``msg_id`` is in right now, or None."""
        for state in STATES:
            try:
                os.lstat(self._file(state, msg_id))
            except FileNotFoundError:
                continue
            except ValueError:
                return None
            return state
        return None

    def view(self, msg_id: str) -> Optional[Tuple[QueueEntry, bytes]]:
        """One message and its bytes without claiming it; a corrupt one comes with its raw bytes.

        A runner may move it between directories while we look: follow it a few times.
        """
        for _attempt in range(20):
            state = self.locate(msg_id)
            if state is None:
                return None
            path = self._file(state, msg_id)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    return QueueEntry(msg_id, state, st.st_size, st.st_mtime, None, 'not a regular file', path), b''
                with open(path, 'rb', opener=_nofollow_opener) as fp:
                    data = fp.read()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            active = _lock_held(path) if state == 'cur' else None
            try:
                meta, body = parse_queue_bytes(data)
            except QueueFileError as exc:
                return QueueEntry(msg_id, state, st.st_size, st.st_mtime, None, str(exc), path, active), data
            return QueueEntry(msg_id, state, st.st_size, st.st_mtime, meta, None, path, active), body
        return None

    def stats(self) -> Dict[str, StateCount]:
        counts = {state: StateCount() for state in STATES}
        for entry in self.entries():
            count = counts[entry.state]
            count.count += 1
            count.size += entry.size
            date = entry.meta.queue_date if entry.meta is not None else None
            if date is not None and (count.oldest is None or date < count.oldest):
                count.oldest = date
        return counts

    def delete(self, msg_id: str, state: str) -> Optional[bool]:
        """Remove an unclaimed message under its lock: True; False if someone holds it; None if gone."""
        path = self._file(state, msg_id)
        try:
            st_path = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st_path.st_mode):
            # never follow: a symlink or directory planted in the queue is removed as the entry it is
            if stat.S_ISDIR(st_path.st_mode):
                raise QueueFileError(f'{path} is a directory; remove it by hand')
            try:
                os.unlink(path)
            except FileNotFoundError:
                return None
            self._fsync_dir(state)
            return True
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                st_now = os.lstat(path)
            except FileNotFoundError:
                return None
            st_fd = os.fstat(fd)
            if (st_now.st_ino, st_now.st_dev) != (st_fd.st_ino, st_fd.st_dev):
                return None  # replaced meanwhile (claimed and moved on)
            os.unlink(path)
        finally:
            os.close(fd)
        self._fsync_dir(state)
        return True

    # Every directory a runner writes to: a claim renames new/ -> cur/, a deferral rewrites the
    # file through tmp/, dead letters go to failed/, a file that cannot be updated after a
    # partial delivery to hold/.
    _WRITTEN = ('new', 'cur', 'tmp', 'failed', 'hold')

    def identity(self) -> str:
        """The queue directory's device and inode: the same through a symlink or a bind mount."""
        try:
            found = os.stat(self.path)
        except OSError:
            return f'maildir:{os.path.realpath(self.path)}'
        return f'maildir:{found.st_dev}:{found.st_ino}'

    def check(self) -> None:
        """``QueueWriteError`` when this process cannot work on the queue (read-only mount, another
        user's 0700 queue): found before a pass, not as one "cannot claim" line per message."""
        for name in self._WRITTEN:
            self._check_dir(name)
            if os.access(self._dir(name), os.W_OK | os.X_OK):
                continue
            try:
                read_only = bool(os.statvfs(self._dir(name)).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            code = errno.EROFS if read_only else errno.EACCES
            raise QueueWriteError(code, f'cannot write to {name}/ ({os.strerror(code)})')

    def wait_for_work(self, timeout: float) -> bool:
        """Poll new/'s modification time (every enqueue, release and recovery renames into it)."""
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            start = self.changed_marker()
        except OSError:
            start = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.2, remaining))
            try:
                if self.changed_marker() != start:
                    return True
            except OSError:
                continue


class _BackgroundCloser:
    """Closes file descriptors in a daemon thread, in order."""

    def __init__(self) -> None:
        import queue

        self._fds: queue.SimpleQueue[Optional[threading.Event] | int] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name='mq-closer', daemon=True)
        self._thread.start()

    def close_later(self, fd: int) -> None:
        if self._stopped:  # (a complete() racing close(): no thread to hand it to)
            _close_quietly(fd)
            return
        self._fds.put(fd)

    def stop(self) -> None:
        """End the thread once everything queued before is closed."""
        self._stopped = True
        self._fds.put(None)

    def flush(self) -> None:
        if self._stopped:
            return
        done = threading.Event()
        self._fds.put(done)
        done.wait()

    def _run(self) -> None:
        import queue

        stopping = False
        while True:
            try:
                item = self._fds.get_nowait() if stopping else self._fds.get()
            except queue.Empty:
                return  # stopped, and what was queued after the stop is done too
            if item is None:
                stopping = True
            elif isinstance(item, threading.Event):
                item.set()
            else:
                _close_quietly(item)


def _lock_held(path: str) -> Optional[bool]:
    """True if a live process holds the file's lock, False if nobody does, None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except OSError:
        return None
    try:
        # A shared lock is enough to test and, being released at once, never blocks a runner for long.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


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


def get_queue(path: str, *, stale_after: Optional[timedelta] = None, create: bool = True,
              **options: object) -> MaildirQueue:
    """One ``MaildirQueue`` per directory per process (they cache directory fds).

    Creates the directories if needed. With ``create=False`` the queue directory must exist
    (``QueueWriteError`` with ENOENT otherwise; for tools that only look at a queue), and the
    state directories a 1.0.0 queue lacks are added only where permissions allow.
    Options that other stores have are ignored.
    """
    key = os.path.abspath(path)
    if not create:
        try:
            is_dir = stat.S_ISDIR(os.stat(key).st_mode)
        except FileNotFoundError:
            is_dir = False
        except OSError as exc:
            raise QueueWriteError(exc.errno or errno.EIO, f'queue directory {key}: {exc.strerror or exc}') from None
        if not is_dir:
            raise QueueWriteError(errno.ENOENT, f'queue directory {key} does not exist')
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None:
            queue = MaildirQueue(key, create=create)
            if not create:
                try:
                    queue.ensure_dirs()
                except QueueWriteError:
                    pass  # someone who may only look; check() tells writers what is missing
            _queues[key] = queue
        if stale_after is not None:
            queue.stale_after = stale_after
        return queue


def __getattr__(name: str) -> object:
    # 1.x imported these from here; they now work with any store and live in queue.transport.
    if name in ('MaildirBackend', 'enqueue_message'):
        from . import transport

        return getattr(transport, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
