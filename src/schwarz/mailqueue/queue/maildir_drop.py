"""The maildir queue's drop area: ``<queue>/drop/``, where users who may not use the queue submit.

The postdrop idea (Postfix's ``maildrop/``), without a setuid or setgid helper:

- ``<queue>`` is 0711 (others may pass through it, not list it); ``new/``, ``cur/`` and the
  other state directories stay 0700, owned by the queue owner (root).
- ``drop/`` is 1733 (``rwx-wx-wx`` plus the sticky bit): everybody may create files in it,
  nobody but the owner may list it, and the sticky bit keeps users from renaming or deleting
  files they do not own.
- A sender writes ``drop/.<id>.tmp`` (O_EXCL, O_NOFOLLOW, mode 0600, so only the sender and
  root can read it), fsyncs it, links it to ``drop/<id>`` (a link never replaces an existing
  name, unlike a rename), removes the temporary name and fsyncs the file again: on the
  journalling filesystems Linux spools live on this commits the new name with it (the
  directory cannot be opened for an fsync by someone who may not read it).
- The runner (the queue owner) takes each drop: it refuses anything but a regular file with a
  single link (a hard link to someone else's file is never read as that user's mail), reads
  at most ``max_size`` bytes, and hands the bytes and the owner's uid to the caller, which
  validates them. ``accept`` stores the message in ``new/`` under the drop's id (so a crash
  between storing and removing the drop cannot deliver it twice) and removes the drop;
  ``reject`` keeps it in ``failed/`` with the reason.

Only this module and ``maildir.py`` know about these files (``tests/test_layering.py``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time
from datetime import datetime, timezone
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence

from .format import FAILED_REASON, QueueMeta, serialize_meta
from .maildir import (
    _O_CLOEXEC,
    _O_NOFOLLOW,
    _O_NONBLOCK,
    MaildirQueue,
    QueueWriteError,
    _close_quietly,
    _new_id,
    _unlink_quietly,
    _write_all,
)

__all__ = ['DROP', 'DROP_MODE', 'Drop', 'accept', 'drop_area', 'drop_message', 'has_drop_area', 'make_drop_area',
           'reject', 'take_drops']

DROP = 'drop'
DROP_MODE = 0o1733
QUEUE_MODE_WITH_DROP = 0o711
_OUR_ID = re.compile(r'[0-9a-f]{12}\.[0-9]{1,12}\Z')
# A temporary name older than this belongs to a writer that died: the runner removes it.
_STALE_TMP = 3600.0
# A drop still linked to its temporary name this long after it was written: its sender died
# between link() and unlink(); the drop is complete (written and synced before the link).
_STALE_LINK = 60.0
# What ``failed/`` keeps of a drop that is not a valid submission: its start, enough to see what it
# was (all of it would let a user turn a sparse file into disk space of the queue owner's).
_KEPT_OF_REJECTED = 64 * 1024


class Drop(NamedTuple):
    """One submission taken from the drop area (or why it cannot be read: ``problem``)."""

    drop_id: str
    uid: int
    size: int
    data: bytes
    problem: Optional[str]


def drop_area(queue_path: str) -> str:
    return os.path.join(queue_path, DROP)


def has_drop_area(queue_path: str) -> bool:
    """True if ``<queue>/drop`` exists as a directory (never following a symlink)."""
    try:
        return stat.S_ISDIR(os.lstat(drop_area(queue_path)).st_mode)
    except OSError:
        return False


def make_drop_area(queue: MaildirQueue) -> str:
    """Create ``drop/`` (1733) and let others pass through the queue directory (0711). Owner only."""
    path = drop_area(queue.path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise QueueWriteError(errno.ENOTDIR, f'{path} is not a directory')
    os.chmod(path, DROP_MODE)  # mkdir's mode is cut by the umask; the sticky bit needs chmod anyway
    for state in os.listdir(queue.path):
        # once others may pass through the queue directory, what is queued must not be readable
        # by them (an older queue, or one made with mkdir -p, may have 0755 state directories)
        state_path = os.path.join(queue.path, state)
        if state != DROP and stat.S_ISDIR(os.lstat(state_path).st_mode):
            os.chmod(state_path, 0o700)
    os.chmod(queue.path, QUEUE_MODE_WITH_DROP)
    return path


# --- the sender's side -------------------------------------------------------------------------


def drop_message(queue_path: str, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                 fsync: bool = True) -> str:
    """Hand a message to the queue owner through ``drop/``, durably; its drop id.

    ``QueueWriteError`` when there is no drop area or it cannot be written (nothing is left behind).
    """
    directory = drop_area(queue_path)
    meta = QueueMeta(from_addr=sender or '', to_addrs=list(recipients), queue_date=datetime.now(timezone.utc))
    if not meta.to_addrs:
        raise ValueError('cannot queue a message without recipients')
    content = serialize_meta(meta) + msg_bytes
    drop_id = _new_id()
    tmp_path = os.path.join(directory, f'.{drop_id}.tmp')
    final = os.path.join(directory, drop_id)
    try:
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    except OSError as exc:
        raise QueueWriteError(exc.errno or errno.EIO,
                              f'cannot submit through {directory}: {exc.strerror or exc}') from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: only the sender and the queue owner read it
        _write_all(fd, content)
        if fsync:
            os.fsync(fd)
        os.link(tmp_path, final)
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass  # the runner took the drop as one whose sender died after link(): it is queued
        if fsync:
            os.fsync(fd)  # commits the new name with the file (see the module docstring)
    except OSError as exc:
        _unlink_quietly(tmp_path)
        _close_quietly(fd)
        raise QueueWriteError(exc.errno or errno.EIO,
                              f'cannot write to {directory}: {exc.strerror or exc}') from None
    _close_quietly(fd)
    return drop_id


# --- the queue owner's side --------------------------------------------------------------------


def _names(directory: str) -> List[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def take_drops(queue: MaildirQueue, max_size: int, stop: Callable[[], bool] = lambda: False) -> Iterator[Drop]:
    """Each drop waiting in ``drop/`` (oldest names first is not promised); stale temporaries go.

    A drop is locked (``flock``) from the moment it is opened until the caller has taken it in or
    rejected it and the next one is asked for: another runner skips it, and finds it gone after.
    ``stop``: asked before each drop (a daemon told to stop does not read 60 000 of them first).
    """
    directory = drop_area(queue.path)
    unreadable = skipped = 0
    try:
        for name in _names(directory):
            if stop():
                return
            path = os.path.join(directory, name)
            if name.startswith('.'):
                try:
                    if time.time() - os.lstat(path).st_mtime > _STALE_TMP:
                        os.unlink(path)
                except OSError:
                    pass
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                # a user's directory: nothing to deliver or keep. Removed when empty; a tree is
                # left alone (removing a tree a user can change under us is a symlink race, and a
                # deep one exhausts the recursion of shutil.rmtree)
                try:
                    os.rmdir(path)
                except OSError:
                    skipped += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                yield Drop(name, st.st_uid, 0, b'', 'not a regular file')
                continue
            try:
                fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
            except FileNotFoundError:
                continue  # taken in by another runner meanwhile
            except PermissionError as exc:
                if os.geteuid() != 0:
                    # drops are 0600, their sender's: only root reads them. Not the user's fault: the
                    # drop stays, and the operator is told (docs/install.md: mq-run runs as root)
                    unreadable += 1
                    continue
                yield Drop(name, st.st_uid, 0, b'', f'cannot open ({exc.strerror or exc})')
                continue
            except OSError as exc:
                yield Drop(name, st.st_uid, 0, b'', f'cannot open ({exc.strerror or exc})')
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # another runner is taking it in
                st = os.fstat(fd)
                if not _still_named(path, st):
                    continue  # taken in and removed by another runner meanwhile
                if st.st_nlink == 2:
                    if _in_flight(directory, name, st):
                        continue  # its sender is between link() and unlink(): the next pass takes it
                    st = os.fstat(fd)  # (a dead sender's temporary name may be gone now)
                if not stat.S_ISREG(st.st_mode):
                    yield Drop(name, st.st_uid, 0, b'', 'not a regular file')
                elif st.st_nlink != 1:
                    # a hard link to a file of someone else (say, /etc/shadow) is not that user's mail
                    yield Drop(name, st.st_uid, st.st_size, b'', f'{st.st_nlink} links to the file (only 1 allowed)')
                elif st.st_size > max_size:
                    yield Drop(name, st.st_uid, st.st_size, b'', f'{st.st_size} bytes, more than drop_max_size '
                               f'({max_size})')
                else:
                    chunks = []
                    total = 0
                    while total <= max_size:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        total += len(chunk)
                    data = b''.join(chunks)
                    if len(data) > max_size:  # grew while we read
                        yield Drop(name, st.st_uid, len(data), b'', f'more than drop_max_size ({max_size}) bytes')
                    else:
                        yield Drop(name, st.st_uid, len(data), data, None)
            finally:
                os.close(fd)
    finally:
        log = logging.getLogger('mailqueue')
        if skipped:
            log.warning('%d directories that are not empty in %s (made by users) are left alone', skipped,
                        directory)
        if unreadable:
            log.error(
                '%d drop(s) in %s cannot be read by this user and stay there: drops belong to their senders '
                '(0600), so mq-run must run as root to take them in (docs/install.md)', unreadable, directory)


def _still_named(path: str, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _in_flight(directory: str, name: str, st: os.stat_result) -> bool:
    """Is this drop's second link its sender's temporary name (``drop_message`` links, then
    unlinks)? True while that may still happen; a sender that died there leaves a complete drop,
    whose temporary name is removed here after ``_STALE_LINK`` (then False)."""
    tmp_path = os.path.join(directory, f'.{name}.tmp')
    try:
        tmp = os.lstat(tmp_path)
    except OSError:
        return False
    if (tmp.st_dev, tmp.st_ino) != (st.st_dev, st.st_ino):
        return False
    if time.time() - tmp.st_ctime < _STALE_LINK:  # (ctime: link() sets it; a slow fsync is no death)
        return True
    _unlink_quietly(tmp_path)
    try:
        return os.lstat(os.path.join(directory, name)).st_nlink != 1
    except OSError:
        return True


def _remove(queue: MaildirQueue, drop_id: str) -> None:
    _unlink_quietly(os.path.join(drop_area(queue.path), drop_id))
    if queue.fsync:
        fd = os.open(drop_area(queue.path), os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _queue_id(queue: MaildirQueue, drop: Drop) -> Optional[str]:
    """The queue id for a drop: its own name if we made it (None if a pass that died before removing
    the drop stored it already); a fresh one for a name we did not make."""
    if not _OUR_ID.match(drop.drop_id):
        return _new_id()
    return drop.drop_id if queue.locate(drop.drop_id) is None else None


def accept(queue: MaildirQueue, drop: Drop, msg_bytes: bytes, sender: str, recipients: Sequence[str],
           extra: Dict[str, str]) -> str:
    """Store a validated drop in ``new/`` (a fresh meta block: nothing of the sender's meta is kept
    but the envelope) under the drop's id, then remove the drop. Its queue id."""
    msg_id = _queue_id(queue, drop)
    if msg_id is not None:
        meta = QueueMeta(from_addr=sender, to_addrs=list(recipients), queue_date=datetime.now(timezone.utc),
                         extra=dict(extra))
        queue.store_entry('new', msg_id, serialize_meta(meta) + msg_bytes)
    _remove(queue, drop.drop_id)
    return msg_id or drop.drop_id


def reject(queue: MaildirQueue, drop: Drop, reason: str, extra: Dict[str, str],
           sender: str = '', recipients: Sequence[str] = ()) -> str:
    """Keep a drop that cannot be delivered in ``failed/`` with the reason (its first 64 KiB, as
    they were)."""
    if len(drop.data) > _KEPT_OF_REJECTED:
        reason = f'{reason} (the first {_KEPT_OF_REJECTED // 1024} KiB of {len(drop.data)} bytes kept)'
    meta = QueueMeta(from_addr=sender, to_addrs=list(recipients), queue_date=datetime.now(timezone.utc),
                     extra={**extra, FAILED_REASON: reason})
    try:
        head = serialize_meta(meta)
    except ValueError:
        meta.from_addr, meta.to_addrs = '', []
        head = serialize_meta(meta)
    msg_id = _queue_id(queue, drop)
    if msg_id is not None:
        data = drop.data[:_KEPT_OF_REJECTED]
        queue.store_entry('failed', msg_id, head + data)
    _remove(queue, drop.drop_id)
    return msg_id or drop.drop_id
