"""The circuit breaker against the real Redis, on Redis's clock: windows and cooldowns are short and
the tests wait for them by polling."""

import multiprocessing
import random
import threading
import time
import uuid

from django.test import override_settings

from agents import breaker

FAST = {"failures": 3, "window_s": 5, "cooldown_s": 0.5}
SLOW = {**FAST, "cooldown_s": 60}  # for what must happen before the cooldown ends, however busy the machine


def a_model(tenant_id=None):
    return breaker.model_key(tenant_id=tenant_id or random.randrange(10**9), endpoint="https://llm.example/v1",
                             model=f"m-{uuid.uuid4().hex[:8]}")


def wait_for_state(key, wanted, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while breaker.state(key) != wanted:
        assert time.monotonic() < deadline, f"the breaker never became {wanted}"
        time.sleep(0.02)


def trip(key, **limits):
    for _ in range(limits["failures"]):
        breaker.record_failure(key, **limits)


def allow_all_at_once(key, n=10):
    start = threading.Barrier(n)
    allowed = []

    def one():
        start.wait()
        allowed.append(breaker.allow(key))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return allowed


def in_another_process(key, action, limits=None):
    """`action` ("trip" with `limits`, or "allow") in a process of its own: what it then saw."""
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        return pool.apply(_act, (key, action, limits))


def _act(key, action, limits):
    if action == "trip":
        trip(key, **limits)
    return breaker.allow(key), breaker.state(key)


def test_it_opens_after_n_failures_within_the_window():
    key = a_model()
    for _ in range(2):
        breaker.record_failure(key, **SLOW)
    assert breaker.state(key) == "closed" and breaker.allow(key)
    breaker.record_failure(key, **SLOW)
    assert breaker.state(key) == "open"
    assert allow_all_at_once(key) == [False] * 10


def test_failures_spread_wider_than_the_window_do_not_open_it():
    key, limits = a_model(), {**SLOW, "window_s": 0.3}
    for _ in range(5):  # one failure every 0.2 s or more: never 3 within 0.3 s
        breaker.record_failure(key, **limits)
        time.sleep(0.2)
    assert breaker.state(key) == "closed" and breaker.allow(key)


def test_after_the_cooldown_exactly_one_of_ten_callers_gets_the_probe():
    key = a_model()
    trip(key, **FAST)
    wait_for_state(key, "half-open")
    assert sorted(allow_all_at_once(key)) == [False] * 9 + [True]
    assert allow_all_at_once(key) == [False] * 10  # while the probe is out
    assert breaker.state(key) == "half-open"


def test_while_open_late_outcomes_of_calls_from_before_change_nothing():
    key = a_model()
    trip(key, **SLOW)
    breaker.record_success(key)
    assert breaker.state(key) == "open"
    breaker.record_failure(key, **FAST)  # were it counted, it would reopen the breaker for 0.5 s only
    time.sleep(0.7)
    assert breaker.state(key) == "open"


def test_the_probes_success_closes_it():
    key = a_model()
    trip(key, **FAST)
    wait_for_state(key, "half-open")
    assert breaker.allow(key)
    breaker.record_success(key)
    assert breaker.state(key) == "closed"
    assert allow_all_at_once(key) == [True] * 10
    breaker.record_failure(key, **FAST)  # counting starts again from nothing
    assert breaker.state(key) == "closed"


def test_the_probes_failure_opens_it_for_another_cooldown():
    key = a_model()
    trip(key, **FAST)
    wait_for_state(key, "half-open")
    assert breaker.allow(key)
    breaker.record_failure(key, **FAST)
    assert breaker.state(key) == "open" and not breaker.allow(key)
    wait_for_state(key, "half-open")
    assert sorted(allow_all_at_once(key)) == [False] * 9 + [True]


def test_a_lost_probe_is_handed_to_another_caller():
    key = a_model()
    trip(key, **FAST)
    wait_for_state(key, "half-open")
    assert breaker.allow(key, probe_s=1)  # its worker dies without reporting
    assert not breaker.allow(key)
    deadline = time.monotonic() + 10
    while not breaker.allow(key):
        assert time.monotonic() < deadline, "the lost probe was never handed on"
        time.sleep(0.02)


def test_two_processes_see_the_same_breaker():
    key = a_model()
    assert in_another_process(key, "trip", {**FAST, "cooldown_s": 2}) == (False, "open")
    assert breaker.state(key) == "open" and not breaker.allow(key)
    wait_for_state(key, "half-open")
    assert breaker.allow(key)
    assert in_another_process(key, "allow") == (False, "half-open")
    breaker.record_success(key)
    assert in_another_process(key, "allow") == (True, "closed")


def test_tenants_with_the_same_endpoint_and_model_have_breakers_of_their_own():
    tenant_id = random.randrange(10**9)
    mine = breaker.model_key(tenant_id=tenant_id, endpoint="ep-1", model="gpt-x")
    theirs = breaker.model_key(tenant_id=tenant_id + 1, endpoint="ep-1", model="gpt-x")
    trip(mine, **SLOW)
    assert breaker.state(mine) == "open" and not breaker.allow(mine)
    assert breaker.state(theirs) == "closed" and breaker.allow(theirs)


@override_settings(HIL_BREAKER_FAILURES=2, HIL_BREAKER_WINDOW_S=5, HIL_BREAKER_COOLDOWN_S=0.3)
def test_the_limits_come_from_the_settings():
    key = a_model()
    breaker.record_failure(key)
    assert breaker.state(key) == "closed"
    breaker.record_failure(key)
    assert breaker.state(key) == "open"
    wait_for_state(key, "half-open", timeout_s=5)
