import json
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from pgvector import Vector

from accounts.models import AuditEntry
from core import embeddings
from core.errors import ServiceError
from tools import knowledge
from tools.knowledge import (
    citation_verify,
    document_ingest,
    document_upload,
    knowledge_search,
    knowledge_source_create,
)
from tools.models import Chunk, Document
from workflows.tests.conftest import start_worker, wait  # noqa: F401  (fixtures)

DEMO = Path(settings.BASE_DIR) / "workflows" / "demo" / "knowledge"
QUESTIONS = json.loads((Path(__file__).parent / "data" / "knowledge_questions.json").read_text())


def pdf(pages: list[list[str]]) -> bytes:
    """A PDF with one page per list of lines (Helvetica), its cross-reference table right."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        escaped = (line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines)
        body = "BT /F1 11 Tf 14 TL 72 720 Td " + " T* ".join(f"({line}) Tj" for line in escaped) + " ET"
        objects.append(f"<< /Length {len(body.encode('latin-1'))} >>\nstream\n{body}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {len(objects)} 0 R >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def upload_and_ingest(source, title, media_type, data) -> Document:
    document, _ = document_upload(source=source, title=title, media_type=media_type, data=data)
    document_ingest(document_id=document.id)
    document.refresh_from_db()
    return document


def ingest_demo(tenant, name="help") -> tuple:
    source = knowledge_source_create(tenant=tenant, name=name)
    documents = [upload_and_ingest(source, path.name, "text/markdown", path.read_bytes())
                 for path in sorted(DEMO.glob("*.md"))]
    return source, documents


def assert_exact_offsets(document: Document) -> list[Chunk]:
    chunks = list(document.chunks.all())
    assert chunks
    for chunk in chunks:
        assert document.text[chunk.start:chunk.end] == chunk.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    return chunks


def test_a_markdown_document_is_chunked_under_its_headings_with_exact_offsets(tenant):
    source = knowledge_source_create(tenant=tenant, name="help")
    data = (DEMO / "returns-policy.md").read_bytes()
    document = upload_and_ingest(source, "returns-policy.md", "text/markdown", data)

    assert (document.status, document.error, document.progress) == ("ready", "", 100)
    assert document.chunks_done == document.chunks_total == document.chunks.count() > 5
    chunks = assert_exact_offsets(document)
    opened = next(c for c in chunks if "Opened CDs and vinyl records" in c.text)
    assert opened.heading == "Chinook Returns and Refunds Policy > Physical items > Opened items"
    assert not any("## " in c.text for c in chunks)  # heading lines are headings, not text
    assert all(len(c.text) <= knowledge.CHUNK_CHARS for c in chunks)
    assert all(c.tenant_id == tenant.id and c.source_id == source.id for c in chunks)


def test_long_sections_are_cut_between_sentences_and_never_inside_a_word(tenant):
    source = knowledge_source_create(tenant=tenant, name="help")
    sentence = "A refund of a faulty track is paid within five business days. "
    words = "x" * 1200  # one word longer than a chunk: it stays whole
    text = f"# Long\n\n{sentence * 40}\n\n## Tail\n\nshort one\n\n{words} end"
    document = upload_and_ingest(source, "long.txt", "text/plain", text.encode())

    chunks = assert_exact_offsets(document)
    assert {c.heading for c in chunks} == {"Long", "Long > Tail"}
    for chunk in chunks:
        assert chunk.text == chunk.text.strip()
        before, after = document.text[chunk.start - 1:chunk.start], document.text[chunk.end:chunk.end + 1]
        assert not before.isalnum() and not after.isalnum()  # the text around a chunk is not part of a word
    long = [c for c in chunks if c.heading == "Long"]
    assert len(long) == 4 and all(c.text.endswith("days.") for c in long)
    assert any(words in c.text for c in chunks)


def test_an_html_page_becomes_headed_text_without_its_scripts(tenant):
    source = knowledge_source_create(tenant=tenant, name="help")
    html = """<!doctype html><html><head><title>Help</title><style>p { color: red }</style></head><body>
        <h1>Returns</h1><p>We   refund faulty
        items &amp; wrong deliveries.</p>
        <script>document.write("not text")</script>
        <h2>Opened <em>items</em></h2><p>Opened CDs are returned only if faulty.<br>Vinyl too.</p>
        <ul><li>Skipping discs</li><li><p>Warped records</p></li></ul>
        <h2>Gift cards</h2><p>Gift cards are not refundable.</p></body></html>"""
    document = upload_and_ingest(source, "help.html", "text/html; charset=utf-8", html.encode())

    assert document.status == "ready"
    assert document.text == ("# Returns\n\nWe refund faulty items & wrong deliveries.\n\n## Opened items\n\n"
                             "Opened CDs are returned only if faulty.\nVinyl too.\n\n- Skipping discs\n\n"
                             "- Warped records\n\n## Gift cards\n\nGift cards are not refundable.")
    chunks = assert_exact_offsets(document)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Returns", "We refund faulty items & wrong deliveries."),
        ("Returns > Opened items", ("Opened CDs are returned only if faulty.\nVinyl too.\n\n- Skipping discs\n\n"
                                    "- Warped records")),
        ("Returns > Gift cards", "Gift cards are not refundable.")]


def test_a_pdf_is_read_page_by_page(tenant):
    source = knowledge_source_create(tenant=tenant, name="help")
    data = pdf([["Returns policy (2026)", "Opened items are returned only if faulty."],
                ["Refund timelines", "Card refunds take 3 to 5 business days."]])
    document = upload_and_ingest(source, "policy.pdf", "application/pdf", data)

    assert (document.status, document.error) == ("ready", "")
    chunks = assert_exact_offsets(document)
    assert [(c.heading, c.text) for c in chunks] == [
        ("page 1", "Returns policy (2026)\nOpened items are returned only if faulty."),
        ("page 2", "Refund timelines\nCard refunds take 3 to 5 business days.")]


def test_the_same_bytes_uploaded_twice_are_one_document_ingested_once(tenant, django_capture_on_commit_callbacks):
    source = knowledge_source_create(tenant=tenant, name="help")
    other = knowledge_source_create(tenant=tenant, name="other")
    with django_capture_on_commit_callbacks() as enqueued:
        first, created = document_upload(source=source, title="faq.md", media_type="text/markdown", data=b"# Q\n\nA.")
        again, created_again = document_upload(source=source, title="faq (1).md", media_type="text/markdown",
                                               data=b"# Q\n\nA.")
        elsewhere, created_elsewhere = document_upload(source=other, title="faq.md", media_type="", data=b"# Q\n\nA.")

    assert (created, created_again, created_elsewhere) == (True, False, True)
    assert again == first and elsewhere != first
    assert Document.objects.filter(source=source).count() == 1
    assert len(enqueued) == 2  # one ingestion per new document, none for the repeat
    assert (first.status, elsewhere.media_type) == ("queued", "text/markdown")
    assert AuditEntry.objects.filter(tenant=tenant, action="document.upload").count() == 2


@pytest.mark.parametrize("title, media_type, data, message", [
    ("song.mp3", "audio/mpeg", b"ID3...", ("'song.mp3' is of type 'audio/mpeg'; accepted are application/pdf, "
                                           "text/html, text/markdown, text/plain")),
    ("notes", "", b"text", "'notes' is of type 'unknown'"),
    ("empty.md", "text/markdown", b"", "'empty.md' is empty"),
    ("   ", "text/plain", b"text", "a document needs a title"),
    ("big.txt", "text/plain", b"x" * (knowledge.MAX_BYTES + 1), "'big.txt' has 20.0 MB; at most 20 MB are accepted"),
])
def test_bad_uploads_are_refused_with_a_clear_message_and_change_nothing(tenant, title, media_type, data, message):
    source = knowledge_source_create(tenant=tenant, name="help")
    with pytest.raises(ServiceError) as refused:
        document_upload(source=source, title=title, media_type=media_type, data=data)
    assert str(refused.value).startswith(message)
    assert not Document.objects.exists()


def test_progress_is_visible_batch_by_batch(tenant, monkeypatch):
    source = knowledge_source_create(tenant=tenant, name="help")
    document, _ = document_upload(source=source, title="returns-policy.md", media_type="text/markdown",
                                  data=(DEMO / "returns-policy.md").read_bytes())
    monkeypatch.setattr(knowledge, "EMBED_BATCH", 3)
    seen = []
    real_embed = embeddings.embed

    def embed_and_look(texts):
        row = Document.objects.get(id=document.id)
        seen.append((row.status, row.chunks_done, row.chunks_total, row.progress))
        return real_embed(texts)

    monkeypatch.setattr(embeddings, "embed", embed_and_look)
    document_ingest(document_id=document.id)
    document.refresh_from_db()

    total = document.chunks_total
    assert total > 6
    assert seen == [("ingesting", done, total, int(100 * done / total)) for done in range(0, total, 3)]
    assert (document.status, document.chunks_done, document.progress) == ("ready", total, 100)


def test_a_document_that_cannot_be_read_fails_with_its_reason_and_others_are_ingested(tenant):
    source = knowledge_source_create(tenant=tenant, name="help")
    corrupt = upload_and_ingest(source, "broken.pdf", "application/pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog")
    blank = upload_and_ingest(source, "blank.pdf", "application/pdf", pdf([[]]))
    fine = upload_and_ingest(source, "faq.md", "text/markdown", (DEMO / "faq.md").read_bytes())

    assert corrupt.status == "failed" and corrupt.error.startswith("the PDF could not be read: ")
    assert blank.status == "failed" and blank.error == ("no text was found in the document (a scanned PDF holds "
                                                        "images of text: it needs OCR first)")
    assert (corrupt.chunks.count(), blank.chunks.count(), corrupt.progress) == (0, 0, 0)
    assert fine.status == "ready" and fine.chunks.count() == fine.chunks_total > 0
    document_ingest(document_id=corrupt.id)  # a failed document stays failed
    corrupt.refresh_from_db()
    assert corrupt.status == "failed"


class WorkerKilled(BaseException):
    """What a SIGKILL looks like from inside: nothing gets to clean up."""


def test_an_ingestion_that_died_is_taken_over_once_stale_and_its_partial_chunks_replaced(tenant, monkeypatch):
    source = knowledge_source_create(tenant=tenant, name="help")
    data = (DEMO / "returns-policy.md").read_bytes()
    document, _ = document_upload(source=source, title="returns-policy.md", media_type="text/markdown", data=data)
    monkeypatch.setattr(knowledge, "EMBED_BATCH", 4)
    real_embed, calls = embeddings.embed, []

    def dies_on_the_third_batch(texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise WorkerKilled
        return real_embed(texts)

    monkeypatch.setattr(embeddings, "embed", dies_on_the_third_batch)
    with pytest.raises(WorkerKilled):
        document_ingest(document_id=document.id)
    document.refresh_from_db()
    assert (document.status, document.chunks_done, document.chunks.count()) == ("ingesting", 8, 8)

    document_ingest(document_id=document.id)  # a second delivery while the first might be alive: hands off
    assert Document.objects.get(id=document.id).updated_at == document.updated_at
    Document.objects.filter(id=document.id).update(updated_at=timezone.now() - knowledge.STALE_AFTER)
    document_ingest(document_id=document.id)  # the claim went stale: taken over from the start
    document.refresh_from_db()

    assert (document.status, document.chunks_done) == ("ready", document.chunks_total)
    chunks = assert_exact_offsets(document)
    assert len(chunks) == document.chunks_total
    clean = knowledge.chunk(*knowledge.extract("text/markdown", data))
    assert [(c.start, c.end, c.heading) for c in chunks] == [(p.start, p.end, p.heading) for p in clean]
    ids = [c.id for c in chunks]
    document_ingest(document_id=document.id)  # run again when done: nothing changes
    assert [c.id for c in document.chunks.all()] == ids


def test_search_finds_the_passage_that_answers(tenant):
    ingest_demo(tenant)
    results = knowledge_search(tenant_id=tenant.id, query="Can I return opened vinyl records?")

    assert len(results) == 5
    best = results[0]
    assert best["heading"].endswith("Physical items > Opened items")
    assert "Opened items that are not faulty cannot be returned" in best["text"]
    assert (best["source"], best["title"]) == ("help", "returns-policy.md")
    chunk = Chunk.objects.get(id=best["chunk"])
    assert (best["document"], best["start"], best["end"]) == (chunk.document_id, chunk.start, chunk.end)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert best["score"] > 1 / 61  # found by both retrievers


def test_search_is_limited_to_the_sources_asked_for(tenant):
    ingest_demo(tenant)
    other = knowledge_source_create(tenant=tenant, name="legal")
    upload_and_ingest(other, "terms.md", "text/markdown", b"# Refunds\n\nRefunds are governed by the returns policy.")

    only_other = knowledge_search(tenant_id=tenant.id, query="refund", sources=[other.id], k=5)
    assert [r["title"] for r in only_other] == ["terms.md"]
    assert {r["source"] for r in knowledge_search(tenant_id=tenant.id, query="refund", k=20)} == {"help", "legal"}
    assert knowledge_search(tenant_id=tenant.id, query="refund", sources=[]) == []


def test_a_small_source_is_searched_in_full_beside_a_large_one_nearer_the_query(tenant, monkeypatch):
    """pgvector before 0.8 filters an HNSW scan's ef_search rows after the scan: a source whose chunks are all
    farther from the query than ef_search chunks of another would come back empty without the exact fallback."""
    monkeypatch.setattr(knowledge, "EF_HEADROOM", 0)  # ef_search 100 as in a table too large to raise it enough
    small, _ = ingest_demo(tenant)
    large = knowledge_source_create(tenant=tenant, name="large")
    decoy = upload_and_ingest(large, "decoy.md", "text/markdown", b"Decoy.")
    query = "How long is a gift card valid?"
    near = np.array(embeddings.embed([query])[0]) + np.random.default_rng(1).normal(0, 0.01, (300, 384))
    Chunk.objects.bulk_create(
        Chunk(tenant=tenant, source=large, document=decoy, ordinal=i + 1, text=f"decoy {i}", start=0, end=0,
              embedding=list(vector / np.linalg.norm(vector))) for i, vector in enumerate(near))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tools_chunk")
        cursor.execute("SET LOCAL enable_sort = off")  # the planner's only way left to order: the HNSW index
        sql, params = knowledge.search_statement(tenant_id=tenant.id, query=query, vector=Vector(near[0]).to_text(),
                                                 sources=[small.id], k=5)
        cursor.execute("EXPLAIN " + sql, params)
        assert "Index Scan using chunk_embedding" in "\n".join(row[0] for row in cursor.fetchall())

    results = knowledge_search(tenant_id=tenant.id, query=query, sources=[small.id], k=5)
    assert len(results) == 5 and {r["source"] for r in results} == {"help"}
    assert "A gift card is valid for 24 months" in results[0]["text"]


def test_one_tenant_never_sees_anothers_chunks(tenant, other_tenant):
    ours, _ = ingest_demo(tenant)
    theirs, _ = ingest_demo(other_tenant)
    their_chunks = set(Chunk.objects.filter(tenant=other_tenant).values_list("id", flat=True))

    for question in QUESTIONS[:5]:
        for sources in (None, [ours.id], [ours.id, theirs.id]):
            results = knowledge_search(tenant_id=tenant.id, query=question["question"], sources=sources, k=20)
            assert results and not {r["chunk"] for r in results} & their_chunks
    assert knowledge_search(tenant_id=tenant.id, query="refund", sources=[theirs.id]) == []
    their_chunk = Chunk.objects.filter(tenant=other_tenant).first()
    assert citation_verify(tenant_id=tenant.id, citations=[{"chunk": their_chunk.id, "quote": their_chunk.text}]) == [
        f"citation 1: there is no chunk {their_chunk.id}"]


def test_citations_are_verified_verbatim(tenant):
    ingest_demo(tenant)
    chunk = Chunk.objects.get(tenant=tenant, text__contains="Refunds to a credit or debit card")
    quote = "Refunds to a credit or debit card reach your account in 3 to 5 business days"
    start = chunk.start + chunk.text.index(quote)
    where = f"chunk {chunk.id} (returns-policy.md > Chinook Returns and Refunds Policy > Refund timelines)"

    def problems(*citations):
        return citation_verify(tenant_id=tenant.id, citations=list(citations))

    assert problems({"chunk": chunk.id, "quote": quote}, {"chunk": chunk.id, "quote": quote, "start": start,
                                                          "end": start + len(quote)}) == []
    # Re-flowed whitespace is forgiven; a changed letter, digit or case is not.
    assert problems({"chunk": chunk.id, "quote": "  Refunds to a credit or debit\n card reach  your account"}) == []
    assert problems({"chunk": chunk.id, "quote": quote},
                    {"chunk": chunk.id, "quote": quote.replace("3 to 5", "3 to 4")},
                    {"chunk": chunk.id, "quote": quote.replace("credit", "cradit")},
                    {"chunk": chunk.id, "quote": quote.replace("Refunds", "refunds")}) == [
        f"citation {n}: the quote does not occur in {where}" for n in (2, 3, 4)]
    assert problems({"chunk": chunk.id, "quote": quote, "start": start + 1, "end": start + 1 + len(quote)},
                    {"chunk": chunk.id, "quote": quote, "start": chunk.start - 5, "end": start + len(quote)},
                    {"chunk": chunk.id, "quote": quote, "start": start}) == [
        (f"citation 1: characters {start + 1}–{start + 1 + len(quote)} of the document are not the quote "
         f"(they are in {where})"),
        (f"citation 2: characters {chunk.start - 5}–{start + len(quote)} are not a span inside {where}, which spans "
         f"characters {chunk.start}–{chunk.end} of the document"),
        (f"citation 3: characters {start}–None are not a span inside {where}, which spans characters "
         f"{chunk.start}–{chunk.end} of the document")]
    assert problems({"chunk": 10**9, "quote": quote}, {"chunk": chunk.id, "quote": "  "}, {"quote": quote}) == [
        f"citation 1: there is no chunk {10**9}", "citation 2: the quote is empty",
        "citation 3: it names no chunk (\"chunk\" must be a chunk's id)"]


def question_set_figures(tenant_id: int, sources: list[int] | None = None) -> dict:
    """Recall@5 (a question is a hit when one of its top 5 chunks holds one of its answers) and citation precision
    (the top chunk of each question cited with the question's answer: the fraction of citations that verify)."""
    hits, verified, failures = 0, 0, []
    for question in QUESTIONS:
        results = knowledge_search(tenant_id=tenant_id, query=question["question"], sources=sources, k=5)
        hit = any(answer in r["text"] for r in results for answer in question["answers"])
        hits += hit
        citations = [{"chunk": results[0]["chunk"], "quote": question["answers"][0]}]
        verified += not citation_verify(tenant_id=tenant_id, citations=citations)
        if not hit:
            failures.append(question["question"])
    return {"questions": len(QUESTIONS), "recall_at_5": hits / len(QUESTIONS),
            "citation_precision": verified / len(QUESTIONS), "missed": failures}


def test_the_question_set_is_answered_from_the_demo_documents(tenant):
    _, documents = ingest_demo(tenant)
    texts = {c.text for d in documents for c in d.chunks.all()}
    for question in QUESTIONS:  # every answer lies inside one chunk, or the set is wrong
        assert all(any(answer in text for text in texts) for answer in question["answers"]), question

    figures = question_set_figures(tenant.id)
    print(f"\nknowledge question set: {figures['questions']} questions, recall@5 {figures['recall_at_5']:.3f}, "
          f"citation precision (top-1) {figures['citation_precision']:.3f}; missed: {figures['missed']}")
    assert len(QUESTIONS) >= 20
    assert figures["recall_at_5"] >= 0.9


@pytest.mark.django_db(transaction=True)
def test_an_upload_is_ingested_by_a_celery_worker(tenant, start_worker, wait):  # noqa: F811
    start_worker()
    source = knowledge_source_create(tenant=tenant, name="help")
    document, _ = document_upload(source=source, title="faq.md", media_type="text/markdown",
                                  data=(DEMO / "faq.md").read_bytes())

    wait(lambda: Document.objects.get(id=document.id).status == "ready", what="the document ingested")
    document.refresh_from_db()
    assert document.chunks.count() == document.chunks_total == document.chunks_done > 0
    assert knowledge_search(tenant_id=tenant.id, query="Do you take PayPal?")[0]["title"] == "faq.md"
