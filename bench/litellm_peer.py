"""LiteLLM's side of bench/router.py, run in its own virtualenv (.venv-litellm): LiteLLM needs an `openai`
other than the one HIL pins. Prints one JSON line: bench/callers.py's figures for the direct `openai` client
and for `litellm.completion`, against the same local server, with the same callers and calls.

    .venv-litellm/bin/python bench/litellm_peer.py BASE_URL KEY CALLERS CALLS SPREAD_S
"""

import json
import os
import sys

# LiteLLM's own table of model prices, not a thread that fetches GitHub's copy: a caller forked while that thread
# is inside OpenSSL waits forever for its lock (seen here, offline: it retries).
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402
import openai  # noqa: E402

from callers import timed  # noqa: E402

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Where is order 42?"}]


def main(base_url: str, key: str, callers: int, calls: int, spread_s: float) -> None:
    def direct():
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
        return lambda: client.chat.completions.create(model="hil-local-chat", messages=MESSAGES, max_tokens=50)

    def lite():
        return lambda: litellm.completion(model="openai/hil-local-chat", api_base=base_url, api_key=key,
                                          messages=MESSAGES, max_tokens=50, num_retries=0)

    print(json.dumps({"direct": timed(direct, callers, calls, spread_s),
                      "litellm": timed(lite, callers, calls, spread_s)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
