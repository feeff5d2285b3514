"""A runner process for tests/test_postgres.py: ``python _pg_child.py LOCATION MODE LIMIT``.

Prints ``ready``, waits for one line on stdin (so that several children start at once), then:

- ``hold``: one ``claim_due(LIMIT)``; prints ``ids ID ...`` and holds the claims until killed;
- ``drain``: ``claim_due(LIMIT)`` and ``complete`` until an empty batch; prints ``ids ID ...``, exits 0.
"""

from __future__ import annotations

import sys
import time

from schwarz.mailqueue.queue.locations import open_queue
from schwarz.mailqueue.queue.schedule import RetryPolicy, utcnow


def main(location: str, mode: str, limit: int) -> int:
    store = open_queue(location)
    print('ready', flush=True)
    sys.stdin.readline()
    done = []
    if mode == 'hold':
        held = list(store.claim_due(limit, now=utcnow(), policy=RetryPolicy()))
        print(' '.join(['ids'] + [msg.msg_id for msg in held]), flush=True)
        while True:
            time.sleep(60)
    while True:
        batch = store.claim_due(limit, now=utcnow(), policy=RetryPolicy())
        if not batch:
            break
        for msg in batch:
            store.complete(msg)
            done.append(msg.msg_id)
    print(' '.join(['ids'] + done), flush=True)
    store.close()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
