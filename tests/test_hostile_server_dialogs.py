"""Hostile SMTP servers beyond replies out of step (test_hostile_servers.py): hang-ups, framing,
greetings, STARTTLS, AUTH, huge replies.

Every server is a ``ScriptedSMTPServer`` on 127.0.0.1. The rules checked (SPEC §4, §10):
a recipient counts as delivered only if the server answered 250 to the final dot of its
message; a server's 250 stays a delivery even if the server hangs up right after it; a
surplus or misplaced line never makes a recipient permanently refused; ``SMTPMailer.send()``
never raises for SMTP trouble and always ends within a bounded time.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import pytest

from schwarz.mailqueue import MaildirBackend, MessageHandler, SendResult
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.smtp.auth import CommandTokenSource
from schwarz.mailqueue.testutils import (
    HANG,
    Close,
    ConnectionState,
    Hang,
    Script,
    ScriptAction,
    ScriptedSMTPServer,
    Trickle,
    ehlo_reply,
    smtp_reply,
)
from test_hostile_servers import (
    EXTENSIONS,
    NO_PIPELINING,
    PIPELINING,
    SENDER,
    TIMEOUT,
    assert_consistent,
    bounded_send,
    finish,
    mailer_for,
)


def message(marker: str) -> bytes:
    return f'From: {SENDER}\r\nSubject: message {marker}\r\n\r\nbody of {marker}\r\n'.encode()


def assert_accepted_means_received(srv: ScriptedSMTPServer, msg: bytes, result: SendResult) -> None:
    for rcpt in result.accepted:
        assert any(t.data == msg and rcpt in t.accepted_rcpts for t in srv.confirmed), (
            f'{rcpt} reported as delivered, but the server never confirmed it: {result!r} {srv.transfers!r}')


def _one_message_to_two(script_: Script) -> Tuple[SendResult, ScriptedSMTPServer]:
    """One message to two recipients through ``script_``: every recipient has one verdict, and
    one counted delivered was confirmed by the server."""
    to = ['first@example.org', 'second@example.org']
    with ScriptedSMTPServer(script_) as srv:
        mailer = mailer_for(srv)
        msg = message('M1')
        result, _ = bounded_send(srv, mailer, to, msg)
        finish(srv, mailer)
        assert_consistent(result, to)
        assert_accepted_means_received(srv, msg, result)
    return result, srv


class HangUpServer(ScriptedSMTPServer):
    """A ``ScriptedSMTPServer`` whose ``Close`` puts the reply and the FIN into one TCP segment
    (``TCP_CORK``): the client reads the reply and the end of the connection at once,
    deterministically (a plain close races with the client and fails about one run in three)."""

    def _perform(self, conn: Any, action: ScriptAction, record: Any) -> bool:
        if isinstance(action, Close):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        return super()._perform(conn, action, record)


# --- 1. a hang-up right after the final reply -------------------------------------------------


@EXTENSIONS
def test_a_250_to_the_dot_followed_by_a_hangup_is_a_delivery(extensions: Sequence[str]) -> None:
    # SPEC §4: "after the final 250 the message is delivered even if QUIT fails"; a server that
    # closes (or resets) the connection right after its 250 has the message.
    script_ = Script(replies={'DOT': Close(smtp_reply(250, '2.0.0 Ok: queued'))}, extensions=extensions)
    with HangUpServer(script_) as srv:
        mailer = mailer_for(srv)
        msg = message('M1')
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], msg)
        finish(srv, mailer)
        assert result.accepted == ['rcpt@example.org'], result
        assert result.deferred == {} and result.refused == {}, result
        [transfer] = srv.confirmed
        assert transfer.data == msg


@EXTENSIONS
def test_a_550_to_the_dot_followed_by_a_hangup_is_a_refusal(extensions: Sequence[str]) -> None:
    script_ = Script(replies={'DOT': Close(smtp_reply(550, '5.7.1 rejected: spam'))}, extensions=extensions)
    with HangUpServer(script_) as srv:
        mailer = mailer_for(srv)
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert result.refused == {'rcpt@example.org': (550, '5.7.1 rejected: spam')}, result
        assert result.accepted == [] and result.deferred == {}, result


def test_a_delivered_message_is_not_queued_again_when_the_server_hangs_up_after_its_250(tmp_path: Path) -> None:
    # End to end (the mq-sendmail / web-app path): the handler must not put a delivered message
    # into the queue, or the runner delivers it a second time.
    queue_dir = tmp_path / 'queue'
    with HangUpServer(Script(replies={'DOT': Close(smtp_reply(250, '2.0.0 Ok: queued'))})) as srv:
        mailer = mailer_for(srv)
        handler = MessageHandler([mailer, MaildirBackend(str(queue_dir))])
        result = handler.send_message(message('M1'), sender=SENDER, recipient='rcpt@example.org')
        finish(srv, mailer)
        assert len(srv.confirmed) == 1
    assert result is not None and result.accepted == ['rcpt@example.org'], result
    assert not result.queued, result
    assert list(MaildirQueue(str(queue_dir)).iter_ids('new')) == [], 'delivered, yet queued for a second delivery'


# --- 2. surplus lines that look like refusals --------------------------------------------------


@EXTENSIONS
@pytest.mark.parametrize('after', ['MAIL', 'RCPT'])
def test_a_surplus_5xx_line_never_refuses_a_recipient_permanently(extensions: Sequence[str], after: str) -> None:
    # The server accepts every recipient; one reply carries a surplus "550" line. The client is
    # out of step from there on: whatever it reads next is not the server's verdict on that
    # recipient, so nobody may end up refused (moved to failed/, never retried).
    surplus = smtp_reply(250, '2.1.0 Ok') + smtp_reply(550, '5.1.1 surplus line')
    result, _srv = _one_message_to_two(Script(replies={after: [surplus]}, extensions=extensions))
    assert result.refused == {}, f'a surplus line made a recipient permanently refused: {result!r}'


# --- 3. AUTH oddities ------------------------------------------------------------------------


def test_a_deeply_nested_oauth_error_challenge_does_not_escape_as_an_exception() -> None:
    # The XOAUTH2 error challenge is base64 JSON chosen by the server; one nested 6000 deep
    # makes json.loads raise RecursionError, which is neither an OSError nor an SMTPError.
    challenge = base64.b64encode(b'[' * 6000).decode('ascii')
    script_ = Script(extensions=['PIPELINING', 'AUTH XOAUTH2'], replies={'AUTH': smtp_reply(334, challenge)})
    with ScriptedSMTPServer(script_) as srv:
        mailer = mailer_for(srv, username='user@example.com', token_source=CommandTokenSource('echo t0ken-value'))
        msg = message('M1')
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], msg)  # returns: no RecursionError
        finish(srv, mailer)
        # (this server goes on to accept the AUTH, so the message may go out; never unreceived)
        assert_consistent(result, ['rcpt@example.org'])
        assert_accepted_means_received(srv, msg, result)
        assert 't0ken-value' not in repr(result)


def test_old_style_auth_equals_advertisement_is_understood() -> None:
    # Pre-RFC 2554 servers (and Postfix's broken_sasl_auth_clients) advertise "AUTH=LOGIN";
    # smtplib and msmtp accept it. Without it the queue waits for a password fix that never comes.
    with ScriptedSMTPServer(Script(extensions=['PIPELINING', 'AUTH=LOGIN PLAIN'])) as srv:
        mailer = mailer_for(srv, username='user', password='Tr0ub4dor&3-s3cret')
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert result.accepted == ['rcpt@example.org'], result


@pytest.mark.parametrize('case', ['235-before-credentials', 'garbage-challenge', 'endless-334'])
def test_odd_auth_dialogs_end_cleanly_and_keep_the_password_out(case: str) -> None:
    password = 'Tr0ub4dor&3-s3cret'

    def responder(verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        if case == '235-before-credentials' and verb == 'AUTH':
            return smtp_reply(235, '2.7.0 fine, whoever you are')
        if case == 'garbage-challenge' and verb in ('AUTH', 'AUTH_DATA') and state.auth_lines < 2:
            return smtp_reply(334, '!!not*base64\x00\xff')
        if case == 'endless-334' and verb in ('AUTH', 'AUTH_DATA'):
            return smtp_reply(334, f'{arg} again?')
        return None

    with ScriptedSMTPServer(Script(extensions=['PIPELINING', 'AUTH LOGIN'], responder=responder)) as srv:
        mailer = mailer_for(srv, username='user', password=password)
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert_consistent(result, ['rcpt@example.org'])
        secret_b64 = base64.b64encode(password.encode()).decode()
        assert password not in repr(result) and secret_b64 not in repr(result), result
        if case == '235-before-credentials':
            assert result.accepted == ['rcpt@example.org'], result
            assert 'AUTH_DATA' not in srv.verbs(), 'credentials sent after the server had said 235'
        elif case == 'endless-334':
            assert result.accepted == [] and 'rcpt@example.org' in result.deferred, result
            assert 'MAIL' not in srv.verbs()


# --- 4. line framing: bare LF, odd segments, endless and overlong replies ----------------------


def _bare_lf(data: bytes) -> bytes:
    return data.replace(b'\r\n', b'\n')


@EXTENSIONS
def test_replies_with_bare_lf_line_ends(extensions: Sequence[str]) -> None:
    replies = {'EHLO': _bare_lf(ehlo_reply(*extensions)), 'MAIL': b'250 2.1.0 Ok\n', 'RCPT': b'250 2.1.5 Ok\n',
               'DATA': b'354 go ahead\n', 'DOT': b'250-2.0.0 Ok\n250 queued\n'}
    with ScriptedSMTPServer(Script(greeting=b'220 lf.test ESMTP\n', replies=replies, extensions=extensions)) as srv:
        mailer = mailer_for(srv)
        sent = []
        for n in range(2):
            msg = message(f'M{n}')
            result, _ = bounded_send(srv, mailer, [f'r{n}@example.org'], msg)
            assert result.accepted == [f'r{n}@example.org'], result
            sent.append((msg, result))
        finish(srv, mailer)
        assert srv.connection_count == 1
        assert len(srv.confirmed) == 2
        for msg, result in sent:
            assert_accepted_means_received(srv, msg, result)


def test_every_reply_split_into_one_byte_segments() -> None:
    # Splits between the code and the text, between CR and LF, inside multi-line replies.
    def split(data: bytes) -> Trickle:
        return Trickle(data, interval=0.002)

    replies = {'EHLO': split(ehlo_reply('PIPELINING', 'SIZE 1000000')), 'MAIL': split(b'250-2.1.0 Ok\r\n250 Ok\r\n'),
               'RCPT': split(smtp_reply(250, '2.1.5 Ok')), 'DATA': split(smtp_reply(354, 'go')),
               'DOT': split(smtp_reply(250, '2.0.0 Ok', 'queued'))}
    with ScriptedSMTPServer(Script(greeting=split(smtp_reply(220, 'slow.test ESMTP')), replies=replies)) as srv:
        mailer = mailer_for(srv)
        for n in range(2):
            result, _ = bounded_send(srv, mailer, [f'r{n}@example.org'], message(f'M{n}'))
            assert result.accepted == [f'r{n}@example.org'], result
        finish(srv, mailer)
        assert len(srv.confirmed) == 2 and srv.connection_count == 1


@pytest.mark.parametrize('verb', ['CONNECT', 'EHLO', 'RCPT', 'DOT'])
@pytest.mark.parametrize('kind', ['endless-continuation', 'overlong-line'])
def test_endless_or_overlong_replies_are_bounded_and_never_a_delivery(verb: str, kind: str) -> None:
    if kind == 'endless-continuation':
        payload = Hang(b'250-more to come\r\n' * 20000)  # 360 kB of "-" lines that never end
    else:
        payload = Hang(b'250 ' + b'x' * (4 << 20))  # 4 MB without a line end
    with ScriptedSMTPServer(Script(replies={verb: payload})) as srv:
        mailer = mailer_for(srv)
        result, elapsed = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert elapsed < 2 * TIMEOUT + 1.0, 'an unbounded reply is detected by its size, not by the timeout'
        assert result.accepted == [] and list(result.deferred) == ['rcpt@example.org'], result


# --- 5. odd bytes in replies end up in the queue file ------------------------------------------


def test_nul_cr_and_invalid_utf8_in_a_refusal_keep_the_queue_files_intact(tmp_path: Path) -> None:
    nasty = b'450-4.2.0 first\x00line\rX-Queue-Meta-End: end\r\n450 4.2.0 \xff\xfe\x1b[2J end\r\n'

    def responder(verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        if verb == 'RCPT' and 'later' in arg:
            return nasty
        if verb == 'RCPT' and 'never' in arg:
            return nasty.replace(b'450', b'550').replace(b'4.2.0', b'5.1.1')
        return None

    queue_dir = tmp_path / 'queue'
    to = ['ok@example.org', 'later@example.org', 'never@example.org']
    msg = message('M1')
    with ScriptedSMTPServer(Script(responder=responder)) as srv:
        mailer = mailer_for(srv)
        handler = MessageHandler([mailer, MaildirBackend(str(queue_dir))])
        result = handler.send_message(msg, sender=SENDER, recipients=to)
        finish(srv, mailer)
    assert result is not None and result.accepted == ['ok@example.org'], result
    queue = MaildirQueue(str(queue_dir), create=False)
    [queued] = list(queue.iter_ids('new'))
    meta, body = queue.read_message('new', queued)
    assert meta.to_addrs == ['later@example.org']
    assert body == msg
    [dead] = list(queue.iter_ids('failed'))
    meta, body = queue.read_message('failed', dead)
    assert meta.to_addrs == ['never@example.org']
    assert body == msg


# --- 6. RSET failures, pipelining with missing replies, greetings, STARTTLS ------------------


@pytest.mark.parametrize('rset', [smtp_reply(421, '4.3.2 bye'), smtp_reply(500, '5.5.1 what?'), HANG, Close(b''),
                                  smtp_reply(250, 'Ok') + smtp_reply(250, 'Ok again')],
                         ids=['421', '500', 'hang', 'close', 'surplus'])
def test_a_failing_rset_between_messages_loses_nothing(rset: ScriptAction) -> None:
    def responder(verb: str, arg: str, state: ConnectionState) -> ScriptAction:
        if verb == 'RCPT' and 'unknown' in arg:
            return smtp_reply(550, '5.1.1 no such user')
        return None

    with ScriptedSMTPServer(Script(responder=responder, replies={'RSET': rset}, extensions=NO_PIPELINING)) as srv:
        mailer = mailer_for(srv)
        first, _ = bounded_send(srv, mailer, ['unknown@example.org'], message('M1'))
        assert first.refused == {'unknown@example.org': (550, '5.1.1 no such user')}, first
        msg = message('M2')
        second, _ = bounded_send(srv, mailer, ['known@example.org'], msg)
        finish(srv, mailer)
        assert second.accepted == ['known@example.org'], second
        [transfer] = srv.confirmed
        assert transfer.data == msg and transfer.accepted_rcpts == ['known@example.org']


@pytest.mark.parametrize('missing', ['MAIL', 'RCPT', 'DATA'])
def test_a_pipelining_server_that_leaves_out_a_reply(missing: str) -> None:
    # MAIL, RCPT, RCPT, DATA go out in one batch; the server answers one of them with nothing.
    result, srv = _one_message_to_two(Script(replies={missing: [b'']}, extensions=PIPELINING))
    assert result.accepted == [] and result.refused == {}, result
    assert srv.messages == [], 'the data went out although the replies did not add up'


@pytest.mark.parametrize('greeting', [smtp_reply(554, '5.7.1 no service for you'), smtp_reply(421, '4.3.2 busy'),
                                      b'* OK IMAP4rev1 ready\r\n', b'\x00\x00\x00\r\n220 late.test\r\n'],
                         ids=['554', '421', 'not-smtp', 'garbage-before-220'])
def test_a_bad_greeting_defers_and_sends_nothing(greeting: bytes) -> None:
    with ScriptedSMTPServer(Script(greeting=greeting)) as srv:
        mailer = mailer_for(srv)
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert result.accepted == [] and list(result.deferred) == ['rcpt@example.org'], result
        assert 'MAIL' not in srv.verbs()


@pytest.mark.parametrize('reply', [smtp_reply(454, '4.7.0 TLS not available'), Hang(smtp_reply(220, 'go ahead')),
                                   smtp_reply(220, 'go ahead'), smtp_reply(220, 'go ahead') + ehlo_reply('AUTH PLAIN'),
                                   smtp_reply(250, 'what TLS?')],
                         ids=['454', '220-then-hang', '220-then-plaintext', '220-plus-injected-ehlo', '250'])
def test_starttls_failures_never_fall_back_to_plaintext(reply: ScriptAction) -> None:
    script_ = Script(extensions=['PIPELINING', 'STARTTLS', 'AUTH PLAIN'], replies={'STARTTLS': reply})
    with ScriptedSMTPServer(script_) as srv:
        mailer = mailer_for(srv, tls='starttls', username='user', password='Tr0ub4dor&3-s3cret')
        result, _ = bounded_send(srv, mailer, ['rcpt@example.org'], message('M1'))
        finish(srv, mailer)
        assert result.accepted == [] and list(result.deferred) == ['rcpt@example.org'], result
        assert not {'AUTH', 'MAIL', 'EHLO'} & set(srv.verbs()[2:]), srv.verbs()


# --- 7. many recipients ---------------------------------------------------------------------


def test_forty_thousand_pipelined_recipients_with_a_recipient_limit() -> None:
    # RFC 5321 4.5.3.1.8: a server may answer 452 beyond its limit (100 here); the rest wait for
    # the next attempt. One batch of 1.2 MB of commands and 40000 replies: no deadlock, no loss.
    def responder(verb: str, arg: str, state: ConnectionState) -> Optional[bytes]:
        if verb == 'RCPT' and state.occurrence >= 100:
            return smtp_reply(452, '4.5.3 Error: too many recipients')
        return None

    to = [f'r{n}@example.org' for n in range(40000)]
    with ScriptedSMTPServer(Script(responder=responder)) as srv:
        mailer = mailer_for(srv)
        msg = message('M1')
        result, _ = bounded_send(srv, mailer, to, msg)
        finish(srv, mailer)
        assert result.accepted == to[:100], result.accepted[:3]
        assert sorted(result.deferred) == sorted(to[100:]) and result.refused == {}
        [transfer] = srv.confirmed
        assert transfer.accepted_rcpts == to[:100] and transfer.data == msg


# --- 8. a huge 4xx reply is stored with the queued message -----------------------------------


def test_a_huge_temporary_reply_does_not_make_the_queued_message_unreadable(tmp_path: Path) -> None:
    # RFC 5321 4.5.3.1.5 caps a reply line at 512 octets; this server sends 150 lines of 8000
    # (the client reads up to 1000 x 8 kB). The reply text is kept per recipient as the
    # message's last error: the queue file's meta block must stay readable (mq-queue list, the
    # back-online check and requeue read it with a 1 MB limit) and of sane size.
    huge = b''.join(b'450-4.2.0 ' + b'x' * 8000 + b'\r\n' for _ in range(150)) + b'450 4.2.0 mailbox busy\r\n'
    queue_dir = tmp_path / 'queue'
    to = ['a@example.org', 'b@example.org']
    with ScriptedSMTPServer(Script(replies={'RCPT': huge})) as srv:
        mailer = mailer_for(srv)
        handler = MessageHandler([mailer, MaildirBackend(str(queue_dir))])
        result = handler.send_message(message('M1'), sender=SENDER, recipients=to)
        finish(srv, mailer)
    assert result is not None and sorted(result.queued_to) == to, result
    [entry] = list(MaildirQueue(str(queue_dir), create=False).entries())
    assert entry.error is None, f'the queued message reads as corrupt: {entry.error}'
    assert entry.size < 256 * 1024, f'{entry.size} bytes of queue file for a 60-byte message'
