"""Helpers shared by the end-to-end tests of the command-line tools (no tests of its own).

The tools run as real processes: the console scripts installed next to the
test interpreter, with ``HOME`` pointing at a temporary directory so that no
user configuration leaks in, talking to an ``SMTPTestServer`` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from schwarz.mailqueue.testutils import ScriptedSMTPServer, SMTPTestServer

__all__ = [
    'ALIASES',
    'TIMEOUT',
    'full_queue_dir',
    'queue_files',
    'run_tool',
    'script',
    'sendmail_link',
    'write_config',
]

TIMEOUT = 20.0
BIN_DIR = os.path.dirname(sys.executable)
ALIASES = """\
# test aliases
root: admin@example.org
postmaster: root
team: alice@example.org,
      bob@example.org
"""


def script(name: str) -> str:
    """Absolute path of an installed console script (next to the interpreter running the tests)."""
    path = shutil.which(name, path=BIN_DIR)
    assert path is not None, f'{name} is not installed in {BIN_DIR} (pip install -e .)'
    return path


def sendmail_link(directory: Path) -> str:
    """``directory/bin/sendmail`` -> ``mq-sendmail``, as installed by update-alternatives or a symlink."""
    bin_dir = directory / 'bin'
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / 'sendmail'
    if not link.exists():
        link.symlink_to(script('mq-sendmail'))
    return str(link)


from helpers import UNCHANGED_HEADERS  # noqa: E402


def write_config(directory: Path, server: Union[SMTPTestServer, ScriptedSMTPServer, None] = None, *,
                 name: str = 'mq.conf', aliases: Optional[str] = ALIASES, **values: str) -> Path:
    """A config file pointing at ``server`` (or at a closed port), plus an aliases file next to it."""
    settings: Dict[str, str] = {}
    if server is not None:
        settings.update(server.settings_for_client())
    else:
        settings.update({'smtp_hostname': '127.0.0.1', 'smtp_port': str(_closed_port())})
    if aliases is not None:
        aliases_path = directory / 'aliases'
        aliases_path.write_text(aliases)
        settings['aliases'] = str(aliases_path)
    # byte-for-byte tests predate the header defaults of issue 12 (tests/test_header_defaults.py)
    settings.update(UNCHANGED_HEADERS)
    settings.update(values)
    path = directory / name
    path.write_text('[mqrunner]\n' + ''.join(f'{key} = {value}\n' for key, value in settings.items()))
    path.chmod(0o600)
    return path


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def run_tool(argv: Sequence[Union[str, bytes]], *, input: bytes = b'', home: Path,
             env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
             preexec_fn: Optional[Callable[[], None]] = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run a tool with ``HOME=home`` (so ``~/.mailqueue-runner.conf`` is ours), bounded in time."""
    environment = {
        'PATH': f'{BIN_DIR}:/usr/bin:/bin',
        'HOME': str(home),
        'LANG': 'C.UTF-8',
        'LOGNAME': 'tester',
        'USER': 'tester',
    }
    environment.update(env or {})
    return subprocess.run(list(argv), input=input, capture_output=True, env=environment, cwd=cwd,
                          timeout=timeout, preexec_fn=preexec_fn, check=False)


def _fill(path: Path) -> None:
    # Unbuffered: a buffered file would fail once more, on close, with the bytes it still holds.
    with open(path, 'wb', buffering=0) as fp:
        try:
            while True:
                fp.write(b'\0' * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _limit_file_size() -> None:
    # Writing past RLIMIT_FSIZE fails with EFBIG once SIGXFSZ (which would kill us) is ignored.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@contextlib.contextmanager
def full_queue_dir(tmp_path: Path) -> Iterator[Tuple[Path, Optional[Callable[[], None]]]]:
    """A queue directory on a full file system: a 64 KiB tmpfs filled up.

    Where mounting is not permitted, the child process instead gets a file size
    limit (RLIMIT_FSIZE), so its writes fail for real as well. Yields the queue
    path and the ``preexec_fn`` to use for the child (None with tmpfs).
    """
    from schwarz.mailqueue.queue.maildir import MaildirQueue

    mount_point = tmp_path / 'tiny-fs'
    mount_point.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', str(mount_point)],
                             capture_output=True, timeout=10, check=False).returncode == 0
    queue_dir = mount_point / 'queue'
    try:
        MaildirQueue(str(queue_dir))  # the queue exists; only the space for messages is missing
        if mounted:
            _fill(mount_point / 'filler')
            yield queue_dir, None
        else:
            yield queue_dir, _limit_file_size
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(mount_point)], capture_output=True, timeout=10, check=False)


def queue_files(queue_dir: Path) -> Dict[str, List[str]]:
    """Names per queue state directory (for asserting that nothing was left behind)."""
    return {state: sorted(os.listdir(queue_dir / state)) for state in ('tmp', 'new', 'cur', 'failed')
            if (queue_dir / state).is_dir()}
