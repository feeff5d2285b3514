"""Accounts chosen by the envelope sender (issue 13): ``[account:NAME]`` sections with ``match_from``;
the runner keeps connections per account, and the queue records which account a message belongs to."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from schwarz.mailqueue.accounts import ACCOUNT_META
from schwarz.mailqueue.bootstrap import build_runner, build_smtp_transport, build_transports
from schwarz.mailqueue.config import ConfigError, load_config, parse_config_text
from schwarz.mailqueue.handler import MessageHandler
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.smtp.transport import AccountRouter
from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, script

MSG = b'Subject: hi\r\n\r\nbody\r\n'


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def servers() -> Iterator[Tuple[SMTPTestServer, SMTPTestServer, SMTPTestServer]]:
    with SMTPTestServer() as main, SMTPTestServer(auth={'shop': 'shop-pw'}) as shop, \
            SMTPTestServer(auth={'boss': 'boss-pw'}) as boss:
        yield main, shop, boss


def config_text(main_port: int, shop_port: int, boss_port: int, extra: str = '') -> str:
    return f"""[mqrunner]
smtp_hostname = 127.0.0.1:{main_port}
smtp_tls = none
smtp_timeout = 3
{extra}
[account:shop]
match_from = @shop.example, @example.org
smtp_hostname = 127.0.0.1
smtp_port = {shop_port}
smtp_username = shop
smtp_password = shop-pw

[account:boss]
match_from = boss@example.org
smtp_hostname = 127.0.0.1:{boss_port}
smtp_username = boss
smtp_password = boss-pw
"""


def test_the_envelope_sender_picks_the_account(servers: Tuple[SMTPTestServer, ...]) -> None:
    main, shop, boss = servers
    settings = parse_config_text(config_text(main.port, shop.port, boss.port), 'mq.conf')
    router = build_smtp_transport(settings)
    assert isinstance(router, AccountRouter)
    expected = {'x@shop.example': shop, 'X@SHOP.Example': shop, 'clerk@example.org': shop,
                'boss@example.org': boss, 'BOSS@example.org': boss,  # an exact address beats its domain
                'x@sub.shop.example': main, 'someone@elsewhere.example': main, '': main}
    with router:
        for sender, server in expected.items():
            assert router.send(sender, ['r@example.net'], MSG), sender
            assert server.received[-1].mail_from == (sender or '<>')
    assert [m.mail_from for m in boss.received] == ['boss@example.org', 'BOSS@example.org']
    assert shop.auth_logins and set(shop.auth_logins) == {'shop'} and set(boss.auth_logins) == {'boss'}
    assert all(m.auth_login is None for m in main.received)  # the main settings have no password


def test_an_account_inherits_tls_and_timeout_but_never_credentials() -> None:
    settings = parse_config_text("""[mqrunner]
smtp_hostname = main.example
smtp_username = main-user
smtp_password = main-secret
smtp_tls = starttls
smtp_timeout = 7

[account:other]
match_from = @other.example
smtp_hostname = other.example:2525
""", 'mq.conf')
    [other] = settings.accounts
    assert (other.smtp_tls, other.smtp_timeout) == ('starttls', 7.0)
    assert other.smtp_username is None and other.smtp_password is None
    router = build_smtp_transport(settings)
    assert isinstance(router, AccountRouter)  # accounts configured
    mailer = router.mailer_for('x@other.example')
    assert mailer.hosts == [('other.example', 2525)] and mailer.username is None and mailer._password is None
    assert mailer.name == 'other'


@pytest.mark.parametrize('section, message', [
    ('[account:a]\nsmtp_hostname = h\n', r'\[account:a\] match_from: not set'),
    ('[account:a]\nmatch_from = @a.example\n', r'\[account:a\] smtp_hostname: not set'),
    ('[account:a]\nmatch_from = @a.example\nsmtp_hostname = h\nqueue_dir = /q\n', 'only smtp_'),
    ('[account:a]\nmatch_from = @a.example\nsmtp_hostname = h\nsmtp_nonsense = 1\n', 'unknown key'),
    ('[account:a]\nmatch_from = not an address\nsmtp_hostname = h\n', 'match_from: invalid value'),
    ('[account:a b]\nmatch_from = @a.example\nsmtp_hostname = h\n', 'account name'),
    ('[account:a]\nmatch_from = @a.example\nsmtp_hostname = h\nsmtp_port = 0\n', r'\[account:a\] smtp_port'),
    ('[account:a]\nmatch_from = @a.example\nsmtp_hostname = h\n[account:b]\nmatch_from = x@A.example, @a.example\n'
     'smtp_hostname = h\n', 'matched by account a already'),
    ('[account:a]\nmatch_from = @a.example\nsmtp_hostname = h\nsmtp_auth = xoauth2\n', 'needs a token'),
    ('[other]\nx = 1\n', 'unknown section'),
])
def test_account_mistakes_are_one_clear_line(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_text('[mqrunner]\nsmtp_hostname = main.example\n' + section, 'mq.conf')


def test_account_secrets_may_live_in_the_included_file(tmp_path: Path) -> None:
    secret = tmp_path / 'secret.conf'
    secret.write_text('[mqrunner]\nsmtp_username = u\nsmtp_password = p\n\n'
                      '[account:shop]\nsmtp_username = shop\nsmtp_password = shop-pw\n')
    secret.chmod(0o600)
    main = tmp_path / 'mq.conf'
    main.write_text(f'[mqrunner]\nsmtp_hostname = main.example\ninclude = {secret}\n\n'
                    '[account:shop]\nmatch_from = @shop.example\nsmtp_hostname = shop.example\n')
    settings = load_config(str(main))
    [shop] = settings.accounts
    assert (shop.smtp_hostname, shop.smtp_username, shop.smtp_password) == ('shop.example', 'shop', 'shop-pw')
    assert settings.smtp_password == 'p'
    assert 'shop-pw' not in repr(settings)


def test_a_queued_message_records_its_account(servers: Tuple[SMTPTestServer, ...], tmp_path: Path) -> None:
    main, shop, boss = servers
    queue_dir = tmp_path / 'queue'
    text = config_text(main.port, closed_port(), boss.port, extra=f'queue_dir = {queue_dir}')
    handler = MessageHandler(build_transports(parse_config_text(text, 'mq.conf')))
    result = handler.send_message(MSG, sender='x@shop.example', recipients=['r@example.net'])
    assert result is not None and result.queued
    main.stop()
    result = handler.send_message(MSG, sender='other@elsewhere.example', recipients=['r@example.net'])
    assert result is not None and result.queued
    handler.close()
    metas = [e.meta for e in MaildirQueue(str(queue_dir)).entries() if e.meta is not None]
    assert len(metas) == 2  # both readable
    accounts = {meta.from_addr: meta.extra.get(ACCOUNT_META) for meta in metas}
    assert accounts == {'x@shop.example': 'shop', 'other@elsewhere.example': None}


def test_the_runner_keeps_a_pool_per_account_and_a_down_account_does_not_stop_the_others(
        servers: Tuple[SMTPTestServer, ...], tmp_path: Path) -> None:
    main, shop, boss = servers
    store = MaildirQueue(str(tmp_path / 'queue'))
    for n in range(12):
        store.enqueue(MSG, f'n{n}@elsewhere.example', ['r@example.net'])
        store.enqueue(MSG, f'n{n}@shop.example', ['r@example.net'])
        store.enqueue(MSG, 'boss@example.org', [f'r{n}@example.net'])
    boss_port = boss.port
    boss.stop()  # the boss account's smarthost is down
    settings = parse_config_text(config_text(main.port, shop.port, boss_port), 'mq.conf')
    runner = build_runner(settings, store, workers=3)
    stats = runner.run_once()
    assert not stats.aborted
    assert len(main.received) == 12 and len(shop.received) == 12
    # one connection per worker and account, reused for all of that account's messages
    assert main.connection_count <= 3 and shop.connection_count <= 3
    left = [e.meta for e in store.entries() if e.meta is not None]
    assert len(left) == 12 and {meta.from_addr for meta in left} == {'boss@example.org'}
    # only the first few were tried (and deferred); the others wait without an attempt counted
    assert sum(1 for meta in left if meta.retries) <= 3 + 3


def test_accounts_that_are_down_cost_no_attempts_and_the_pass_stops_when_all_are(tmp_path: Path) -> None:
    store = MaildirQueue(str(tmp_path / 'queue'))
    for n in range(10):
        store.enqueue(MSG, f'n{n}@elsewhere.example', ['r@example.net'])
        store.enqueue(MSG, f'n{n}@shop.example', ['r@example.net'])
    text = config_text(closed_port(), closed_port(), closed_port())
    settings = parse_config_text(text, 'mq.conf')
    stats = build_runner(settings, store, workers=1).run_once()
    # two accounts tried three times each; the rest waits without an attempt counted
    assert (stats.deferred, stats.skipped) == (6, 14) and not stats.aborted  # boss was never tried
    for n in range(5):
        store.enqueue(MSG, 'boss@example.org', [f'r{n}@example.net'])
    stats = build_runner(settings, store, workers=1, force=True).run_once()
    assert stats.aborted  # every account down: the pass stops early
    assert stats.deferred == 9


def test_mq_send_test_names_the_account(servers: Tuple[SMTPTestServer, ...], tmp_path: Path) -> None:
    main, shop, boss = servers
    config = tmp_path / 'mq.conf'
    config.write_text(config_text(main.port, shop.port, boss.port))
    config.chmod(0o600)
    proc = run_tool([script('mq-send-test'), '-C', str(config), '--from', 'x@shop.example', '--to', 'r@example.net'],
                    home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert f'accepted by 127.0.0.1:{shop.port}' in out
    assert 'account: shop' in out and 'authenticated with PLAIN as shop' in out
