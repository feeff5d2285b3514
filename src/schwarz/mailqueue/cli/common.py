"""What every command-line tool shares: exit codes, config lookup, one-line errors.

Tools parse arguments, call the library, and map outcomes to sysexits codes.
No delivery logic lives in ``cli/``.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import IO, Any, Callable, Mapping, NoReturn, Optional, Sequence

__all__ = [
    'EX_CONFIG',
    'EX_DATAERR',
    'EX_IOERR',
    'EX_NOHOST',
    'EX_NOINPUT',
    'EX_NOUSER',
    'EX_OK',
    'EX_SOFTWARE',
    'EX_TEMPFAIL',
    'EX_UNAVAILABLE',
    'EX_USAGE',
    'CLIError',
    'OutputClosedError',
    'fail',
    'load_app',
    'print_error',
    'report_outcome',
    'run_main',
]

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67  # unknown local recipient (no alias, no default_domain), as sendmail
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78


class CLIError(Exception):
    """A failure to report as one line on stderr with a sysexits code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputClosedError(OSError):
    """Writing to standard output, which the caller closed (``mq-queue list >&-``)."""

    def __init__(self) -> None:
        super().__init__(errno.EBADF, 'cannot write the output: standard output is closed')


class _ClosedOutput(io.TextIOBase):
    """``sys.stdout`` when the caller closed it: tools that print nothing work, printing fails cleanly."""

    encoding = 'utf-8'
    errors = 'strict'

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OutputClosedError()

    @property
    def buffer(self) -> _ClosedOutput:  # for tools that write bytes through sys.stdout.buffer
        return self


def _sane_standard_streams() -> None:
    """Make stdin/stdout/stderr safe to use, whatever state the caller left them in.

    A closed descriptor 0, 1 or 2 (Python then sets ``sys.std*`` to None) is pointed at
    /dev/null, so that no file opened later (a queue file) can become "standard output" and
    receive stray writes, as sendmail and Postfix do. stdin then reads as empty, messages
    for a closed stderr are dropped, and printing to a closed stdout is a one-line error
    (exit 74) instead of an internal error.

    On a non-UTF-8 locale (``LC_ALL=C``, ``PYTHONIOENCODING=ascii``) stdout would raise
    UnicodeEncodeError on the first non-ASCII subject or address; such characters are
    written as ``\\xf6`` escapes instead (stderr does that by default already).
    """
    for fd, name in ((0, 'stdin'), (1, 'stdout'), (2, 'stderr')):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if name == 'stdin':
            sys.stdin = open(fd, encoding='utf-8', closefd=False)  # noqa: SIM115 - lives as long as the process
        elif name == 'stdout':
            sys.stdout = _ClosedOutput()
        else:
            sys.stderr = open(fd, 'w', encoding='utf-8', errors='backslashreplace', closefd=False)  # noqa: SIM115
    stdout = sys.stdout
    # Only the real stdout: an in-process caller (a test capturing output) keeps its own stream.
    if stdout is sys.__stdout__ and isinstance(stdout, io.TextIOWrapper) and stdout.errors in ('strict',
                                                                                             'surrogateescape'):
        try:
            stdout.reconfigure(errors='backslashreplace')
        except (ValueError, OSError):  # pragma: no cover - a detached or closed stream
            pass


def fail(message: str, exit_code: int) -> NoReturn:
    raise CLIError(message, exit_code)


def too_large(limit: int) -> NoReturn:
    """Refuse a message over ``max_message_size`` (exit 65): retrying would not make it smaller."""
    from ..humanize import format_size

    fail(f'message larger than max_message_size ({format_size(limit)}); nothing was sent', EX_DATAERR)


def read_input(stream: Optional[IO[bytes]], limit: int) -> bytes:
    """All of ``stream`` (stdin), at most ``limit`` bytes: endless input must not exhaust memory."""
    if stream is None:
        return b''
    # in pieces: read(limit + 1) would set aside the whole limit for a message of three lines
    data = bytearray()
    while True:
        piece = stream.read(min(1024 * 1024, limit + 1 - len(data)))
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > limit:
            too_large(limit)


def load_app(config_path: Optional[str], options: Optional[Mapping[str, Any]] = None, *,
             require_config: bool = True, load_plugins: bool = True) -> Any:
    """``init_app`` with CLI error mapping: no config or a broken one -> exit 78, one line."""
    from ..app import init_app
    from ..config import ConfigError, guess_config_path

    if config_path is not None and not config_path.strip():
        # (else "-C ''" from a script whose variable is empty would quietly use ~/.mailqueue-runner.conf)
        fail('the configuration file name (-C) is empty', EX_USAGE)
    path = guess_config_path(config_path)
    if path is None and require_config:
        fail('no configuration found (tried ~/.mailqueue-runner.conf and /etc/mailqueue-runner.conf; '
             'use -C FILE)', EX_CONFIG)
    try:
        return init_app(path, options=options, load_plugins=load_plugins)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)


def report_outcome(prog: str, outcome: Any) -> int:
    """Print one line per recipient that did not get the message; map the outcome to an exit code."""
    from ..submit import STATUS_REFUSED, STATUS_TEMPFAIL

    for line in outcome.problems:
        print_error(prog, line)  # the lines quote the server's replies
    if outcome.status == STATUS_TEMPFAIL:
        return EX_CONFIG if outcome.misconfigured else EX_TEMPFAIL
    if outcome.status == STATUS_REFUSED:
        return EX_UNAVAILABLE
    return EX_OK


def run_main(prog: str, body: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a tool: CLIError -> one line + its code; anything unexpected -> 70 (traceback only with -v)."""
    _sane_standard_streams()
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a == '-v' or a == '--verbose' or (a.startswith('-v') and set(a[1:]) == {'v'}) for a in args)
    try:
        return body(args)
    except CLIError as exc:
        # one line, whatever the message quotes from the input (an option, a header, an address)
        print_error(prog, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_error(prog, 'interrupted')
        return 130
    except BrokenPipeError:
        return EX_OK
    except OutputClosedError as exc:
        print_error(prog, str(exc.strerror))
        return EX_IOERR
    except Exception as exc:  # noqa: BLE001 - the last line of defence must catch everything
        if verbose:
            import traceback

            traceback.print_exc()
        print_error(prog, f'internal error: {type(exc).__name__}: {exc}')
        return EX_SOFTWARE


def print_error(prog: str, message: str) -> None:
    """``prog: message`` as one line on stderr, safe for a terminal.

    The message may quote the input or a server's reply: line breaks show as ``\\r``/``\\n``
    and other control characters (escape sequences) as ``?`` (``humanize.printable``, as in
    ``mq-queue``'s listing), so a reply can neither forge lines nor drive the terminal.
    """
    from ..humanize import error_line  # only on the way out: keeps mq-sendmail's start-up small

    print(f'{prog}: {error_line(message)}', file=sys.stderr)
