"""The Chinook sample database on the three engines, each built from data/chinook/chinook.sqlite.

Table and column names stay as in the SQLite file (mixed case), so one SQL text with double-quoted
identifiers runs on all three. Types are mapped (NVARCHAR -> VARCHAR, DATETIME -> TIMESTAMP,
NUMERIC(10,2) kept), and so are the primary and foreign keys.

    duckdb_copy(path)                    # a DuckDB file at `path`
    postgres_copy(admin_url) -> dict     # a fresh database and a SELECT-only role on that server
    postgres_drop(admin_url, made)       # both gone
"""

import secrets
import shutil
import sqlite3
from pathlib import Path

import duckdb
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parents[2]
SQLITE_FILE = REPO / "data" / "chinook" / "chinook.sqlite"
# Referenced tables first, so that rows load with their foreign keys in place.
TABLES = ("Artist", "Album", "Genre", "MediaType", "Track", "Playlist", "PlaylistTrack", "Employee", "Customer",
          "Invoice", "InvoiceLine")
ROW_COUNTS = {"Album": 347, "Artist": 275, "Customer": 59, "Employee": 8, "Genre": 25, "Invoice": 412,
              "InvoiceLine": 2240, "MediaType": 5, "Playlist": 18, "PlaylistTrack": 8715, "Track": 3503}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _type(sqlite_type: str) -> str:
    upper = sqlite_type.upper()
    if upper.startswith("NVARCHAR"):
        return upper[1:]
    return {"DATETIME": "TIMESTAMP"}.get(upper, upper)


def create_statements() -> list[str]:
    """CREATE TABLE statements for DuckDB and PostgreSQL, in TABLES order."""
    source = sqlite3.connect(f"file:{SQLITE_FILE}?mode=ro", uri=True)
    statements = []
    for table in TABLES:
        columns = source.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
        parts = [f"{_quote(name)} {_type(type_)}{' NOT NULL' if notnull else ''}"
                 for _, name, type_, notnull, _, _ in columns]
        keys = [name for _, name, _, _, _, pk in sorted(columns, key=lambda c: c[5]) if pk]
        parts.append(f"PRIMARY KEY ({', '.join(map(_quote, keys))})")
        for _, _, other, column, other_column, *_ in source.execute(f"PRAGMA foreign_key_list({_quote(table)})"):
            parts.append(f"FOREIGN KEY ({_quote(column)}) REFERENCES {_quote(other)} ({_quote(other_column)})")
        statements.append(f"CREATE TABLE {_quote(table)} ({', '.join(parts)})")
    source.close()
    return statements


def rows(table: str) -> list[tuple]:
    # Employees in id order put each manager before those who report to them.
    source = sqlite3.connect(f"file:{SQLITE_FILE}?mode=ro", uri=True)
    found = source.execute(f"SELECT * FROM {_quote(table)} ORDER BY 1").fetchall()
    source.close()
    return found


def sqlite_copy(path: Path) -> Path:
    shutil.copyfile(SQLITE_FILE, path)
    return path


def duckdb_copy(path: Path) -> Path:
    conn = duckdb.connect(str(path))
    try:
        for table, create in zip(TABLES, create_statements()):
            conn.execute(create)
            data = rows(table)
            width = len(data[0])
            # Many rows per INSERT, as DuckDB's executemany runs one statement per row; but one by one for
            # Employee, whose managers must exist before the rows that report to them are checked.
            size = 1 if table == "Employee" else 500
            for start in range(0, len(data), size):
                batch = data[start:start + size]
                values = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(batch))
                conn.execute(f"INSERT INTO {_quote(table)} VALUES {values}", [v for row in batch for v in row])
    finally:
        conn.close()
    return path


def postgres_copy(admin_url: str) -> dict:
    """A database chinook_<random> loaded from the SQLite file and a role hil_reader_<random> that may only
    read it (LOGIN, a password, SELECT grants). Returns its URL (without the password), the role and password."""
    suffix = secrets.token_hex(4)
    dbname, reader, password = f"chinook_{suffix}", f"hil_reader_{suffix}", secrets.token_urlsafe(16)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(dbname)))
        admin.execute(pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            pgsql.Identifier(reader), pgsql.Literal(password)))
    db_url = _with_dbname(admin_url, dbname)
    with psycopg.connect(db_url) as conn:
        for table, create in zip(TABLES, create_statements()):
            conn.execute(create)
            with conn.cursor().copy(pgsql.SQL("COPY {} FROM STDIN").format(pgsql.Identifier(table))) as copy:
                for row in rows(table):
                    copy.write_row(row)
        for grant in ("GRANT CONNECT ON DATABASE {db} TO {role}", "GRANT USAGE ON SCHEMA public TO {role}",
                      "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"):
            conn.execute(pgsql.SQL(grant).format(db=pgsql.Identifier(dbname), role=pgsql.Identifier(reader)))
    params = conninfo_to_dict(db_url)
    params.pop("password", None)
    params["user"] = reader
    return {"dbname": dbname, "reader": reader, "password": password, "admin_url": db_url,
            "reader_url": _url(params)}


def postgres_drop(admin_url: str, made: dict) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(made["dbname"])))
        admin.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(made["reader"])))


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _url(params: dict) -> str:
    """A postgresql:// URL from conninfo parameters (a socket directory as a percent-encoded host)."""
    from urllib.parse import quote, urlencode

    host = quote(params.pop("host", "localhost"), safe="")
    port = params.pop("port", None)
    user = quote(params.pop("user", ""), safe="")
    dbname = quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    return f"postgresql://{user}@{host}{':' + port if port else ''}/{dbname}{'?' + query if query else ''}"


QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "chinook_questions.json"


def questions() -> list[dict]:
    """Questions over Chinook with gold SQL: "sql" runs on every engine, "sql_by_engine" where they differ."""
    import json

    return json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))


def gold_sql(question: dict, engine: str) -> str:
    return question["sql_by_engine"][engine] if "sql_by_engine" in question else question["sql"]
