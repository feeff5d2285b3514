"""``python -m schwarz.mailqueue.mq_sendmail``: the same as the ``mq-sendmail`` command."""

from __future__ import annotations

import sys

from .cli.mq_sendmail import main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
