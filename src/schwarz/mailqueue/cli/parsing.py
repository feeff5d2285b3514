"""argparse for the tools that use it (not mq-sendmail, whose flags are sendmail's own).

A usage error is one line on stderr and exit 64 (EX_USAGE), not argparse's usage block and 2.
Every tool answers ``--version``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Sequence, Union

from .common import EX_USAGE, CLIError

if TYPE_CHECKING:
    from ..limits import Range

__all__ = ['ArgumentParser', 'bounded', 'package_version']


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # only when asked: it is slow to import

    try:
        return version('mailqueue-runner')
    except PackageNotFoundError:
        return 'unknown'


def bounded(allowed: Range) -> Callable[[str], Any]:
    """An argparse ``type`` for a number flag, with the same range as the config key it overrides.

    Out of range is a usage error naming the flag and the range: ``argument -w/--workers:
    expected a whole number from 1 to 256, got '1000000'``.
    """
    def parse(text: str) -> Any:
        try:
            return allowed.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str = 'show the version and exit') -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Union[str, Sequence[Any], None], option_string: Optional[str] = None) -> None:
        print(f'{parser.prog} {package_version()}')
        parser.exit()


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get('add_help', True):
            self.add_argument('--version', action=_VersionAction)

    def error(self, message: str) -> NoReturn:
        raise CLIError(f'{message} (see {self.prog} --help)', EX_USAGE)
