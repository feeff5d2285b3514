"""``schwarz.mailqueue.submit``: the submission path shared by the CLI tools, against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from schwarz.mailqueue.aliases import AliasesError, UnresolvableRecipientError
from schwarz.mailqueue.config import Settings, settings_from_mapping
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.transport import QueueTransport
from schwarz.mailqueue.smtp.transport import SMTPMailer
from schwarz.mailqueue.submit import (
    STATUS_OK,
    STATUS_REFUSED,
    STATUS_TEMPFAIL,
    Submitter,
    build_transports,
    submit_message,
    summarize,
)
from schwarz.mailqueue.testutils import SMTPTestServer

MSG = b'Subject: s\r\n\r\nbody\r\n'


def settings_for(server: SMTPTestServer, **values: str) -> Settings:
    return settings_from_mapping({**server.settings_for_client(), **values})


def test_chain_is_smtp_then_queue_only_with_queue_dir(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    [smtp] = build_transports(settings_for(smtp_server))
    assert isinstance(smtp, SMTPMailer) and smtp.port == smtp_server.port
    smtp, queue = build_transports(settings_for(smtp_server, queue_dir=str(tmp_path / 'q')))
    assert isinstance(smtp, SMTPMailer) and isinstance(queue, QueueTransport) and queue.store.kind == 'maildir'
    assert len(build_transports(settings_for(smtp_server, queue_dir=str(tmp_path / 'q')), queue=False)) == 1


def test_submit_message_delivers_and_reuses_one_connection(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    aliases = tmp_path / 'aliases'
    aliases.write_text('root: admin@example.org, Admin2@Example.org\n')
    settings = settings_for(smtp_server, aliases=str(aliases))
    result = submit_message(MSG, 's@site.example', ['root', 'admin@EXAMPLE.org'], settings)
    assert result.accepted == ['admin@example.org', 'Admin2@Example.org']
    assert summarize(result, queue_configured=False).status == STATUS_OK

    with Submitter(settings) as submitter:
        submitter.send(MSG, 's@site.example', ['a@example.org'])
        submitter.send(MSG, 's@site.example', ['b@example.org'])
    assert [m.rcpt_tos for m in smtp_server.received[1:]] == [['a@example.org'], ['b@example.org']]
    assert smtp_server.connection_count == 2  # one for submit_message, one for both sends


def test_temporary_failure_is_queued_only_with_queue_dir(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    smtp_server.set_reply('RCPT', 451, '4.3.0 later')
    result = submit_message(MSG, 's@site.example', ['a@example.org'], settings_for(smtp_server))
    outcome = summarize(result, queue_configured=False)
    assert outcome.status == STATUS_TEMPFAIL
    assert outcome.problems == ['a@example.org: temporary failure, message NOT queued (no queue_dir configured): '
                                '451 4.3.0 later']

    queue_dir = tmp_path / 'q'
    result = submit_message(MSG, 's@site.example', ['a@example.org'], settings_for(smtp_server,
                                                                                   queue_dir=str(queue_dir)))
    outcome = summarize(result, queue_configured=True)
    assert (outcome.status, outcome.queued, outcome.problems) == (STATUS_OK, ['a@example.org'], [])
    assert len(list(MaildirQueue(str(queue_dir)).iter_ids('new'))) == 1


def test_permanent_refusal(smtp_server: SMTPTestServer) -> None:
    smtp_server.set_recipient_reply('x@example.org', 550, '5.1.1 unknown')
    result = submit_message(MSG, 's@site.example', ['x@example.org', 'y@example.org'], settings_for(smtp_server))
    outcome = summarize(result, queue_configured=False)
    assert (outcome.status, outcome.delivered) == (STATUS_REFUSED, ['y@example.org'])
    assert outcome.problems == ['x@example.org: refused permanently: 550 5.1.1 unknown']


def test_sender_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LOGNAME', 'cronuser')
    plain = Submitter(Settings())
    assert plain.qualify_sender('a@b.example') == 'a@b.example'
    assert plain.qualify_sender('') == ''
    assert plain.qualify_sender('root').startswith('root@')
    assert plain.default_sender().startswith('cronuser@')
    configured = Submitter(Settings(from_addr='relay@site.example'))
    assert configured.qualify_sender('root') == 'relay@site.example'
    assert configured.default_sender() == 'relay@site.example'
    domain = Submitter(Settings(from_addr='relay@site.example', default_domain='host.example'))
    assert domain.qualify_sender('root') == 'root@host.example'
    assert domain.default_sender() == 'relay@site.example'


def test_alias_resolution_errors(tmp_path: Path) -> None:
    submitter = Submitter(Settings(aliases=str(tmp_path / 'missing')))
    assert submitter.resolve(['a@b.example', 'A@B.EXAMPLE', 'c@d.example']) == ['a@b.example', 'A@B.EXAMPLE',
                                                                               'c@d.example']
    with pytest.raises(AliasesError, match='aliases file not found'):
        submitter.resolve(['root'])
    with pytest.raises(UnresolvableRecipientError):
        Submitter(Settings(), use_aliases=False).resolve(['root'])
    assert Submitter(Settings(default_domain='h.example'), use_aliases=False).resolve(['root']) == ['root@h.example']


def test_one_line_per_reason_not_per_recipient() -> None:
    from schwarz.mailqueue.result import SendResult
    from schwarz.mailqueue.submit import STATUS_TEMPFAIL, summarize
    reason = (451, 'cannot connect to 127.0.0.1:25: Connection refused')
    result = SendResult(deferred={'a@x': reason, 'b@x': reason}, refused={'c@x': (550, 'no such user')})
    outcome = summarize(result, queue_configured=False)
    assert outcome.status == STATUS_TEMPFAIL
    assert outcome.problems == [
        'c@x: refused permanently: 550 no such user',
        'a@x, b@x: temporary failure, message NOT queued (no queue_dir configured): 451 cannot connect to '
        '127.0.0.1:25: Connection refused',
    ]
