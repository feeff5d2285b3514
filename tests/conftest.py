"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest

from schwarz.mailqueue.testutils import SMTPTestServer, smtp_server_fixture


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
