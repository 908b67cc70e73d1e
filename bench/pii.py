"""PII redaction benchmark: how well `tools.pii` finds personal data, and what redacting costs a tool call.

    python bench/pii.py [--runs 3000]

Quality: every case of the labelled set (tools/tests/data/pii_cases.jsonl, about half of it look-alikes with no
personal data) is run through `pii.find`; a found (entity, value) that the case lists is a true positive, one
it doesn't a false positive, a listed one not found a false negative. Prints precision, recall and F1 per
entity and overall.

Speed: `pii.redact` with a fresh vault, `--runs` times, on a 2,000-character support transcript and tool
output full of numbers that are not personal data (order and invoice ids, dates, times, amounts, a tracking
number, an IP address), then on the same text with 6 items in it. Prints p50/p95 and the mean against the
targets: a tool call's whole budget is 2 ms, so well under 1 ms on average without personal data (read here as
half of it at most) and about 1 ms with a handful (1 ms at most). No database, no Django. It never fails on a
timing.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

from bench.callers import pct  # noqa: E402
from tools import pii  # noqa: E402
from tools.tests.test_pii import confusion  # noqa: E402

CASES = REPO / "tools" / "tests" / "data" / "pii_cases.jsonl"
TARGET_CLEAN_MS, TARGET_PII_MS = 0.5, 1.0  # means
LENGTH = 2000

TRANSCRIPT = (
    "Customer: Hi, my order 100234567 from 2024-03-15 hasn't arrived. The tracking page for 1Z999AA10123456784 "
    "has said 'in transit' since Tuesday 10:30.\n"
    "Agent: Sorry about that! I can see order 100234567 left our warehouse in 75008 Paris on 15/03/2024 at "
    "14:05, 2 parcels, 3.2 kg in all. Invoice INV-2024-000123 shows a total of $1,299.00 (tax $104.00).\n"
    "Customer: Can you refund the shipping of 12.99 EUR? I paid with the card ending in 4242.\n"
    "Agent: Sure. I've opened ticket #48213 and case 00123456; the refund of 12.99 EUR takes 5-7 business days.\n"
    'tool get_order -> {"order_id": 100234567, "status": "in_transit", "created_at": "2024-03-15T10:30:00Z", '
    '"items": [{"sku": "55821-BL-XL", "qty": 3, "price": 19.99}, {"sku": "A-100", "qty": 1, "price": 1239.02}], '
    '"carrier": "UPS", "tracking": "1Z999AA10123456784", "eta": "2024-03-18", "warehouse_ip": "192.168.10.254", '
    '"version": "3.12.4", "session": "550e8400-e29b-41d4-a716-446655440000", "total_cents": 129900}\n'
    "tool get_refund_policy -> Refunds within 30 days of delivery; shipping fees over $50 are refunded in full. "
    "Call center hours: 8am-8pm EST, 7 days a week. Version 2.3.1 of the policy, updated 2024-02-01.\n"
)
ITEMS = ("Customer: You can reach me at jane.doe@example.com or +1 (415) 555-2671, or my husband at 020 7946 0958. "
         "Refund to card 4111 1111 1111 1111 or IBAN DE89 3704 0044 0532 0130 00; SSN 123-45-6789 if needed.\n")


def two_kb(text: str) -> str:
    return (text * (LENGTH // len(text) + 1))[:LENGTH]


def quality() -> None:
    cases = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]
    tp, fp, fn = confusion(cases)
    print(f"{len(cases)} labelled cases, {sum(not case['entities'] for case in cases)} of them without personal "
          f"data ({CASES.relative_to(REPO)})")
    print(f"  {'entity':<12} {'true':>5} {'false+':>6} {'false-':>6} {'precision':>9} {'recall':>6} {'F1':>6}")
    for entity in [*pii.ENTITIES, "overall"]:
        t, p, n = ((tp[entity], fp[entity], fn[entity]) if entity != "overall"
                   else (sum(tp.values()), sum(fp.values()), sum(fn.values())))
        precision, recall = t / (t + p) if t + p else 1.0, t / (t + n) if t + n else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        print(f"  {entity:<12} {t:>5} {p:>6} {n:>6} {precision:>9.3f} {recall:>6.3f} {f1:>6.3f}")


def speed(runs: int) -> None:
    clean = two_kb(TRANSCRIPT)
    with_items = clean[:LENGTH - len(ITEMS)] + ITEMS
    assert not pii.find(clean) and len(pii.find(with_items)) == 6, "the bench's texts are not what they say"
    print(f"pii.redact on {LENGTH:,} characters with a fresh vault, {runs:,} runs: p50 / p95 and mean, ms")
    for label, text, target in (("no personal data", clean, TARGET_CLEAN_MS), ("6 items", with_items, TARGET_PII_MS)):
        for _ in range(100):  # warm up
            pii.redact(text, vault=pii.Vault())
        samples = []
        for _ in range(runs):
            vault = pii.Vault()
            t0 = time.perf_counter()
            pii.redact(text, vault=vault)
            samples.append((time.perf_counter() - t0) * 1000)
        p50, p95 = pct(samples)
        mean = sum(samples) / runs
        print(f"  {label:<18} {p50:6.3f} / {p95:6.3f}   mean {mean:6.3f}   "
              f"target: mean <= {target:g} ms, {'met' if mean <= target else 'missed'}")
    print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3000)
    args = parser.parse_args()
    quality()
    speed(args.runs)


if __name__ == "__main__":
    main()
