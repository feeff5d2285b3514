"""``python -m schwarz.mailqueue.mq_mail``: the same as the ``mq-mail`` command."""

from __future__ import annotations

import sys

from .cli.mq_mail import main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
