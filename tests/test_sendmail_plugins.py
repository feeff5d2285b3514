"""Plugins see what mq-sendmail and mq-mail deliver (SPEC 9), and are terminated at exit.

A small plugin is registered under the ``mailqueue.plugins`` entry point in a
temporary site directory (PYTHONPATH) and writes each signal it receives to
a file, which the test reads back after the real tool ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from schwarz.mailqueue.testutils import SMTPTestServer
from test_cli_helpers import run_tool, script, write_config

RECORDER = '''
import json
from schwarz.puzzle_plugins import connect_signals, disconnect_signals
from schwarz.mailqueue import MQSignal

LOG = %r


def _record(event, **fields):
    with open(LOG, 'a') as fp:
        fp.write(json.dumps(dict(event=event, **fields)) + '\\n')


def successful(sender, msg, send_result):
    _record('successful', to=sorted(send_result.accepted), sender=msg.from_addr)


def failed(sender, msg, send_result):
    _record('failed', refused=sorted(send_result.refused), deferred=sorted(send_result.deferred))


def initialize(context, registry):
    signals = {MQSignal.delivery_successful: successful, MQSignal.delivery_failed: failed}
    context['connected'] = (connect_signals(signals, registry), registry)


def terminate(context):
    connected, registry = context.pop('connected')
    disconnect_signals(connected, registry)
    _record('terminated')
'''


def install_recorder(tmp_path: Path) -> Tuple[Dict[str, str], Path]:
    site = tmp_path / 'site'
    (site / 'mqrecorder').mkdir(parents=True)
    log = tmp_path / 'signals.jsonl'
    (site / 'mqrecorder' / '__init__.py').write_text(RECORDER % str(log))
    dist = site / 'mqrecorder-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: mqrecorder\nVersion: 1.0\n')
    (dist / 'entry_points.txt').write_text('[mailqueue.plugins]\nrecorder = mqrecorder\n')
    return {'PYTHONPATH': str(site)}, log


def events(log: Path) -> List[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_sendmail_fires_signals_and_terminates_plugins(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    env, log = install_recorder(tmp_path)
    config = write_config(tmp_path, smtp_server, **{'from': 'me@site.example'})
    proc = run_tool([script('mq-sendmail'), '-C', str(config), 'a@example.org', 'b@example.org'],
                    input=b'Subject: x\n\nbody\n', home=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    smtp_server.set_recipient_reply('gone@example.org', 550)
    proc = run_tool([script('mq-mail'), '-C', str(config), '-s', 'x', 'gone@example.org'], input=b'body\n',
                    home=tmp_path, env=env)
    assert proc.returncode == 69

    assert events(log) == [
        {'event': 'successful', 'to': ['a@example.org', 'b@example.org'], 'sender': 'me@site.example'},
        {'event': 'terminated'},
        {'event': 'failed', 'refused': ['gone@example.org'], 'deferred': []},
        {'event': 'terminated'},
    ]
