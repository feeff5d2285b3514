"""The OAuth2 token cache: one JSON file, mode 0600, shared by every process of one user.

Holds access tokens until shortly before they expire, and refresh tokens that
the token endpoint rotated (the configured one may already be spent). Writes are
atomic (a new file, fsynced, renamed over the old one, the directory fsynced), so
a crash never leaves half a file and a rotated refresh token is never lost once
the endpoint's answer was read. A lock file serialises the processes that
refresh at the same moment: the second one finds the first one's fresh token
instead of spending the refresh token again.

A cache that cannot be read or written (permissions, a full disk) is not fatal:
the token is then kept in memory, and a warning says why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import time
from typing import Any, Dict, Iterator, Optional

__all__ = ['TokenCache']

log = logging.getLogger('mailqueue')

_VERSION = 1
_MAX_SIZE = 1024 * 1024
_LOCK_WAIT = 30.0


class TokenCache:
    """Entries by key (a hash of endpoint, client and grant); values are small dicts of strings and numbers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._warned = False

    def __repr__(self) -> str:
        return f'TokenCache({self.path!r})'

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            reason = getattr(exc, 'strerror', None) or type(exc).__name__
            # no directory (yet): a queue directory is created with the first queued message
            level = logging.DEBUG if isinstance(exc, FileNotFoundError) else logging.WARNING
            log.log(level, 'OAuth2 token cache %s: cannot %s (%s); tokens are kept in memory only', self.path,
                    what, reason)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's lock file (bounded wait: a stuck process must not stop the others)."""
        fd: Optional[int] = None
        self._make_directory()
        try:
            fd = os.open(self.path + '.lock', os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn('create its lock file', exc)
        try:
            if fd is not None:
                deadline = time.monotonic() + _LOCK_WAIT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            log.warning('OAuth2 token cache %s: still locked after %gs; going on without the lock',
                                        self.path, _LOCK_WAIT)
                            break
                        time.sleep(0.05)
                    except OSError as exc:
                        self._warn('lock it', exc)
                        break
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _make_directory(self) -> None:
        """Create the cache's directory (0700, one level) if it is missing: the queue directory, by
        default, appears only with the first queued message, and a rotated refresh token must be kept."""
        directory = os.path.dirname(self.path) or '.'
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            self._warn('create its directory', exc)

    def load(self) -> Dict[str, Dict[str, Any]]:
        """All entries; an empty dict when there is no file or it is unusable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, 'O_NOFOLLOW', 0))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn('read it', exc)
            return {}
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_SIZE:
                log.warning('OAuth2 token cache %s is not a small regular file; ignored', self.path)
                return {}
            if info.st_mode & 0o077:
                # written 0600 by us; somebody widened it: tokens must not stay readable by others
                log.warning('OAuth2 token cache %s was readable by others; made private (0600)', self.path)
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o600)
            with os.fdopen(fd, 'rb', closefd=False) as fp:
                data = json.loads(fp.read().decode('utf-8'))
        except (OSError, ValueError, RecursionError) as exc:  # (RecursionError: "[[[[...")
            log.warning('OAuth2 token cache %s is unreadable (%s); starting afresh', self.path, type(exc).__name__)
            return {}
        finally:
            os.close(fd)
        entries = data.get('entries') if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}

    def store(self, entries: Dict[str, Dict[str, Any]]) -> bool:
        """Replace the file atomically; False (with a warning) when that is not possible."""
        content = json.dumps({'version': _VERSION, 'entries': entries}, sort_keys=True).encode('utf-8')
        directory = os.path.dirname(self.path) or '.'
        tmp = f'{self.path}.{secrets.token_hex(6)}.tmp'
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn('write it', exc)
            return False
        try:
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._warn('write it', exc)
            return False
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return True
        try:
            os.fsync(dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                self._warn('sync its directory', exc)
        finally:
            os.close(dir_fd)
        return True
