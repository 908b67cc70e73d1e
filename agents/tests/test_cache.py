"""The router's caches against the real Postgres + pgvector and the real MiniLM embeddings.

Similarities of MiniLM (all-MiniLM-L6-v2) to "How can I get a refund for order 5?", measured:
"How do I get a refund for order 5?" 0.997, "How could I get a refund for order 5?" 0.997,
"How do I get my money back for order 5?" 0.882, "How can I get a refund for order 6?" 0.870,
"What is the weather in Paris tomorrow?" 0.059. Paraphrases that change words ("money back") score
no higher than the same question about another order, so the threshold stays at 0.95.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents import cache, tasks
from agents.models import CachedAnswer

QUESTION = "How can I get a refund for order 5?"
SYSTEM = "You answer customers of the Chinook store."
SCHEMA = {"type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"]}
ANSWER = '{"reply": "Refunds for order 5 go through the orders page."}'


def scope(tenant_id, **changes):
    return cache.scope_of(**{"tenant_id": tenant_id, "workflow_version_id": 7, "system_prompt": SYSTEM,
                             "profile": "balanced", "schema": SCHEMA, **changes})


def ask(question=QUESTION, history=()):
    return [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": question}]


def store(tenant_id, *, scope_=None, messages=None, semantic=False, answer=ANSWER, cost="0.0004200000",
          max_tokens=256, schema=SCHEMA):
    cache.store(tenant_id=tenant_id, scope=scope_ or scope(tenant_id), messages=messages or ask(),
                max_tokens=max_tokens, schema=schema, answer_text=answer, data={"reply": answer}, model="gpt-4o-mini",
                cost=Decimal(cost), semantic=semantic)


def lookup(tenant_id, *, scope_=None, messages=None, semantic=False, max_tokens=256, schema=SCHEMA):
    return cache.lookup(tenant_id=tenant_id, scope=scope_ or scope(tenant_id), messages=messages or ask(),
                        max_tokens=max_tokens, schema=schema, semantic=semantic)


def test_the_same_request_is_answered_from_the_cache_with_what_it_saved(tenant):
    store(tenant.id)

    hit = lookup(tenant.id)

    assert hit == cache.Hit(text=ANSWER, data={"reply": ANSWER}, model="gpt-4o-mini",
                            saved_cost=Decimal("0.0004200000"), kind="exact")


def test_the_order_of_keys_in_the_schema_and_messages_does_not_matter(tenant):
    store(tenant.id)
    schema = dict(reversed(SCHEMA.items()))
    messages = [dict(reversed(m.items())) for m in ask()]

    assert lookup(tenant.id, scope_=scope(tenant.id, schema=schema), messages=messages, schema=schema).kind == "exact"


@pytest.mark.parametrize("change", [
    {"workflow_version_id": 8}, {"system_prompt": SYSTEM + " Be brief."}, {"profile": "fast"},
    {"schema": {**SCHEMA, "required": []}},
])
def test_a_request_of_another_scope_is_not_answered(tenant, change):
    store(tenant.id)

    assert lookup(tenant.id, scope_=scope(tenant.id, **change), schema=change.get("schema", SCHEMA)) is None
    assert lookup(tenant.id) is not None


def test_another_tenant_never_gets_an_entry_even_with_the_same_scope(tenant, other_tenant):
    store(tenant.id, semantic=True)

    assert lookup(other_tenant.id, semantic=True) is None
    assert lookup(other_tenant.id, scope_=scope(tenant.id), semantic=True) is None  # a scope passed by mistake


@pytest.mark.parametrize("other", [
    {"messages": ask("How can I get a refund for order 6?")}, {"max_tokens": 512}, {"schema": None},
])
def test_a_different_request_in_the_same_scope_is_not_an_exact_hit(tenant, other):
    store(tenant.id)

    assert lookup(tenant.id, **other) is None


def test_an_entry_lives_its_ttl_and_is_not_served_once_expired(tenant, settings):
    settings.HIL_LLM_CACHE_TTL_S = 3600
    store(tenant.id, semantic=True)
    entry = CachedAnswer.objects.get()
    assert entry.expires_at - entry.created_at == timedelta(hours=1)

    CachedAnswer.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert lookup(tenant.id) is None
    assert lookup(tenant.id, messages=ask("How do I get a refund for order 5?"), semantic=True) is None


def test_expired_entries_are_deleted_by_the_beat_task_and_live_ones_kept(tenant):
    store(tenant.id, messages=ask("old question"))
    old = CachedAnswer.objects.get()
    store(tenant.id, messages=ask("new question"))
    CachedAnswer.objects.filter(pk=old.pk).update(expires_at=timezone.now())

    assert tasks.llm_cache_expire_task() == 1

    assert not CachedAnswer.objects.filter(pk=old.pk).exists() and CachedAnswer.objects.count() == 1
    assert lookup(tenant.id, messages=ask("new question")) is not None


def test_a_ttl_of_zero_turns_both_caches_off(tenant, settings):
    store(tenant.id, semantic=True)
    settings.HIL_LLM_CACHE_TTL_S = 0

    store(tenant.id, messages=ask("another question"))

    assert CachedAnswer.objects.count() == 1
    assert lookup(tenant.id, semantic=True) is None


def test_a_paraphrase_is_a_semantic_hit_in_the_same_scope(tenant):
    store(tenant.id, semantic=True, cost="0.0010000000")

    hit = lookup(tenant.id, messages=ask("How do I get a refund for order 5?"), semantic=True)

    assert (hit.kind, hit.text, hit.saved_cost) == ("semantic", ANSWER, Decimal("0.0010000000"))
    assert 0.99 < hit.similarity < 1


@pytest.mark.parametrize("question", [
    "What is the weather in Paris tomorrow?",
    "How can I get a refund for order 6?",  # 0.870: close in words, another order
    "How do I get my money back for order 5?",  # 0.882: a real paraphrase, but no closer than order 6
])
def test_a_question_below_the_threshold_is_a_semantic_miss(tenant, question):
    store(tenant.id, semantic=True)

    assert lookup(tenant.id, messages=ask(question), semantic=True) is None


def test_the_threshold_is_the_setting(tenant, settings):
    store(tenant.id, semantic=True)
    settings.HIL_LLM_SEMANTIC_THRESHOLD = 0.85

    hit = lookup(tenant.id, messages=ask("How do I get my money back for order 5?"), semantic=True)

    assert hit.kind == "semantic" and 0.85 <= hit.similarity < 0.9


def test_another_tenants_identical_question_is_a_semantic_miss(tenant, other_tenant):
    store(other_tenant.id, semantic=True)

    assert lookup(tenant.id, messages=ask("How do I get a refund for order 5?"), semantic=True) is None
    assert lookup(tenant.id, semantic=True) is None


def test_another_workflow_versions_question_is_a_semantic_miss(tenant):
    store(tenant.id, semantic=True)

    assert lookup(tenant.id, scope_=scope(tenant.id, workflow_version_id=8), semantic=True) is None


def test_without_semantic_a_paraphrase_is_a_miss(tenant):
    store(tenant.id, semantic=True)
    paraphrase = ask("How do I get a refund for order 5?")

    assert lookup(tenant.id, messages=paraphrase, semantic=False) is None
    assert lookup(tenant.id, messages=paraphrase, semantic=True).kind == "semantic"


def test_a_last_message_with_an_image_is_never_a_semantic_hit(tenant):
    def with_image(text):
        return ask([{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "https://x/1.png"}}])

    store(tenant.id, semantic=True)
    store(tenant.id, messages=with_image(QUESTION), semantic=True)

    assert CachedAnswer.objects.filter(embedding__isnull=True).count() == 1
    assert lookup(tenant.id, messages=with_image("How do I get a refund for order 5?"), semantic=True) is None
    assert lookup(tenant.id, messages=with_image(QUESTION), semantic=True).kind == "exact"


def test_an_answer_stored_without_semantic_is_never_a_semantic_hit(tenant):
    store(tenant.id, semantic=False)

    assert CachedAnswer.objects.get().embedding is None
    assert lookup(tenant.id, messages=ask("How do I get a refund for order 5?"), semantic=True) is None


def test_the_same_last_message_after_another_conversation_is_a_semantic_miss(tenant):
    before = [{"role": "user", "content": "Can you refund order 5?"},
              {"role": "assistant", "content": "Yes. Shall I refund it to your card?"}]
    store(tenant.id, messages=ask("Yes, please do that for me.", before), semantic=True)
    other = [{"role": "user", "content": "Can you cancel my account?"},
             {"role": "assistant", "content": "Yes. Shall I delete all your data too?"}]

    assert lookup(tenant.id, messages=ask("Yes please, do that for me.", before), semantic=True).kind == "semantic"
    assert lookup(tenant.id, messages=ask("Yes, please do that for me.", other), semantic=True) is None


def test_an_exact_hit_comes_before_a_closer_semantic_one(tenant):
    paraphrase = ask("How do I get a refund for order 5?")
    store(tenant.id, semantic=True, answer="to the question")
    store(tenant.id, messages=paraphrase, semantic=False, answer="to the paraphrase")  # no embedding

    hit = lookup(tenant.id, messages=paraphrase, semantic=True)

    assert (hit.kind, hit.text) == ("exact", "to the paraphrase")
    assert lookup(tenant.id, messages=ask("How could I get a refund for order 5?"), semantic=True).text == (
        "to the question")


def test_storing_the_same_request_twice_keeps_one_row_with_the_latest_answer(tenant):
    store(tenant.id, semantic=True, answer="first")
    first = CachedAnswer.objects.get()
    store(tenant.id, semantic=False, answer="second", cost="0.0000100000")

    entry = CachedAnswer.objects.get()
    assert (entry.id, entry.answer, entry.cost) == (first.id, "second", Decimal("0.0000100000"))
    assert entry.expires_at >= first.expires_at
    assert entry.embedding is not None  # kept from the semantic store: it still serves paraphrases
    assert lookup(tenant.id, messages=ask("How do I get a refund for order 5?"), semantic=True).text == "second"
