"""LiteLLM's side of bench/router.py, run in its own virtualenv (.venv-litellm): LiteLLM needs an `openai`
other than the one HIL pins. Prints one JSON line: p50/p95 (ms) of the direct `openai` client and of
`litellm.completion`, against the same local server, with the same callers and calls.

    .venv-litellm/bin/python bench/litellm_peer.py BASE_URL KEY CALLERS CALLS
"""

import json
import statistics
import sys
import threading
import time

import litellm
import openai

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Where is order 42?"}]


def timed(call, callers: int, calls: int) -> tuple[float, float]:
    samples, start = [], threading.Barrier(callers)

    def caller():
        call()
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q = statistics.quantiles(samples, n=100)
    return q[49], q[94]


def main(base_url: str, key: str, callers: int, calls: int) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    direct = timed(lambda: client.chat.completions.create(model="hil-local-chat", messages=MESSAGES, max_tokens=50),
                   callers, calls)
    lite = timed(lambda: litellm.completion(model="openai/hil-local-chat", api_base=base_url, api_key=key,
                                            messages=MESSAGES, max_tokens=50, num_retries=0), callers, calls)
    print(json.dumps({"direct": direct, "litellm": lite}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
