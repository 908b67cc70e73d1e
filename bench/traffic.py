"""Traffic for a running HIL (`make run`): customers asking the demo's `customer_support` workflow, so that the
analytics dashboard (admin › Analytics › Dashboard) fills in as the rollups follow (every minute).

    python bench/traffic.py --token TOKEN [--url http://127.0.0.1:8000] [--rate 1] [--minutes 10] [--breach]

TOKEN is the demo operator's (`make run` prints it as TOKEN=...). Each second, `--rate` new conversations post one
message each, from a mix of what the demo answers: order statuses and small refunds (FINISH), a refund over 10.00
(it waits for an approval: decided by the script as the operator, most approved), and a request for a person
(HANDOVER). About a third of the conversations that ended are rated 1-5 afterwards, as a survey integration would
(`POST /api/v1/conversations/{id}/satisfaction/`). `--breach` makes nearly every customer ask for a person: the
demo's `handover_rate: 0.3` SLO burns past its thresholds and an alert opens within a few minutes (the ticket
alert at once; the page alert once the last hour is mostly handovers). Handover tickets pile up in the console's
queue, as they would. Ctrl-C stops it; it prints what it did every 10 s.
"""

import argparse
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

MIX = [("Where is my order {order}?", 3), ("Please refund order {order}", 3),
       ("I want my money back for order 5", 1), ("Can I speak to a person?", 1)]
SMALL_ORDERS = [1, 2, 3, 4, 6, 7]  # under the 10.00 that needs an approval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("TOKEN"), help="an operator's API token (or $TOKEN)")
    parser.add_argument("--rate", type=float, default=1.0, help="new conversations per second")
    parser.add_argument("--minutes", type=float, default=10, help="how long; 0 runs until Ctrl-C")
    parser.add_argument("--breach", action="store_true", help="nearly every customer asks for a person")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if not args.token:
        sys.exit("--token (or $TOKEN): the operator's API token that `make run` prints")
    rng = random.Random(args.seed)
    api = httpx.Client(base_url=f"{args.url.rstrip('/')}/api/v1/", timeout=30,
                       headers={"Authorization": f"Bearer {args.token}"})
    counts, waiting = Counter(), []  # waiting: (due, conversation id, run id) to settle later
    stop = time.monotonic() + args.minutes * 60 if args.minutes else float("inf")
    with ThreadPoolExecutor(max_workers=8) as pool:
        next_tick = report = time.monotonic()
        try:
            while time.monotonic() < stop:
                n = int(args.rate) + (rng.random() < args.rate % 1)
                for posted in pool.map(lambda _: _converse(api, rng, args.breach, counts), range(n)):
                    if posted:
                        waiting.append((time.monotonic() + 5, *posted))
                due = [w for w in waiting if w[0] <= time.monotonic()]
                waiting = [w for w in waiting if w[0] > time.monotonic()]
                waiting += [w for w in pool.map(lambda w: _settle(api, rng, w, counts), due) if w]
                if time.monotonic() - report >= 10:
                    report = time.monotonic()
                    print(time.strftime("%H:%M:%S"), " ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                          flush=True)
                next_tick += 1
                time.sleep(max(0.0, next_tick - time.monotonic()))
        except KeyboardInterrupt:
            pass
    print("done:", " ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _converse(api: httpx.Client, rng: random.Random, breach: bool, counts: Counter):
    """Start a conversation and post one message; (conversation, run) or None if the API refused."""
    text = "Can I speak to a person?" if breach and rng.random() < 0.95 else rng.choices(
        [t for t, _ in MIX], [w for _, w in MIX])[0].format(order=rng.choice(SMALL_ORDERS))
    try:
        conversation = api.post("conversations/", json={"workflow": "customer_support"}).raise_for_status().json()
        message = api.post(f"conversations/{conversation['id']}/messages/",
                           json={"text": text, "turn_id": "t1"}).raise_for_status().json()
    except httpx.HTTPError as e:
        counts[f"error:{type(e).__name__}"] += 1
        return None
    counts["posted"] += 1
    return conversation["id"], message["run"]["id"]


def _settle(api: httpx.Client, rng: random.Random, waiting: tuple, counts: Counter):
    """Decide the run's approval if it waits on one, rate the conversation once its run ended; the entry again
    (due later) while the run is still going."""
    _, conversation, run_id = waiting
    try:
        run = api.get(f"runs/{run_id}/").raise_for_status().json()
        if run["status"] == "waiting":
            approvals = api.get("approvals/", params={"status": "pending"}).raise_for_status().json()["results"]
            for approval in (a for a in approvals if a["run"] == run_id):
                decision = "approve" if rng.random() < 0.8 else "reject"
                api.post(f"approvals/{approval['id']}/decision/", json={"decision": decision})
                counts[f"approval:{decision}"] += 1
        if run["status"] not in ("done", "failed", "cancelled"):
            return (time.monotonic() + 3, conversation, run_id)
        counts[f"run:{run['sink'] or run['status']}"] += 1
        if rng.random() < 0.35:
            happy = run["sink"] == "FINISH"
            score = rng.choice([4, 5, 5, 3] if happy else [1, 2, 3, 4])
            api.post(f"conversations/{conversation}/satisfaction/", json={"score": score}).raise_for_status()
            counts["rated"] += 1
    except httpx.HTTPError as e:
        counts[f"error:{type(e).__name__}"] += 1
    return None


if __name__ == "__main__":
    main()
