"""``mq-queue setup``: install what the package ships (sample config, systemd units) and the queue.

Everything installed comes from the wheel (``schwarz.mailqueue.data``); nothing is overwritten
unless ``--force``. The units get the path of this installation's scripts and the queue
directory filled in.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from .common import EX_IOERR, EX_OK, fail

__all__ = ['UNITS', 'add_arguments', 'data_text', 'run_setup']

UNITS = ('mq-run.service', 'mq-run.timer', 'mq-run.path', 'mq-run-daemon.service')
CONFIG_SAMPLE = 'mailqueue-runner.conf.sample'
SECRET_SAMPLE = 'mailqueue-runner.secret.conf.sample'
_DEFAULT_BIN = '/opt/mailqueue-runner/bin'
_DEFAULT_QUEUE = '/var/spool/mailqueue'


def data_text(name: str) -> str:
    from importlib.resources import files

    return (files('schwarz.mailqueue') / 'data' / name).read_text(encoding='utf-8')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--drop-area', action='store_true',
                        help='create the queue with a drop area, so that every local user can submit (run as the '
                             'queue owner, normally root)')
    parser.add_argument('--config-file', metavar='FILE',
                        help='install the sample configuration as FILE (0644) and its credentials part next to it '
                             '(FILE with .secret.conf, 0600)')
    parser.add_argument('--units', metavar='DIR', help='install the systemd units into DIR (e.g. /etc/systemd/system)')
    parser.add_argument('--force', action='store_true', help='overwrite files that exist')


def _write(path: str, text: str, mode: int, force: bool, done: List[str]) -> None:
    if os.path.exists(path) and not force:
        done.append(f'{path}: exists, left alone (--force to overwrite)')
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, 'w', encoding='utf-8') as fp:
            fp.write(text)
        os.chmod(path, mode)
    except OSError as exc:
        fail(f'cannot write {path}: {exc.strerror or exc}', EX_IOERR)
    done.append(f'{path}: installed')


def run_setup(args: argparse.Namespace, queue_dir: str) -> int:
    done: List[str] = []
    bin_dir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else _DEFAULT_BIN
    if args.drop_area or not (args.config_file or args.units):
        from ..queue.maildir import QueueWriteError, get_queue
        from ..queue.maildir_drop import make_drop_area

        try:
            queue = get_queue(queue_dir)
            if args.drop_area:
                make_drop_area(queue)
        except (QueueWriteError, OSError) as exc:
            fail(f'queue {queue_dir}: {exc.strerror or exc}', EX_IOERR)
        done.append(f'{queue_dir}: queue ready' + (' with a drop area (drop/, mode 1733)' if args.drop_area else ''))
    if args.config_file:
        secret = args.config_file[:-5] + '.secret.conf' if args.config_file.endswith('.conf') \
            else args.config_file + '.secret'
        text = data_text(CONFIG_SAMPLE).replace('/etc/mailqueue-runner.secret.conf', secret)
        text = text.replace(_DEFAULT_QUEUE, queue_dir)
        _write(args.config_file, text, 0o644, args.force, done)
        _write(secret, data_text(SECRET_SAMPLE), 0o600, args.force, done)
    if args.units:
        os.makedirs(args.units, exist_ok=True)
        for name in UNITS:
            text = data_text(name).replace(_DEFAULT_BIN, bin_dir).replace(_DEFAULT_QUEUE, queue_dir)
            _write(os.path.join(args.units, name), text, 0o644, args.force, done)
        done.append('then: systemctl daemon-reload && systemctl enable --now mq-run.timer mq-run.path')
    for line in done:
        print(line)
    return EX_OK
