"""Submitting one new message the way the command-line tools do.

The transport chain comes from the settings: SMTP first, then the maildir
queue only when ``queue_dir`` is set (without it, a temporary failure is
reported, never hidden). Local recipient names are resolved through the
aliases file, local sender names are qualified, and the outcome is summed up
per recipient so a tool can map it onto an exit code.

Heavy modules (the SMTP client, ``ssl``, the queue) are imported only when a
message is actually sent.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .addresses import parse_address
from .bootstrap import build_transports  # here too: callers and tests know it from this module
from .config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from .handler import MessageHandler
    from .result import SendResult

__all__ = [
    'DEFAULT_ALIASES',
    'STATUS_OK',
    'STATUS_REFUSED',
    'STATUS_TEMPFAIL',
    'Outcome',
    'Submitter',
    'build_transports',
    'local_hostname',
    'local_user',
    'submit_message',
    'summarize',
]

DEFAULT_ALIASES = '/etc/aliases'

STATUS_OK = 'ok'
STATUS_REFUSED = 'refused'
STATUS_TEMPFAIL = 'tempfail'


def local_user() -> str:
    """Name of the user running us (for a default envelope sender)."""
    for variable in ('LOGNAME', 'USER'):
        name = os.environ.get(variable)
        if name:
            return name
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return 'nobody'


def local_hostname() -> str:
    """This host's name, for local names without a domain (``root@host``) and Message-IDs."""
    import socket

    # gethostname(), not getfqdn(): the latter may wait for DNS on every mail.
    return socket.gethostname() or 'localhost'


class Outcome:
    """What happened to a message, in terms a command-line tool reports."""

    __slots__ = ('status', 'problems', 'delivered', 'queued', 'misconfigured')

    def __init__(self, status: str, problems: Optional[List[str]] = None, delivered: Optional[List[str]] = None,
                 queued: Optional[List[str]] = None, misconfigured: bool = False) -> None:
        self.status = status
        # a temporary failure whose cause only an operator can fix (the queue's set-up): exit 78
        self.misconfigured = misconfigured
        self.problems: List[str] = problems if problems is not None else []
        self.delivered: List[str] = delivered if delivered is not None else []
        self.queued: List[str] = queued if queued is not None else []

    def __repr__(self) -> str:
        return f'Outcome({self.status!r}, problems={self.problems!r})'


def summarize(result: SendResult, *, queue_configured: bool) -> Outcome:
    """One line per recipient that did not get the message; status ``tempfail`` beats ``refused``.

    A recipient deferred by the whole chain was not queued: either there is no
    queue, or writing to it failed (then the reason is the queue's error).
    """
    # Recipients that failed for the same reason share one line (a dead server is one problem).
    grouped: Dict[str, List[str]] = {}
    for addr, (code, text) in result.refused.items():
        grouped.setdefault(f'refused permanently: {code} {text}'.rstrip(), []).append(addr)
    for addr, (code, text) in result.deferred.items():
        if queue_configured:
            reason = f'temporary failure and the message could not be queued: {text}'
        else:
            reason = f'temporary failure, message NOT queued (no queue_dir configured): {code} {text}'.rstrip()
        grouped.setdefault(reason, []).append(addr)
    problems = [f'{", ".join(addrs)}: {reason}' for reason, addrs in grouped.items()]
    if result.deferred:
        status = STATUS_TEMPFAIL
    elif result.refused:
        status = STATUS_REFUSED
    else:
        status = STATUS_OK
    return Outcome(status, problems, list(result.accepted), list(result.queued_to),
                   misconfigured=bool(result.deferred) and queue_configured and result.queue_misconfigured)


class Submitter:
    """Sends new messages through the configured chain; reuses one SMTP connection for several.

    ``aliases_path`` overrides the ``aliases`` setting (default ``/etc/aliases``);
    ``use_aliases=False`` skips the aliases file (``sendmail -n``).
    """

    def __init__(self, settings: Settings, *, plugins: Any = None, app: str = 'mq-sendmail',
                 queue: bool = True, aliases_path: Optional[str] = None, use_aliases: bool = True) -> None:
        self.settings = settings
        self.plugins = plugins
        self.app = app
        self.queue = queue
        self.aliases_path = aliases_path
        self.use_aliases = use_aliases
        self._aliases: Optional[Dict[str, List[str]]] = None
        self._handler: Optional[MessageHandler] = None

    @property
    def queue_configured(self) -> bool:
        from .bootstrap import queue_location

        return self.queue and bool(queue_location(self.settings))

    # --- addresses ------------------------------------------------------------------------

    def alias_table(self) -> Dict[str, List[str]]:
        """The aliases file's table (read once); raises ``AliasesError`` subclasses."""
        if self._aliases is None:
            from .aliases import AliasesError, load_aliases

            explicit = self.aliases_path or self.settings.aliases
            path = explicit or DEFAULT_ALIASES
            # A missing /etc/aliases is normal; a missing file someone named is a mistake.
            if explicit and not os.path.exists(path):
                raise AliasesError('aliases file not found', path)
            self._aliases = load_aliases(path)
        return self._aliases

    def resolve(self, recipients: Sequence[str]) -> List[str]:
        """Expand local names (no ``@``) through the aliases; raises ``AliasesError`` subclasses."""
        if all('@' in addr for addr in recipients):
            # Nothing to look up: skip reading the aliases file (and importing its parser).
            result: List[str] = []
            seen = set()
            for addr in recipients:
                # Same duplicate rule as resolve_recipients: the local part is case-sensitive.
                local_part, _, domain = addr.rpartition('@')
                key = f'{local_part}@{domain.lower()}'
                if key not in seen:
                    seen.add(key)
                    result.append(addr)
            return result
        from .aliases import resolve_recipients

        table = self.alias_table() if self.use_aliases else {}
        return resolve_recipients(recipients, table, default_domain=self.settings.local_domain())

    def qualify_sender(self, name: str) -> str:
        """A sender given as a local name (``-f root``) becomes an address.

        ``default_domain`` if configured; otherwise the configured ``from``
        (the address the smarthost accepts from us); otherwise ``name@host``.
        Raises ``InvalidAddressError`` when the result is not a valid address.
        """
        if not name or '@' in name:
            return name
        if self.settings.default_domain:
            qualified = f'{name}@{self.settings.default_domain}'
        elif self.settings.from_addr:
            return self.settings.from_addr
        else:
            qualified = f'{name}@{local_hostname()}'
        # LOGNAME or the host name may hold what no address can (spaces, "_"): refuse, never send it
        return str(parse_address(qualified))

    def default_sender(self) -> str:
        """Envelope sender when the caller gave none: ``from``, else the local user, qualified."""
        if self.settings.from_addr:
            return self.settings.from_addr
        return self.qualify_sender(local_user())

    # --- sending --------------------------------------------------------------------------

    def handler(self) -> MessageHandler:
        if self._handler is None:
            from .handler import MessageHandler

            if self.settings.include_unreadable and self.queue_configured:
                # this user may not read the credentials (the split set-up): the queue owner's runner
                # sends, and a queue this user may not write takes it through its drop area
                from .bootstrap import queue_location
                from .queue.transport import QueueTransport

                transports: List[Any] = [QueueTransport(str(queue_location(self.settings)))]
            else:
                transports = build_transports(self.settings, queue=self.queue)
            self._handler = MessageHandler(transports, plugins=self.plugins, app=self.app)
        return self._handler

    def send(self, msg_bytes: bytes, sender: str, recipients: Sequence[str]) -> SendResult:
        """Resolve ``recipients`` and hand the message to the chain. ``sender`` must be final."""
        to_addrs = self.resolve(recipients)
        result = self.handler().send_message(msg_bytes, sender=sender, recipients=to_addrs)
        assert result is not None  # only queued messages can come back unclaimed
        return result

    def close(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.close()

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def submit_message(msg_bytes: bytes, sender: str, recipients: Sequence[str], settings: Settings, *,
                   plugins: Any = None, app: str = 'mq-sendmail', queue: bool = True,
                   aliases_path: Optional[str] = None) -> SendResult:
    """Send one message through the chain built from ``settings`` and return the ``SendResult``."""
    with Submitter(settings, plugins=plugins, app=app, queue=queue, aliases_path=aliases_path) as submitter:
        return submitter.send(msg_bytes, sender, recipients)
