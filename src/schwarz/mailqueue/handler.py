"""``MessageHandler``: try the transports in order, recipient by recipient.

A recipient that one transport accepts is done; one it refuses permanently is
reported (and kept in ``failed/`` when the chain has a queue); one it refuses
temporarily goes on to the next transport, alone. So nobody receives a
duplicate because somebody else failed, and nobody is dropped silently.

A message that already sits in the queue (claimed) is never queued again:
its own file is completed, rewritten for the remaining recipients, or moved
to ``failed/``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import MailQueueError, QueueMisconfigured
from .logs import DELIVERY_LOG, QUEUE_LOG, log_event
from .message import MessageSource, get_header, message_bytes_from, validate_address
from .plugins import fire_delivery_failed, fire_delivery_successful
from .queue.schedule import RetryPolicy, format_duration
from .result import Reply, SendResult, describe_failures

if TYPE_CHECKING:  # pragma: no cover
    from .protocols import QueueingTransport, SignalRegistry, Transport
    from .queue.contract import QueuedMessage

# A DebugMailer callback: a SendResult to return, False for a temporary failure, else recorded as sent.
SendCallback = Callable[[str, List[str], bytes], object]

# The queue modules are imported only when a queue is involved: mq-sendmail delivering straight
# to the smarthost should not pay for them at start-up.
_CONTRACT_MODULE = 'schwarz.mailqueue.queue.contract'

__all__ = ['DebugMailer', 'MessageHandler', 'MessageInfo']


class MessageInfo:
    """What plugins see for a message that was not (yet) queued: same attribute names as a queued one."""

    __slots__ = ('from_addr', 'to_addrs', 'msg_bytes', 'retries', 'msg_id', 'queue_date', 'last_delivery_attempt',
                 'path')

    def __init__(self, from_addr: str, to_addrs: List[str], msg_bytes: bytes, retries: int = 0) -> None:
        self.from_addr = from_addr
        self.to_addrs = to_addrs
        self.msg_bytes = msg_bytes
        self.retries = retries
        self.msg_id: Optional[str] = None
        self.queue_date: Optional[datetime] = None
        self.last_delivery_attempt: Optional[datetime] = None
        self.path: Optional[str] = None

    def __repr__(self) -> str:
        return f'<MessageInfo from={self.from_addr!r} to={self.to_addrs!r}>'


class DebugMailer:
    """In-memory transport for tests: records ``(from, to, bytes)`` in ``sent_mails``."""

    transport_name = 'debug'

    def __init__(self, simulate_failed_sending: bool = False, send_callback: Optional[SendCallback] = None) -> None:
        self.simulate_failed_sending = simulate_failed_sending
        self.send_callback = send_callback
        self.sent_mails: List[Tuple[str, List[str], bytes]] = []

    def send(self, from_addr: str, to_addrs: Sequence[str], msg_bytes: bytes) -> SendResult:
        if self.send_callback is not None:
            outcome = self.send_callback(from_addr, list(to_addrs), msg_bytes)
            if isinstance(outcome, SendResult):
                return outcome
            if outcome is False:
                return _all_deferred('debug', to_addrs, Reply(451, 'debug callback failed'))
        if self.simulate_failed_sending:
            return _all_deferred('debug', to_addrs, Reply(451, 'simulated failure'))
        self.sent_mails.append((from_addr, list(to_addrs), msg_bytes))
        return SendResult(transport='debug', queued=False, accepted=list(to_addrs), host='debug',
                          smtp_response=Reply(250, 'OK'))

    def close(self) -> None:
        pass


def _all_deferred(name: str, to_addrs: Sequence[str], reply: Reply) -> SendResult:
    return SendResult(transport=name, queued=False, smtp_response=reply, error=str(reply),
                      deferred={a: reply.as_tuple() for a in to_addrs})


def _transport_name(transport: Transport) -> str:
    return getattr(transport, 'transport_name', None) or type(transport).__name__.lower()


def _is_queue(transport: Transport) -> bool:
    return bool(getattr(transport, 'is_queue', False))


def _as_queued_message(msg: object) -> Optional[QueuedMessage]:
    contract = sys.modules.get(_CONTRACT_MODULE)
    # if the module was never imported, nothing can be a QueuedMessage
    if contract is not None and isinstance(msg, contract.QueuedMessage):
        return msg
    return None


class MessageHandler:
    def __init__(self, transports: Sequence[Transport], delivery_log: Optional[logging.Logger] = None,
                 plugins: Optional[SignalRegistry] = None, queue_log: Optional[logging.Logger] = None,
                 app: Optional[str] = None, retry_policy: Optional[RetryPolicy] = None) -> None:
        self.transports = list(transports)
        self.delivery_log = delivery_log or logging.getLogger(DELIVERY_LOG)
        self.queue_log = queue_log or logging.getLogger(QUEUE_LOG)
        self.plugins = plugins
        self.app = app
        self.retry_policy = retry_policy

    def close(self) -> None:
        for transport in self.transports:
            close = getattr(transport, 'close', None)
            if close is not None:
                close()

    # --- public -----------------------------------------------------------------------------

    def send_message(self, msg: MessageSource, sender: Optional[str] = None, recipient: Optional[str] = None,
                     recipients: Optional[Union[str, Sequence[str]]] = None) -> Optional[SendResult]:
        queued = self._claimed(msg)
        if isinstance(queued, bool):  # a queued message that someone else holds, or that vanished
            return None
        if queued is not None:
            # The queue file's envelope is the truth: delivering to a subset and then completing the
            # file would silently drop the other recipients.
            given = self._recipients(recipient, recipients)
            if given and sorted(given) != sorted(queued.to_addrs):
                logging.getLogger('mailqueue').warning(
                    'queued message %s: ignoring recipients %s, delivering to its queued recipients %s',
                    queued.msg_id, ','.join(given), ','.join(queued.to_addrs))
            return self._deliver_queued(queued, queued.from_addr, queued.to_addrs)
        to_addrs = self._recipients(recipient, recipients)
        if not to_addrs:
            raise ValueError('no recipients given')
        from_addr = sender or ''
        validate_address(from_addr, allow_empty=True)
        for addr in to_addrs:
            validate_address(addr)
        msg_bytes = message_bytes_from(msg)
        return self._deliver_new(msg_bytes, from_addr, to_addrs)

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _recipients(recipient: Optional[str], recipients: Optional[Union[str, Sequence[str]]]) -> List[str]:
        result: List[str] = []
        if recipient:
            result.append(recipient)
        if isinstance(recipients, str):
            recipients = [recipients]
        for addr in recipients or ():
            if addr not in result:
                result.append(addr)
        return result

    @staticmethod
    def _claimed(msg: object) -> Union[QueuedMessage, None, bool]:
        """QueuedMessage if ``msg`` is (or can be claimed as) a queued message; False if it cannot be."""
        queued = _as_queued_message(msg)
        if queued is not None:
            return queued if queued.is_claimed else queued.store.claim(queued.msg_id) or False
        contract = sys.modules.get(_CONTRACT_MODULE)
        if contract is not None and isinstance(msg, contract.QueuedId):
            from .errors import CorruptMessage

            try:
                return msg.store.claim(str(msg)) or False
            except CorruptMessage:
                return False
        return None

    def _log(self, status: str, to_addrs: Sequence[str], msg_bytes: bytes, from_addr: str, via: str,
             reply: Optional[Reply] = None, attempts: int = 1, queue_date: Optional[datetime] = None,
             queue_id: Optional[str] = None, error: Optional[str] = None) -> None:
        logger = self.queue_log if status in ('queued', 'held') else self.delivery_log
        if not logger.isEnabledFor(logging.INFO):
            return
        msgid = get_header(msg_bytes, 'Message-ID')
        delay = None
        if queue_date is not None:
            delay = format_duration(datetime.now(timezone.utc) - queue_date)
        log_event(logger, {
            'status': status,
            'to': ','.join(to_addrs),
            'msgid': msgid[0] if msgid else None,
            'queue_id': queue_id,
            'via': via,
            'from': from_addr or '<>',
            'attempts': attempts,
            'delay': delay,
            'app': self.app,
            'smtp': str(reply) if reply is not None else None,
            'error': error,
        })

    def _try_transports(self, msg_bytes: bytes, from_addr: str, to_addrs: List[str], *,
                        skip_queues: bool, attempts: int, queue_date: Optional[datetime],
                        result: SendResult) -> Dict[str, Tuple[int, str]]:
        """Run the chain; fills ``result`` and returns the recipients still deferred."""
        pending = list(to_addrs)
        deferred: Dict[str, Tuple[int, str]] = {}
        for transport in self.transports:
            if not pending:
                break
            if skip_queues and _is_queue(transport):
                continue
            name = _transport_name(transport)
            try:
                if _is_queue(transport) and deferred:
                    # keep why it could not go out now: `mq-queue list` shows it before the first retry
                    queue: QueueingTransport = transport  # type: ignore[assignment]  # is_queue says so
                    outcome: SendResult = queue.send(from_addr, pending, msg_bytes,
                                                     last_error=describe_failures(deferred))
                else:
                    outcome = transport.send(from_addr, pending, msg_bytes)
            except MailQueueError as exc:
                # one the transport raised on purpose (a queue location it cannot use): its own words
                logging.getLogger('mailqueue').error('the %s transport failed: %s', name, exc)
                outcome = _all_deferred(name, pending, Reply(451, f'{name} transport: {exc}'))
                outcome.queue_misconfigured = _is_queue(transport) and isinstance(exc, QueueMisconfigured)
            except Exception as exc:
                # A bug in one transport must not lose the message: the next one (the queue) gets it.
                logging.getLogger('mailqueue').exception('unexpected error in the %s transport', name)
                outcome = _all_deferred(name, pending, Reply(451, f'internal error in the {name} transport: '
                                                                  f'{type(exc).__name__}'))
            via = f'{name}:{outcome.host}' if outcome.host and not _is_queue(transport) else name
            result.transport = outcome.transport or name
            result.host = outcome.host
            if outcome.smtp_response is not None:
                result.smtp_response = outcome.smtp_response
            if outcome.queued_to:
                result.queued = True
                result.queued_to.extend(outcome.queued_to)
                result.queue_id = outcome.queue_id
                self._log('queued', outcome.queued_to, msg_bytes, from_addr, via, queue_id=outcome.queue_id,
                          attempts=attempts, queue_date=queue_date)
            if outcome.accepted:
                result.accepted.extend(outcome.accepted)
                self._log('sent', outcome.accepted, msg_bytes, from_addr, via, outcome.smtp_response,
                          attempts=attempts, queue_date=queue_date)
            for addr, reply in outcome.refused.items():
                result.refused[addr] = reply
            for status, failures in (('failed', outcome.refused), ('deferred', outcome.deferred)):
                # one log line per distinct reply, naming all recipients that got it
                by_reply: Dict[Tuple[int, str], List[str]] = {}
                for addr, reply in failures.items():
                    by_reply.setdefault(reply, []).append(addr)
                for (code, text), addrs in by_reply.items():
                    self._log(status, addrs, msg_bytes, from_addr, via, Reply(code, text),
                              attempts=attempts, queue_date=queue_date)
            if outcome.deferred:
                deferred = dict(outcome.deferred)
            result.connection_failed = outcome.connection_failed
            result.queue_misconfigured = outcome.queue_misconfigured
            if outcome.error and not result.error:
                result.error = outcome.error
            pending = [addr for addr in pending if addr in outcome.deferred]
        return {addr: deferred.get(addr, (451, 'no transport accepted the message')) for addr in pending}

    def _queue_transport(self) -> Optional[QueueingTransport]:
        for transport in self.transports:
            if _is_queue(transport):
                return transport  # type: ignore[return-value]  # is_queue promises the protocol
        return None

    def _deliver_new(self, msg_bytes: bytes, from_addr: str, to_addrs: List[str]) -> SendResult:
        result = SendResult(queued=False)
        deferred = self._try_transports(msg_bytes, from_addr, to_addrs, skip_queues=False, attempts=1,
                                        queue_date=None, result=result)
        result.deferred = deferred
        if result.refused:
            queue = self._queue_transport()
            if queue is not None:
                try:
                    queue.store.store_dead_letter(msg_bytes, from_addr, list(result.refused),
                                                  describe_failures(result.refused))
                except MailQueueError as exc:
                    logging.getLogger('mailqueue').error('could not keep a copy of the refused message: %s', exc)
        info = MessageInfo(from_addr, list(to_addrs), msg_bytes)
        self._fire(info, result)
        return result

    def _fire(self, msg: object, result: SendResult) -> bool:
        if result.refused or result.deferred:
            return fire_delivery_failed(self.plugins, msg, result)
        if result.accepted:
            fire_delivery_successful(self.plugins, msg, result)
        return False

    def _deliver_queued(self, msg: QueuedMessage, from_addr: str, to_addrs: List[str]) -> SendResult:
        result = SendResult(queued=False)
        try:
            return self._deliver_and_record(msg, from_addr, to_addrs, result)
        except Exception as exc:
            if not msg.is_claimed:
                raise
            # The queue file could not be updated (full disk, I/O error) or something else broke.
            # Putting the unchanged file back would send it again to recipients who already have it.
            log = logging.getLogger('mailqueue')
            if result.accepted:
                log.error('queued message %s was delivered to %s but the queue file could not be updated '
                          '(%s); moving it to hold/ so that nobody gets it twice: check it with '
                          '"mq-queue show %s"', msg.msg_id, ','.join(result.accepted), exc, msg.msg_id)
                try:
                    msg.store.move(msg, 'hold')
                except Exception:
                    log.exception('cannot move %s to hold/ either; it stays claimed until this process '
                                  'ends', msg.msg_id)
            else:
                log.error('the attempt on queued message %s could not be recorded (%s); it stays queued '
                          'as it was', msg.msg_id, exc)
                msg.store.release(msg)
            result.error = f'queue file not updated: {type(exc).__name__}: {exc}'
            result.deferred = {addr: (451, result.error) for addr in to_addrs if addr not in result.accepted}
            return result

    def _deliver_and_record(self, msg: QueuedMessage, from_addr: str, to_addrs: List[str],
                            result: SendResult) -> SendResult:
        backend = msg.store
        attempts = msg.retries + 1
        deferred = self._try_transports(msg.msg_bytes, from_addr, to_addrs, skip_queues=True,
                                        attempts=attempts, queue_date=msg.queue_date, result=result)
        result.deferred = deferred
        now = datetime.now(timezone.utc)
        discard = self._fire(msg, result)
        via = backend.kind
        if discard:
            result.discarded = True
            backend.complete(msg)
            self._log('discarded', list(deferred) + list(result.refused), msg.msg_bytes, from_addr, via,
                      attempts=attempts, queue_date=msg.queue_date, queue_id=msg.msg_id)
            return result
        if deferred and result.refused:
            # first the dead letter for the refused recipients, then the deferral that drops them
            # from the queue file: a crash in between then repeats a refusal (a second dead
            # letter), where the other order would forget it (found by the torture test)
            self._keep_refused(msg, from_addr, result)
        if deferred:
            give_up = None
            if self.retry_policy is not None:
                give_up = self.retry_policy.give_up_reason(msg.queue_date, msg.retries + 1, now)
            error = describe_failures(deferred)
            if give_up:
                backend.fail(msg, f'{give_up}; last error: {error}', list(deferred))
                self._log('failed', list(deferred), msg.msg_bytes, from_addr, via, attempts=attempts,
                          queue_date=msg.queue_date, queue_id=msg.msg_id, error=give_up)
                result.refused.update(deferred)
                result.deferred = {}
            else:
                next_attempt = None
                if self.retry_policy is not None:
                    next_attempt = self.retry_policy.next_attempt(now, msg.retries + 1)
                backend.defer(msg, list(deferred), error, now, next_attempt)
                result.queued = True
                result.transport = via
                result.queue_id = msg.msg_id
                self._log('queued', list(deferred), msg.msg_bytes, from_addr, via, attempts=attempts,
                          queue_date=msg.queue_date, queue_id=msg.msg_id)
                # Deferred recipients are safely queued: for the caller that counts as success.
                result.deferred = {}
                result.queued_to = list(deferred)
        elif result.refused:
            backend.fail(msg, describe_failures(result.refused), list(result.refused))
        else:
            backend.complete(msg, wait=False)  # the next message need not wait for the confirmation
        return result

    @staticmethod
    def _keep_refused(msg: QueuedMessage, from_addr: str, result: SendResult) -> None:
        """A dead letter for the refused recipients of a message whose others wait in the queue."""
        try:
            msg.store.store_dead_letter(msg.msg_bytes, from_addr, list(result.refused),
                                        describe_failures(result.refused))
        except Exception as exc:  # the delivery goes on being recorded; a missing copy must not stop that
            logging.getLogger('mailqueue').error('could not keep a copy for the refused recipients of %s: '
                                                 '%s', msg.msg_id, exc)
