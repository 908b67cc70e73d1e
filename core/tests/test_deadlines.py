"""Deadlines work in any thread, and nested ones keep the shortest."""

import threading
import time

import pytest

from core import deadlines


def test_outside_any_deadline_there_is_no_limit():
    assert deadlines.remaining() is None and not deadlines.expired()
    deadlines.check()


def test_a_longer_inner_deadline_does_not_extend_the_outer_one():
    with deadlines.deadline(1):
        with deadlines.deadline(60):
            assert deadlines.remaining() <= 1
        assert 0 < deadlines.remaining() <= 1


def test_a_shorter_inner_deadline_ends_and_leaves_the_outer_one_running():
    with deadlines.deadline(60):
        with deadlines.deadline(0.01):
            time.sleep(0.02)
            assert deadlines.expired()
            with pytest.raises(deadlines.DeadlineExceeded):
                deadlines.check()
        assert 59 < deadlines.remaining() <= 60  # not cancelled by the inner one


def test_deadlines_work_outside_the_main_thread_and_stay_in_their_thread():
    seen = {}

    def work():
        with deadlines.deadline(0.01):
            time.sleep(0.02)
            seen["expired"] = deadlines.expired()

    with deadlines.deadline(60):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        assert seen == {"expired": True} and deadlines.remaining() > 59


def test_a_sqlite_query_is_interrupted_at_the_deadline():
    """How the demo's order lookup stops at its step's deadline."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.set_progress_handler(deadlines.expired, 1000)
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    started = time.monotonic()
    with deadlines.deadline(0.1), pytest.raises(sqlite3.OperationalError, match="interrupted"):
        db.execute(endless).fetchone()
    assert time.monotonic() - started < 5
