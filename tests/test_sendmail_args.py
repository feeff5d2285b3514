"""``mq-sendmail`` option grammar, stdin reading and the ``-bs`` protocol, in-process."""

from __future__ import annotations

import io
from typing import List, Tuple

import pytest

from schwarz.mailqueue.cli.common import CLIError
from schwarz.mailqueue.cli.sendmail_message import read_message
from schwarz.mailqueue.cli.sendmail_options import parse_args
from schwarz.mailqueue.cli.sendmail_smtp import SessionReply, StdioSMTPSession
from schwarz.mailqueue.result import Reply


def test_cronie_arguments() -> None:
    opts = parse_args(['-FCronDaemon', '-i', '-odi', '-oem', '-oi', '-t', '-f', 'root'])
    assert (opts.full_name, opts.ignore_dots, opts.extract_recipients, opts.sender) == ('CronDaemon', True, True,
                                                                                         'root')
    assert opts.recipients == []


def test_glued_and_separate_values_and_ignored_options() -> None:
    opts = parse_args(['-B8BITMIME', '-N', 'never', '-Rhdrs', '-V', 'envid', '-Ltag', '-h17', '-pSMTP', '-Am',
                       '-d0.1', '-f<me@site.example>', '-r', 'other@site.example', '-C/etc/x.conf', 'a@b.example'])
    assert opts.sender == 'other@site.example'
    assert opts.config == '/etc/x.conf'
    assert opts.recipients == ['a@b.example']
    assert not opts.ignore_dots


def test_clustered_flags_and_ignore_dots_spellings() -> None:
    assert parse_args(['-ti']).extract_recipients and parse_args(['-ti']).ignore_dots
    assert parse_args(['-o', 'i']).ignore_dots
    assert parse_args(['-OIgnoreDots=true']).ignore_dots
    assert not parse_args(['-OIgnoreDots=false']).ignore_dots
    assert parse_args(['-vv']).verbose == 2
    assert not parse_args(['-n']).use_aliases


def test_options_end_at_double_dash_and_at_the_first_recipient() -> None:
    opts = parse_args(['-i', '--', '-t', 'a@b.example'])
    assert opts.recipients == ['-t', 'a@b.example'] and not opts.extract_recipients
    opts = parse_args(['a@b.example', '-f', 'x@y.example'])
    assert opts.recipients == ['a@b.example', '-f', 'x@y.example'] and opts.sender is None


def test_long_options() -> None:
    opts = parse_args(['--config=/x.conf', '--aliases', '/a', '--read-envelope-from', '--set-date-header',
                       '--set-msgid-header=auto', '--set-from-header=on', '--set-to-header=off', '--verbose'])
    assert (opts.config, opts.aliases, opts.read_envelope_from) == ('/x.conf', '/a', True)
    assert (opts.set_date, opts.set_msgid, opts.set_from, opts.set_to, opts.verbose) == (True, True, True, False, 1)


@pytest.mark.parametrize('args, mode', [
    (['-bm'], 'm'), (['-bs'], 's'), (['-bp'], 'p'), (['-q'], 'q'), (['-q30m'], 'q'), (['-bi'], 'i'),
    (['-bv', 'a'], 'v'), ([], 'm'),
])
def test_modes(args: List[str], mode: str) -> None:
    assert parse_args(args).mode == mode


def test_program_name_selects_the_mode() -> None:
    assert parse_args([], '/usr/bin/mailq').mode == 'p'
    assert parse_args([], '/usr/bin/newaliases').mode == 'i'
    assert parse_args([], '/usr/sbin/sendmail').mode == 'm'


@pytest.mark.parametrize('args', [['-X'], ['--nope'], ['-f'], ['--config'], ['-bd'], ['--set-date-header=maybe'],
                                  ['--read-envelope-from=yes']])
def test_usage_errors(args: List[str]) -> None:
    with pytest.raises(CLIError) as excinfo:
        parse_args(args)
    assert excinfo.value.exit_code == 64


def test_help() -> None:
    assert parse_args(['--help']).show_help
    assert parse_args(['-h']).show_help


@pytest.mark.parametrize('args', [['-h', '5', 'rcpt@example.org'], ['-h5', 'rcpt@example.org'],
                                  ['-oi', '-h', '17', '--', 'rcpt@example.org']])
def test_a_hop_count_is_ignored_whether_glued_or_not(args: List[str]) -> None:
    opts = parse_args(args)
    assert not opts.show_help and opts.recipients == ['rcpt@example.org']


@pytest.mark.parametrize('args', [['-h', 'rcpt@example.org'], ['--help', 'rcpt@example.org'],
                                  ['-h', '--', 'rcpt@example.org'], ['-h', '-t'], ['-t', '--version']])
def test_help_with_recipients_is_a_usage_error_not_a_silent_exit_0(args: List[str]) -> None:
    with pytest.raises(CLIError) as excinfo:
        parse_args(args)
    assert excinfo.value.exit_code == 64 and 'takes no recipients' in str(excinfo.value)


@pytest.mark.parametrize('data, ignore_dots, expected', [
    (b'a\n.\nb\n', False, b'a\n'),
    (b'a\r\n.\r\nb\r\n', False, b'a\r\n'),
    (b'a\n..\n.x\nb', False, b'a\n..\n.x\nb'),
    (b'a\n.', False, b'a\n'),
    (b'a\n.\nb\n', True, b'a\n.\nb\n'),
    (b'', False, b''),
])
def test_read_message(data: bytes, ignore_dots: bool, expected: bytes) -> None:
    assert read_message(io.BytesIO(data), ignore_dots, 1024) == expected
    assert read_message(None, ignore_dots, 1024) == b''


@pytest.mark.parametrize('ignore_dots', [True, False])
def test_read_message_stops_past_the_limit(ignore_dots: bool) -> None:
    from schwarz.mailqueue.cli.common import CLIError

    exact = b'x' * 1023 + b'\n'
    if not ignore_dots:  # the terminating dot does not count
        assert read_message(io.BytesIO(exact + b'.\n'), ignore_dots, 1024) == exact
    assert read_message(io.BytesIO(exact), ignore_dots, 1024) == exact
    stream = io.BytesIO(exact + b'y' * 10_000_000)  # one endless line: not read whole
    with pytest.raises(CLIError) as info:
        read_message(stream, ignore_dots, 1024)
    assert info.value.exit_code == 65 and 'max_message_size (1.0K)' in str(info.value)
    assert stream.tell() <= 2 * 1024 + 2


def run_session(commands: bytes) -> Tuple[List[str], List[Tuple[str, List[str], bytes]]]:
    """Feed a whole (pipelined) client script; returns the reply lines and the delivered messages."""
    delivered: List[Tuple[str, List[str], bytes]] = []

    def deliver(sender: str, recipients: List[str], data: bytes) -> Reply:
        delivered.append((sender, list(recipients), data))
        if b'refuse me' in data:
            raise SessionReply(Reply(554, '5.6.0 refused by the test'))
        return Reply(250, '2.0.0 Ok: delivered')

    def resolve(address: str) -> List[str]:
        if address == 'team':
            return ['a@example.org', 'b@example.org']
        if '@' not in address:
            raise SessionReply(Reply(550, f'5.1.1 <{address}>: no such local user or alias'))
        return [address]

    out = io.BytesIO()
    StdioSMTPSession(io.BytesIO(commands), out, 'host.example', deliver, resolve).run()
    return out.getvalue().decode().split('\r\n')[:-1], delivered


def test_session_pipelined_client_and_dot_unstuffing() -> None:
    replies, delivered = run_session(
        b'EHLO client\r\nMAIL FROM:<s@x.example> BODY=8BITMIME SIZE=100\r\nRCPT TO:<team>\r\n'
        b'RCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n...two\r\n.\r\nQUIT\r\n'
        b'NOOP\r\n')  # nothing after QUIT is read
    assert replies == [
        '220 host.example ESMTP mq-sendmail ready',
        '250-host.example', '250-8BITMIME', '250-SMTPUTF8', f'250-SIZE {64 * 1024 * 1024}', '250-ENHANCEDSTATUSCODES',
        '250 HELP',
        '250 2.1.0 Ok', '250 2.1.5 Ok', '250 2.1.5 Ok',
        '354 End data with <CR><LF>.<CR><LF>',
        '250 2.0.0 Ok: delivered',
        '221 2.0.0 host.example closing connection',
    ]
    assert delivered == [('s@x.example', ['a@example.org', 'b@example.org'], b'Subject: x\r\n\r\n.dot\r\n..two\r\n')]


def test_session_errors_and_limits() -> None:
    replies, delivered = run_session(
        b'HELO\r\nMAIL FROM:<a b@x>\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\nRCPT TO:<nobody>\r\nDATA\r\n'
        b'RCPT TO:<x@y.example> NOTIFY=NEVER\r\nMAIL FROM:<> AUTH=<>\r\nRSET\r\nDATA\r\nRCPT TO:<x@y.example>\r\n'
        b'STARTTLS\r\nVRFY root\r\n' + b'X' * 3000 + b'\r\nNOOP\r\n')
    assert [r[:3] for r in replies] == ['220', '501', '553', '250', '503', '550', '554', '555', '503', '250', '503',
                                        '503', '500', '252', '500', '250']
    assert delivered == []


def test_session_refusals_are_typed_replies() -> None:
    """A callback refuses with SessionReply: its reply goes to the client and the session goes on."""
    replies, delivered = run_session(
        b'HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<nobody>\r\nRCPT TO:<a@b.example>\r\nDATA\r\nrefuse me\r\n.\r\n'
        b'MAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\nDATA\r\nfine\r\n.\r\nQUIT\r\n')
    assert replies[3:8] == ['550 5.1.1 <nobody>: no such local user or alias', '250 2.1.5 Ok',
                            '354 End data with <CR><LF>.<CR><LF>', '554 5.6.0 refused by the test', '250 2.1.0 Ok']
    assert replies[-2:] == ['250 2.0.0 Ok: delivered', '221 2.0.0 host.example closing connection']
    assert [data for _, _, data in delivered] == [b'refuse me\r\n', b'fine\r\n']


def test_session_sends_too_noisy_clients_away() -> None:
    replies, _ = run_session(b'GET / HTTP/1.1\r\n' * 30)
    assert replies[-1].startswith('421 ')
    assert len(replies) == 1 + 21


def test_session_ends_quietly_on_eof_mid_data() -> None:
    replies, delivered = run_session(b'HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.example>\r\nDATA\r\nSubject: x\r\n')
    assert replies[-1].startswith('354') and delivered == []


def test_session_non_ascii_addresses_need_smtputf8() -> None:
    replies, delivered = run_session(
        'EHLO c\r\nMAIL FROM:<jörg@bücher.example>\r\nMAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n'
        'RCPT TO:<ü@example.org>\r\nDATA\r\nx\r\n.\r\n'
        'MAIL FROM:<a@example.org>\r\nRCPT TO:<ü@example.org>\r\nRCPT TO:<bob"@partner.example>\r\n'
        'RCPT TO:<"john smith"@example.org>\r\nRSET\r\n'.encode())
    assert [r[:3] for r in replies if not r.startswith('250-')] == [
        '220', '250', '553', '250', '250', '354', '250', '250', '553', '553', '250', '250']
    assert delivered == [('jörg@bücher.example', ['ü@example.org'], b'x\r\n')]


@pytest.mark.parametrize('ignore_dots', [True, False])
def test_a_large_limit_costs_no_memory_for_a_small_message(ignore_dots: bool) -> None:
    """stdin.read(limit + 1) set aside the whole limit first: max_message_size = 1024G was a
    MemoryError (exit 70) for a message of three lines."""
    import os

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'Subject: x\n\nhi\n')
    os.close(write_fd)
    with open(read_fd, 'rb') as stream:
        assert read_message(stream, ignore_dots, 1024 ** 4) == b'Subject: x\n\nhi\n'
