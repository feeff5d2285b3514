"""Accounts chosen by sender (``[account:NAME]``), the queue's side: which account a queued message belongs to.

The SMTP side is ``smtp.transport.AccountRouter`` (one mailer per account, picked by
the envelope sender). A message that goes to the queue carries the name of its
account as a meta value (``X-Queue-Account``), so ``mq-queue show`` tells which
account will send it. Delivery always picks the account by the sender with the
configuration of the moment: a queued message follows a change of ``match_from``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, cast

from .queue.contract import QueueStore
from .queue.transport import QueueTransport

__all__ = ['ACCOUNT_META', 'AccountQueueTransport']

ACCOUNT_META = 'X-Queue-Account'


class _RecordingStore:
    """The store, except that ``enqueue`` adds the sender's account to the meta values."""

    def __init__(self, store: QueueStore, account_for: Callable[[str], Optional[str]]) -> None:
        self._store = store
        self._account_for = account_for

    def enqueue(self, msg_bytes: bytes, sender: str, recipients: Sequence[str], *,
                extra: Optional[Dict[str, str]] = None, **options: Any) -> str:
        account = self._account_for(sender)
        if account:
            extra = {**(extra or {}), ACCOUNT_META: account}
        return self._store.enqueue(msg_bytes, sender, recipients, extra=extra, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class AccountQueueTransport(QueueTransport):
    """The queue transport, recording each message's account (``X-Queue-Account``) when it is queued."""

    def __init__(self, location: str, account_for: Callable[[str], Optional[str]]) -> None:
        super().__init__(location)
        self.account_for = account_for
        self._recording: Optional[_RecordingStore] = None

    @property
    def store(self) -> QueueStore:
        store = QueueTransport.store.fget(self)  # type: ignore[attr-defined]  # opened on first use
        if self._recording is None or self._recording._store is not store:
            self._recording = _RecordingStore(store, self.account_for)
        return cast(QueueStore, self._recording)
