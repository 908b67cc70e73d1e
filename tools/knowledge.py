"""Knowledge sources (RAG): documents uploaded, ingested into chunks, searched, and citations checked.

- `document_upload` stores the file once per source and enqueues its ingestion (`document_ingest_task`).
- `document_ingest` extracts the text (Markdown and plain text as they are, HTML to Markdown-like text, PDF page by
  page), splits it into chunks under their heading path, embeds them (MiniLM) and stores them in batches, so
  that `chunks_done / chunks_total` shows progress. Every chunk's `start`/`end` are its exact place in the
  stored text: `document.text[start:end] == chunk.text`, always.
- `knowledge_search` is one statement: nearest chunks by embedding (pgvector HNSW) and best full-text matches
  (Postgres `websearch_to_tsquery` over the generated `search` column), fused by reciprocal rank.
- `citation_verify` checks that quotes an answer cites are in the chunks it names, verbatim.
"""

import hashlib
import io
import re
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import PurePosixPath

from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from pgvector import Vector

from accounts.models import Tenant
from accounts.services import audit_record
from core import embeddings
from core.errors import ServiceError

from .models import Chunk, Document, KnowledgeSource

MEDIA_TYPES = {"text/plain", "text/markdown", "text/html", "application/pdf"}
ALIASES = {"text/x-markdown": "text/markdown", "application/x-pdf": "application/pdf",
           "application/xhtml+xml": "text/html"}
EXTENSIONS = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".html": "text/html",
              ".htm": "text/html", ".pdf": "application/pdf"}
MAX_BYTES = 20 * 1024 * 1024
# About 180 MiniLM tokens of English: a chunk and its heading fit the model's 256-token window whole, so
# nothing of a chunk is left out of its embedding, and a chunk is still a passage one can quote.
CHUNK_CHARS = 800
EMBED_BATCH = 64
# An ingestion writes its heartbeat (`updated_at`) after every batch, which takes seconds; one silent this long
# died with its worker, and another delivery of the task may take the document over.
STALE_AFTER = timedelta(minutes=5)
RRF_K = 60
CANDIDATES = 20  # per retriever, before fusion: four times the usual k
EF_SEARCH = 250  # HNSW search breadth, at least: recall@10 ≥ 0.95 on bench/rag.py's 100k chunks (200: 0.94)
EF_HEADROOM = 2  # before pgvector 0.8: ef_search is this many times what the scope's share of the table needs
MAX_K = 50
# A question whose words match thousands of rows (common words, or an "or") is a broad one, where words rank
# poorly and the vector retriever finds the passages; ranking every match made such searches take 50-500 ms on
# bench/rag.py's 100k chunks. So the GIN index returns a random sample of about GIN_SAMPLE of the matches when
# there are more (Postgres's gin_fuzzy_search_limit), and at most LEXICAL_POOL of those are ranked.
GIN_SAMPLE = 1000
LEXICAL_POOL = 500


# --- writes ---------------------------------------------------------------------------------------------


def knowledge_source_create(*, tenant: Tenant, name: str, description: str = "", actor=None) -> KnowledgeSource:
    try:
        validate_slug(name)
    except ValidationError:
        raise ServiceError(f"'{name}' is not a valid knowledge source name: use letters, digits, '-' and '_'")
    with transaction.atomic():
        if KnowledgeSource.objects.filter(tenant=tenant, name=name).exists():
            raise ServiceError(f"a knowledge source named '{name}' already exists")
        source = KnowledgeSource.objects.create(tenant=tenant, name=name, description=description)
        audit_record(tenant_id=tenant.pk, actor=actor, action="knowledge_source.create", obj=source,
                     new={"name": name, "description": description})
    return source


def document_upload(*, source: KnowledgeSource, title: str, media_type: str, data: bytes,
                    actor=None) -> tuple[Document, bool]:
    """The document for these bytes in `source`, and whether it is new. A new one is queued for ingestion;
    the same bytes uploaded again return the first document and enqueue nothing. `media_type` may carry
    parameters ("text/html; charset=utf-8"); empty or application/octet-stream, the title's extension decides."""
    title = title.strip()
    media_type = _media_type(media_type, title)
    if not title:
        raise ServiceError("a document needs a title")
    if len(title) > 300:
        raise ServiceError("a document's title has at most 300 characters")
    if not data:
        raise ServiceError(f"'{title}' is empty")
    if len(data) > MAX_BYTES:
        raise ServiceError(f"'{title}' has {len(data) / 2**20:.1f} MB; at most {MAX_BYTES // 2**20} MB are accepted")
    sha256 = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(source=source, sha256=sha256).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            document = Document.objects.create(tenant_id=source.tenant_id, source=source, title=title,
                                               media_type=media_type, data=data, sha256=sha256)
            audit_record(tenant_id=source.tenant_id, actor=actor, action="document.upload", obj=document,
                         new={"source": source.name, "title": title, "media_type": media_type, "sha256": sha256,
                              "bytes": len(data)})
            from .tasks import document_ingest_task

            document_ingest_task.delay_on_commit(document.id)
    except IntegrityError:  # the same bytes uploaded at the same moment: the other upload made the document
        return Document.objects.get(source=source, sha256=sha256), False
    return document, True


def document_ingest(*, document_id: int) -> None:
    """Extract, chunk, embed and store one queued document (or one whose ingestion died: its partial chunks are
    deleted first). Ends ready, or failed with the reason in `error`. Returns at once if another ingestion
    holds the document or it is done."""
    beat = timezone.now()
    claimed = Document.objects.filter(
        Q(status=Document.Status.QUEUED) | Q(status=Document.Status.INGESTING, updated_at__lt=beat - STALE_AFTER),
        id=document_id,
    ).update(status=Document.Status.INGESTING, chunks_total=0, chunks_done=0, error="", updated_at=beat)
    if not claimed:
        return
    try:
        document = Document.objects.only("tenant_id", "source_id", "media_type", "data").get(id=document_id)
        text, sections = extract(document.media_type, bytes(document.data))
        pieces = chunk(text, sections)
        if not pieces:
            raise IngestionError("no text was found in the document" + (
                " (a scanned PDF holds images of text: it needs OCR first)" if document.media_type == "application/pdf"
                else ""))
        with transaction.atomic():
            Chunk.objects.filter(document_id=document_id).delete()  # what a dead ingestion left
            beat = _heartbeat(document_id, beat, text=text, chunks_total=len(pieces))
        for first in range(0, len(pieces), EMBED_BATCH):
            batch = pieces[first:first + EMBED_BATCH]
            # Embedding takes seconds: done outside any transaction.
            vectors = embeddings.embed([_embedding_text(piece) for piece in batch])
            with transaction.atomic():
                Chunk.objects.bulk_create(
                    Chunk(tenant_id=document.tenant_id, source_id=document.source_id, document_id=document_id,
                          ordinal=first + i, heading=piece.heading, text=piece.text, start=piece.start, end=piece.end,
                          embedding=vector)
                    for i, (piece, vector) in enumerate(zip(batch, vectors)))
                beat = _heartbeat(document_id, beat, chunks_done=first + len(batch))
        _heartbeat(document_id, beat, status=Document.Status.READY)
    except _Superseded:
        return
    except Exception as error:  # noqa: BLE001  (whatever went wrong, the document says so and the others go on)
        if isinstance(error, IngestionError):
            message = str(error)
        elif isinstance(error, SoftTimeLimitExceeded):
            message = "the ingestion took longer than its time limit"
        else:
            message = f"{type(error).__name__}: {error}".rstrip(": ")
        with transaction.atomic():
            if Document.objects.filter(id=document_id, status=Document.Status.INGESTING, updated_at=beat).update(
                    status=Document.Status.FAILED, error=message, chunks_done=0, updated_at=timezone.now()):
                Chunk.objects.filter(document_id=document_id).delete()


class IngestionError(Exception):
    """A document that cannot be ingested; the message says why, in the document's `error`."""


class _Superseded(Exception):
    """Our ingestion was taken for dead and another took the document over."""


def _heartbeat(document_id: int, beat, **fields):
    """Write `fields` and a new heartbeat, if the document is still ours: the heartbeat we wrote last is the
    claim's token, which a takeover replaces. Worker clocks are assumed within a minute of each other."""
    now = timezone.now()
    if not Document.objects.filter(id=document_id, status=Document.Status.INGESTING, updated_at=beat).update(
            updated_at=now, **fields):
        raise _Superseded
    return now


def ingestion_stale(document: Document) -> bool:
    """Whether an ingesting document's ingestion has stopped beating (its worker died)."""
    return document.updated_at < timezone.now() - STALE_AFTER


def _media_type(media_type: str, title: str) -> str:
    media_type = media_type.split(";")[0].strip().lower()
    media_type = ALIASES.get(media_type, media_type)
    if media_type in ("", "application/octet-stream"):  # what a browser sends when it does not know
        media_type = EXTENSIONS.get(PurePosixPath(title.lower()).suffix, media_type)
    if media_type not in MEDIA_TYPES:
        raise ServiceError(f"'{title}' is of type '{media_type or 'unknown'}'; accepted are "
                           f"{', '.join(sorted(MEDIA_TYPES))}")
    return media_type


# --- extraction -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A span of the text under one heading path."""
    start: int
    end: int
    heading: str


def extract(media_type: str, data: bytes) -> tuple[str, list[Section]]:
    """The text of a file and its sections: a PDF's are its pages ("page 3"), the others' their Markdown headings."""
    if media_type == "application/pdf":
        return _pdf_text(data)
    raw = data.decode("utf-8", errors="replace")
    text = _html_text(raw) if media_type == "text/html" else _clean(raw)
    return text, markdown_sections(text)


def _clean(text: str) -> str:
    # Postgres text cannot hold NUL; one line-ending convention keeps offsets simple to reason about.
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def _pdf_text(data: bytes) -> tuple[str, list[Section]]:
    import pypdf
    from pypdf.errors import PyPdfError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestionError("the PDF is protected by a password")
        pages = [_clean(page.extract_text() or "").strip() for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as error:
        raise IngestionError(f"the PDF could not be read: {error or type(error).__name__}") from error
    text, sections = "", []
    for number, page in enumerate(pages, 1):
        if page:
            text += "\n\n" if text else ""
            sections.append(Section(len(text), len(text) + len(page), f"page {number}"))
            text += page
    return text, sections


_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(```|~~~)")


def markdown_sections(text: str) -> list[Section]:
    """The text split at its ATX headings (`## Opened items`), outside code fences; each section runs from
    the end of its heading line to the next heading and carries the path of headings above it."""
    sections, path, start, heading, fenced, offset = [], [], 0, "", False, 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if _FENCE.match(bare):
            fenced = not fenced
        elif not fenced and (match := _HEADING.fullmatch(bare)):
            sections.append(Section(start, offset, heading))
            level = len(match[1])
            path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match[2].strip())]
            heading = " > ".join(title for _, title in path if title)[:1000]
            start = offset + len(line)
        offset += len(line)
    sections.append(Section(start, len(text), heading))
    return [s for s in sections if text[s.start:s.end].strip()]


class _HtmlToText(HTMLParser):
    """HTML to text as Markdown would write it: headings as `#` lines, blocks as paragraphs."""

    SKIPPED = frozenset({"script", "style", "template", "noscript", "title"})
    BLOCKS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "blockquote",
                        "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "pre", "figure", "figcaption", "form", "hr",
                        "body"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks, self.parts, self.prefix, self.skipping, self.pre = [], [], "", 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIPPED:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.prefix = "#" * int(tag[1]) + " "
        elif tag in self.BLOCKS:
            self.flush()
            # a paragraph inside a list item is still the item
            self.prefix = "- " if tag == "li" or self.prefix == "- " else ""
            self.pre += tag == "pre"
        elif tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.prefix = ""
            self.pre = max(0, self.pre - (tag == "pre"))

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def flush(self):
        text, self.parts = "".join(self.parts), []
        if self.pre:
            # fenced, so that a "# comment" in it is not a heading
            text = text.strip("\n") and "```\n" + text.strip("\n") + "\n```"
        else:
            # whitespace as a browser shows it; <br> lines kept
            text = "\n".join(line for line in (" ".join(line.split()) for line in text.split("\n")) if line)
            if self.prefix.startswith("#"):
                text = text.replace("\n", " ")
        if text:
            self.blocks.append(self.prefix + text)
            self.prefix = ""


def _html_text(html: str) -> str:
    parser = _HtmlToText()
    parser.feed(_clean(html))
    parser.close()
    parser.flush()
    return "\n\n".join(parser.blocks)


# --- chunking -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    text: str
    heading: str


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")
_WHITESPACE = re.compile(r"\s*")


def chunk(text: str, sections: list[Section], size: int = CHUNK_CHARS) -> list[Piece]:
    """Chunks of at most `size` characters (unless one word is longer), each inside one section. Whole paragraphs
    are packed together; a longer paragraph is cut after a sentence, or else between words, never in one.
    No overlap: a chunk keeps its heading path, cuts fall where the author broke the text, and overlapping
    chunks would put the same sentence twice in a search's top results and make a citation ambiguous."""
    pieces = []
    for section in sections:
        spans = [span for paragraph in _paragraphs(text, section.start, section.end)
                 for span in _cut(text, *paragraph, size)]
        packed: list[tuple[int, int]] = []
        for start, end in spans:
            if packed and end - packed[-1][0] <= size:
                packed[-1] = (packed[-1][0], end)
            else:
                packed.append((start, end))
        pieces += [Piece(start, end, text[start:end], section.heading) for start, end in packed]
    return pieces


def _paragraphs(text: str, start: int, end: int):
    """(start, end) of each paragraph between `start` and `end`, without the whitespace around it."""
    for match in re.finditer(r"(?:(?!\n[ \t]*\n)[\s\S])+", text[start:end]):  # runs between blank lines
        span = match.group()
        if span.strip():
            lead = len(span) - len(span.lstrip())
            yield start + match.start() + lead, start + match.start() + len(span.rstrip())


def _cut(text: str, start: int, end: int, size: int):
    """A paragraph as spans of at most `size`, cut after the last sentence that fits (if it leaves at least half),
    or at the last whitespace, or, for a single word longer than `size`, at its end."""
    while end - start > size:
        window = text[start:start + size + 1]
        sentences = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() >= size // 2]
        spaces = [m.start() for m in re.finditer(r"\s", window)]
        if sentences:
            cut = sentences[-1]
        elif spaces and spaces[-1] > 0:
            cut = spaces[-1]
        else:
            following = re.compile(r"\s").search(text, start + size, end)
            if following is None:
                break
            cut = following.start() - start
        piece = text[start:start + cut].rstrip()
        yield start, start + len(piece)
        start = _WHITESPACE.match(text, start + cut, end).end()
    if start < end:
        yield start, end


def _embedding_text(piece: Piece) -> str:
    return f"{piece.heading}\n{piece.text}" if piece.heading else piece.text


# --- search ---------------------------------------------------------------------------------------------

# Reciprocal rank fusion in one statement: each retriever's ranks, joined, summed as 1 / (RRF_K + rank).
# The nearest chunks come from the HNSW index with the scope's filter applied while it is scanned
# (pgvector ≥ 0.8 with iterative scans keeps scanning until CANDIDATES rows of the scope are found). pgvector
# before 0.8 stops after ef_search rows of the whole table (see SETTINGS), so a small scope can come back short:
# then, and only then, `exact` ranks the whole scope without the index ("+ 0" is not the index's operator).
SEMANTIC = """
ann AS MATERIALIZED (
    SELECT id, embedding <=> %(vector)s::vector AS distance FROM tools_chunk
    WHERE {scope} ORDER BY distance LIMIT %(candidates)s
), exact AS MATERIALIZED (
    SELECT id, embedding <=> %(vector)s::vector AS distance FROM tools_chunk
    WHERE {scope} AND (SELECT count(*) FROM ann) < %(candidates)s
    ORDER BY (embedding <=> %(vector)s::vector) + 0 LIMIT %(candidates)s
), semantic AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank
    FROM (SELECT * FROM exact UNION ALL SELECT * FROM ann WHERE NOT EXISTS (SELECT FROM exact)) nearest
)"""
SEARCH = "WITH" + SEMANTIC + """, lexical AS (
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM (
        SELECT id, ts_rank_cd(search, query) AS score FROM (
            SELECT id, search, query FROM tools_chunk, websearch_to_tsquery('english', %(query)s) query
            WHERE {scope} AND search @@ query LIMIT %(pool)s) matched
        ORDER BY score DESC LIMIT %(candidates)s) best
), fused AS (
    SELECT id, coalesce(1.0 / ({rrf_k} + semantic.rank), 0) + coalesce(1.0 / ({rrf_k} + lexical.rank), 0) AS score,
           semantic.rank AS semantic_rank
    FROM semantic FULL OUTER JOIN lexical USING (id)
    ORDER BY score DESC, semantic_rank NULLS LAST, id LIMIT %(k)s  -- before the joins: k rows looked up, no more
)
SELECT chunk.id, chunk.document_id, source.name, document.title, chunk.heading, chunk.text, chunk.start, chunk."end",
       fused.score
FROM fused JOIN tools_chunk chunk USING (id) JOIN tools_document document ON document.id = chunk.document_id
     JOIN tools_knowledgesource source ON source.id = chunk.source_id
ORDER BY fused.score DESC, fused.semantic_rank NULLS LAST, chunk.id
"""


def knowledge_search(*, tenant_id: int, query: str, sources: list[int] | None = None, k: int = 5) -> list[dict]:
    """The `k` chunks of the tenant (in `sources`, or all its sources) that best answer `query`, best first."""
    if not query.strip():
        raise ServiceError("the search query is empty")
    if not 1 <= k <= MAX_K:
        raise ServiceError(f"k must be between 1 and {MAX_K}")
    if sources is not None and not sources:
        return []
    vector = Vector(embeddings.embed([query])[0]).to_text()
    return search_embedded(tenant_id=tenant_id, query=query, vector=vector, sources=sources, k=k)


def search_embedded(*, tenant_id: int, query: str, vector: str, sources: list[int] | None = None,
                    k: int = 5) -> list[dict]:
    """`knowledge_search` with the query's embedding already made (pgvector's text form): the statement alone."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*search_settings(tenant_id=tenant_id, sources=sources, k=k))
        cursor.execute(*search_statement(tenant_id=tenant_id, query=query, vector=vector, sources=sources, k=k))
        rows = cursor.fetchall()
    return [{"chunk": id, "document": document, "source": source, "title": title, "heading": heading, "text": text,
             "start": start, "end": end, "score": float(score)}
            for id, document, source, title, heading, text, start, end, score in rows]


def search_statement(*, tenant_id: int, query: str, vector: str, sources: list[int] | None, k: int) -> tuple[str, dict]:
    return SEARCH.format(scope=scope_sql(sources), rrf_k=RRF_K), {
        "tenant": tenant_id, "sources": list(sources or []), "query": query, "vector": vector,
        "candidates": max(CANDIDATES, k), "k": k, "pool": LEXICAL_POOL}


def scope_sql(sources: list[int] | None) -> str:
    return "tenant_id = %(tenant)s" + (" AND source_id = ANY(%(sources)s)" if sources is not None else "")


# The search's settings, for its transaction only (set_config's `true`). No parallel workers: starting them costs
# milliseconds, more than the whole search. pgvector ≥ 0.8 scans the HNSW index iteratively: it goes on until it has
# found enough rows of the scope (relaxed order: nearly sorted, and `semantic` sorts the candidates again).
SETTINGS = """
SELECT set_config('max_parallel_workers_per_gather', '0', true), set_config('hnsw.ef_search', %(ef_search)s, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('gin_fuzzy_search_limit', %(sample)s, true)
"""
# pgvector before 0.8 filters an HNSW scan's ef_search rows after the scan, so a scope that is a share of the table
# gets CANDIDATES rows back only if ef_search is about CANDIDATES / share: that, times EF_HEADROOM, from the scope's
# chunks (its documents' counts) and the table's (its statistics), up to pgvector's maximum of 1000. A scope too
# small for that is ranked exactly (SEARCH's `exact`), and cheaply.
SETTINGS_BEFORE_0_8 = """
SELECT set_config('max_parallel_workers_per_gather', '0', true), set_config('gin_fuzzy_search_limit', %(sample)s, true),
       set_config('hnsw.ef_search', least(1000, greatest(%(ef_search)s::int,
                  ceil(%(headroom)s * %(candidates)s * table_rows / greatest(scope_rows, 1))))::int::text, true)
FROM (SELECT greatest(reltuples, 0) AS table_rows FROM pg_class WHERE oid = 'tools_chunk'::regclass) counted_table,
     (SELECT coalesce(sum(chunks_total), 0) AS scope_rows FROM tools_document WHERE {scope}) counted_scope
"""


def search_settings(*, tenant_id: int, sources: list[int] | None, k: int) -> tuple[str, dict]:
    if pgvector_version() >= (0, 8):
        return SETTINGS, {"ef_search": str(EF_SEARCH), "sample": str(GIN_SAMPLE)}
    return SETTINGS_BEFORE_0_8.format(scope=scope_sql(sources)), {
        "tenant": tenant_id, "sources": list(sources or []), "ef_search": EF_SEARCH, "headroom": EF_HEADROOM,
        "candidates": max(CANDIDATES, k), "sample": str(GIN_SAMPLE)}


_pgvector_version: tuple[int, ...] | None = None


def pgvector_version() -> tuple[int, ...]:
    global _pgvector_version
    if _pgvector_version is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            _pgvector_version = tuple(int(part) for part in re.findall(r"\d+", cursor.fetchone()[0]))
    return _pgvector_version


# --- citations ------------------------------------------------------------------------------------------


def citation_verify(*, tenant_id: int, citations: list[dict]) -> list[str]:
    """What is wrong with `citations` ({"chunk": id, "quote": str, optionally "start" and "end", the quote's
    place in the document's text}); an empty list when every quote is verified.

    A quote must occur in the text of its chunk (of this tenant) verbatim: letters, digits, punctuation and case
    as stored. Only whitespace is forgiven: runs of spaces, tabs and line breaks count as one space on both
    sides, and the quote's ends are trimmed (a model re-flows lines; it must not re-word). With start and end,
    the document's text between them must be the quote (by the same rule), inside the chunk."""
    ids = [c["chunk"] for c in citations if isinstance(c, dict) and type(c.get("chunk")) is int]
    chunks = {c.id: c for c in Chunk.objects.filter(tenant_id=tenant_id, id__in=ids).select_related("document")
              .only("id", "text", "heading", "start", "end", "document__title")}
    problems = []
    for number, citation in enumerate(citations, 1):
        problem = _citation_problem(citation, chunks)
        if problem:
            problems.append(f"citation {number}: {problem}")
    return problems


def _citation_problem(citation, chunks: dict[int, Chunk]) -> str | None:
    if not isinstance(citation, dict) or type(citation.get("chunk")) is not int:
        return "it names no chunk (\"chunk\" must be a chunk's id)"
    quote = citation.get("quote")
    if not isinstance(quote, str) or not _squeezed(quote):
        return "the quote is empty"
    chunk_ = chunks.get(citation["chunk"])
    if chunk_ is None:  # another tenant's chunk is not named either
        return f"there is no chunk {citation['chunk']}"
    where = f"chunk {chunk_.id} ({chunk_.document.title}{' > ' + chunk_.heading if chunk_.heading else ''})"
    if _squeezed(quote) not in _squeezed(chunk_.text):
        return f"the quote does not occur in {where}"
    start, end = citation.get("start"), citation.get("end")
    if start is None and end is None:
        return None
    if type(start) is not int or type(end) is not int or not chunk_.start <= start < end <= chunk_.end:
        return (f"characters {start}–{end} are not a span inside {where}, which spans characters "
                f"{chunk_.start}–{chunk_.end} of the document")
    # The chunk's text is the document's between its start and end, so the span is read from it.
    if _squeezed(chunk_.text[start - chunk_.start:end - chunk_.start]) != _squeezed(quote):
        return f"characters {start}–{end} of the document are not the quote (they are in {where})"
    return None


def _squeezed(text: str) -> str:
    return " ".join(text.split())
