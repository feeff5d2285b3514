"""The interfaces a new transport or plugin registry must offer (typing only; nothing to inherit).

- ``Transport``: what ``MessageHandler`` calls for each link of its chain
  (``SMTPMailer``, ``DebugMailer``, the queue, your own).
- ``QueueingTransport``: a transport that is a queue (the last link): it takes the
  reason why earlier links failed, and the handler keeps dead letters in its store.
- ``SignalRegistry``: the part of PuzzlePluginSystem's registry that we call.

Queue stores have their own contract in ``queue/contract.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from .queue.contract import QueueStore
    from .result import SendResult

__all__ = ['QueueingTransport', 'SignalRegistry', 'Transport']


@runtime_checkable
class Transport(Protocol):
    """Delivers (or stores) one message for some recipients; reports per recipient, never raises for them."""

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult: ...

    def close(self) -> None: ...


class QueueingTransport(Protocol):
    """The queue at the end of a chain (``is_queue = True``)."""

    is_queue: bool

    @property
    def store(self) -> QueueStore: ...

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes,
             last_error: Optional[str] = None) -> SendResult: ...

    def close(self) -> None: ...


class SignalRegistry(Protocol):
    """What we use of ``schwarz.puzzle_plugins.SignalRegistry``."""

    def has_receivers(self, signal: str) -> bool: ...

    def call_plugins(self, signal: str, signal_kwargs: Optional[Mapping[str, object]] = None
                     ) -> Iterable[Tuple[object, object]]: ...
