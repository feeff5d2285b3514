"""The CLI documentation stays in step with the code: sample config, --help texts, docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import pytest

from schwarz.mailqueue.cli import mq_mail, mq_send_test, mq_sendmail
from schwarz.mailqueue.config import KNOWN_KEYS, parse_config_text

DOCS = Path(__file__).resolve().parent.parent / 'docs'
PACKAGE_DATA = Path(__file__).resolve().parent.parent / 'src' / 'schwarz' / 'mailqueue' / 'data'


def test_sample_config_parses_and_documents_every_key() -> None:
    text = (DOCS / 'mailqueue-runner.conf.sample').read_text()
    settings = parse_config_text(text, 'sample')
    assert settings.smtp_tls == 'starttls' and settings.queue_dir
    # with every commented-out setting switched on (and the password command instead of the password)
    everything = parse_config_text(re.sub(r'(?m)^#(\w+ = )', r'\1', text), 'sample')
    assert everything.default_domain and everything.include == '/etc/mailqueue-runner.secret.conf'
    assert settings.smtp_password is None  # the credentials are in the included file (issue 12)
    # the credentials part, with the password command instead of the password
    secret = (PACKAGE_DATA / 'mailqueue-runner.secret.conf.sample').read_text()
    assert parse_config_text(secret, 'secret').smtp_password == 'secret'
    enabled = re.sub(r'(?m)^#(\w+ = )', r'\1', secret).replace('\nsmtp_password = secret\n', '\n')
    assert parse_config_text(enabled, 'secret').smtp_password_command
    for key in KNOWN_KEYS:
        assert re.search(rf'(?m)^#?{key} = |\b{key}\b', text + secret), key


def test_the_sample_in_docs_is_the_one_in_the_wheel() -> None:
    assert (DOCS / 'mailqueue-runner.conf.sample').read_text() == \
        (PACKAGE_DATA / 'mailqueue-runner.conf.sample').read_text()


def sendmail_help_options() -> List[str]:
    """Every option word in mq-sendmail's --help (e.g. -f, -FNAME is not split off)."""
    words = re.findall(r'(?<![\w-])(--?[A-Za-z][\w-]*)', mq_sendmail.USAGE)
    return sorted(set(words) - {'-o', '-O'})


@pytest.mark.parametrize('option', sendmail_help_options())
def test_every_option_in_sendmail_help_is_accepted_and_documented(option: str) -> None:
    cli_md = (DOCS / 'cli.md').read_text()
    assert option in cli_md, option
    args = [option]
    if option.lstrip('-') in ('config', 'aliases') or (len(option) == 2 and option[1] in 'fFrCBNRVLpAd'):
        args.append('value')
    if option in ('-b', '-bv'):
        args = ['-bv', 'root']
    mq_sendmail.parse_args(args)


@pytest.mark.parametrize('parser', [mq_mail.build_parser(), mq_send_test.build_parser()], ids=['mq-mail',
                                                                                                'mq-send-test'])
def test_every_argparse_option_is_in_cli_md(parser: object) -> None:
    cli_md = (DOCS / 'cli.md').read_text()
    for action in parser._actions:  # type: ignore[attr-defined]
        for option in action.option_strings:
            if option not in ('-h', '--help'):
                assert re.search(rf'`{re.escape(option)}[` ]', cli_md), option
