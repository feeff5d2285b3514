"""argparse for the tools that use it (not mq-sendmail, whose flags are sendmail's own).

A usage error is one line on stderr and exit 64 (EX_USAGE), not argparse's usage block and 2.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .common import EX_USAGE, CLIError

__all__ = ['ArgumentParser']


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CLIError(f'{message} (see {self.prog} --help)', EX_USAGE)
