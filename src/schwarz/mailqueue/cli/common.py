"""What every command-line tool shares: exit codes, config lookup, one-line errors.

Tools parse arguments, call the library, and map outcomes to sysexits codes.
No delivery logic lives in ``cli/``.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, NoReturn, Optional, Sequence

__all__ = [
    'EX_CONFIG',
    'EX_DATAERR',
    'EX_NOHOST',
    'EX_NOUSER',
    'EX_OK',
    'EX_SOFTWARE',
    'EX_TEMPFAIL',
    'EX_UNAVAILABLE',
    'EX_USAGE',
    'CLIError',
    'fail',
    'load_app',
    'report_outcome',
    'run_main',
]

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67  # unknown local recipient (no alias, no default_domain), as sendmail
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78


class CLIError(Exception):
    """A failure to report as one line on stderr with a sysexits code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int) -> NoReturn:
    raise CLIError(message, exit_code)


def load_app(config_path: Optional[str], options: Optional[Mapping[str, Any]] = None, *,
             require_config: bool = True, load_plugins: bool = True) -> Any:
    """``init_app`` with CLI error mapping: no config or a broken one -> exit 78, one line."""
    from ..app import init_app
    from ..config import ConfigError, guess_config_path

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
        print(f'{prog}: {_one_line(line)}', file=sys.stderr)
    if outcome.status == STATUS_TEMPFAIL:
        return EX_TEMPFAIL
    if outcome.status == STATUS_REFUSED:
        return EX_UNAVAILABLE
    return EX_OK


def run_main(prog: str, body: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a tool: CLIError -> one line + its code; anything unexpected -> 70 (traceback only with -v)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a == '-v' or a == '--verbose' or (a.startswith('-v') and set(a[1:]) == {'v'}) for a in args)
    try:
        return body(args)
    except CLIError as exc:
        # one line, whatever the message quotes from the input (an option, a header, an address)
        print(f'{prog}: {_one_line(str(exc))}', file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EX_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence must catch everything
        if verbose:
            import traceback

            traceback.print_exc()
        print(f'{prog}: internal error: {type(exc).__name__}: {_one_line(str(exc))}', file=sys.stderr)
        return EX_SOFTWARE


def _one_line(text: str) -> str:
    return text.replace('\r', '\\r').replace('\n', '\\n')
