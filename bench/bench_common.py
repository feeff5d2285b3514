"""Helpers shared by the benchmarks: a sink in its own process, timing, report files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

__all__ = ['ROOT', 'Sink', 'replace_section']

ROOT = Path(__file__).resolve().parent.parent


class Sink:
    """bench/sink.py in a separate process on 127.0.0.1."""

    def __init__(self, kind: str = 'raw', delay_ms: float = 0.0) -> None:
        self.kind = kind
        self.delay_ms = delay_ms
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.received = -1

    def __enter__(self) -> Sink:
        args = [sys.executable, str(ROOT / 'bench' / 'sink.py')] + (['--aiosmtpd'] if self.kind == 'aiosmtpd' else [])
        if self.delay_ms:
            args += ['--delay', str(self.delay_ms)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.match(r'PORT (\d+)', line)
        if not match:
            raise RuntimeError(f'sink did not start: {line!r}')
        self.port = int(match.group(1))
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            tail = self.proc.stdout.read().decode()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        match = re.search(r'RECEIVED (\d+)', tail)
        self.received = int(match.group(1)) if match else -1


def replace_section(path: Path, heading: str, body: str) -> None:
    """Write ``## heading`` + body into a markdown file, replacing that section if present."""
    text = path.read_text() if path.exists() else '# Benchmarks\n\nFigures measured on the project machine ' \
        '(2 cores). Each benchmark runs its baseline in the same run and reports ratios.\n'
    section = f'## {heading}\n\n{body.strip()}\n'
    pattern = re.compile(rf'^## {re.escape(heading)}\n.*?(?=^## |\Z)', re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + '\n', text).rstrip() + '\n'
    else:
        text = text.rstrip() + '\n\n' + section
    path.write_text(text)


def cpu_info() -> str:
    return f'{os.cpu_count()} CPUs, Python {sys.version.split()[0]}'
