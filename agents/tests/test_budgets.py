"""Budgets against the real Redis, with many threads and processes reserving at once."""

import multiprocessing
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import redis
from django.conf import settings

from agents import budgets
from agents.budgets import Budget, Refusal, Reservation

CALL = 1_000  # micro-dollars


def run_budget(limit, tenant_id=None, run_id=None):
    return Budget.run(tenant_id=tenant_id or random.randrange(10**9), run_id=run_id or uuid.uuid4(), limit_micros=limit)


def counters(*some):
    return [(budgets.spent(b), budgets.reserved(b)) for b in some]


def reserve_all_at_once_in_threads(limits, n):
    start = threading.Barrier(n)
    results = []

    def one():
        start.wait()
        results.append(budgets.reserve(limits, CALL))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def reserve_in_process(limits, threads, start, results):
    """`threads` reservations at once in a process of its own, with its own Redis connections."""

    def one():
        start.wait(timeout=60)
        results.put(isinstance(budgets.reserve(limits, CALL), Reservation))

    started = [threading.Thread(target=one) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:  # a process ends with its target, threads or not
        thread.join()


def test_of_20_threads_reserving_at_once_exactly_the_5_that_fit_pass():
    budget = run_budget(5 * CALL)
    results = reserve_all_at_once_in_threads([budget], 20)
    assert sum(isinstance(r, Reservation) for r in results) == 5
    assert {(r.budget, r.over_micros) for r in results if isinstance(r, Refusal)} == {(budget, CALL)}
    assert counters(budget) == [(0, 5 * CALL)]


def test_of_20_reservations_at_once_from_5_processes_exactly_the_5_that_fit_pass():
    budget = run_budget(5 * CALL)
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(20), spawn.Queue()
    processes = [spawn.Process(target=reserve_in_process, args=([budget], 4, start, results)) for _ in range(5)]
    for p in processes:
        p.start()
    passed = [results.get(timeout=60) for _ in range(20)]
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert passed.count(True) == 5
    assert counters(budget) == [(0, 5 * CALL)]


def test_with_two_budgets_the_tighter_one_decides_and_a_refusal_touches_neither():
    tenant_id, run_id = random.randrange(10**9), uuid.uuid4()
    run = run_budget(20 * CALL, tenant_id, run_id)
    step = Budget.step(tenant_id=tenant_id, run_id=run_id, node_id="answer", attempt=1, limit_micros=5 * CALL)
    results = reserve_all_at_once_in_threads([run, step], 20)
    assert sum(isinstance(r, Reservation) for r in results) == 5
    assert all(r.budget == step for r in results if isinstance(r, Refusal))
    assert counters(run, step) == [(0, 5 * CALL), (0, 5 * CALL)]


def test_a_refusal_says_by_how_much_and_changes_no_counter():
    month = Budget.month(tenant_id=random.randrange(10**9), limit_micros=10 * CALL)
    run = run_budget(None)
    first = budgets.reserve([month, run], 4 * CALL)
    budgets.settle(first, 3 * CALL)
    budgets.reserve([month, run], 5 * CALL)
    before = counters(month, run)

    refusal = budgets.reserve([month, run], 4 * CALL)

    assert refusal == Refusal(month, 2 * CALL)  # 3 spent + 5 reserved + 4 asked - 10
    assert counters(month, run) == before == [(3 * CALL, 5 * CALL), (3 * CALL, 5 * CALL)]


def test_an_unlimited_budget_never_refuses_and_still_counts_spending():
    run = run_budget(None)
    for _ in range(3):
        budgets.settle(budgets.reserve([run], 10**12), 10**12)
    assert counters(run) == [(3 * 10**12, 0)]


def test_settle_records_the_actual_cost_once_whatever_was_reserved():
    run = run_budget(10 * CALL)
    more, less = budgets.reserve([run], 2 * CALL), budgets.reserve([run], 2 * CALL)
    budgets.settle(more, 3 * CALL)
    budgets.settle(less, CALL)
    assert counters(run) == [(4 * CALL, 0)]
    budgets.settle(more, 3 * CALL)
    budgets.release(less)
    assert counters(run) == [(4 * CALL, 0)]
    assert isinstance(budgets.reserve([run], 6 * CALL), Reservation)
    assert isinstance(budgets.reserve([run], 1), Refusal)


def test_release_gives_the_reservation_back_and_a_later_settle_counts_nothing():
    run = run_budget(5 * CALL)
    reservation = budgets.reserve([run], 5 * CALL)
    assert isinstance(budgets.reserve([run], CALL), Refusal)
    budgets.release(reservation)
    budgets.settle(reservation, 5 * CALL)
    budgets.release(reservation)
    assert counters(run) == [(0, 0)]
    assert isinstance(budgets.reserve([run], 5 * CALL), Reservation)


def test_a_reserve_sent_again_after_its_reply_was_lost_counts_once():
    run = run_budget(5 * CALL)
    args = ["retried-id", 3 * CALL, 60_000, run.limit_micros, run.expire_at]
    for _ in range(2):  # what redis-py does on a timeout: the same script with the same arguments
        assert budgets.script(budgets.RESERVE)(keys=[run.key, f"{run.key}:holds"], args=args) == [1]
    assert counters(run) == [(0, 3 * CALL)]


def test_a_crashed_workers_reservation_is_given_back_once_its_hold_runs_out():
    tenant_id, run_id = random.randrange(10**9), uuid.uuid4()
    run = run_budget(5 * CALL, tenant_id, run_id)
    step = Budget.step(tenant_id=tenant_id, run_id=run_id, node_id="n", attempt=1, limit_micros=None)
    crashed = budgets.reserve([run, step], 4 * CALL, hold_s=1)
    assert isinstance(budgets.reserve([run, step], 4 * CALL), Refusal)

    deadline = time.monotonic() + 10
    while isinstance(late := budgets.reserve([run, step], 4 * CALL), Refusal):
        assert time.monotonic() < deadline, "the crashed worker's reservation was never given back"
        time.sleep(0.05)
    assert counters(run, step) == [(0, 4 * CALL), (0, 4 * CALL)]
    assert isinstance(budgets.reserve([run, step], 4 * CALL), Refusal)  # given back once, not at every reserve

    # The crashed worker's call did cost something after all: a late settle records it, once.
    budgets.settle(crashed, 3 * CALL)
    budgets.settle(crashed, 3 * CALL)
    assert counters(run, step) == [(3 * CALL, 4 * CALL), (3 * CALL, 4 * CALL)]
    budgets.settle(late, 2 * CALL)
    assert counters(run, step) == [(5 * CALL, 0), (5 * CALL, 0)]


def test_tenants_with_the_same_run_and_month_never_share_counters():
    run_id, tenant_id = uuid.uuid4(), random.randrange(10**9)
    mine = [run_budget(CALL, tenant_id, run_id), Budget.month(tenant_id=tenant_id, limit_micros=CALL)]
    theirs = [run_budget(CALL, tenant_id + 1, run_id), Budget.month(tenant_id=tenant_id + 1, limit_micros=CALL)]
    budgets.settle(budgets.reserve(mine, CALL), CALL)
    assert isinstance(budgets.reserve(mine, 1), Refusal)
    assert isinstance(budgets.reserve(theirs, CALL), Reservation)
    assert counters(*mine) == [(CALL, 0), (CALL, 0)]
    assert counters(*theirs) == [(0, CALL), (0, CALL)]


def test_a_months_counters_expire_a_little_after_the_month_ends():
    month = Budget.month(tenant_id=random.randrange(10**9), limit_micros=None)
    budgets.reserve([month], CALL)
    now = datetime.now(timezone.utc)
    assert month.key.endswith(f":budget:month:{now:%Y-%m}")
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc)
    expires_at = time.time() + redis.Redis.from_url(settings.REDIS_URL).ttl(month.key)
    assert next_month.timestamp() < expires_at < next_month.timestamp() + 8 * 86_400
    assert Budget.month(tenant_id=7, limit_micros=None, at=datetime(2026, 12, 31, 23, 59, tzinfo=timezone.utc)).key \
        == "hil:{t7}:budget:month:2026-12"


def test_cost_from_tokens_and_prices_per_million_tokens():
    # 1,000 input tokens of which 400 cached, 500 output, at $2.50 / $1.25 / $10 per million tokens.
    assert budgets.cost_micros(input_tokens=1_000, cached_input_tokens=400, output_tokens=500, input_price="2.50",
                               cached_input_price="1.25", output_price=Decimal("10")) == 1_500 + 500 + 5_000
    # Cached tokens at the input price when the model has none for them; a fraction of a micro-dollar rounds up.
    assert budgets.cost_micros(input_tokens=3, cached_input_tokens=1, output_tokens=0, input_price="0.15",
                               output_price="0.6") == 1
    assert budgets.cost_micros(input_tokens=10**9, output_tokens=0, input_price="0.1", output_price=0) == 10**8
    with pytest.raises(ValueError, match="more than 6 decimals"):  # as no model's price can be (agents.models)
        budgets.cost_micros(input_tokens=1, output_tokens=0, input_price="0.0000001", output_price=0)
