"""What an operator can type, and what the tools must make of it (SPEC §10), found by trying.

Every test runs the installed tools as subprocesses (``run_tool``) and states what
SPEC.md / docs/cli.md / docs/queue-admin.md / docs/postgresql.md promise: one clear line and a
documented exit code, no secret shown, nothing sent where nobody wrote it.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Sequence, Union

import pytest

from schwarz.mailqueue import enqueue_message
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import queue_files, run_tool, script, write_config

Arg = Union[str, bytes]
SECRET = 's3cretpw'


def tool(name: str, *args: Arg) -> Sequence[Arg]:
    return [script(name), *args]


def assert_clean_error(stderr: bytes, prog: str) -> None:
    """One line, prefixed with the tool's name, no traceback, no internal error (exit 70)."""
    text = stderr.decode('utf-8', 'replace')
    assert text.count('\n') == 1, text
    assert text.startswith(f'{prog}: '), text
    assert 'Traceback' not in text
    assert 'internal error' not in text, text


def queue_one(queue_dir: Path, sender: str = 's@example.org', recipient: str = 'a@example.org') -> None:
    enqueue_message(b'Subject: x\n\nhi\n', str(queue_dir), sender=sender, recipients=[recipient])


# --- header block: "Name :" (white space before the colon) ----------------------------------


def test_sendmail_bcc_with_space_before_colon_is_not_transmitted(smtp_server: SMTPTestServer,
                                                                 tmp_path: Path) -> None:
    # sendmail's isheader() and Postfix's is_header() accept white space before the colon
    # (RFC 5322 obs-optional). mq-sendmail ends the header block there instead, inserts an
    # empty line, and the Bcc line goes out as body text: the blind copy is disclosed.
    config = write_config(tmp_path, smtp_server)
    message = b'Subject: report\nBcc : secret@example.org\n\nhi\n'
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '-i', 'a@example.org'), input=message, home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert b'secret@example.org' not in received.msg_bytes


def test_sendmail_t_reads_to_header_with_space_before_colon(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # "To : a@example.org" is a To: header for sendmail and Postfix; mq-sendmail -t finds
    # no recipient at all (exit 65) because the whole header block became body.
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '-t', '-i'),
                    input=b'To : a@example.org\nSubject: x\n\nhi\n', home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert received.rcpt_tos == ['a@example.org']


# --- non-UTF-8 bytes in arguments: exit 70 ---------------------------------------------------


def test_mq_mail_subject_with_non_utf8_bytes_is_no_internal_error(smtp_server: SMTPTestServer,
                                                                  tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(tool('mq-mail', '-C', str(config), '-s', b'caf\xe9', 'a@example.org'), input=b'body\n',
                    home=tmp_path)

    assert proc.returncode in (0, 64), proc.stderr
    if proc.returncode:
        assert_clean_error(proc.stderr, 'mq-mail')


def test_sendmail_full_name_with_non_utf8_bytes_is_no_internal_error(smtp_server: SMTPTestServer,
                                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_server, add_from_header='yes')
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '-F', b'J\xf6rg', '-f', 's@example.org',
                         'a@example.org'), input=b'Subject: x\n\nhi\n', home=tmp_path)

    assert proc.returncode in (0, 64), proc.stderr
    if proc.returncode:
        assert_clean_error(proc.stderr, 'mq-sendmail')


def test_mq_queue_hold_reason_with_non_utf8_bytes_is_no_internal_error(tmp_path: Path) -> None:
    queue_dir = tmp_path / 'queue'
    queue_one(queue_dir)
    proc = run_tool(tool('mq-queue', '--queue-dir', str(queue_dir), 'hold', '--all', '--reason', b'caf\xe9'),
                    home=tmp_path)

    assert proc.returncode in (0, 64), proc.stderr
    if proc.returncode:
        assert_clean_error(proc.stderr, 'mq-queue')
    # the crash also leaves the message claimed in cur/, where hold/release --all no longer see it
    assert queue_files(queue_dir)['cur'] == []


# --- passwords in queue locations ------------------------------------------------------------


def test_queue_dir_holding_a_postgres_uri_does_not_print_the_password(tmp_path: Path) -> None:
    config = write_config(tmp_path, queue_dir=f'postgresql://mq:{SECRET}@127.0.0.1:1/mail')
    for argv in (tool('mq-sendmail', '-C', str(config), 'a@example.org'), tool('mq-queue', '-C', str(config)),
                 tool('mq-run', '-C', str(config))):
        proc = run_tool(argv, input=b'Subject: x\n\nhi\n', home=tmp_path)
        assert proc.returncode == 78, proc.stderr
        assert SECRET.encode() not in proc.stderr + proc.stdout, proc.stderr


def test_postgres_password_containing_at_sign_is_not_partly_shown(tmp_path: Path) -> None:
    # A password typed with a raw "@" (u:s3c@retpw@host): the redaction hides only up to the
    # first "@" and the rest of the password is printed twice (location and libpq's host).
    location = 'postgresql://mq:s3c@retpw@127.0.0.1:1/mail'
    proc = run_tool(tool('mq-queue', '--queue-dir', location, 'list'), home=tmp_path)

    assert proc.returncode != 0
    assert b'retpw' not in proc.stderr, proc.stderr


@pytest.mark.parametrize('password, refused', [('Xq7?Zk9@Wv3', True), ('Xq7@Zk9@Wv3', True),
                                               ('Xq7@Zk9?Wv3', False)])
def test_a_raw_at_sign_in_a_password_shows_no_part_of_it_wherever_a_question_mark_stands(
        tmp_path: Path, password: str, refused: bool) -> None:
    # libpq ends the user info at the first "@" whether or not a "?" comes before it: with
    # "Xq7?Zk9@Wv3" the host became "Wv3@127.0.0.1", printed in the error ("failed to resolve
    # host"). With "Xq7@Zk9?Wv3" libpq reads a host "Zk9" and a query: its error, the location masked.
    proc = run_tool(tool('mq-queue', '--queue-dir', f'postgresql://mq:{password}@127.0.0.1:1/mail', 'stats'),
                    home=tmp_path)
    assert proc.returncode == 64, proc.stderr
    assert not any(part.encode() in proc.stderr for part in ('Xq7', 'Zk9', 'Wv3')), proc.stderr
    assert (b'%40' in proc.stderr) == refused, proc.stderr


def test_sendmail_queue_url_with_bad_libpq_parameter_prints_no_traceback(tmp_path: Path) -> None:
    # the SMTP server is down, so the message has to be queued; the queue_url has a parameter
    # libpq rejects. Without -v: a full traceback on stderr ("unexpected error in the
    # postgresql transport") and "internal error in the postgresql transport: ValueError".
    config = write_config(tmp_path, queue_url=f'postgresql://mq:{SECRET}@127.0.0.1:1/mail?sslmod=require')
    proc = run_tool(tool('mq-sendmail', '-C', str(config), 'a@example.org'), input=b'Subject: x\n\nhi\n',
                    home=tmp_path)

    assert proc.returncode in (75, 78), proc.stderr
    assert_clean_error(proc.stderr, 'mq-sendmail')


def test_mq_queue_bad_queue_url_in_config_file_is_exit_78(tmp_path: Path) -> None:
    # docs/postgresql.md: a location libpq cannot parse is "exit 64 on the command line, 78 in
    # the config file". mq-run and mq-sendmail -q say 78; mq-queue and mq-sendmail -bp say 64.
    config = write_config(tmp_path, queue_url='postgresql://mq@127.0.0.1:1/mail?sslmod=require')
    for argv in (tool('mq-queue', '-C', str(config), 'list'), tool('mq-sendmail', '-C', str(config), '-bp')):
        proc = run_tool(argv, home=tmp_path)
        assert proc.returncode == 78, (argv, proc.returncode, proc.stderr)


# --- one-line output -------------------------------------------------------------------------


def test_mq_run_foreign_file_name_with_line_break_is_reported_on_one_line(smtp_server: SMTPTestServer,
                                                                          tmp_path: Path) -> None:
    queue_dir = tmp_path / 'queue'
    MaildirQueue(str(queue_dir))
    (queue_dir / 'new' / 'bad\nmq-run: forged line').write_bytes(b'x')
    config = write_config(tmp_path, smtp_server, queue_dir=str(queue_dir))
    proc = run_tool(tool('mq-run', '-C', str(config)), home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert not any(line == 'mq-run: forged line moved to failed/: no X-Queue-Meta-End line '
                           '(truncated or not a queue file)' for line in lines), lines
    assert all(line.startswith('mq-run: ') for line in lines), lines
    assert len([line for line in lines if 'moved to failed/:' in line]) == 1, lines


def test_mq_queue_plain_listing_keeps_one_field_per_column_for_quoted_local_parts(tmp_path: Path) -> None:
    # queue-admin.md: piped, the listing has whitespace-separated columns ("sender and
    # recipients never contain spaces"), so awk works. A quoted local part with a space
    # (accepted everywhere: '"john smith"@example.org') splits the FROM column in two.
    queue_dir = tmp_path / 'queue'
    queue_one(queue_dir, sender='"john smith"@example.org', recipient='"jane doe"@example.org')
    proc = run_tool(tool('mq-queue', '--queue-dir', str(queue_dir), 'list'), home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.decode().splitlines()
    fields = line.split()
    # ID STATE AGE TRIES NEXT SIZE FROM TO LAST-ERROR
    assert len(fields) == 9, fields
    assert 'john' in fields[6] and 'smith' in fields[6], fields


def test_mq_queue_show_dash_reads_ids_from_stdin(tmp_path: Path) -> None:
    # queue-admin.md: "`-` instead of ids reads ids from stdin, one per line" (hold/release/
    # retry/delete do; show looks for a message called "-": exit 66).
    queue_dir = tmp_path / 'queue'
    queue_one(queue_dir)
    [msg_id] = queue_files(queue_dir)['new']
    proc = run_tool(tool('mq-queue', '--queue-dir', str(queue_dir), 'show', '-'), input=f'{msg_id}\n'.encode(),
                    home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert msg_id.encode() in proc.stdout


# --- addresses: the same rules everywhere ----------------------------------------------------


def test_aliases_target_with_non_utf8_bytes_is_not_sent_to_another_address(smtp_server: SMTPTestServer,
                                                                           tmp_path: Path) -> None:
    # On the command line b'\xff@example.org' is refused ("is not valid UTF-8", exit 64). As an
    # alias target the file is decoded as Latin-1 and the mail goes to 'ÿ@example.org' (UTF-8
    # c3 bf), a mailbox nobody wrote down.
    config = write_config(tmp_path, smtp_server, aliases=None)
    aliases = tmp_path / 'aliases'
    aliases.write_bytes(b'# caf\xe9 team\nops: \xff@example.org\n')
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '--aliases', str(aliases), 'ops'),
                    input=b'Subject: x\n\nhi\n', home=tmp_path)

    assert ['\xff@example.org'] not in [m.rcpt_tos for m in smtp_server.received]
    assert proc.returncode in (64, 65, 78), proc.stderr


def test_mq_send_test_takes_addresses_like_mq_mail_and_mq_sendmail(smtp_server: SMTPTestServer,
                                                                   tmp_path: Path) -> None:
    # 'Ops <ops@example.org>' is accepted by mq-sendmail (argument and -f), mq-mail (-r and
    # recipients); mq-send-test --to/--from refuse it (exit 64, "white space in the local part").
    config = write_config(tmp_path, smtp_server)
    proc = run_tool(tool('mq-send-test', '-C', str(config), '--from', 'Shop <shop@example.org>',
                         '--to', 'Ops <ops@example.org>'), home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == ('shop@example.org', ['ops@example.org'])


def test_sendmail_added_from_for_null_sender_is_qualified(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    # cli.md: From: is added from the envelope sender, and bare local names in From: are
    # qualified with default_domain. With -f '<>' the added field is "From: MAILER-DAEMON",
    # an address without a domain (invalid RFC 5322 addr-spec).
    config = write_config(tmp_path, smtp_server, add_from_header='yes', qualify_addresses='yes',
                          default_domain='example.net')
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '-f', '<>', 'a@example.org'),
                    input=b'Subject: bounce\n\nhi\n', home=tmp_path)

    assert proc.returncode == 0, proc.stderr
    [received] = smtp_server.received
    assert b'From: MAILER-DAEMON@example.net\r\n' in received.msg_bytes, received.msg_bytes


# --- unbounded input -------------------------------------------------------------------------


def _limit_memory() -> None:
    # Without a limit the read below takes all memory of the machine (the OOM killer ended it).
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_sendmail_aliases_file_that_never_ends_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, aliases=None)
    proc = run_tool(tool('mq-sendmail', '-C', str(config), '--aliases', '/dev/zero', '-bi'), home=tmp_path,
                    preexec_fn=_limit_memory, timeout=60)

    assert proc.returncode == 78, proc.stderr
    assert_clean_error(proc.stderr, 'mq-sendmail')
