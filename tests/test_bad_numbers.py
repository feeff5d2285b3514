"""Out-of-range and malformed numbers, in the configuration and on the command line.

Every number a user can set has one allowed range (``schwarz.mailqueue.limits``). Outside it:
a usage error (64) for a flag, a configuration error (78) for a key, one line naming the
option or key and the range. Never an internal error (70), a traceback or a hang: the tools
run as real processes with a timeout, against a real queue directory.
"""

from __future__ import annotations

import math
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import List

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schwarz.mailqueue import limits
from schwarz.mailqueue.config import ConfigError, parse_config_text, settings_from_mapping
from schwarz.mailqueue.queue.admin import QueueAdmin
from schwarz.mailqueue.queue.maildir import MaildirQueue
from schwarz.mailqueue.queue.schedule import parse_duration

from _hyp import examples
from helpers import run, script, write_config

MSG = b'Subject: numbers\r\n\r\nbody\r\n'
# A hang shows up as subprocess.TimeoutExpired, i.e. a failing test.
TIMEOUT = 30
HUGE = '99999999999999999999'


def assert_one_line(stderr: bytes, *fragments: str) -> None:
    text = stderr.decode('utf-8', 'replace')
    assert text.count('\n') == 1 and text.endswith('\n'), text
    assert 'Traceback' not in text and 'internal error' not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# --- configuration keys: exit 78, naming the key and the range -------------------------------------

BAD_KEYS = [
    ('workers', HUGE, 'from 1 to 256'),
    ('workers', '1000000', 'from 1 to 256'),
    ('workers', '0', 'from 1 to 256'),
    ('workers', '-4', 'from 1 to 256'),
    ('workers', '4.5', 'from 1 to 256'),
    ('smtp_port', '\u0663', 'from 1 to 65535'),  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
    ('smtp_port', '\uff12\uff15', 'from 1 to 65535'),  # FULLWIDTH "25"
    ('smtp_port', '0', 'from 1 to 65535'),
    ('smtp_port', '65536', 'from 1 to 65535'),
    ('smtp_port', '+25', 'from 1 to 65535'),
    ('smtp_port', '2_5', 'from 1 to 65535'),
    ('smtp_port', '9' * 5000, 'from 1 to 65535'),  # int() refuses more than 4300 digits
    ('smtp_timeout', 'nan', 'greater than 0 and at most 3600'),
    ('smtp_timeout', 'inf', 'greater than 0 and at most 3600'),
    ('smtp_timeout', '1e300', 'greater than 0 and at most 3600'),
    ('smtp_timeout', '0', 'greater than 0 and at most 3600'),
    ('smtp_timeout', '86400', 'greater than 0 and at most 3600'),
    ('smtp_rate_limit', '1e-300', 'from 0.001 to 100000'),
    ('smtp_rate_limit', 'nan', 'from 0.001 to 100000'),
    ('max_attempts', '0', 'from 1 to 1000'),
    ('max_attempts', HUGE, 'from 1 to 1000'),
    ('max_queue_lifetime', '99999999999999w', 'from 0s to 3650d'),
    ('max_queue_lifetime', '9' * 400, 'from 0s to 3650d'),
    ('max_queue_lifetime', '\u0663d', 'from 0s to 3650d'),
    ('retry_min_delay', '400d', 'from 0s to 365d'),
    ('retry_max_delay', '99999999999999d', 'from 0s to 365d'),
    ('stale_claim_timeout', '0', 'from 5m to 3650d'),
    ('stale_claim_timeout', '30s', 'from 5m to 3650d'),
]


@pytest.mark.parametrize('key,value,allowed', BAD_KEYS)
def test_config_key_out_of_range_names_key_and_range(key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f'[mqrunner]\n{key} = {value}\n', path='/etc/mq.conf')
    message = str(info.value)
    assert message.startswith(f'/etc/mq.conf: {key}: invalid value') and allowed in message, message
    assert '\n' not in message and len(message) < 200, message


@pytest.mark.parametrize('tool', ['mq-run', 'mq-queue', 'mq-sendmail', 'mq-send-test'])
@pytest.mark.parametrize('key,value,allowed', [
    ('workers', HUGE, 'from 1 to 256'),
    ('smtp_port', '\u0663', 'from 1 to 65535'),
    ('max_queue_lifetime', '99999999999999w', 'from 0s to 3650d'),
    ('smtp_timeout', 'nan', 'greater than 0'),
])
def test_every_tool_refuses_the_config_with_exit_78(tmp_path: Path, tool: str, key: str, value: str,
                                                    allowed: str) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(MSG, 'a@example.org', ['b@example.org'])
    config = tmp_path / 'mq.conf'
    config.write_text(f'[mqrunner]\nqueue_dir = {queue_dir}\nsmtp_hostname = 127.0.0.1\n{key} = {value}\n',
                      encoding='utf-8')
    args = {'mq-run': [], 'mq-queue': ['list'], 'mq-sendmail': ['-i', 'c@example.org'],
            'mq-send-test': ['--to', 'c@example.org']}[tool]
    result = run([script(tool), '-C', str(config), *args], input=MSG, timeout=TIMEOUT)
    assert result.returncode == 78, result.stderr
    assert_one_line(result.stderr, str(config), key, allowed)


def test_values_at_the_limits_are_accepted(tmp_path: Path, smtp_server) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(MSG, 'a@example.org', ['b@example.org'])
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir, workers=256,
                          max_attempts=1000, smtp_timeout=3600, smtp_rate_limit=100000,
                          retry_max_delay='365d', max_queue_lifetime='3650d', stale_claim_timeout='5m')
    result = run([script('mq-run'), '-C', config], timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 1
    settings = parse_config_text('[mqrunner]\nsmtp_port = 0065535\nworkers = 1\nsmtp_timeout = .5\n')
    assert (settings.smtp_port, settings.workers, settings.smtp_timeout) == (65535, 1, 0.5)


@pytest.mark.parametrize('key,value', [
    ('workers', 10**6), ('workers', 0), ('workers', True), ('smtp_port', 70000), ('smtp_timeout', math.nan),
    ('smtp_timeout', math.inf), ('smtp_rate_limit', 0.0), ('max_queue_lifetime', timedelta(days=100000)),
    ('retry_max_delay', 10**12), ('stale_claim_timeout', timedelta(0)),
])
def test_typed_values_from_python_are_checked_too(key: str, value: object) -> None:
    """init_app(settings=...) and one_shot_queue_run pass Python values, not text."""
    with pytest.raises(ConfigError, match=f'{key}: invalid value'):
        settings_from_mapping({key: value})


def test_typed_values_in_range_pass_through() -> None:
    settings = settings_from_mapping({'workers': 8, 'smtp_port': 2525, 'smtp_timeout': 2,
                                      'max_queue_lifetime': timedelta(days=2)})
    assert (settings.workers, settings.smtp_port, settings.smtp_timeout) == (8, 2525, 2.0)
    assert settings.max_queue_lifetime == timedelta(days=2)


# --- command-line flags: exit 64, naming the flag and the range --------------------------------------


@pytest.mark.parametrize('value', ['1000000', HUGE, '0', '-1', '\u0663', '1e3', 'nan', ''])
def test_mq_run_workers_flag_is_bounded(tmp_path: Path, smtp_server, value: str) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(MSG, 'a@example.org', ['b@example.org'])
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    result = run([script('mq-run'), '-C', config, '-w', value], timeout=TIMEOUT)
    assert result.returncode == 64, result.stderr
    assert_one_line(result.stderr, '--workers', 'from 1 to 256')
    assert smtp_server.received == []


def test_mq_run_workers_flag_at_the_limit(tmp_path: Path, smtp_server) -> None:
    queue_dir = tmp_path / 'q'
    MaildirQueue(str(queue_dir)).enqueue(MSG, 'a@example.org', ['b@example.org'])
    config = write_config(tmp_path / 'mq.conf', smtp_server, queue_dir=queue_dir)
    result = run([script('mq-run'), '-C', config, '--workers', '256'], timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize('args,flag,allowed', [
    (['--wait', 'nan', 'list'], '--wait', 'from 0 to 3600'),
    (['--wait', 'inf', 'list'], '--wait', 'from 0 to 3600'),
    (['--wait', '-1', 'list'], '--wait', 'from 0 to 3600'),
    (['list', '--wait', '1e9'], '--wait', 'from 0 to 3600'),
    (['hold', '--all', '--wait', 'NaN'], '--wait', 'from 0 to 3600'),
    (['list', '--older-than', '99999999999999w'], '--older-than', 'from 0s to 3650d'),
    (['list', '--older-than', '3651d'], '--older-than', 'from 0s to 3650d'),
    (['list', '--older-than', '\u0663d'], '--older-than', 'from 0s to 3650d'),
    (['retry', '--all', '--older-than', '9' * 500], '--older-than', 'from 0s to 3650d'),
    (['purge', '--older-than', '99999999999999w', '-y'], '--older-than', 'from 0s to 3650d'),
])
def test_mq_queue_flags_are_bounded(tmp_path: Path, args: List[str], flag: str, allowed: str) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    msg_id = queue.enqueue(MSG, 'a@example.org', ['b@example.org'])
    result = run([script('mq-queue'), '--queue-dir', queue.path, *args], timeout=TIMEOUT,
                 env={'HOME': str(tmp_path)})
    assert result.returncode == 64, result.stderr
    assert_one_line(result.stderr, flag, allowed)
    assert os.listdir(Path(queue.path) / 'new') == [str(msg_id)]  # nothing was done


def test_mq_queue_flags_at_the_limits(tmp_path: Path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    queue.enqueue(MSG, 'a@example.org', ['b@example.org'])
    base = [script('mq-queue'), '--queue-dir', queue.path]
    listing = run([*base, '--wait', '3600', 'list', '--older-than', '0'], timeout=TIMEOUT,
                  env={'HOME': str(tmp_path)})
    assert listing.returncode == 0 and listing.stdout.count(b'\n') == 1, listing.stderr
    purge = run([*base, '--wait', '0', 'purge', '--older-than', '3650d', '-y'], timeout=TIMEOUT,
                env={'HOME': str(tmp_path)})
    assert purge.returncode == 0 and b'purged 0 messages' in purge.stdout, purge.stderr


def test_queue_admin_api_refuses_an_endless_wait(tmp_path: Path) -> None:
    queue = MaildirQueue(str(tmp_path / 'q'))
    for wait in (math.nan, math.inf, 1e300):
        with pytest.raises(ValueError, match='seconds from 0 to 3600'):
            QueueAdmin(queue, wait=wait)
    assert QueueAdmin(queue, wait=-3).wait == 0.0  # negative means "do not wait", as before


# --- the range objects themselves ----------------------------------------------------------------------


def test_only_ascii_digits_count() -> None:
    for text in ('\u0663', '\u0968\u0966', '\uff11', '1\u0663', '\U0001d7d9'):  # Arabic, Devanagari, fullwidth, math
        assert int(text)  # Python itself accepts every one of them
        with pytest.raises(ValueError):
            limits.PORT.parse(text)
        with pytest.raises(ValueError):
            limits.WAIT.parse(text)
        with pytest.raises(ValueError):
            parse_duration(text + 's')


def test_parse_duration_never_overflows() -> None:
    for text in ('99999999999999w', '9' * 400, '9' * 400 + 'd', '1' + '0' * 20 + 'd', '1000000000d'):
        with pytest.raises(ValueError):
            parse_duration(text)
    for value in (math.nan, math.inf, 1e300, -1):
        with pytest.raises(ValueError):
            parse_duration(value)


_numberish = st.one_of(
    st.text(alphabet='0123456789.eE+-_ naifwdhms\u0663\uff15', max_size=25),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=10),
)


@settings(max_examples=examples(300), deadline=None)
@given(text=_numberish)
@example(text='nan')
@example(text='1e400')
@example(text='99999999999999w')
@example(text='\u0663')
def test_every_range_parses_into_range_or_raises_value_error(text: str) -> None:
    """Whatever the text: a value inside the range, or ValueError naming the range. Nothing else."""
    for name in limits.__all__:
        allowed = getattr(limits, name)
        if not isinstance(allowed, limits.Range):
            continue
        try:
            value = allowed.parse(text)
        except ValueError as exc:
            assert str(exc).startswith(f'expected {allowed.describe()}, got ')
            continue
        # low/high: every Range subclass has them, the Range base class does not declare them
        assert allowed.low <= value <= allowed.high  # type: ignore[attr-defined]
        if isinstance(value, float):
            assert math.isfinite(value)
        assert text.strip().isascii()


def test_help_shows_the_ranges() -> None:
    run_help = subprocess.run([script('mq-run'), '--help'], capture_output=True, timeout=TIMEOUT, text=True)
    assert '1 to 256' in run_help.stdout
    queue_help = subprocess.run([script('mq-queue'), '--help'], capture_output=True, timeout=TIMEOUT, text=True)
    assert '0 to 3600' in queue_help.stdout
