"""Taking submissions of unprivileged users (the maildir's drop area) into the queue.

A drop is checked like any new submission before it is queued: the queue file format, every
envelope address through the one parser, and the envelope sender against what the user who
owns the file may use. The user is recorded in the queue file (``X-Queue-Submitted-By``) and
in the queue log; whatever cannot be delivered goes to ``failed/`` with the reason.

May a user use a sender? Like sendmail's trusted users: root, the queue owner and the users
in ``trusted_users`` may use any; everybody else the null sender, the configured ``from``
(the host's sender, the default of every tool) and their own name at the local domain
(``default_domain`` or the domain of ``from``) or at this host's name.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

from .addresses import InvalidAddressError, parse_address
from .logs import QUEUE_LOG, log_event

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .queue.contract import QueueStore

__all__ = ['SUBMITTED_BY', 'DropIntake', 'intake_for', 'user_name']

SUBMITTED_BY = 'X-Queue-Submitted-By'
DEFAULT_DROP_MAX_SIZE = 64 * 1024 * 1024

log = logging.getLogger('mailqueue')


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f'uid{uid}'


def _hostname() -> str:
    import socket

    return socket.gethostname() or 'localhost'


class DropIntake:
    """One call per pass: the drops waiting are queued or failed. Returns how many were taken."""

    PER_PASS = 1000

    def __init__(self, queue: QueueStore, *, trusted_users: Sequence[str] = (), from_addr: Optional[str] = None,
                 local_domain: Optional[str] = None, max_size: int = DEFAULT_DROP_MAX_SIZE,
                 app: str = 'mq-run') -> None:
        self.queue = queue
        self.trusted_users = set(trusted_users)
        self.from_addr = from_addr
        self.local_domain = local_domain
        self.max_size = max_size
        self.app = app
        self.queue_log = logging.getLogger(QUEUE_LOG)

    def sender_refused(self, uid: int, user: str, sender: str) -> Optional[str]:
        """Why ``user`` may not use ``sender`` as envelope sender; None if it may."""
        if uid in (0, os.geteuid()) or user in self.trusted_users or not sender:
            return None
        lowered = sender.lower()
        if self.from_addr and lowered == self.from_addr.lower():
            return None
        local, _, domain = sender.rpartition('@')
        domains = {d.lower() for d in (self.local_domain, _hostname()) if d}
        if local == user and domain.lower() in domains:
            return None
        return (f'user {user} may not use the envelope sender {sender} (add the user to trusted_users to '
                f'allow it)')

    def __call__(self, stop: Callable[[], bool] = lambda: False) -> int:
        """Take what waits in the drop area, at most ``PER_PASS`` drops (the queue's own mail is not
        kept waiting behind a flood of drops); ``stop`` ends it early (a daemon told to stop)."""
        from .queue.format import QueueFileError, parse_queue_bytes
        from .queue.maildir_drop import accept, reject, take_drops

        taken = 0
        enough = lambda: stop() or taken >= self.PER_PASS  # noqa: E731
        for drop in take_drops(self.queue, self.max_size, enough):  # type: ignore[arg-type]
            user = user_name(drop.uid)
            extra: Dict[str, str] = {SUBMITTED_BY: user}
            fields: Dict[str, object] = {'queue_id': drop.drop_id, 'submitted_by': user, 'size': drop.size,
                                         'app': self.app}
            reason = drop.problem
            sender, recipients, body = '', [], b''
            if reason is None:
                try:
                    meta, body = parse_queue_bytes(drop.data)
                    sender, recipients = meta.from_addr, list(meta.to_addrs)
                    if sender:
                        parse_address(sender)
                    if not recipients:
                        raise QueueFileError('no recipients')
                    for addr in recipients:
                        parse_address(addr)
                    reason = self.sender_refused(drop.uid, user, sender)
                except (QueueFileError, InvalidAddressError) as exc:
                    reason = f'not a valid submission: {exc}'
                    sender, recipients = '', []
            try:
                if reason is None:
                    msg_id = accept(self.queue, drop, body, sender, recipients, extra)  # type: ignore[arg-type]
                    log_event(self.queue_log, {'status': 'queued', **fields, 'queue_id': msg_id,
                                               'from': sender or '<>', 'to': ','.join(recipients)})
                else:
                    msg_id = reject(self.queue, drop, reason, extra, sender, recipients)  # type: ignore[arg-type]
                    log_event(self.queue_log, {'status': 'failed', **fields, 'queue_id': msg_id, 'error': reason})
                    log.warning('drop %s of user %s moved to failed/: %s', msg_id, user, reason)
            except Exception as exc:  # one drop, whatever is wrong with it, never ends the pass
                log.error('cannot take drop %s of user %s into the queue (it stays there): %s', drop.drop_id,
                          user, exc)
                continue
            taken += 1
        return taken


def intake_for(settings: Settings, store: QueueStore,
               app: str = 'mq-run') -> Optional[Callable[[Callable[[], bool]], int]]:
    """The drop intake of ``store``: None unless it is a maildir queue with a drop area."""
    if getattr(store, 'kind', None) != 'maildir':
        return None
    from .queue.maildir_drop import has_drop_area

    if not has_drop_area(store.location):
        return None
    return DropIntake(store, trusted_users=getattr(settings, 'trusted_users', ()), from_addr=settings.from_addr,
                      local_domain=settings.local_domain(),
                      max_size=getattr(settings, 'drop_max_size', DEFAULT_DROP_MAX_SIZE), app=app)
