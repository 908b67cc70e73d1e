"""A tenant's data sources, as the SQL agent uses them: reached through tools/sql.py (which guards every
statement), described to the model by the part of their schema a question needs, with the question/SQL pairs
that humans approved as examples."""

from django.db import connection
from django.utils import timezone
from pgvector import Vector

from accounts.models import Tenant
from core import embeddings
from core.errors import NotFound, ServiceError

from . import sql
from .models import DataSource, SqlExample
from .services import governed_save, secret_value, validate


def data_source_of(tenant_id: int, name: str) -> DataSource:
    source = DataSource.objects.filter(tenant_id=tenant_id, name=name).first()
    if source is None:
        raise NotFound(f"there is no data source '{name}'")
    return source


def data_source_target(source: DataSource) -> sql.Target:
    """How to reach the source: its password read from its secret, its hidden columns refused by the guard."""
    password = secret_value(tenant=Tenant(pk=source.tenant_id), name=source.password_secret) \
        if source.password_secret else ""
    location = source.location if source.engine == DataSource.Engine.POSTGRES else str(source.file_path())
    return sql.Target(engine=source.engine, location=location, password=password,
                      timeout_ms=source.timeout_ms, row_cap=source.row_cap, hidden=_tagged(source, "hidden"))


def _tagged(source: DataSource, tag: str) -> frozenset[str]:
    return frozenset(column.lower() for column, value in source.column_tags.items() if value == tag)


def data_source_save(*, source: DataSource, actor) -> DataSource:
    """Save the source once it answers: its connection tested and its schema read (ServiceError says what is
    wrong, and nothing is saved)."""
    validate(source)  # before connecting: a location outside the tenant's folder is not opened
    source.schema = data_source_schema(source)
    source.schema_at = timezone.now()
    governed_save(obj=source, actor=actor)
    return source


def data_source_refresh(*, source: DataSource) -> DataSource:
    """Read the source's schema again (tables or columns added since)."""
    schema = data_source_schema(source)
    DataSource.objects.filter(pk=source.pk).update(schema=schema, schema_at=timezone.now())
    source.refresh_from_db()
    return source


def data_source_schema(source: DataSource) -> dict:
    """The source's schema as introspection reads it (ServiceError: why the source cannot be read)."""
    try:
        schema = sql.introspect(data_source_target(source))
    except sql.SourceError as e:
        raise ServiceError(f"data source '{source.name}': {e}") from None
    # Each table's description, embedded once here, picks the tables a question needs when there are many.
    vectors = embeddings.embed([_table_text(table) for table in schema["tables"]])
    for table, vector in zip(schema["tables"], vectors):
        table["embedding"] = [round(x, 5) for x in vector]
    return schema


def _table_text(table: dict) -> str:
    return f"{table['name']}: " + ", ".join(column["name"] for column in table["columns"])


def schema_prompt(source: DataSource, asked: list[float], *, max_tables: int = 8) -> str:
    """The schema as the model sees it: every table when there are few, else the `max_tables` nearest in meaning
    to the question (`asked`, its embedding) and the tables their foreign keys name. Hidden columns are left out,
    and the examples of columns tagged PII."""
    tables = source.schema.get("tables", [])
    if len(tables) > max_tables:
        nearest = sorted(tables, key=lambda t: -sum(a * b for a, b in zip(asked, t["embedding"])))[:max_tables]
        named = {column["fk"].split(".")[0] for table in nearest for column in table["columns"] if column.get("fk")}
        tables = [t for t in tables if t in nearest or t["name"] in named]
    hidden, personal = _tagged(source, "hidden"), _tagged(source, "pii")
    lines = []
    for table in tables:
        columns = []
        for column in table["columns"]:
            name = f"{table['name']}.{column['name']}".lower()
            if name in hidden or column.get("hidden"):
                continue
            about = [column["type"]] + (["primary key"] if column.get("pk") else []) + (
                [f"references {column['fk']}"] if column.get("fk") else [])
            if column.get("examples") and name not in personal:
                about.append("e.g. " + ", ".join(repr(value) for value in column["examples"][:3]))
            columns.append(f'  "{column["name"]}" {"; ".join(about)}')
        lines.append(f'"{table["name"]}" ({table.get("row_count", "?")} rows)\n' + "\n".join(columns))
    return "\n".join(lines)


def sql_example_add(*, source: DataSource, question: str, sql_text: str, origin: str, actor=None) -> SqlExample:
    """Keep a question and the SQL that answered it, that a human approved or marked good, as an example."""
    question, sql_text = question.strip(), sql_text.strip()
    if not question or not sql_text:
        raise ServiceError("an example needs a question and its SQL")
    sql_check(source, sql_text)
    example = sql_example_row(source=source, question=question, sql_text=sql_text, origin=origin,
                              created_by=getattr(actor, "username", "") or "")
    example.save()
    return example


def sql_example_row(*, source: DataSource, question: str, sql_text: str, origin: str,
                    created_by: str = "") -> SqlExample:
    """The example, unsaved (an agent's step commits it with its outcome), its question embedded."""
    return SqlExample(tenant_id=source.tenant_id, source=source, question=question.strip(), sql=sql_text.strip(),
                      origin=origin, embedding=embeddings.embed([question])[0], created_by=created_by)


def sql_check(source: DataSource, sql_text: str) -> sql.Guarded:
    """The guard's verdict on a statement for the source, a read or a write (ServiceError: why not)."""
    guard = dict(engine=source.engine, row_cap=source.row_cap, hidden=_tagged(source, "hidden"))
    try:
        guarded = sql.guard(sql_text, **guard)
    except sql.SqlRefused:
        try:
            guarded = sql.guard(sql_text, **guard, write=True)
        except sql.SqlRefused as e:
            raise ServiceError(f"sql: {e.reason}") from None
    if source.engine == DataSource.Engine.SQLITE and (unknown := sql.unknown_columns(sql_text, known={
            column["name"] for table in source.schema.get("tables", []) for column in table["columns"]})):
        raise ServiceError(f"no such column: {', '.join(unknown)}")  # before a write is proposed with it
    return guarded


def sql_examples_like(source: DataSource, asked: list[float], *, n: int = 3) -> list[dict]:
    """The `n` approved examples of the source whose questions are nearest in meaning to the question (`asked`, its
    embedding), with their cosine similarity to it."""
    if n <= 0:
        return []
    asked = Vector(asked).to_text()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT question, sql, 1 - (embedding <=> %s::vector) FROM {SqlExample._meta.db_table}"
                       " WHERE tenant_id = %s AND source_id = %s ORDER BY embedding <=> %s::vector LIMIT %s",
                       [asked, source.tenant_id, source.pk, asked, n])
        return [{"question": question, "sql": text, "similarity": similarity}
                for question, text, similarity in cursor.fetchall()]
