"""What happened to a message, per recipient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ['Reply', 'SendResult']


@dataclass(frozen=True)
class Reply:
    """One SMTP reply (or a synthetic one for connection-level problems)."""

    code: int
    message: str = ''

    @property
    def is_temporary(self) -> bool:
        return not (200 <= self.code < 400 or 500 <= self.code < 600)

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f'{self.code} {self.message}'.strip()

    def as_tuple(self) -> Tuple[int, str]:
        return (self.code, self.message)


@dataclass
class SendResult:
    """Outcome of one delivery attempt through one transport or a whole handler chain.

    ``accepted`` recipients were delivered (or queued, when ``queued`` is true),
    ``deferred`` were refused temporarily, ``refused`` permanently. Truthy when
    nobody is left deferred or refused.
    """

    transport: Optional[str] = None
    queued: Optional[bool] = False
    host: Optional[str] = None
    smtp_response: Optional[Reply] = None
    error: Optional[str] = None
    discarded: bool = False
    accepted: List[str] = field(default_factory=list)
    queued_to: List[str] = field(default_factory=list)
    refused: Dict[str, Tuple[int, str]] = field(default_factory=dict)
    deferred: Dict[str, Tuple[int, str]] = field(default_factory=dict)
    queue_id: Optional[str] = None
    # True when the server could not be reached at all (refused, TLS, AUTH, 421 greeting):
    # the runner stops its pass instead of touching every queued message.
    connection_failed: bool = False

    @property
    def is_success(self) -> bool:
        return not self.refused and not self.deferred and not self.discarded and (
            bool(self.accepted) or bool(self.queued_to)
        )

    def __bool__(self) -> bool:
        return self.is_success

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
