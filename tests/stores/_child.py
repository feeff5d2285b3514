"""A second owner in another process, for the store suite: ``python _child.py LOCATION``.

Opens the store with ``open_queue(LOCATION)``, prints ``ready``, then obeys one command
per line on stdin, answering one line each:

- ``claim ID``: claim it from ``new`` and hold it -> ``claimed ID`` or ``none ID``;
- ``drain LIMIT``: ``claim_due(LIMIT)`` until an empty batch, holding every claim ->
  ``ids ID ID ...``;
- ``complete``: complete every held claim -> ``done N``;
- ``release``: release every held claim -> ``done N``;
- ``die``: exit at once without releasing anything (a crashed runner).
"""

from __future__ import annotations

import os
import sys
from typing import List

from schwarz.mailqueue.queue.contract import QueuedMessage
from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.schedule import RetryPolicy, utcnow


def main(location: str) -> None:
    store = open_queue(location)
    held: List[QueuedMessage] = []

    def answer(text: str) -> None:
        sys.stdout.write(text + '\n')
        sys.stdout.flush()

    answer('ready')
    for line in sys.stdin:
        command, _, argument = line.strip().partition(' ')
        if command == 'claim':
            msg = store.claim(argument)
            if msg is not None:
                held.append(msg)
            answer(f'{"claimed" if msg is not None else "none"} {argument}')
        elif command == 'drain':
            ids: List[str] = []
            while True:
                batch = store.claim_due(int(argument), now=utcnow(), policy=RetryPolicy())
                if not batch:
                    break
                held.extend(batch)
                ids.extend(msg.msg_id for msg in batch)
            answer(' '.join(['ids'] + ids))
        elif command in ('complete', 'release'):
            for msg in held:
                getattr(store, command)(msg)
            answer(f'done {len(held)}')
            held.clear()
        elif command == 'die':
            os._exit(0)
        else:
            answer(f'unknown command {command!r}')


if __name__ == '__main__':
    main(sys.argv[1])
