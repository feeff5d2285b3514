"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest

from schwarz.mailqueue.testutils import SMTPTestServer, smtp_server_fixture


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    """A plain (no TLS, no AUTH) fault-injecting SMTP server on 127.0.0.1."""
    yield from smtp_server_fixture()
