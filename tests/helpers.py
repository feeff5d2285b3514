"""Shared helpers for tests that run the installed console scripts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

BIN_DIR = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN_DIR / name
    assert path.exists(), f'{name} is not installed next to {sys.executable}'
    return str(path)


UNCHANGED_HEADERS = {'add_date_header': 'no', 'add_message_id_header': 'no', 'add_from_header': 'no',
                     'qualify_addresses': 'no'}


def write_config(path: Path, server: Any = None, **values: Any) -> str:
    lines = ['[mqrunner]']
    if server is not None:
        lines += [f'smtp_hostname = {server.hostname}', f'smtp_port = {server.port}', 'smtp_tls = none']
    # Tests written before the header defaults (issue 12) compare messages byte for byte: they get
    # them off unless they ask; tests/test_header_defaults.py checks the defaults themselves.
    values = {**UNCHANGED_HEADERS, **values}
    lines += [f'{key} = {value}' for key, value in values.items()]
    path.write_text('\n'.join(lines) + '\n')
    os.chmod(path, 0o600)
    return str(path)


def run(args: List[str], *, input: Optional[bytes] = None, timeout: float = 60,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(args, input=input, capture_output=True, timeout=timeout, env=full_env)


class Logs(logging.Handler):
    """Everything our loggers say, at every level (the test server's own aiosmtpd logger excluded)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith('mailqueue'):
            self.lines.append(self.format(record))
