"""Hybrid RAG search over 100k chunks: latency of `tools.knowledge` search filtered by tenant and source, recall@10
of its vector part against an exact search, and the ingestion's throughput.

    python -m hil_project.launcher exec python bench/rag.py [--chunks 100000] [--real-documents 24]
                                                           [--queries 200] [--ef-search 100 400 ...]
                                                           [--plain-storage] [--plans FILE]

1. Ingestion: the demo documents (`workflows/demo/knowledge/`) and `--real-documents` generated Markdown documents
   (headed sections of paragraphs about one of 12 store topics) are uploaded and ingested by `document_ingest`,
   the task's own service: extraction, chunking, real MiniLM embeddings, inserts into the indexed table. It prints
   chunks/s and the embedding's share of the time.
2. The rest, up to `--chunks`, goes in by COPY: paragraphs generated the same way (topic words in a shared vocabulary,
   artist names as rare terms, so that full-text search has something to find and rank). Each starts with one of
   chunks / COPIES (10) generated sentences, and its vector is that sentence's real MiniLM embedding (a sentence embeds
   ~4 times faster than a paragraph) plus Gaussian noise (σ = 0.01 a dimension, cosine ≈ 0.98 to it), normalised:
   about ten near-duplicate passages to a sentence, as a real corpus has some. Embedding 100k paragraphs on
   2 CPUs would take most of an hour and measure the model, not the search. Vectors made from a few hundred real
   ones instead (tried first: blends or noisy copies of the ingested chunks') form a dozen dense clusters whose
   HNSW graph a search cannot cross, and recall@10 stayed at 0.3–0.8 whatever ef_search. Their documents' text
   is the chunks' texts joined, so offsets hold as ingested ones do. The HNSW and GIN indexes are dropped while
   the rows go in and built after, with the migration's own definitions.
3. Layout: tenant `bench-rag` has sources of 40%, 20%, 10% and 2% of the chunks, tenant `bench-rag-other` the
   rest (28%). Each search is timed for four scopes: the whole tenant (72% of the table), and one source of 40%,
   10% and 2%. Queries (embedded beforehand, timed apart) are the 30 questions of the demo question set and
   generated ones about the topics. Each search is `search_embedded`: a transaction, the HNSW settings, the one
   statement. Postgres's own share is read from EXPLAIN ANALYZE.
4. Recall@10: the top 10 of the statement's vector part (its `semantic` CTE) against an exact top 10 of the
   scope (the same ORDER BY with index scans off).
5. All again with each `--ef-search` as a fixed hnsw.ef_search, for comparison with the service's, which grows
   with the scope's share of the table on pgvector before 0.8 (tools/knowledge.py, SETTINGS).

`--plain-storage` keeps the embeddings inside the table's rows for the run (`SET STORAGE PLAIN`; pgvector's type
defaults to EXTERNAL, which moves a 1.5 kB vector out of a row of more than 2 kB into TOAST, so that an exact
ranking reads three pages a row instead of one), and sets pgvector's default back at the end.

The server's pgvector is printed: before 0.8 there are no iterative index scans, and a scope that holds less than
CANDIDATES of the ef_search nearest rows of the whole table is searched exactly instead (see tools/knowledge.py).
It deletes its tenants when it ends (and if a run was killed, on its next start) and rebuilds the indexes without
them; meanwhile searches of `make run` on the same database still work, by scans. It never fails on a timing.
"""

import argparse
import hashlib
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import production  # noqa: E402,F401,I001  (Django, as production runs it)

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from pgvector import Vector  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from accounts.models import Tenant  # noqa: E402
from core import embeddings  # noqa: E402
from tools import knowledge  # noqa: E402
from tools.models import Chunk, Document, KnowledgeSource  # noqa: E402

SLUGS = ("bench-rag", "bench-rag-other")
TARGET_P95_MS = 20
TARGET_RECALL = 0.95
NOISE = 0.01
COPIES = 10
DEMO = REPO / "workflows" / "demo" / "knowledge"
QUESTIONS = REPO / "tools" / "tests" / "data" / "knowledge_questions.json"
# (tenant, source, share of the chunks); the first source also holds the ingested documents.
LAYOUT = [(0, "catalogue", 0.40), (0, "policies", 0.20), (0, "support", 0.10), (0, "press", 0.02), (1, "all", 0.28)]
SCOPES = [("tenant (72%)", None), ("source of 40%", "catalogue"), ("source of 10%", "support"),
          ("source of 2%", "press")]
TOPICS = {
    "refunds": "refund refunds money back return returned card credit days approved reimburse declined policy",
    "downloads": "download downloads file files device limit library track album redownload interrupted reset",
    "gift cards": "gift card cards code voucher balance redeem expiry valid issued store credit present",
    "invoices": "invoice invoices billing address tax receipt pdf copy order number corrected vat",
    "accounts": "account password email sign login settings profile close security confirmation verify",
    "payments": "payment visa mastercard paypal charge charged currency bank fee declined amex",
    "formats": "format aac flac lossless bitrate kbps quality audio mp3 encoding sample lossy",
    "shipping": "shipping delivery parcel courier postage warehouse tracking shipped arrive dispatch label",
    "streaming": "streaming subscription plan unlimited monthly cancel billing period offline playlist stream",
    "vinyl": "vinyl record records cd cds disc sleeve warped skipping turntable pressing shrink",
    "artists": "artist band concert tour release single discography live recording studio producer",
    "support": "support chat human agent hours contact reply ticket help team weekday phone",
}
ARTISTS = ["AC/DC", "Aerosmith", "Alanis Morissette", "Antônio Carlos Jobim", "Audioslave", "Black Sabbath",
           "Chico Buarque", "Deep Purple", "Eric Clapton", "Foo Fighters", "Gilberto Gil", "Green Day", "Iron Maiden",
           "Jimi Hendrix", "Led Zeppelin", "Legião Urbana", "Metallica", "Miles Davis", "Nirvana", "Ozzy Osbourne",
           "Pearl Jam", "Queen", "Red Hot Chili Peppers", "Santana", "Skank", "Soundgarden", "The Rolling Stones",
           "U2", "Van Halen", "Various Artists"]
FILLER = ("the a of to and in for on with is are we you your our it this that be can will "  # noqa: SIM905
          "may from at by as when if not or any all each one two three first new order customer store item "
          "items time please within after "
          "before before during until only also more most other same such than then there these those where which "
          "who why how what about above across again against along already always among another around because "
          "between both but could did does doing down even every few further here into just least less like made "
          "make many much must near need never now off often once open over own part per perhaps quite rather really "
          "right see seem several shall should show since so some still sure take tell through too under upon "
          "usually very want way well whether while whole without would yet").split()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--real-documents", type=int, default=24, help="at least one per topic (12)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--plans", help="write the plan of each scope's first search to this file")
    parser.add_argument("--plain-storage", action="store_true",
                        help="keep embeddings inside the table's rows for this run (SET STORAGE PLAIN), to compare")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[100, 400],
                        help="fixed hnsw.ef_search values to measure too, after the service's own")
    args = parser.parse_args()
    rng = random.Random(1)
    clean_up()
    try:
        tenants = [Tenant.objects.create(slug=slug, name=f"RAG benchmark {slug}") for slug in SLUGS]
        sources = {name: KnowledgeSource.objects.create(tenant=tenants[t], name=name) for t, name, _ in LAYOUT}
        version = knowledge.pgvector_version()
        scans = ("iterative index scans" if version >= (0, 8) else
                 "no iterative index scans: the exact fallback serves scopes the HNSW scan leaves short")
        print(f"pgvector {'.'.join(map(str, version))} ({scans}); "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if args.plain_storage:
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE tools_chunk ALTER COLUMN embedding SET STORAGE PLAIN")
        ingest(sources["catalogue"], args.real_documents, rng)
        fill(tenants, sources, args.chunks, rng)
        queries = make_queries(args.queries, rng)
        t0 = time.perf_counter()
        vectors = [Vector(v).to_text() for v in embeddings.embed(queries)]
        print(f"{len(queries)} queries embedded beforehand in {time.perf_counter() - t0:.1f} s "
              f"({(time.perf_counter() - t0) * 1000 / len(queries):.1f} ms each, MiniLM on CPU, not in the figures)")
        default = knowledge.EF_SEARCH, knowledge.EF_HEADROOM
        for ef_search in [None, *args.ef_search]:
            if ef_search is None:
                print(f"\nthe service's settings: hnsw.ef_search at least {knowledge.EF_SEARCH}" + (
                    f", {knowledge.EF_HEADROOM} × what the scope's share of the table needs, up to 1000"
                    if version < (0, 8) else ", iterative scans") + f"; {knowledge.CANDIDATES} candidates a retriever")
            else:
                knowledge.EF_SEARCH, knowledge.EF_HEADROOM = ef_search, 0
                print(f"\nhnsw.ef_search {ef_search} whatever the scope")
            for label, source in SCOPES:
                scope = [sources[source].id] if source else None
                measure(label, tenants[0].id, scope, queries, vectors)
                if args.plans:
                    with open(args.plans, "a") as plans:
                        plans.write(f"\n== {ef_search or 'service'}, {label}: {queries[-1]}\n"
                                    + explain(tenants[0].id, scope, queries[-1], vectors[-1]) + "\n")
        knowledge.EF_SEARCH, knowledge.EF_HEADROOM = default
        print("\nthe plan, source of 10%, the first question:")
        for line in explain(tenants[0].id, [sources["support"].id], queries[0], vectors[0]).splitlines():
            print("  " + line)
    finally:
        clean_up()
        if args.plain_storage:
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE tools_chunk ALTER COLUMN embedding SET STORAGE EXTERNAL")  # pgvector's


# --- ingestion ------------------------------------------------------------------------------------------


def ingest(source: KnowledgeSource, documents: int, rng: random.Random) -> None:
    """Real ingestion of the demo documents and `documents` generated ones, timed."""
    embeddings.embed(["the model loaded before anything is timed"])
    uploads = [(path.name, path.read_text()) for path in sorted(DEMO.glob("*.md"))]
    topics = list(TOPICS)
    for n in range(documents):
        topic = topics[n % len(topics)]
        uploads.append((f"{topic}-{n}.md", markdown_document(topic, n, rng)))
    embed_s, real_embed = [0.0], embeddings.embed

    def timed_embed(texts):
        t0 = time.perf_counter()
        try:
            return real_embed(texts)
        finally:
            embed_s[0] += time.perf_counter() - t0

    embeddings.embed = timed_embed
    ids = []
    t0 = time.perf_counter()
    try:
        for title, text in uploads:
            document, _ = knowledge.document_upload(source=source, title=title, media_type="text/markdown",
                                                    data=text.encode())
            knowledge.document_ingest(document_id=document.id)
            ids.append(document.id)
    finally:
        embeddings.embed = real_embed
    elapsed = time.perf_counter() - t0
    chunks = Chunk.objects.filter(document_id__in=ids)
    count = chunks.count()
    assert Document.objects.filter(id__in=ids, status="ready").count() == len(ids), "an ingestion failed"
    print(f"ingestion: {len(ids)} documents, {count} chunks in {elapsed:.1f} s: {count / elapsed:.1f} chunks/s "
          f"(embedding {100 * embed_s[0] / elapsed:.0f}% of the time)")


def markdown_document(topic: str, n: int, rng: random.Random) -> str:
    sections = [f"# {topic.title()} guide {n}"]
    for s in range(rng.randint(4, 6)):
        sections.append(f"## {' '.join(rng.sample(TOPICS[topic].split(), 2)).title()} {s + 1}")
        sections += [paragraph(topic, rng) for _ in range(rng.randint(6, 10))]
    return "\n\n".join(sections) + "\n"


def paragraph(topic: str, rng: random.Random, sentences: tuple[int, int] = (3, 6)) -> str:
    return " ".join(sentence(topic, rng) for _ in range(rng.randint(*sentences)))


def sentence(topic: str, rng: random.Random, words: tuple[int, int] = (8, 16)) -> str:
    topic_words = TOPICS[topic].split()
    out = [rng.choice(topic_words) if rng.random() < 0.3 else rng.choice(FILLER) for _ in range(rng.randint(*words))]
    if rng.random() < 0.3:
        out.insert(rng.randrange(len(out)), rng.choice(ARTISTS))
    return " ".join(out).capitalize() + "."


# --- the other chunks, by COPY --------------------------------------------------------------------------


def fill(tenants, sources, total: int, rng: random.Random) -> None:
    already = Chunk.objects.filter(tenant__in=tenants).count()
    wanted = {name: round(share * total) for _, name, share in LAYOUT}
    wanted["catalogue"] -= already
    # Real embeddings of generated first sentences, one for every COPIES chunks.
    topics = [rng.choice(list(TOPICS)) for _ in range(max(1, sum(wanted.values()) // COPIES))]
    firsts = [sentence(topic, rng) for topic in topics]
    t0 = time.perf_counter()
    bases = np.array(embeddings.embed(firsts), dtype=np.float32)
    print(f"{len(firsts):,} first sentences embedded in {time.perf_counter() - t0:.1f} s")
    nprng = np.random.default_rng(1)
    indexes = [i for i in Chunk._meta.indexes if i.name in ("chunk_embedding", "chunk_search")]
    t0 = time.perf_counter()
    with connection.schema_editor() as editor:
        for index in indexes:
            editor.remove_index(Chunk, index)
    # A connection of its own with pgvector's binary adapters, which Django's must not get.
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        register_vector(conn)
        columns = 'tenant_id, source_id, document_id, ordinal, heading, text, start, "end", embedding'
        for name, count in wanted.items():
            source = sources[name]
            for first in range(0, count, 1000):
                picked = nprng.integers(len(firsts), size=min(1000, count - first))
                texts = [f"{firsts[b]} {paragraph(topics[b], rng, (2, 5))}" for b in picked]
                vectors = bases[picked] + nprng.normal(0, NOISE, (len(picked), bases.shape[1])).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                text = "\n\n".join(texts)
                document = Document.objects.create(
                    tenant_id=source.tenant_id, source=source, title=f"{name}-{first // 1000}.md",
                    media_type="text/markdown", data=b"", sha256=hashlib.sha256(text.encode()).hexdigest(), text=text,
                    status="ready", chunks_total=len(texts), chunks_done=len(texts))
                with conn.cursor().copy(f"COPY tools_chunk ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int8", "int8", "int4", "varchar", "text", "int4", "int4", "vector"])
                    start = 0
                    for i, (chunk_text, b, vector) in enumerate(zip(texts, picked, vectors)):
                        copy.write_row((source.tenant_id, source.id, document.id, i, topics[b].title(), chunk_text,
                                        start, start + len(chunk_text), vector))
                        start += len(chunk_text) + 2
    loaded = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
    with connection.schema_editor() as editor:
        for index in indexes:
            editor.add_index(Chunk, index)
    with connection.cursor() as cursor:
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("ANALYZE tools_chunk")
        cursor.execute("SELECT count(*), pg_size_pretty(pg_relation_size('chunk_embedding')) FROM tools_chunk")
        count, size = cursor.fetchone()
    print(f"{count:,} chunks in the table ({sum(wanted.values()):,} by COPY in {loaded - t0:.1f} s); HNSW and GIN "
          f"indexes built in {time.perf_counter() - loaded:.1f} s (HNSW {size})")


# --- searches -------------------------------------------------------------------------------------------


def make_queries(count: int, rng: random.Random) -> list[str]:
    import json

    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())]
    generated = [sentence(rng.choice(list(TOPICS)), rng, (5, 9)).rstrip(".") + "?"
                 for _ in range(max(0, count - len(questions)))]
    return (questions + generated)[:count]


def measure(label: str, tenant_id: int, sources: list[int] | None, queries: list[str], vectors: list[str]) -> None:
    def search(i):
        return knowledge.search_embedded(tenant_id=tenant_id, query=queries[i], vector=vectors[i], sources=sources)

    for i in range(10):  # the connection open, the statement prepared
        search(i)
    times, recalls, exact_runs = [], [], 0
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(i)
        times.append((time.perf_counter() - t0) * 1000)
    server = [float(re.search(r"Execution Time: ([0-9.]+) ms", explain(tenant_id, sources, queries[i], vectors[i]))[1])
              for i in range(0, len(queries), 4)]
    for i in range(len(queries)):
        found, ran_exact = vector_top10(tenant_id, sources, vectors[i])
        key = (tenant_id, tuple(sources or ()), i)
        if key not in EXACT:
            EXACT[key] = exact_top10(tenant_id, sources, vectors[i])
        recalls.append(len(set(found) & set(EXACT[key])) / len(EXACT[key]))
        exact_runs += ran_exact
    p95 = statistics.quantiles(times, n=100)[94]
    recall = statistics.mean(recalls)
    print(f"  {label:<14} search {figures(times)} ({'met' if p95 < TARGET_P95_MS else 'missed'}); "
          f"Postgres p50 {statistics.median(server):.2f} ms; recall@10 {recall:.3f} "
          f"({'met' if recall >= TARGET_RECALL else 'missed'}); exact fallback in {exact_runs} of {len(queries)}")


EXACT: dict[tuple, list[int]] = {}  # exact top 10s, by scope and query


def vector_top10(tenant_id: int, sources: list[int] | None, vector: str) -> tuple[list[int], bool]:
    """The top 10 of the statement's vector part as it runs, and whether its exact fallback ran."""
    params = {"tenant": tenant_id, "sources": list(sources or []), "vector": vector, "candidates": knowledge.CANDIDATES}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*knowledge.search_settings(tenant_id=tenant_id, sources=sources, k=10))
        cursor.execute(("WITH" + knowledge.SEMANTIC + " SELECT id, (SELECT count(*) FROM exact) FROM semantic "
                        "ORDER BY rank LIMIT 10").format(scope=knowledge.scope_sql(sources)), params)
        rows = cursor.fetchall()
    return [id for id, _ in rows], bool(rows and rows[0][1])


def exact_top10(tenant_id: int, sources: list[int] | None, vector: str) -> list[int]:
    """The 10 nearest chunks of the scope, every one of its rows compared (no HNSW index)."""
    params = {"tenant": tenant_id, "sources": list(sources or []), "vector": vector}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute(f"SELECT id FROM tools_chunk WHERE {knowledge.scope_sql(sources)} "
                       "ORDER BY embedding <=> %(vector)s::vector LIMIT 10", params)
        return [id for (id,) in cursor.fetchall()]


def explain(tenant_id: int, sources: list[int] | None, query: str, vector: str) -> str:
    sql, params = knowledge.search_statement(tenant_id=tenant_id, query=query, vector=vector, sources=sources, k=5)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*knowledge.search_settings(tenant_id=tenant_id, sources=sources, k=5))
        cursor.execute("SELECT current_setting('hnsw.ef_search')")
        ef_search = cursor.fetchone()[0]
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return f"hnsw.ef_search {ef_search}\n" + "\n".join(re.sub(r"'\[[^]]*\]'", "'[...]'", line)
                                                       for (line,) in cursor.fetchall())


def figures(values: list[float]) -> str:
    return f"p50 {statistics.median(values):6.2f} ms  p95 {statistics.quantiles(values, n=100)[94]:6.2f} ms"


def clean_up() -> None:
    """The bench's tenants gone (their rows with them), and the indexes rebuilt without them (deleted rows stay
    in an HNSW graph until a vacuum)."""
    tenants = Tenant.objects.filter(slug__in=SLUGS)
    indexes = [i for i in Chunk._meta.indexes if i.name in ("chunk_embedding", "chunk_search")]
    with connection.cursor() as cursor:
        present = connection.introspection.get_constraints(cursor, Chunk._meta.db_table)
    if not tenants.exists() and all(index.name in present for index in indexes):
        return
    Chunk.objects.filter(tenant__in=tenants).delete()
    Document.objects.filter(tenant__in=tenants).delete()
    tenants.delete()
    with connection.schema_editor() as editor:
        for index in indexes:
            if index.name in present:
                editor.remove_index(Chunk, index)
            editor.add_index(Chunk, index)


if __name__ == "__main__":
    main()
