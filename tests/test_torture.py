"""Short runs of bench/torture.py (maildir and PostgreSQL): random SMTP faults and SIGKILLed runners lose nothing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))

from torture import torture  # noqa: E402


def test_torture_short(tmp_path) -> None:
    summary = torture(messages=200, kills=6, seed=11, sendmail_share=0.05, workdir=str(tmp_path))
    print(summary.table())
    assert summary.kills == 6
    assert summary.lost == 0
    assert summary.refused_delivered == 0
    assert summary.left_in_queue == 0
    assert summary.duplicates <= summary.duplicate_bound
    assert summary.delivered_pairs + summary.refused_pairs == summary.pairs
    assert sum(summary.faults.values()) > 20  # the server really misbehaved


def test_torture_short_on_postgresql(tmp_path) -> None:
    from _pg import fresh_location

    summary = torture(messages=200, kills=6, seed=12, sendmail_share=0.05, workdir=str(tmp_path),
                      queue=fresh_location())
    print(summary.table())
    assert summary.store == 'postgresql'
    assert summary.kills == 6
    assert summary.lost == 0
    assert summary.refused_delivered == 0
    assert summary.left_in_queue == 0
    assert summary.duplicates <= summary.duplicate_bound
    assert summary.delivered_pairs + summary.refused_pairs == summary.pairs
