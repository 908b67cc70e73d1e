"""core.redis.script: scripts by hash on the thread's own connection, and the ones sent without waiting."""

import logging
import uuid

import pytest

from core import redis

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SET = "return redis.call('SET', KEYS[1], ARGV[1])"
FAILS = "return redis.error_reply('no such thing: ' .. ARGV[1])"


@pytest.fixture
def key():
    key = f"hil:test:{uuid.uuid4().hex}"
    yield key
    redis.client().delete(key)


def test_a_script_runs_and_is_loaded_again_after_redis_forgets_it(key):
    assert redis.script(INCR)(keys=[key], args=[2]) == 2
    redis.client().script_flush()
    assert redis.script(INCR)(keys=[key], args=[3]) == 5


def test_a_script_sent_without_waiting_has_run_once_caught_up(key):
    assert redis.script(INCR)(keys=[key], args=[4], wait=False) is None
    redis.caught_up()
    assert redis.client().get(key) == b"4"
    # the next script on the thread reads the pending reply first, and gets its own
    redis.script(INCR)(keys=[key], args=[1], wait=False)
    assert redis.script(INCR)(keys=[key], args=[10]) == 15


def test_the_reply_to_a_script_sent_without_waiting_is_had_when_asked_for_its_failure_raised(key):
    redis.script(INCR)(keys=[key], args=[7], wait=False)
    redis.client().incrby(key, 100)  # other work meanwhile
    assert redis.reply() == 7
    redis.caught_up()  # nothing pending any more: the reply is not read twice
    assert redis.script(INCR)(keys=[key], args=[1]) == 108
    redis.script(FAILS)(args=["y"], wait=False)
    with pytest.raises(redis.redis.ResponseError, match="no such thing: y"):
        redis.reply()
    assert redis.script(INCR)(keys=[key], args=[1]) == 109


def test_a_failure_of_a_script_sent_without_waiting_is_logged_not_raised_at_the_next(key, caplog):
    redis.script(FAILS)(args=["x"], wait=False)
    with caplog.at_level(logging.ERROR, logger="core.redis"):
        assert redis.script(INCR)(keys=[key], args=[1]) == 1
    assert "sent without waiting failed" in caplog.text and "no such thing: x" in caplog.text


def test_a_dropped_connection_is_replaced_and_the_script_sent_again(key):
    redis.script(INCR)(keys=[key], args=[1])
    dropped = _own_client_id()
    redis.client().client_kill_filter(_id=dropped)  # Redis drops this thread's connection
    assert redis.script(INCR)(keys=[key], args=[1]) == 2
    assert _own_client_id() != dropped


def test_a_reply_lost_with_its_connection_is_had_by_running_the_script_again(key, caplog):
    client_id = _own_client_id()
    redis.script(SET)(keys=[key], args=["settled"], wait=False)
    redis.client().client_kill_filter(_id=client_id)
    with caplog.at_level(logging.ERROR, logger="core.redis"):
        redis.caught_up()
    assert redis.client().get(key) == b"settled" and not caplog.records
    assert _own_client_id() != client_id  # the script went again, on a new connection


def _own_client_id() -> int:
    redis.script(INCR)(keys=["hil:test:warm"], args=[0])  # this thread's connection, open
    connection = redis._own.connection
    connection.send_command("CLIENT", "ID")
    return connection.read_response()
