"""PII redaction: personal data in tool output becomes tokens a model can't read back, the same value always
the same token, and the values come back when the tokens are filled in. No database."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tools import pii

CASES = [json.loads(line) for line in
         (Path(__file__).parent / "data" / "pii_cases.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("entity, text, value, token", [
    ("email", "Write to jane.doe@example.com today.", "jane.doe@example.com", "<EMAIL_1>"),
    ("phone", "Call me back on +1 (415) 555-2671 after 5pm.", "+1 (415) 555-2671", "<PHONE_1>"),
    ("phone", "Téléphone : 06 12 34 56 78 (portable).", "06 12 34 56 78", "<PHONE_1>"),
    ("phone", "Tel 4155550163 (verified via SMS)", "4155550163", "<PHONE_1>"),
    ("card", "Refund card 4111 1111 1111 1111, exp 12/27.", "4111 1111 1111 1111", "<CARD_1>"),
    ("card", "Amex 3782 822463 10005 declined.", "3782 822463 10005", "<CARD_1>"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX", "DE89 3704 0044 0532 0130 00", "<IBAN_1>"),
    ("iban", "Konto GB82WEST12345698765432.", "GB82WEST12345698765432", "<IBAN_1>"),
    ("national_id", "My SSN is 123-45-6789.", "123-45-6789", "<NATIONAL_ID_1>"),
    ("national_id", "NIR 1 84 12 76 451 089 46", "1 84 12 76 451 089 46", "<NATIONAL_ID_1>"),
    ("national_id", "Mi DNI es 12345678Z.", "12345678Z", "<NATIONAL_ID_1>"),
    ("national_id", "NIE X1234567L", "X1234567L", "<NATIONAL_ID_1>"),
    ("national_id", "Codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S", "<NATIONAL_ID_1>"),
    ("national_id", "Steuer-ID 86 095 742 719", "86 095 742 719", "<NATIONAL_ID_1>"),
    ("national_id", "BSN: 111222333", "111222333", "<NATIONAL_ID_1>"),
    ("national_id", "NI number: AB 12 34 56 C", "AB 12 34 56 C", "<NATIONAL_ID_1>"),
])
def test_each_entity_is_found_and_tokenised(entity, text, value, token):
    vault = pii.Vault()

    redacted = pii.redact(text, vault=vault)

    assert pii.find(text) == [pii.Match(entity, text.index(value), text.index(value) + len(value), value)]
    assert redacted == text.replace(value, token)
    assert vault.to_json() == {"tokens": {token: value}}


def test_the_same_value_gets_the_same_token_across_calls_and_a_stored_vault():
    vault = pii.Vault()
    assert not vault.changed

    first = pii.redact("a@example.com wrote to b@example.com; a@example.com again", vault=vault)
    second = pii.redact("b@example.com, then c@example.com", vault=vault)
    assert first == "<EMAIL_1> wrote to <EMAIL_2>; <EMAIL_1> again"
    assert second == "<EMAIL_2>, then <EMAIL_3>"
    assert vault.changed

    stored = pii.Vault.from_json(json.loads(json.dumps(vault.to_json())))
    assert not stored.changed
    assert pii.redact("c@example.com", vault=stored) == "<EMAIL_3>"
    assert not stored.changed  # nothing new to store
    assert pii.redact("d@example.com +44 20 7946 0958", vault=stored) == "<EMAIL_4> <PHONE_1>"
    assert stored.changed


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_refill_gives_back_the_text_that_was_redacted(case):
    vault = pii.Vault()
    redacted = pii.redact(case["text"], vault=vault)

    assert (redacted != case["text"]) == bool(pii.find(case["text"]))
    assert pii.refill(redacted, pii.Vault.from_json(vault.to_json())) == case["text"]


def test_refill_leaves_tokens_it_does_not_know():
    vault = pii.Vault()
    pii.redact("jane@example.com", vault=vault)

    refilled = pii.refill("<EMAIL_1>, <EMAIL_2>, <PHONE_1>, <NAME_1>", vault)

    assert refilled == "jane@example.com, <EMAIL_2>, <PHONE_1>, <NAME_1>"


def test_redact_json_redacts_every_string_value_but_not_keys_and_leaves_the_input_alone():
    vault = pii.Vault()
    value = {
        "jane@example.com": "key, not a value",
        "customer": {"email": "jane@example.com", "phones": ["+1 (415) 555-2671", "n/a"], "orders": [100234567]},
        "payments": [{"card": "4111 1111 1111 1111", "amount": 129.99, "refunded": False, "note": None}],
        "history": ("IBAN DE89 3704 0044 0532 0130 00 used on 2024-03-15",),
    }
    original = json.dumps(value)

    redacted = pii.redact_json(value, vault=vault)

    assert redacted == {
        "jane@example.com": "key, not a value",
        "customer": {"email": "<EMAIL_1>", "phones": ["<PHONE_1>", "n/a"], "orders": [100234567]},
        "payments": [{"card": "<CARD_1>", "amount": 129.99, "refunded": False, "note": None}],
        "history": ["IBAN <IBAN_1> used on 2024-03-15"],
    }
    assert json.dumps(value) == original


def test_only_the_entities_asked_for_are_redacted():
    text = "jane@example.com, +1 (415) 555-2671, 4111 1111 1111 1111, SSN 123-45-6789"

    assert pii.redact(text, vault=pii.Vault(), entities=("email",)) == (
        "<EMAIL_1>, +1 (415) 555-2671, 4111 1111 1111 1111, SSN 123-45-6789")
    assert pii.redact(text, vault=pii.Vault(), entities=("phone", "national_id")) == (
        "jane@example.com, <PHONE_1>, 4111 1111 1111 1111, SSN <NATIONAL_ID_1>")
    assert [match.entity for match in pii.find(text, entities=())] == []
    with pytest.raises(ValueError):
        pii.find(text, entities=("name",))


def test_a_text_found_clean_is_looked_through_once_and_one_with_personal_data_is_never_kept(monkeypatch):
    phone, email = "Call me on +44 20 7946 0958", "Write to jane@example.com"
    assert pii.redact(phone, vault=pii.Vault(), entities=("email",)) == phone
    with monkeypatch.context() as patched:
        patched.setattr(pii, "find", None)  # looked through again, it would fail
        assert pii.redact(phone, vault=pii.Vault(), entities=("email",)) == phone
    assert pii.redact(phone, vault=pii.Vault(), entities=["email", "phone"]) == "Call me on <PHONE_1>"
    assert pii.redact(email, vault=pii.Vault()) == "Write to <EMAIL_1>"
    assert (phone, ("email", "phone")) not in pii._clean and not any(text == email for text, _ in pii._clean)


def test_a_number_failing_luhn_is_no_card():
    assert [match.entity for match in pii.find("Card 4111 1111 1111 1111")] == ["card"]
    assert pii.find("Card 4111 1111 1111 1112") == []
    assert pii.find("Card 4111111111111112") == []


def test_an_iban_or_a_national_id_keeps_a_number_that_is_also_a_valid_phone_number():
    # 323-18-0187 alone is a valid Spanish phone number, and 0663 2319 78 a Dutch one.
    text = "SSN 323-18-0187, refund to NL90 ABNA 0663 2319 78"
    for number in ("323-18-0187", "0663 2319 78"):
        assert pii._is_phone(text, text.index(number), text.index(number) + len(number), number)

    assert [(match.entity, match.value) for match in pii.find(text)] == [
        ("national_id", "323-18-0187"), ("iban", "NL90 ABNA 0663 2319 78")]
    assert pii.find(text, entities=("phone",)) == []


def test_look_alikes_are_left_alone():
    text = ("Order 4155552671 shipped on 2024-03-15 at 10:30, tracking 1Z999AA10123456784, total $1,299.00, "
            "invoice INV-2024-000123, version 3.12.4, host 192.168.10.254, ZIP 94103-1234, call me at 5, "
            "https://medium.com/@jane/post, git@github.com:acme/shop.git, logo@2x.png, IMEI 356938035643809")

    assert pii.find(text) == []


def confusion(cases: list[dict]) -> tuple[Counter, Counter, Counter]:
    """True positives, false positives and misses per entity type (a value found as labelled is a hit);
    bench/pii.py prints the same figures."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for case in cases:
        expected = Counter((entity["type"], entity["value"]) for entity in case["entities"])
        found = Counter((match.entity, match.value) for match in pii.find(case["text"]))
        for key in expected | found:
            hit = min(expected[key], found[key])
            tp[key[0]] += hit
            fp[key[0]] += found[key] - hit
            fn[key[0]] += expected[key] - hit
    return tp, fp, fn


def test_precision_and_recall_over_the_labelled_set():
    assert len(CASES) >= 260
    assert 0.4 <= sum(not case["entities"] for case in CASES) / len(CASES) <= 0.6
    tp, fp, fn = confusion(CASES)

    for entity in pii.ENTITIES:
        assert tp[entity] >= 10, entity  # enough cases of it for its figures to mean something
        assert tp[entity] / (tp[entity] + fp[entity]) >= 0.9, entity
        assert tp[entity] / (tp[entity] + fn[entity]) >= 0.9, entity
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    assert total_tp / (total_tp + total_fp) >= 0.95
    assert total_tp / (total_tp + total_fn) >= 0.95
