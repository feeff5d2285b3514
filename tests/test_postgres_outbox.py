"""enqueue_message(..., connection=conn): the mail exists exactly when the application's transaction commits."""

from __future__ import annotations

import psycopg
import pytest

from _pg import fresh_location, scratch_role
from schwarz.mailqueue import DebugMailer, enqueue_message, send_all_queued_messages
from schwarz.mailqueue.queue.locations import open_queue

MSG = b'Subject: order 42 confirmed\r\n\r\nthanks\r\n'


def _connect(location: str) -> psycopg.Connection:
    base = location.split('?', 1)[0]
    return psycopg.connect(base)


def test_rollback_means_no_mail_and_commit_means_one_delivery() -> None:
    location = fresh_location()
    store = open_queue(location)
    with _connect(location) as conn:
        enqueue_message(MSG, location, 'shop@example.org', ['buyer@example.org'], connection=conn)
        conn.rollback()
    assert store.stats()['new'].count == 0

    with _connect(location) as conn:
        msg_id = enqueue_message(MSG, location, 'shop@example.org', ['buyer@example.org'], connection=conn)
        assert store.view(str(msg_id)) is None  # not committed: nobody else sees it yet
        conn.commit()
    mailer = DebugMailer()
    stats = send_all_queued_messages(location, mailer=mailer)
    assert stats.sent == 1 and mailer.sent_mails == [('shop@example.org', ['buyer@example.org'], MSG)]


def test_connection_needs_a_postgres_location(tmp_path) -> None:
    with pytest.raises(ValueError, match='postgresql'):
        enqueue_message(MSG, str(tmp_path / 'q'), 'a@example.org', ['b@example.org'], connection=object())


def test_a_role_without_insert_is_misconfigured_not_unavailable() -> None:
    """A missing grant needs an operator whichever way the message comes: QueueMisconfigured (an
    application that retries QueueUnavailable would retry it forever)."""
    from schwarz.mailqueue.errors import QueueMisconfigured

    location = fresh_location()
    with scratch_role(location, 'mq_noinsert') as role:
        with psycopg.connect(location.split('?', 1)[0], user=role) as conn:
            with pytest.raises(QueueMisconfigured, match='permission denied'):
                enqueue_message(MSG, location, 'shop@example.org', ['buyer@example.org'], connection=conn)
            conn.rollback()
