"""Run a ``..._command`` setting (a password, a token, a client secret): its output, bounded.

One rule for every such setting: through the shell, stdin from /dev/null (it must not eat the
message ``mq-sendmail`` reads), stderr dropped, done when the command has exited and its output
is read (a child it left running in the background, which still holds the pipe, is not waited
for), at most ``MAX_OUTPUT`` bytes and ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import time

__all__ = ['MAX_OUTPUT', 'TIMEOUT', 'CommandFailed', 'command_output']

TIMEOUT = 60.0
MAX_OUTPUT = 64 * 1024  # a token is a few KiB; `yes` is not


class CommandFailed(Exception):
    """Why the command gave no output to use (``str()``: "did not finish within 60s", ...)."""


def command_output(command: str, timeout: float = TIMEOUT) -> bytes:
    """What ``command`` printed; ``CommandFailed`` if it could not run, failed, or overran."""
    import os
    import select
    import subprocess

    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise CommandFailed(f'could not be run ({exc.strerror or type(exc).__name__})') from None
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    output = bytearray()
    poller = select.poll()  # (not select(): descriptors above 1023 in a busy runner)
    poller.register(proc.stdout.fileno(), select.POLLIN)
    try:
        while True:
            exited = proc.poll() is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(output) > MAX_OUTPUT:
                proc.kill()
                proc.wait()
                if remaining <= 0:
                    raise CommandFailed(f'did not finish within {timeout:g}s')
                raise CommandFailed(f'printed more than {MAX_OUTPUT // 1024} KiB')
            if not poller.poll(0 if exited else min(remaining, 0.05) * 1000):
                if exited:
                    break  # ended, and nothing more to read now
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
        try:
            returncode = proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:  # closed its output but goes on running
            proc.kill()
            proc.wait()
            raise CommandFailed(f'did not finish within {timeout:g}s') from None
    finally:
        proc.stdout.close()
    if returncode != 0:
        raise CommandFailed(f'exited with status {returncode}')
    return bytes(output)
