"""Models behind the agent interface.

With no LLM endpoint configured, agents use OfflineModel: a deterministic stand-in that
scores keywords and fills templates. It is not an LLM and does not pretend to be one; it
makes the demo and the tests run offline and repeatably.
"""

import re
from dataclasses import dataclass

WORD = re.compile(r"[a-z0-9']+")
ORDER_REF = re.compile(r"(?:order|invoice|#)\s*(?:no\.?|number|#)?\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float
    entities: dict


class OfflineModel:
    name = "hil-offline-1"

    def classify(self, text: str, labels: dict[str, str], fallback: str) -> Classification:
        """Pick the label whose keywords overlap the text most; `fallback` when none do."""
        words = set(WORD.findall(text.lower()))
        scores = {label: len(words & set(WORD.findall(keywords.lower()))) for label, keywords in labels.items()}
        best = max(scores, key=scores.get, default=None)
        total = sum(scores.values())
        entities = {}
        if match := ORDER_REF.search(text):
            entities["order_id"] = int(match.group(1))
        if best is None or scores[best] == 0:
            return Classification(fallback, 0.0, entities)
        return Classification(best, round(scores[best] / total, 3), entities)
