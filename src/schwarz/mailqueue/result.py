"""What happened to a message, per recipient.

Plain classes rather than dataclasses: ``dataclasses`` imports ``inspect``,
a noticeable part of ``mq-sendmail``'s start-up, and these two are simple.
"""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

__all__ = ['Reply', 'SendResult', 'describe_failures']

# A server's words kept per recipient (results, logs, the queue's last error): enough for any real
# reply; a server sending megabytes must not make every recipient's record megabytes.
REPLY_TEXT_LIMIT = 1000
FAILURES_TEXT_LIMIT = 8000

if TYPE_CHECKING:  # pragma: no cover
    class _ReplyFields(NamedTuple):
        code: int
        message: str = ''
else:
    # The same class at run time without typing.NamedTuple, which compiles each (string) annotation
    # into a ForwardRef: about 1 ms of every mq-sendmail start-up.
    _ReplyFields = namedtuple('Reply', ('code', 'message'), defaults=('',))


class Reply(_ReplyFields):
    """One SMTP reply (or a synthetic one for connection-level problems): ``(code, message)``."""

    __slots__ = ()

    @property
    def is_temporary(self) -> bool:
        return not (200 <= self.code < 400 or 500 <= self.code < 600)

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f'{self.code} {self.brief}'.strip()

    @property
    def brief(self) -> str:
        """The text, cut to ``REPLY_TEXT_LIMIT`` characters."""
        text = self.message
        return text if len(text) <= REPLY_TEXT_LIMIT else f'{text[:REPLY_TEXT_LIMIT]}… ({len(text)} characters)'

    def as_tuple(self) -> Tuple[int, str]:
        return (self.code, self.brief)


def describe_failures(failures: Dict[str, Tuple[int, str]]) -> str:
    """``a@x, b@y: 450 text; c@z: 550 text``: recipients with the same reply share it, and the whole
    stays under about ``FAILURES_TEXT_LIMIT`` characters (a reply to a thousand recipients is one)."""
    grouped: Dict[Tuple[int, str], List[str]] = {}
    for addr, (code, text) in failures.items():
        grouped.setdefault((code, text), []).append(addr)
    parts: List[str] = []
    size = 0
    for number, ((code, text), addrs) in enumerate(grouped.items()):
        part = f'{", ".join(addrs)}: {code} {text}'.strip()
        if size + len(part) > FAILURES_TEXT_LIMIT and parts:
            left = sum(len(a) for a in list(grouped.values())[number:])
            parts.append(f'… and {left} more recipient(s)')
            break
        parts.append(part if len(part) <= FAILURES_TEXT_LIMIT else f'{part[:FAILURES_TEXT_LIMIT]}…')
        size += len(part)
    return '; '.join(parts)


class SendResult:
    """Outcome of one delivery attempt through one transport or a whole handler chain.

    ``accepted`` recipients were delivered, ``queued_to`` were queued for later,
    ``deferred`` were refused temporarily (and not queued), ``refused`` permanently
    ({recipient: (code, text)}). Truthy when every recipient was delivered or queued.
    """

    __slots__ = ('transport', 'queued', 'host', 'smtp_response', 'error', 'discarded', 'accepted', 'queued_to',
                 'refused', 'deferred', 'queue_id', 'connection_failed', 'queue_misconfigured')

    def __init__(
        self,
        transport: Optional[str] = None,
        queued: Optional[bool] = False,
        host: Optional[str] = None,
        smtp_response: Optional[Reply] = None,
        error: Optional[str] = None,
        discarded: bool = False,
        accepted: Optional[List[str]] = None,
        queued_to: Optional[List[str]] = None,
        refused: Optional[Dict[str, Tuple[int, str]]] = None,
        deferred: Optional[Dict[str, Tuple[int, str]]] = None,
        queue_id: Optional[str] = None,
        connection_failed: bool = False,
        queue_misconfigured: bool = False,
    ) -> None:
        self.transport = transport
        self.queued = queued
        self.host = host
        self.smtp_response = smtp_response
        self.error = error
        self.discarded = discarded
        self.accepted: List[str] = accepted if accepted is not None else []
        self.queued_to: List[str] = queued_to if queued_to is not None else []
        self.refused: Dict[str, Tuple[int, str]] = refused if refused is not None else {}
        self.deferred: Dict[str, Tuple[int, str]] = deferred if deferred is not None else {}
        self.queue_id = queue_id
        # True when the server could not be reached at all (refused, TLS, AUTH, 421 greeting):
        # the runner stops its pass instead of touching every queued message.
        self.connection_failed = connection_failed
        # True when the queue could not take the message for a reason only an operator can fix
        # (QueueMisconfigured: a PostgreSQL schema missing or too old, a missing grant)
        self.queue_misconfigured = queue_misconfigured

    @property
    def is_success(self) -> bool:
        return not self.refused and not self.deferred and not self.discarded and (
            bool(self.accepted) or bool(self.queued_to)
        )

    def __bool__(self) -> bool:
        return self.is_success

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendResult):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f'transport={self.transport!r}', f'queued={self.queued!r}']
        if self.accepted:
            parts.append(f'accepted={self.accepted!r}')
        if self.queued_to:
            parts.append(f'queued_to={self.queued_to!r}')
        if self.deferred:
            parts.append(f'deferred={self.deferred!r}')
        if self.refused:
            parts.append(f'refused={self.refused!r}')
        if self.error:
            parts.append(f'error={self.error!r}')
        return f'SendResult({", ".join(parts)})'
