"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from typing import Iterator

import pytest

from schwarz.mailqueue.testutils import SMTPTestServer, smtp_server_fixture

from helpers import Logs


@pytest.fixture(scope='session', autouse=True)
def _checkout_reachable_by_other_users() -> Iterator[None]:
    """Tests that run our installed scripts as another user (nobody, a user they create).

    A checkout in a private directory (``mktemp -d`` is 0700, as CI's may be) or an interpreter
    whose shared libpython lies under a private home (pyenv in /root) would make them fail with
    "Permission denied" before our code runs. Directories on the way get o+x (search only, no
    listing) for the session, and are restored afterwards.
    """
    import fcntl
    import os
    import stat
    import sysconfig
    import tempfile
    from pathlib import Path

    # Sessions running at the same time (two checkouts) share these directories: each holds a
    # shared lock, and only one that finds itself alone at its end restores the modes (else a
    # session still running would lose its access midway and fail)
    lock = open(os.path.join(tempfile.gettempdir(), 'mailqueue-runner-tests.lock'), 'a')
    fcntl.flock(lock, fcntl.LOCK_SH)
    changed = []
    if os.getuid() == 0:
        starts = [Path(__file__).resolve().parent, Path(sys.prefix).resolve(), Path(sys.executable).resolve()]
        libdir = sysconfig.get_config_var('LIBDIR')
        if libdir:
            starts.append(Path(libdir).resolve())
        seen = set()
        for start in starts:
            for directory in [start, *start.parents]:
                if directory in seen:
                    continue
                seen.add(directory)
                try:
                    st = directory.stat()
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & stat.S_IXOTH:
                    os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                    changed.append((directory, stat.S_IMODE(st.st_mode)))
    yield
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        changed = []  # another session still needs them
    for directory, mode in changed:
        try:
            os.chmod(directory, mode)
        except OSError:
            pass
    lock.close()


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    """A plain (no TLS, no AUTH) fault-injecting SMTP server on 127.0.0.1."""
    yield from smtp_server_fixture()


_OUR_LOGGERS = ('mailqueue', 'mailqueue.smtp', 'mailqueue.delivery_log', 'mailqueue.queue_log', 'mailqueue.plugins')


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Tests that call init_app() in-process configure our loggers; undo that after each test."""
    import logging

    saved = {}
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
    yield
    for name, (level, handlers, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled


@pytest.fixture
def logs() -> Iterator[Logs]:
    """What the ``mailqueue`` loggers say during the test, at every level."""
    import logging

    handler = Logs()
    logger = logging.getLogger('mailqueue')
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
