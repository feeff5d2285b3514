"""Short runs of bench/torture.py (maildir and PostgreSQL): random SMTP faults and SIGKILLed runners lose nothing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))

from torture import Summary, torture  # noqa: E402

KILLS = 6


def _assert_nothing_lost(summary: Summary) -> None:
    print(summary.table())
    assert summary.kills == KILLS
    assert summary.lost == 0
    assert summary.refused_delivered == 0
    assert summary.left_in_queue == 0
    assert summary.duplicates <= summary.duplicate_bound
    assert summary.delivered_pairs + summary.refused_pairs == summary.pairs


def test_torture_short(tmp_path) -> None:
    summary = torture(messages=200, kills=KILLS, seed=11, sendmail_share=0.05, workdir=str(tmp_path))
    _assert_nothing_lost(summary)
    assert sum(summary.faults.values()) > 20  # the server really misbehaved


def test_torture_short_on_postgresql(tmp_path) -> None:
    from _pg import fresh_location

    summary = torture(messages=200, kills=KILLS, seed=12, sendmail_share=0.05, workdir=str(tmp_path),
                      queue=fresh_location())
    assert summary.store == 'postgresql'
    _assert_nothing_lost(summary)
