"""Concurrent callers for bench/router.py and bench/litellm_peer.py: processes, as HIL's prefork workers are,
each making one call after another. The standard library only: LiteLLM's side runs in a virtualenv of its own.
"""

import multiprocessing
import random
import statistics
import time


def timed(make_call, callers: int, calls: int, spread_s: float = 0) -> dict:
    """Run `callers` processes (forked: close database connections first). Each makes its call with
    `make_call()`, calls it once to warm up, waits for the others, waits a random part of `spread_s` (callers
    that start apart, as customers do) and calls it `calls` times. A call may return figures of its own (a tuple
    of ms). Returns p50/p95 of the calls' times and of each of their own figures (ms), and the wall time per call
    (ms)."""
    fork = multiprocessing.get_context("fork")
    start, results = fork.Barrier(callers + 1), fork.Queue()
    processes = [fork.Process(target=_caller, args=(make_call, calls, spread_s, start, results))
                 for _ in range(callers)]
    for process in processes:
        process.start()
    start.wait()
    t0 = time.perf_counter()
    samples, own = [], []
    for _ in processes:
        theirs, their_own = results.get()
        samples += theirs
        own += their_own
    wall_ms = (time.perf_counter() - t0) * 1000
    for process in processes:
        process.join()
    return {"p": pct(samples), "own": [pct(figures) for figures in zip(*own)], "per_call": wall_ms / len(samples)}


def _caller(make_call, calls: int, spread_s: float, start, results) -> None:
    call = make_call()
    call()
    start.wait()
    time.sleep(random.uniform(0, spread_s))
    samples, own = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        figure = call()
        samples.append((time.perf_counter() - t0) * 1000)
        if isinstance(figure, tuple):
            own.append(figure)
    results.put((samples, own))


def pct(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49], q[94]
