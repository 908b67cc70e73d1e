"""Semantic cache benchmark: the latency of a cache lookup with 100k answers cached in one scope.

    python -m hil_project.launcher exec python bench/cache.py [--entries 100000] [--lookups 200]
                                                             [--ef-search 100 ...]

Fills one scope of a tenant of its own (`bench-cache`) with `--entries` answers whose embeddings are random
unit vectors, written with COPY (embedding 100k real sentences with MiniLM on 2 CPUs would take minutes and
measure the model, not the lookup), and 20 with real embeddings of real questions. The HNSW index is
dropped while the rows go in and built after (as pgvector advises for bulk loads), on the real table with the
migration's own definition. Then `--lookups` real questions, half of them paraphrases of the 20 real ones, half
new questions, are embedded beforehand (timed apart), and each `agents.cache.lookup(semantic=True)` is timed with
its embedding already made: one statement, the exact entry or else the nearest one. Prints p50/p95 against the
target (semantic lookup p95 < 10 ms), Postgres's own share (EXPLAIN ANALYZE of the same statement), how many
hits the HNSW search found of those an exact search finds (its recall), all again with each `--ef-search`
(pgvector's search breadth; 40 by default), and the plan. Random vectors are not spread as real questions are,
so recall and latency on a real cache may differ somewhat.

It deletes its tenant and rows when it ends (and if a run was killed, on its next start) and rebuilds the index
without them. While it runs, the table has no HNSW index for a minute or two: semantic lookups of `make run` on
the same database still work, by a scan. It never fails on a timing.
"""

import argparse
import os
import re
import secrets
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
os.environ["HIL_DEBUG"] = "0"
os.environ.setdefault("HIL_SECRET_KEY", secrets.token_urlsafe(32))
os.environ.setdefault("HIL_MASTER_KEY", "A" * 43 + "=")  # the bench stores no secret

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from accounts.models import Tenant  # noqa: E402
from agents import cache  # noqa: E402
from core import embeddings  # noqa: E402
from agents.models import CachedAnswer  # noqa: E402

SLUG = "bench-cache"
SYSTEM = "You answer customers of the Chinook music store."
TARGET_P95_MS = 10
THRESHOLD = settings.HIL_LLM_SEMANTIC_THRESHOLD
TOPICS = ["get a refund for", "track", "cancel", "change the address of", "get an invoice for"]
CACHED = [f"How can I {topic} order {n}?" for topic in TOPICS for n in (3, 5, 8, 13)]  # 20 real questions
PARAPHRASES = [q.replace("How can I", "How do I") for q in CACHED] + [q.replace("How can I", "How could I")
                                                                      for q in CACHED]
NEW = [f"{start} {thing}?" for start in ("What is", "Where can I find", "Do you sell", "How much is", "Who made")
       for thing in ("the best jazz album", "a gift card", "vinyl records", "the latest Iron Maiden album",
                     "classical music for studying", "a family subscription", "lossless downloads",
                     "the store's opening hours", "a student discount", "your return policy", "AC/DC's first album",
                     "a playlist for running", "the bass player of Queen", "music from Brazil", "a podcast",
                     "the shipping cost to Canada", "a refund policy for downloads", "the top 10 of 1990",
                     "a CD of Miles Davis", "the price of a track")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="*", default=[100],
                        help="hnsw.ef_search values to measure too, after pgvector's default (40)")
    args = parser.parse_args()
    half = args.lookups // 2
    questions = (PARAPHRASES * args.lookups)[:half] + (NEW * args.lookups)[:args.lookups - half]
    clean_up()
    try:
        tenant = Tenant.objects.create(slug=SLUG, name="Cache benchmark")
        scope = cache.scope_of(tenant_id=tenant.id, workflow_version_id=1, system_prompt=SYSTEM, profile="balanced",
                               schema=None)
        embeddings.embed(["the model loaded before anything is timed"])
        fill(tenant, scope, args.entries)
        embed_ms = []
        for question in questions:
            t0 = time.perf_counter()
            embeddings.embed([question])
            embed_ms.append((time.perf_counter() - t0) * 1000)
            cache._embedding(question)  # what lookup embeds, made here so that only its statements are timed
        # What an exact search would find: random vectors are never near a question, so the real ones decide.
        cached = np.array(embeddings.embed(CACHED))
        expected = sum(float(np.max(cached @ np.array(cache._embedding(q).to_list()))) >= THRESHOLD for q in questions)
        print(f"{len(questions)} lookups (semantic on), {len(questions) // 2} of them paraphrasing a cached question; "
              f"an exact search finds {expected} at or above the threshold of {THRESHOLD}")
        print(f"  {'embedding the question':<38} {figures(embed_ms)}   (MiniLM on CPU, apart)")
        for ef_search in [None, *args.ef_search]:
            if ef_search:
                with connection.cursor() as cursor:
                    cursor.execute(f"SET hnsw.ef_search = {int(ef_search)}")
            measure(tenant, scope, questions, f"ef_search {ef_search or '40 (default)'}")
        with connection.cursor() as cursor:
            cursor.execute("RESET hnsw.ef_search")
            cursor.execute("SELECT pg_size_pretty(pg_relation_size('cached_answer_embedding')), "
                           "current_setting('shared_buffers')")
            index_size, shared_buffers = cursor.fetchone()
        print(f"  HNSW index {index_size}, shared_buffers {shared_buffers}; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    finally:
        clean_up()


def measure(tenant: Tenant, scope: str, questions: list[str], label: str) -> None:
    for question in questions[:10]:  # connection opened
        lookup(tenant, scope, question)
    lookup_ms, server_ms, hits = [], [], 0
    for question in questions:
        t0 = time.perf_counter()
        hit = lookup(tenant, scope, question)
        lookup_ms.append((time.perf_counter() - t0) * 1000)
        hits += hit is not None
    for question in questions:
        plan = explain(tenant, scope, question)
        server_ms.append(float(re.search(r"Execution Time: ([0-9.]+) ms", plan)[1]))
    print(f"  {label}: {hits} hits")
    print(f"    {'lookup':<36} {figures(lookup_ms)}   (target p95 < {TARGET_P95_MS}: "
          f"{'met' if statistics.quantiles(lookup_ms, n=100)[94] < TARGET_P95_MS else 'missed'})")
    print(f"    {'of which Postgres (EXPLAIN ANALYZE)':<36} {figures(server_ms)}")
    print("    the plan, for the first question:")
    for line in explain(tenant, scope, questions[0]).splitlines():
        print("      " + line)


def explain(tenant: Tenant, scope: str, question: str) -> str:
    """The plan of the statement `lookup` sends, run."""
    with CaptureQueriesContext(connection) as statements:
        lookup(tenant, scope, question)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statements[0]["sql"])
        return "\n".join(re.sub(r"'\[[^]]*\]'", "'[...]'", line) for (line,) in cursor.fetchall())


def figures(values: list[float]) -> str:
    p50, p95 = statistics.median(values), statistics.quantiles(values, n=100)[94]
    return f"p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   max {max(values):6.2f} ms"


def fill(tenant: Tenant, scope: str, entries: int) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "?"}]
    context = cache._context_hash(scope, messages, 256, None)
    now = timezone.now()
    expires = now + timedelta(days=1)
    index = _embedding_index()
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    with connection.schema_editor() as editor:
        editor.remove_index(CachedAnswer, index)
    # A connection of its own with pgvector's binary adapters, which Django's must not get.
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        register_vector(conn)
        columns = ("tenant_id", "scope", "request_hash", "context_hash", "answer", "model", "cost", "embedding",
                   "created_at", "expires_at")
        with conn.cursor().copy(f"COPY agents_cachedanswer ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "varchar", "varchar", "varchar", "text", "varchar", "numeric", "vector",
                            "timestamptz", "timestamptz"])
            for start in range(0, entries, 10_000):
                vectors = rng.standard_normal((min(10_000, entries - start), embeddings.DIMENSIONS), dtype=np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                for i, vector in enumerate(vectors, start):
                    copy.write_row((tenant.id, scope, f"{i:064x}", context, f"answer {i}", "bench-model",
                                    Decimal("0.0012"), vector, now, expires))
    for question in CACHED:
        cache.store(tenant_id=tenant.id, scope=scope, messages=ask(question), max_tokens=256, schema=None,
                    answer_text=f"the answer to {question}", data=None, model="bench-model", cost=Decimal("0.0012"),
                    semantic=True)
    loaded = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
    with connection.schema_editor() as editor:
        editor.add_index(CachedAnswer, index)
    with connection.cursor() as cursor:
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("ANALYZE agents_cachedanswer")
    built = time.perf_counter()
    print(f"{entries:,} entries + {len(CACHED)} real ones in one scope: loaded in {loaded - t0:.1f} s (COPY), "
          f"HNSW index built in {built - loaded:.1f} s")


def lookup(tenant: Tenant, scope: str, question: str):
    return cache.lookup(tenant_id=tenant.id, scope=scope, messages=ask(question), max_tokens=256, schema=None,
                        semantic=True)


def ask(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def clean_up() -> None:
    """The bench's rows and tenant gone, and the index rebuilt without them (deleted rows stay in an HNSW
    graph until a vacuum)."""
    tenant = Tenant.objects.filter(slug=SLUG).first()
    if tenant is None and _index_exists():
        return
    if tenant is not None:
        CachedAnswer.objects.filter(tenant=tenant).delete()
        tenant.delete()
    with connection.schema_editor() as editor:
        if _index_exists():
            editor.remove_index(CachedAnswer, _embedding_index())
        editor.add_index(CachedAnswer, _embedding_index())


def _embedding_index():
    return next(i for i in CachedAnswer._meta.indexes if i.name == "cached_answer_embedding")


def _index_exists() -> bool:
    with connection.cursor() as cursor:
        return "cached_answer_embedding" in connection.introspection.get_constraints(cursor, "agents_cachedanswer")


if __name__ == "__main__":
    main()
