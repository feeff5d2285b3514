"""Property: whatever an SMTP server replies, the client never counts an undelivered message as sent.

A ``ScriptedSMTPServer`` answers every command per a plan drawn by hypothesis: random
codes (1xx..5xx, also where they cannot be), multi-line and surplus replies, missing
replies, garbage, trickled replies, hangs and hang-ups, per connection and per command.
For every plan, ``SMTPMailer.send()``

* returns a ``SendResult`` (never raises) within a bounded time,
* gives every recipient exactly one verdict (accepted, deferred or refused), and
* reports a recipient as accepted only if the server accepted that RCPT, received the
  message's data completely and answered 250 to its final dot (issue 9).

The budget is ``$HYPOTHESIS_MAX_EXAMPLES`` (default 50, see ``_hyp.py``); one server
serves every example.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, Iterator, List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schwarz.mailqueue import SendResult, SMTPMailer
from schwarz.mailqueue.testutils import (
    HANG,
    SILENT,
    Close,
    ConnectionState,
    Script,
    ScriptAction,
    ScriptedSMTPServer,
    Trickle,
    smtp_reply,
)

from _hyp import examples

TIMEOUT = 0.5
# Bound on one send(), whatever the server does: a reconnect (two attempts) of a few command
# timeouts each, one timeout per recipient, plus slack for a loaded machine. Any wait without
# an end fails. (The hostile-server tests check the overall deadline against long trickles.)
DEADLINE = 2 * 5 * TIMEOUT + 3 * TIMEOUT + 2.0
SENDER = 'sender@example.com'
VERBS = ('CONNECT', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'DOT', 'RSET', 'NOOP', 'QUIT')

Plan = Dict[Tuple[int, str, int], ScriptAction]
"""(connection, verb, occurrence on that connection) -> what the server does; defaults elsewhere."""

codes = st.one_of(
    st.sampled_from([220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 500, 501, 503, 550, 552, 554]),
    st.integers(100, 599),
)
replies = st.builds(
    lambda code, lines: smtp_reply(code, *[f'line {n}' for n in range(lines)]),
    codes, st.integers(1, 3),
)
actions: st.SearchStrategy[ScriptAction] = st.one_of(
    replies,                                                             # a reply, maybe one that does not fit
    st.tuples(replies, replies).map(lambda pair: pair[0] + pair[1]),     # a surplus reply
    st.just(SILENT),                                                     # no reply
    st.builds(Close, st.one_of(st.just(b''), replies)),                  # hang-up (maybe after a reply)
    st.sampled_from([b'hello\r\n', b'250\r\n', b'25', b'250-partial\r\n', b'250-a\r\n550 b\r\n',
                     b'\r\n', b'250 ok\n']),                             # malformed or incomplete
    st.builds(lambda reply: Trickle(reply, interval=0.05), replies),     # one byte every 50 ms
    st.just(HANG),
)
plans: st.SearchStrategy[Plan] = st.dictionaries(
    st.tuples(st.integers(0, 1), st.sampled_from(VERBS), st.integers(0, 2)), actions, max_size=4)


def message(n: int) -> bytes:
    return (f'From: {SENDER}\r\nSubject: message {n}\r\n\r\nbody {n}\r\n.leading dot\r\n.\r\nend\r\n').encode()


@pytest.fixture(scope='module')
def server() -> Iterator[ScriptedSMTPServer]:
    with ScriptedSMTPServer() as srv:
        yield srv


def bounded_send(srv: ScriptedSMTPServer, mailer: SMTPMailer, to_addrs: Sequence[str],
                 msg: bytes) -> Tuple[SendResult, float]:
    results: List[SendResult] = []
    errors: List[BaseException] = []

    def target() -> None:
        try:
            results.append(mailer.send(SENDER, list(to_addrs), msg))
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        srv.drop_connections()  # unblock the client, then report
        thread.join(5)
        raise AssertionError(f'send() still running after {elapsed:.1f} s (deadline {DEADLINE} s)')
    if errors:
        raise AssertionError(f'send() raised {errors[0]!r}') from errors[0]
    [result] = results
    assert isinstance(result, SendResult), result
    return result, elapsed


@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=plans,
    pipelining=st.booleans(),
    batches=st.lists(st.integers(1, 3), min_size=1, max_size=3),
)
def test_no_recipient_is_accepted_unless_the_server_confirmed_its_message(
        server: ScriptedSMTPServer, plan: Plan, pipelining: bool, batches: List[int]) -> None:
    def responder(verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        return plan.get((state.connection, verb, state.occurrence))

    extensions = ['PIPELINING', '8BITMIME'] if pipelining else ['8BITMIME']
    server.reset(Script(responder=responder, extensions=extensions))
    mailer = SMTPMailer(server.hostname, server.port, tls='none', timeout=TIMEOUT)
    sent: List[Tuple[bytes, List[str], SendResult]] = []
    try:
        for n, count in enumerate(batches):
            to_addrs = [f'm{n}r{i}@example.org' for i in range(count)]
            msg = message(n)
            result, _ = bounded_send(server, mailer, to_addrs, msg)
            sent.append((msg, to_addrs, result))
    finally:
        mailer.close()
    server.wait_for_disconnect(2.0)  # let the server process whatever the client sent last

    assert server.errors == []
    confirmed = server.confirmed
    for msg, to_addrs, result in sent:
        verdicts = list(result.accepted) + list(result.deferred) + list(result.refused)
        assert sorted(verdicts) == sorted(to_addrs), f'not exactly one verdict per recipient: {result!r}'
        for rcpt in result.accepted:
            assert any(t.data == msg and rcpt in t.accepted_rcpts for t in confirmed), (
                f'{rcpt} reported delivered, but the server never confirmed the message for it; '
                f'result={result!r} dialog={[(c.connection, c.verb, c.reply) for c in server.commands]!r}')
