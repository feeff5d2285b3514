"""docs/install.md, followed: build the wheel, install it into a fresh venv, and every command the
docs use exists there (and mq-queue setup installs what they say it does)."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_MD = ROOT / 'docs' / 'install.md'
OUR_TOOLS = ('mq-sendmail', 'mq-mail', 'mq-run', 'mq-queue', 'mq-send-test')


def commands_in_docs() -> set:
    text = INSTALL_MD.read_text() + (ROOT / 'docs' / 'operations.md').read_text()
    return set(re.findall(r'\b(mq-[a-z-]+)\b', text)) - {'mq-run-daemon', 'mq-dummy'}


def test_the_docs_name_only_tools_we_ship() -> None:
    named = {name for name in commands_in_docs() if not name.startswith('mq-run.')}
    assert named <= set(OUR_TOOLS), named - set(OUR_TOOLS)


@pytest.mark.slow
def test_the_wheel_installs_every_command_and_the_shipped_files(tmp_path: Path) -> None:
    wheels = tmp_path / 'wheels'
    # with build isolation: pip fetches the build backend pyproject.toml asks for
    built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(wheels), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    # (the package registries are reachable here and in CI: a failed build is a failure, never a skip)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob('mailqueue_runner-*.whl')
    env_dir = tmp_path / 'venv'
    venv.create(env_dir, with_pip=True)
    pip = env_dir / 'bin' / 'pip'
    installed = subprocess.run([str(pip), 'install', '--no-deps', '--no-index', str(wheel)], capture_output=True,
                               text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    for tool in OUR_TOOLS:
        result = subprocess.run([str(env_dir / 'bin' / tool), '--help'], capture_output=True, timeout=60)
        assert result.returncode == 0, (tool, result.stderr)
    # the commands of install.md, section 2 and 4, against a scratch root
    etc = tmp_path / 'etc'
    etc.mkdir()
    setup = subprocess.run([str(env_dir / 'bin' / 'mq-queue'), 'setup', '--drop-area', '-d', str(tmp_path / 'spool'),
                            '--config-file', str(etc / 'mailqueue-runner.conf'), '--units', str(tmp_path / 'units')],
                           capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    assert (etc / 'mailqueue-runner.conf').stat().st_mode & 0o777 == 0o644
    assert (etc / 'mailqueue-runner.secret.conf').stat().st_mode & 0o777 == 0o600
    assert str(etc / 'mailqueue-runner.secret.conf') in (etc / 'mailqueue-runner.conf').read_text()
    for unit in ('mq-run.service', 'mq-run.timer', 'mq-run.path', 'mq-run-daemon.service'):
        assert str(env_dir / 'bin') in (tmp_path / 'units' / unit).read_text() or unit.endswith(('.timer', '.path'))
    # the installed config parses as the tools read it (the included file too)
    check = subprocess.run([str(env_dir / 'bin' / 'mq-sendmail'), '-C', str(etc / 'mailqueue-runner.conf'), '-bv',
                            'someone@example.com'], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
