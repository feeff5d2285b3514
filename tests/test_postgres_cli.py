"""The command-line tools on a PostgreSQL queue: init, the missing-schema error (78), submit, deliver."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from _pg import fresh_location
from schwarz.mailqueue.testutils import SMTPTestServer

from helpers import run, script, write_config

MSG = b'Subject: via postgres\r\n\r\nbody\r\n'


def test_tools_on_a_postgres_queue(tmp_path: Path) -> None:
    location = fresh_location(init=False)
    with SMTPTestServer() as server:
        config = write_config(tmp_path / 'mq.conf', server, queue_url=location)
        # no schema yet: every tool says what to run, as a configuration error
        for argv in ([script('mq-run'), '-C', config], [script('mq-queue'), '-C', config, 'list']):
            proc = run(argv)
            assert proc.returncode == 78, proc.stderr
            assert b'mq-queue init' in proc.stderr and b'Traceback' not in proc.stderr
        # the submitting tools meet the missing schema only when the smarthost says "later"
        server.set_reply('MAIL', 451)
        for argv in ([script('mq-sendmail'), '-C', config, 'rcpt@example.org'],
                     [script('mq-mail'), '-C', config, '-s', 'x', 'rcpt@example.org']):
            proc = run(argv, input=MSG)
            assert proc.returncode == 78, proc.stderr
            assert b'mq-queue init' in proc.stderr and b'Traceback' not in proc.stderr
        server.clear_reply('MAIL')
        first = run([script('mq-queue'), '-C', config, 'init'])
        again = run([script('mq-queue'), '-C', config, 'init'])
        assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
        assert b'created' in first.stdout and b'current' in again.stdout

        server.set_reply('MAIL', 451)  # the smarthost says "later": mq-sendmail queues in PostgreSQL
        proc = run([script('mq-sendmail'), '-C', config, 'rcpt@example.org'], input=MSG)
        assert proc.returncode == 0, proc.stderr
        listing = run([script('mq-queue'), '-C', config, 'list'])
        assert b'rcpt@example.org' in listing.stdout and server.received == []

        server.clear_reply('MAIL')
        proc = run([script('mq-run'), '-C', config])
        assert proc.returncode == 0, proc.stderr
        [received] = server.received
        assert received.rcpt_tos == ['rcpt@example.org'] and received.data.endswith(b'body\r\n')
        assert b'rcpt@example.org' not in run([script('mq-queue'), '-C', config, 'list']).stdout


@pytest.mark.parametrize('location', [
    'postgresql://mq:S3cret%PW@127.0.0.1/test',  # a bare % in a password: libpq quotes the token
    'postgresql://mq:S3cretPW@[::1/test',  # libpq quotes the whole URI
    'postgresql://mq@127.0.0.1/test?sslmode=disable&PASSWORD=S3cretPW',
    'postgresql://mq:pa/S3cretPW@127.0.0.1/test?mq_schema=x&mq_schema=y',
    'host=127.0.0.1 dbname=test user=mq password=S3cretPW',  # libpq's key=value form: not a directory
    "host=127.0.0.1 password='S3cretPW x'",
    'postgresq://mq:S3cretPW@127.0.0.1/test',
])
def test_a_mistyped_location_is_a_usage_error_that_hides_the_password(location: str, tmp_path: Path) -> None:
    proc = subprocess.run([script('mq-queue'), '--queue-dir', location, 'list'], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 64, proc.stderr
    assert 'S3cret' not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and '\\n' not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no directory made of it
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nqueue_url = {location}\n')
    proc = subprocess.run([script('mq-run'), '-C', str(config)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert 'S3cret' not in proc.stdout + proc.stderr


def test_what_only_an_operator_can_fix_exits_78_and_a_daemon_does_not_wait_for_it(tmp_path: Path) -> None:
    import psycopg

    from _pg import scratch_role, with_params
    from schwarz.mailqueue.queue.pg_location import split_location

    location = fresh_location()
    cases = {'a connection setting libpq rejects': with_params(location, sslmode='bogus'),
             'an unknown service': with_params(location, service='mq_no_such_service'),
             'a number that is none (libpq)': with_params(location, keepalives_idle='abc'),
             'a number that is none (psycopg)': with_params(location, connect_timeout='abc')}
    newer = fresh_location()
    with psycopg.connect(split_location(newer)[0], autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{split_location(newer)[1]["schema"]}".schema_version (version) VALUES (99)')
    cases['a schema newer than this code'] = newer
    with scratch_role(location, 'mq_nopriv', 'SELECT') as role:
        cases['a role that may not claim'] = with_params(location, user=role)
        for what, where in cases.items():
            # (the role may read: only init and claims are refused it)
            for command in ('init',) if 'role' in what else ('init', 'list'):
                proc = subprocess.run([script('mq-queue'), '--queue-dir', where, command],
                                      capture_output=True, text=True, timeout=60)
                assert proc.returncode == 78, (what, command, proc.stderr)
            config = tmp_path / 'mq.conf'
            config.write_text(f'[mqrunner]\nsmtp_hostname = 127.0.0.1\nsmtp_port = 9\nqueue_url = {where}\n')
            proc = subprocess.run([script('mq-run'), '-C', str(config), '--daemon'], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 78, (what, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize('location', [
    'postgresql://mq:pa?S3cret@127.0.0.1:1/postgres',  # libpq: the password is "pa?S3cret"
    'postgresql://mq@127.0.0.1:1/postgres?sslpassword=S3cret',
    'postgresql://mq@127.0.0.1:1/postgres?passwor%64=S3cret',  # libpq decodes the key
])
def test_an_unreachable_location_never_shows_its_secrets(location: str) -> None:
    proc = subprocess.run([script('mq-queue'), '--queue-dir', location, 'stats'], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert 'S3cret' not in proc.stdout + proc.stderr and 'cannot connect' in proc.stderr, proc.stderr


def test_a_space_in_a_password_is_never_shown() -> None:
    # newer libpq refuses the URI and quotes the value in the middle of its message (64); older
    # libpq (other psycopg wheels) takes it and the connection fails (75)
    proc = subprocess.run([script('mq-queue'), '--queue-dir', 'postgresql://mq:my S3cret@127.0.0.1:1/test', 'stats'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (64, 75), proc.stderr
    assert 'S3cret' not in proc.stdout + proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_locations_shown_keep_what_is_not_secret() -> None:
    from schwarz.mailqueue.queue.locations import describe_location

    assert describe_location('postgresql://mq:pw@db:5432/ma@il') == 'postgresql://mq:***@db:5432/ma@il'
    assert describe_location('postgresql://db:5432/ma@il?sslmode=require') == \
        'postgresql://db:5432/ma@il?sslmode=require'
    assert describe_location('postgresql://[::1]:5432,h2:5433/db') == 'postgresql://[::1]:5432,h2:5433/db'
    assert describe_location("host=db password='a b' dbname=x") == 'host=db password=*** dbname=x'
