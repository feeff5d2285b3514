"""``mq-sendmail`` end to end: header handling, exit codes, queueing, config errors.

All tests run the installed console script as a subprocess against the SMTP
test server on 127.0.0.1 and check what the server received.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pytest

from schwarz.mailqueue.queue.format import parse_queue_bytes
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import full_queue_dir, queue_files, run_tool, script, write_config

MESSAGE = b'Subject: hello\nFrom: me@site.example\n\nbody\n'


def sendmail(*args: str) -> list:
    return [script('mq-sendmail'), *args]


def assert_one_line_error(stderr: bytes, *fragments: str) -> None:
    text = stderr.decode()
    assert text.count('\n') == 1, text
    assert text.startswith('mq-sendmail: ')
    assert 'Traceback' not in text
    for fragment in fragments:
        assert fragment in text


# --- -t and Bcc ------------------------------------------------------------------------------


def test_t_sends_to_bcc_recipient_but_never_transmits_the_bcc_header(smtp_server: SMTPTestServer,
                                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    message = (b'From: me@site.example\n'
               b'To: alice@example.org\n'
               b'Bcc: secret@example.org,\n'
               b'  other-secret@example.org\n'
               b'Cc: bob@example.org\n'
               b'Subject: hi\n'
               b'\n'
               b'Bcc: this line is body text\n')
    proc = run_tool(sendmail('-C', str(config), '-t', '-i'), input=message, home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.rcpt_tos == ['alice@example.org', 'bob@example.org', 'secret@example.org',
                                 'other-secret@example.org']
    assert received.data == (b'From: me@site.example\r\nTo: alice@example.org\r\nCc: bob@example.org\r\n'
                             b'Subject: hi\r\n\r\nBcc: this line is body text\r\n')


def test_t_header_block_ends_at_a_non_header_line_like_mtas_do(smtp_server: SMTPTestServer,
                                                              tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    message = (b'To: alice@example.org\n'
               b'this line is not a header\n'
               b'Bcc: hidden@example.org\n'
               b'\n'
               b'body\n')
    proc = run_tool(sendmail('-C', str(config), '-t'), input=message, home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    # The Bcc: line is body: it names no recipient, and an inserted empty line makes sure no
    # lenient reader downstream can take it for a header.
    assert received.rcpt_tos == ['alice@example.org']
    assert received.data == (b'To: alice@example.org\r\n\r\nthis line is not a header\r\n'
                             b'Bcc: hidden@example.org\r\n\r\nbody\r\n')
    assert 'Bcc' not in received.as_message()


def test_t_without_any_recipient_header_is_bad_data(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-t'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 65
    assert_one_line_error(proc.stderr, 'no recipients found')
    assert smtp_server.commands == []


# --- input handling and header options ------------------------------------------------------------


def test_without_i_a_single_dot_line_ends_the_message(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    message = b'Subject: dots\n\nfirst\n..not the end\n.\nnot sent\n'
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=message, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.data == b'Subject: dots\r\n\r\nfirst\r\n..not the end\r\n'


def test_odd_messages_pass_unchanged_apart_from_line_endings(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    # no header block at all, NUL bytes, 8-bit data, bare CR and LF, a 998 byte line, 1 MB in all
    body = b'no headers here\n\x00nul\xff\xfe8bit\rbare cr\n' + b'y' * 998 + b'\n' + b'z\n' * 500_000
    proc = run_tool(sendmail('-C', str(config), '-i', 'alice@example.org'), input=body, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    # the empty header block is made explicit (an empty first line), nothing else changes
    assert received.data == b'\r\n' + body.replace(b'\r', b'\n').replace(b'\n', b'\r\n')

    # a line longer than SMTP allows is folded (CRLF SPACE every 998 octets, as Postfix does), not refused
    proc = run_tool(sendmail('-C', str(config), '-i', 'alice@example.org'), input=b'x' * 100_000 + b'\n',
                    home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folded = smtp_server.received[1].data
    assert max(len(line) for line in folded.split(b'\r\n')) <= 998
    assert folded.replace(b'\r\n ', b'') == b'\r\n' + b'x' * 100_000 + b'\r\n'


def test_set_header_options_add_missing_headers_only(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, default_domain='site.example')
    message = b'Subject: report\nDate: Tue, 3 Mar 2026 10:00:00 +0000\n\nbody\n'
    argv = sendmail('-C', str(config), '--set-date-header', '--set-msgid-header', '--set-from-header',
                    '--set-to-header', '-F', 'Nightly Report', '-f', 'reports', 'alice@example.org', 'root')
    proc = run_tool(argv, input=message, home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.mail_from == 'reports@site.example'
    assert received.rcpt_tos == ['alice@example.org', 'admin@example.org']
    head, _, body = received.data.partition(b'\r\n\r\n')
    lines = head.split(b'\r\n')
    msgid = re.fullmatch(rb'Message-ID: <[0-9a-f]+\.[0-9a-f]{24}@site\.example>', lines[0])
    assert msgid is not None, lines
    assert lines[1:] == [b'From: Nightly Report <reports@site.example>',
                         b'To: alice@example.org, admin@example.org',
                         b'Subject: report',
                         b'Date: Tue, 3 Mar 2026 10:00:00 +0000']
    assert body == b'body\r\n'


def test_read_envelope_from(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, **{'from': 'configured@site.example'})
    message = b'From: "Some One" <someone@site.example>\nSubject: x\n\nbody\n'
    proc = run_tool(sendmail('-C', str(config), '--read-envelope-from', 'alice@example.org'), input=message,
                    home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.mail_from == 'someone@site.example'
    assert received.data == b'From: "Some One" <someone@site.example>\r\nSubject: x\r\n\r\nbody\r\n'


def test_verbose_shows_the_smtp_dialog_with_auth_redacted(tmp_path: Path) -> None:
    with SMTPTestServer(auth={'mailuser': 'pass%word'}, auth_required=True) as server:
        config = write_config(tmp_path, server)
        proc = run_tool(sendmail('-C', str(config), '-v', 'alice@example.org'), input=MESSAGE, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert server.auth_logins == ['mailuser']
        assert len(server.received) == 1
    dialog = proc.stderr.decode()
    assert re.search(r'> mail from:<tester@', dialog, re.IGNORECASE), dialog
    assert re.search(r'> rcpt to:<alice@example.org>', dialog, re.IGNORECASE), dialog
    assert '< 250' in dialog
    assert 'AUTH PLAIN ***' in dialog
    assert 'pass%word' not in dialog
    import base64

    assert base64.b64encode(b'\0mailuser\0pass%word').decode() not in dialog


def test_python_dash_m_runs_the_same_tool(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool([sys.executable, '-m', 'schwarz.mailqueue.mq_sendmail', '-C', str(config), '-i',
                     'alice@example.org'], input=MESSAGE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert smtp_server.wait_for_messages(1)[0].rcpt_tos == ['alice@example.org']


def test_help_documents_every_caller_option(tmp_path: Path) -> None:
    proc = run_tool(sendmail('--help'), home=tmp_path)
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for option in ('-t', '-f ADDR', '-r ADDR', '-F NAME', '-oi', '-bs', '-bp', '-q', '-bm', '-o*', '-B TYPE',
                   '-N DSN', '-R RET', '-V ENVID', '-L TAG', '--read-envelope-from', '--set-date-header',
                   '--set-msgid-header', '--set-from-header', '--set-to-header', '--aliases FILE', '--config FILE',
                   '-v'):
        assert option in text, option


# --- exit codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize('args, fragment', [
    (['-X'], 'unknown option -X'),
    (['--frobnicate'], 'unknown option --frobnicate'),
    ([], 'no recipients given'),
    (['-f'], 'option -f needs a value'),
    (['-bd'], 'unsupported mode -bd'),
    (['--', '-oi@example.org'], 'starts with "-"'),
    (['-f', 'me@site.example\r\nRCPT TO:<victim@example.org>', 'alice@example.org'], 'line break'),
    (['-F', 'Name\nBcc: victim@example.org', 'alice@example.org'], 'line break'),
    (['alice@example.org\nBcc: victim@example.org'], 'line break'),
    (['alice@example.org\r\nRCPT TO:<victim@example.org>'], 'line break'),
    (['-t', 'bad address@example.org'], 'malformed address'),
])
def test_usage_errors_and_header_injection_exit_64_and_send_nothing(
        smtp_server: SMTPTestServer, tmp_path: Path, args: list, fragment: str) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), *args), input=b'To: x@example.org\n\nbody\n', home=tmp_path)
    assert proc.returncode == 64
    assert_one_line_error(proc.stderr, fragment)
    assert smtp_server.commands == []


def test_unknown_local_recipient_exits_67(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org', 'nosuchuser'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 67
    assert_one_line_error(proc.stderr, "'nosuchuser'", 'default_domain')
    assert smtp_server.commands == []


def test_aliases_option_overrides_the_configured_file(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    other = tmp_path / 'other-aliases'
    other.write_text('root: other-admin@example.org\n')
    proc = run_tool(sendmail('-C', str(config), '--aliases', str(other), 'root'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert smtp_server.received[0].rcpt_tos == ['other-admin@example.org']


def test_permanent_refusal_exits_69_and_names_each_refused_recipient(smtp_server: SMTPTestServer,
                                                                     tmp_path: Path) -> None:
    smtp_server.set_recipient_reply('gone@example.org', 550, '5.1.1 <gone@example.org>: Recipient address rejected')
    smtp_server.set_recipient_reply('blocked@example.org', 554, '5.7.1 blocked')
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org', 'gone@example.org', 'blocked@example.org'),
                    input=MESSAGE, home=tmp_path)

    assert proc.returncode == 69
    assert proc.stderr.decode().splitlines() == [
        'mq-sendmail: gone@example.org: refused permanently: 550 5.1.1 <gone@example.org>: '
        'Recipient address rejected',
        'mq-sendmail: blocked@example.org: refused permanently: 554 5.7.1 blocked',
    ]
    # the accepted recipient got it, once
    [received] = smtp_server.received
    assert received.rcpt_tos == ['alice@example.org']


def test_temporary_failure_without_queue_exits_75(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    smtp_server.set_reply('MAIL', 451, '4.3.0 try again later')
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 75
    assert_one_line_error(proc.stderr, 'alice@example.org', 'NOT queued (no queue_dir configured)',
                          '451 4.3.0 try again later')
    assert smtp_server.received == []


def test_temporary_failure_with_queue_dir_is_queued_and_exits_0(smtp_server: SMTPTestServer,
                                                                tmp_path: Path) -> None:
    smtp_server.set_reply('RCPT', 451, '4.2.0 greylisted')
    queue_dir = tmp_path / 'queue'
    config = write_config(tmp_path, smtp_server, queue_dir=str(queue_dir), **{'from': 'me@site.example'})
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=MESSAGE, home=tmp_path)

    assert (proc.returncode, proc.stderr) == (0, b'')
    assert smtp_server.received == []
    files = queue_files(queue_dir)
    assert files['tmp'] == [] and files['cur'] == []
    [queued] = files['new']
    meta, msg_bytes = parse_queue_bytes((queue_dir / 'new' / queued).read_bytes())
    assert (meta.from_addr, meta.to_addrs, msg_bytes) == ('me@site.example', ['alice@example.org'], MESSAGE)


def test_full_disk_exits_75_and_leaves_nothing_half_written(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    smtp_server.set_reply('MAIL', 451, '4.3.0 smarthost busy')
    with full_queue_dir(tmp_path) as (queue_dir, preexec_fn):
        config = write_config(tmp_path, smtp_server, queue_dir=str(queue_dir))
        # big enough not to fit in the little space a tmpfs may still have for a new inode
        message = MESSAGE + b'x' * 200_000 + b'\n'
        proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=message, home=tmp_path,
                        preexec_fn=preexec_fn)

        assert proc.returncode == 75
        assert_one_line_error(proc.stderr, 'alice@example.org', 'could not be queued')
        assert ('No space left on device' in proc.stderr.decode()
                or 'File too large' in proc.stderr.decode())
        assert queue_files(queue_dir) == {'tmp': [], 'new': [], 'cur': [], 'failed': []}
    assert smtp_server.received == []


def test_missing_config_file_exits_78_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / 'nope.conf'
    proc = run_tool(sendmail('-C', str(missing), 'alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 78
    assert_one_line_error(proc.stderr, str(missing), 'not found')


def test_no_config_anywhere_exits_78(tmp_path: Path) -> None:
    assert not os.path.exists('/etc/mailqueue-runner.conf')  # this test relies on a host without one
    proc = run_tool(sendmail('alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 78
    assert_one_line_error(proc.stderr, '.mailqueue-runner.conf', '/etc/mailqueue-runner.conf')


@pytest.mark.parametrize('content, fragments', [
    ('[mqrunner]\nsmtp_port = seventy\n', ('smtp_port', 'invalid value')),
    ('[mqrunner]\nsmtp_hostnme = mail.example\n', ('smtp_hostnme', 'unknown key')),
    ('smtp_hostname = mail.example\n', ('malformed',)),
])
def test_broken_config_exits_78_with_one_line(tmp_path: Path, content: str, fragments: tuple) -> None:
    config = tmp_path / 'broken.conf'
    config.write_text(content)
    proc = run_tool(sendmail('-C', str(config), '-v', 'alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 78
    assert_one_line_error(proc.stderr, str(config), *fragments)


def test_broken_aliases_file_exits_78(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, aliases='root admin@example.org\n')
    proc = run_tool(sendmail('-C', str(config), 'root'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 78
    assert_one_line_error(proc.stderr, str(tmp_path / 'aliases'), 'line 1')
    assert smtp_server.commands == []


# --- queue modes ----------------------------------------------------------------------------------


def queue_one(smtp_server: SMTPTestServer, tmp_path: Path) -> Path:
    """Queue a message by letting the smarthost defer it; returns the config path."""
    config = write_config(tmp_path, smtp_server, queue_dir=str(tmp_path / 'queue'), **{'from': 'me@site.example'})
    smtp_server.set_reply('MAIL', 451, '4.3.0 later', times=1)
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return config


def test_bp_prints_the_same_listing_as_mq_queue_list(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = queue_one(smtp_server, tmp_path)
    [queue_id] = os.listdir(tmp_path / 'queue' / 'new')
    listing = run_tool(sendmail('-C', str(config), '-bp'), home=tmp_path)
    reference = run_tool([script('mq-queue'), '-C', str(config), 'list'], home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    # the two runs are moments apart: ages and countdowns (like "3s", "4m59s") may tick between them
    ticking = re.compile(rb'\b(\d+[smhd])+\b')
    assert ticking.sub(b'#', listing.stdout) == ticking.sub(b'#', reference.stdout)
    assert queue_id[:8] in listing.stdout.decode()


def test_bp_without_queue_dir(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-bp'), home=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, b'no queue_dir configured: messages are never queued\n')


def test_q_runs_the_queue_once(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = queue_one(smtp_server, tmp_path)
    assert smtp_server.received == []
    proc = run_tool(sendmail('-C', str(config), '-q'), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('me@site.example', ['alice@example.org'])
    assert os.listdir(tmp_path / 'queue' / 'new') == []


def test_bp_lists_the_queue_at_queue_url(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = queue_one(smtp_server, tmp_path)
    [queue_id] = os.listdir(tmp_path / 'queue' / 'new')
    # queue_url wins over queue_dir, as for every other tool: queue_dir now names a queue that is not there
    url_config = write_config(tmp_path, smtp_server, name='url.conf', queue_url=f'maildir://{tmp_path / "queue"}',
                              queue_dir=str(tmp_path / 'elsewhere'))
    listing = run_tool(sendmail('-C', str(url_config), '-bp'), home=tmp_path)
    reference = run_tool([script('mq-queue'), '-C', str(config), 'list'], home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert queue_id[:8] in listing.stdout.decode()
    ticking = re.compile(rb'\b(\d+[smhd])+\b')
    assert ticking.sub(b'#', listing.stdout) == ticking.sub(b'#', reference.stdout)


# -q is mq-run: the same queue problem gives the same exit code and the same message.

# setpriv rather than a preexec_fn with os.setuid(): the latter cannot exec the venv's interpreter here.
AS_NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups']


def _without_prog(stderr: bytes, prog: str) -> str:
    text = stderr.decode()
    assert text.startswith(f'{prog}: '), text
    return text[len(prog) + 2:]


def assert_q_behaves_like_mq_run(config: Path, home: Path, as_user: Sequence[str] = (), *,
                                 cwd: Optional[Path] = None) -> Tuple[int, str]:
    run = run_tool([*as_user, script('mq-run'), '-C', str(config)], home=home, cwd=cwd)
    q = run_tool([*as_user, *sendmail('-C', str(config), '-q')], home=home, cwd=cwd)
    assert q.returncode == run.returncode, (q.stderr, run.stderr)
    assert _without_prog(q.stderr, 'mq-sendmail') == _without_prog(run.stderr, 'mq-run')
    assert 'Traceback' not in q.stderr.decode() and q.stderr.count(b'\n') == 1
    return q.returncode, _without_prog(q.stderr, 'mq-sendmail')


@pytest.mark.parametrize('where', ['queue_dir', 'below'])
def test_q_and_mq_run_agree_on_a_queue_dir_that_is_a_file(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / 'file'
    blocker.write_text('not a queue')
    queue_dir = blocker if where == 'queue_dir' else blocker / 'q'
    config = write_config(tmp_path, None, queue_dir=str(queue_dir))
    code, message = assert_q_behaves_like_mq_run(config, tmp_path)
    assert code == 75 and message.count(str(queue_dir)) == 1, message  # named once
    assert blocker.read_text() == 'not a queue'


def test_q_and_mq_run_agree_on_a_bad_queue_url(tmp_path: Path) -> None:
    config = write_config(tmp_path, None, queue_url='nosuchstore://x')
    code, message = assert_q_behaves_like_mq_run(config, tmp_path)
    assert code == 78 and 'queue_url' in message, message


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which('setpriv'), reason='needs root and setpriv')
def test_q_and_mq_run_agree_on_a_queue_owned_by_another_user(smtp_server: SMTPTestServer) -> None:
    base = Path(tempfile.mkdtemp(prefix='mq-sendmail-q-'))  # tmp_path is 0700 root: nobody could not reach it
    try:
        os.chmod(base, 0o755)
        queue_dir = base / 'queue'
        MaildirQueue(str(queue_dir)).enqueue(MESSAGE, 'me@site.example', ['alice@example.org'])
        for path in [queue_dir, *queue_dir.iterdir()]:
            os.chmod(path, 0o755)  # nobody finds the queue but cannot write to it
        before = {state: sorted(os.listdir(queue_dir / state)) for state in ('new', 'cur', 'failed')}
        config = write_config(base, smtp_server, queue_dir=str(queue_dir))
        config.chmod(0o644)
        code, message = assert_q_behaves_like_mq_run(config, base, AS_NOBODY, cwd=base)
        assert code == 75
        assert message == f'queue {queue_dir}: cannot write to new/ ({os.strerror(errno.EACCES)}); ' \
                          'nothing can be delivered\n'
        assert {state: sorted(os.listdir(queue_dir / state)) for state in ('new', 'cur', 'failed')} == before
        assert smtp_server.connection_count == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_q_reports_dead_letters_like_mq_run(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    queue_dir = tmp_path / 'queue'
    MaildirQueue(str(queue_dir)).enqueue(MESSAGE, 'me@site.example', ['gone@example.org'])
    smtp_server.set_recipient_reply('gone@example.org', 550, 'no such user')
    config = write_config(tmp_path, smtp_server, queue_dir=str(queue_dir))
    proc = run_tool(sendmail('-C', str(config), '-q'), home=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        0, b'mq-sendmail: 1 message(s) moved to failed/ (see: mq-queue list --state failed)\n')


def test_bv_shows_alias_resolution_without_sending(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-bv', 'team', 'root'), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        'team... deliverable: alice@example.org, bob@example.org',
        'root... deliverable: admin@example.org',
    ]
    assert smtp_server.commands == []


def test_bv_gives_a_verdict_for_every_name(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-bv', 'nosuchname', 'team'), home=tmp_path)
    assert proc.returncode == 67
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith('nosuchname... not deliverable: ')
    assert lines[1] == 'team... deliverable: alice@example.org, bob@example.org'


def test_newaliases_checks_the_aliases_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    link = tmp_path / 'newaliases'
    link.symlink_to(script('mq-sendmail'))
    proc = run_tool([str(link), '-C', str(config)], home=tmp_path)
    assert (proc.returncode, proc.stdout.decode()) == (0, f'{tmp_path / "aliases"}: 3 aliases\n')


# --- start-up: mq-sendmail runs once per cron mail --------------------------------------------------

# Modules one plain delivery must not import (docs/benchmarks.md, "mq-sendmail start-up"): the queue
# stores and the runner (a message is queued only after a temporary failure), the aliases parser (only
# full addresses here), the email package, TLS when the server offers none, and the standard library's
# heavier modules that the SMTP client, the plugins and the token handling need only sometimes.
NOT_ON_THE_PLAIN_PATH = (
    'email', 'smtplib', 'ssl', 'dataclasses', 'inspect', 'json', 'hashlib', 'asyncio', 'concurrent',
    'importlib.metadata', 'schwarz.mailqueue.runner', 'schwarz.mailqueue.aliases',
    'schwarz.mailqueue.queue.contract', 'schwarz.mailqueue.queue.maildir', 'schwarz.mailqueue.queue.memory',
    'schwarz.mailqueue.queue.postgres', 'schwarz.mailqueue.queue.locations', 'schwarz.mailqueue.queue.transport',
    'schwarz.mailqueue.queue.format', 'schwarz.mailqueue.cli.mq_queue', 'schwarz.mailqueue.cli.mq_run',
    'schwarz.mailqueue.cli.sendmail_smtp',
)


def test_one_plain_delivery_imports_nothing_it_does_not_need(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, **{'from': 'cron@site.example'})
    proc = run_tool([sys.executable, '-X', 'importtime', script('mq-sendmail'), '-C', str(config), '-FCronDaemon',
                     '-i', '-oem', 'root@example.org'], input=MESSAGE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(smtp_server.received) == 1
    imported = {line.rpartition('|')[2].strip() for line in proc.stderr.decode().splitlines()
                if line.startswith('import time:')}
    unwanted = sorted(name for name in imported
                      if any(name == bad or name.startswith(bad + '.') for bad in NOT_ON_THE_PLAIN_PATH))
    assert not unwanted, f'imported for one plain mq-sendmail delivery (import them where they are needed): {unwanted}'


def test_message_without_final_newline_is_completed(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), 'alice@example.org'), input=b'Subject: x\n\nno newline',
                    home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert smtp_server.received[0].data == b'Subject: x\r\n\r\nno newline\r\n'


@pytest.mark.parametrize('to', [b'John Smith', b'foo@bar.example baz', b'a@example.com (comment) extra'])
def test_t_with_a_malformed_to_header_is_refused(smtp_server: SMTPTestServer, tmp_path: Path, to: bytes) -> None:
    config = write_config(tmp_path, smtp_server, default_domain='example.org')
    proc = run_tool(sendmail('-C', str(config), '-t', '-i'), input=b'To: ' + to + b'\nSubject: x\n\nb\n',
                    home=tmp_path)
    assert proc.returncode == 65, proc.stderr
    assert b'malformed address' in proc.stderr and smtp_server.received == []


# --- one address parser for arguments and headers ------------------------------------------------

MALFORMED_RECIPIENTS = ['bob"@partner.example', 'a@b@c', 'a@', '@', '@example.org', 'a@b..c', 'a@[1.2.3.4',
                        'al\tice@example.org', 'alice@example.org\t']


def test_a_quote_in_a_recipient_never_turns_it_into_a_local_name(smtp_server: SMTPTestServer,
                                                                  tmp_path: Path) -> None:
    # (it used to go to bob@<our domain>, exit 0)
    config = write_config(tmp_path, smtp_server, default_domain='site.example')
    proc = run_tool(sendmail('-C', str(config), 'bob"@partner.example'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 64
    assert_one_line_error(proc.stderr, 'invalid recipient', 'bob"@partner.example', 'double quote')
    assert smtp_server.commands == []


@pytest.mark.parametrize('recipient', MALFORMED_RECIPIENTS)
def test_malformed_recipient_arguments_exit_64_and_send_nothing(smtp_server: SMTPTestServer, tmp_path: Path,
                                                                recipient: str) -> None:
    config = write_config(tmp_path, smtp_server, default_domain='site.example')
    proc = run_tool(sendmail('-C', str(config), '-i', '--', 'alice@example.org', recipient), input=MESSAGE,
                    home=tmp_path)
    assert proc.returncode == 64
    assert_one_line_error(proc.stderr, 'invalid recipient', 'malformed address')
    assert smtp_server.commands == []


# (a TAB after an address is folding white space in a header, not part of the address)
@pytest.mark.parametrize('recipient', [r for r in MALFORMED_RECIPIENTS if not r.endswith('\t')])
def test_the_same_addresses_in_headers_with_t_exit_65_and_send_nothing(smtp_server: SMTPTestServer,
                                                                       tmp_path: Path, recipient: str) -> None:
    config = write_config(tmp_path, smtp_server, default_domain='site.example')
    message = b'To: alice@example.org, ' + recipient.encode() + b'\nSubject: x\n\nbody\n'
    proc = run_tool(sendmail('-C', str(config), '-t', '-i'), input=message, home=tmp_path)
    assert proc.returncode == 65
    assert_one_line_error(proc.stderr, 'malformed address')
    assert smtp_server.commands == []


def test_recipient_arguments_in_header_syntax(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # mutt and mailx pass display names and comma lists; quoted local parts stay quoted on the wire
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-i', '--', 'Alice <alice@example.org>, "Smith, J" <j@example.org>',
                             '"john smith"@example.org', 'team'), input=MESSAGE, home=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, b'')
    [received] = smtp_server.received
    assert received.rcpt_tos == ['alice@example.org', 'j@example.org', '"john smith"@example.org',
                                 'bob@example.org']


@pytest.mark.parametrize('sender', ['bob"@partner.example', 'a@b@c', '@example.org', 'a\t@example.org', 'A <a@x'])
def test_malformed_sender_exits_64_and_sends_nothing(smtp_server: SMTPTestServer, tmp_path: Path,
                                                     sender: str) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(sendmail('-C', str(config), '-f', sender, 'alice@example.org'), input=MESSAGE, home=tmp_path)
    assert proc.returncode == 64
    assert_one_line_error(proc.stderr, 'invalid sender (-f/-r)')
    assert smtp_server.commands == []
