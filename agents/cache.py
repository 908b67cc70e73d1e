"""The router's two caches of model answers, in Postgres (`CachedAnswer`).

Every entry has a scope: its tenant, workflow version, system prompt, profile and output schema, hashed
(`scope_of`). Nothing is ever served across scopes, so never from one tenant or workflow version to another.

- The exact cache, on by default, answers a request identical to one already answered in its scope: same
  messages, `max_tokens` and schema.
- The semantic cache, only for a node that opts in (`cache: semantic`: a near-duplicate question can need
  another answer), also answers a request that differs from one already answered only by its last user
  message, when the two messages' MiniLM embeddings have a cosine similarity of at least
  HIL_LLM_SEMANTIC_THRESHOLD. The nearest one is found with pgvector (HNSW index, cosine distance).

An entry lives HIL_LLM_CACHE_TTL_S (0 turns both caches off); `expired_delete` (Celery beat) removes the
expired ones, which are never served meanwhile.
"""

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone
from pgvector import Vector

from core import embeddings

from .models import CachedAnswer

DELETE_BATCH = 10_000
# In SQL, one statement per lookup: the ORM took longer to build this one than Postgres takes to run it.
EXACT = """
    SELECT id, answer, data, model, cost, NULL::float8 AS distance FROM agents_cachedanswer
    WHERE tenant_id = %(tenant)s AND request_hash = %(request)s AND expires_at > %(now)s"""
# The nearest entry of the scope with the same context, searched (HNSW index) only when there is no exact one.
EXACT_OR_NEAREST = f"""
    WITH exact AS ({EXACT})
    SELECT * FROM exact
    UNION ALL (
        SELECT id, answer, data, model, cost, embedding <=> %(vector)s::vector AS distance FROM agents_cachedanswer
        WHERE NOT EXISTS (SELECT FROM exact) AND tenant_id = %(tenant)s AND scope = %(scope)s
              AND context_hash = %(context)s AND expires_at > %(now)s AND embedding IS NOT NULL
        ORDER BY distance LIMIT 1)"""


@dataclass(frozen=True)
class Hit:
    text: str
    data: dict | None
    model: str
    saved_cost: Decimal  # what the call that gave this answer cost
    kind: str  # "exact" or "semantic", as LLMCall.Cache
    similarity: float = 1.0  # of the last user messages, for a semantic hit


def scope_of(*, tenant_id: int, workflow_version_id: int | str, system_prompt: str, profile: str,
             schema: dict | None) -> str:
    return _hash({"tenant": str(tenant_id), "workflow_version": str(workflow_version_id),
                  "system_prompt": system_prompt, "profile": profile, "schema": schema})


def lookup(*, tenant_id: int, scope: str, messages: list[dict], max_tokens: int, schema: dict | None,
           semantic: bool) -> Hit | None:
    """The cached answer to this request, exact first, then (if `semantic`) the nearest close enough one."""
    if not settings.HIL_LLM_CACHE_TTL_S:
        return None
    question = _last_user_text(messages) if semantic else None
    params = {"tenant": tenant_id, "request": _request_hash(scope, messages, max_tokens, schema),
              "now": timezone.now()}  # the clock `store` set the expiry by
    if question is not None:
        params |= {"scope": scope, "context": _context_hash(scope, messages, max_tokens, schema),
                   "vector": _embedding(question).to_text()}
    entry = next(iter(CachedAnswer.objects.raw(EXACT_OR_NEAREST if question is not None else EXACT, params)), None)
    if entry is None:
        return None
    if entry.distance is None:
        return Hit(text=entry.answer, data=entry.data, model=entry.model, saved_cost=entry.cost, kind="exact")
    if 1 - entry.distance < settings.HIL_LLM_SEMANTIC_THRESHOLD:
        return None
    return Hit(text=entry.answer, data=entry.data, model=entry.model, saved_cost=entry.cost, kind="semantic",
               similarity=1 - entry.distance)


def store(*, tenant_id: int, scope: str, messages: list[dict], max_tokens: int, schema: dict | None,
          answer_text: str, data: dict | None, model: str, cost: Decimal, semantic: bool) -> None:
    """Keep a model's answer to this request; the same request again replaces it (and its expiry)."""
    if not settings.HIL_LLM_CACHE_TTL_S:
        return
    question = _last_user_text(messages) if semantic else None
    now = timezone.now()
    entry = CachedAnswer(
        tenant_id=tenant_id, scope=scope, request_hash=_request_hash(scope, messages, max_tokens, schema),
        context_hash=_context_hash(scope, messages, max_tokens, schema),
        answer=answer_text, data=data, model=model, cost=cost, created_at=now,
        expires_at=now + timedelta(seconds=settings.HIL_LLM_CACHE_TTL_S),
        embedding=_embedding(question) if question is not None else None)
    replaced = ["answer", "data", "model", "cost", "created_at", "expires_at"]
    # A store that does not compute the embedding keeps the one an earlier, semantic store made.
    CachedAnswer.objects.bulk_create(
        [entry], update_conflicts=True, unique_fields=["tenant", "request_hash"],
        update_fields=replaced + (["embedding"] if entry.embedding is not None else []))


def expired_delete() -> int:
    """Delete the expired entries, a batch per statement (each committed, so that a cut-off run still
    gave some space back); returns how many."""
    deleted = 0
    while True:
        batch = CachedAnswer.objects.filter(
            id__in=CachedAnswer.objects.filter(expires_at__lte=timezone.now()).values("id")[:DELETE_BATCH])
        count, _ = batch.delete()
        deleted += count
        if count < DELETE_BATCH:
            return deleted


def _last_user_text(messages: list[dict]) -> str | None:
    """The text a semantic lookup compares: the last user message's, if it is plain text (not an image)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content") if isinstance(message.get("content"), str) else None
    return None


def _request_hash(scope: str, messages: list[dict], max_tokens: int, schema: dict | None) -> str:
    return _hash({"scope": scope, "messages": messages, "max_tokens": max_tokens, "schema": schema})


def _context_hash(scope: str, messages: list[dict], max_tokens: int, schema: dict | None) -> str:
    """The request with its last user message's text left out: a semantic hit needs the rest the same,
    or "yes, please" would be answered as it was in another conversation."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    context = [{**m, "content": None} if i == last else m for i, m in enumerate(messages)]
    return _hash({"scope": scope, "messages": context, "max_tokens": max_tokens, "schema": schema})


@functools.lru_cache(maxsize=256)
def _embedding(text: str) -> Vector:
    """Kept a while: a semantic miss embeds the question, then the answer is stored with the same."""
    return Vector(embeddings.embed([text])[0])


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(value) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()
