"""SQL data sources (tools/sql.py) on the Chinook database in DuckDB, SQLite and PostgreSQL: the guard refuses
what is not a plain read, the database refuses it too when the guard is bypassed, gold questions give the
same rows through `query` as run directly, and dry runs, writes, introspection, checks and timeouts behave.

The PostgreSQL copy lives in a database of its own on the test server (DATABASE_URL), read through a role
with only SELECT grants that must give its password."""

import datetime
import decimal
import json
import os
import re
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg import sql as pgsql

from tools import sql
from tools.sql import SourceError, SqlRefused, Target
from tools.tests import chinook

HIDDEN = frozenset({"customer.email"})
QUESTIONS = chinook.questions()


# --- the three sources ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_file(tmp_path_factory):
    return chinook.sqlite_copy(tmp_path_factory.mktemp("chinook") / "chinook.sqlite")


@pytest.fixture(scope="session")
def duckdb_file(tmp_path_factory):
    return chinook.duckdb_copy(tmp_path_factory.mktemp("chinook") / "chinook.duckdb")


@pytest.fixture(scope="session")
def postgres_db():
    """A Chinook database and a SELECT-only role on the test server; the role must give its password (the
    embedded server trusts local connections, so a rule for this role alone goes first in pg_hba.conf)."""
    admin_url = os.environ["DATABASE_URL"]
    made = chinook.postgres_copy(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        before = hba.read_text() if hba.is_file() else None
        if before is not None:
            rules = "".join(f"{kind} all {made['reader']} {'all ' if kind == 'host' else ''}scram-sha-256\n"
                            for kind in ("local", "host"))
            hba.write_text(rules + before)
            admin.execute("SELECT pg_reload_conf()")
    yield made
    with psycopg.connect(admin_url, autocommit=True) as admin:
        if before is not None:
            hba.write_text(before)
            admin.execute("SELECT pg_reload_conf()")
    chinook.postgres_drop(admin_url, made)


@pytest.fixture(scope="session")
def sources(sqlite_file, duckdb_file, postgres_db):
    """engine -> (Target read by the agent, a function running SQL directly through the engine's driver)."""
    return {
        "sqlite": Target(engine="sqlite", location=str(sqlite_file), hidden=HIDDEN),
        "duckdb": Target(engine="duckdb", location=str(duckdb_file), hidden=HIDDEN),
        "postgres": Target(engine="postgres", location=postgres_db["reader_url"], password=postgres_db["password"],
                           hidden=HIDDEN),
    }


def run_directly(target: Target, statement: str) -> list[tuple]:
    if target.engine == "sqlite":
        with sqlite3.connect(target.location) as conn:
            return conn.execute(statement).fetchall()
    if target.engine == "duckdb":
        with duckdb.connect(target.location, read_only=True) as conn:
            return conn.execute(statement).fetchall()
    with psycopg.connect(target.location, password=target.password or None) as conn:
        return conn.execute(statement).fetchall()


def fingerprint(target: Target) -> dict:
    """Every table's rows (hashed, order-insensitive), and the tables there are."""
    found = {}
    for table in chinook.TABLES:
        rows = run_directly(target, f'SELECT * FROM "{table}"')
        found[table] = (len(rows), hash(frozenset(Counter(map(repr, rows)).items())))
    names = ("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')" if target.engine == "sqlite" else
             "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('main', 'public')")
    found["tables"] = sorted(row[0] for row in run_directly(target, names))
    return found


@pytest.fixture(scope="session")
def pristine(sources):
    """The sources' fingerprints before any test ran."""
    return {engine: fingerprint(target) for engine, target in sources.items()}


def counts(target: Target) -> tuple:
    selects = ", ".join(f'(SELECT COUNT(*) FROM "{table}")' for table in chinook.TABLES)
    return run_directly(target, f"SELECT {selects}")[0]


def test_the_three_copies_hold_chinook(sources, pristine):
    for engine, target in sources.items():
        assert dict(zip(chinook.TABLES, counts(target))) == chinook.ROW_COUNTS, engine
        assert set(chinook.TABLES) <= set(pristine[engine]["tables"]), engine


# --- the guard: attacks ----------------------------------------------------------------------------

EVERY_ENGINE = [
    # stacked statements, and comments hiding them
    'SELECT 1; DELETE FROM "Customer"',
    'SELECT "FirstName" FROM "Customer"; DROP TABLE "Customer"',
    'SELECT 1 /* harmless */; DROP TABLE "Customer"',
    'SELECT 1 -- a comment\n; DELETE FROM "Customer"',
    "SELECT 1 /* ; */ ; UPDATE \"Customer\" SET \"Country\" = 'X'",
    'SELECT 1;\nDELETE FROM "Customer";',
    'SELECT/**/1;/**/DELETE/**/FROM"Customer"',
    # writes, in any case and spacing
    'DELETE FROM "Customer"',
    'DeLeTe FROM "Customer"',
    'delete\tfrom\n"Customer"\nwhere 1 = 1',
    "UPDATE \"Customer\" SET \"Country\" = 'X'",
    'INSERT INTO "Genre" SELECT "GenreId" + 1000, "Name" FROM "Genre"',
    "INSERT INTO \"Genre\" (\"GenreId\", \"Name\") VALUES (999, 'x')",
    'UPDATE "Track" SET "UnitPrice" = 0 FROM "Genre" WHERE "Genre"."GenreId" = "Track"."GenreId"',
    'DROP TABLE "Customer"',
    'CREATE TABLE "Stolen" AS SELECT "FirstName" FROM "Customer"',
    'ALTER TABLE "Customer" ADD COLUMN "x" INTEGER',
    'CREATE INDEX "i" ON "Customer" ("Country")',
    'CREATE VIEW "v" AS SELECT 1 AS one',
    'TRUNCATE "Customer"',
    'WITH d AS (DELETE FROM "Customer" RETURNING *) SELECT * FROM d',
    'WITH x AS (SELECT 1 AS one) DELETE FROM "Customer"',
    'SELECT "FirstName" INTO "Stolen" FROM "Customer"',
    'EXPLAIN ANALYZE DELETE FROM "Customer"',
    'VACUUM',
    # transaction control
    'BEGIN', 'COMMIT', 'ROLLBACK',
    # hidden column: by name, through *, a whole row, an alias or a CTE
    'SELECT "Email" FROM "Customer"',
    'SELECT * FROM "Customer"',
    'SELECT c.* FROM "Customer" AS c',
    'SELECT c FROM "Customer" AS c',
    'SELECT "FirstName" FROM "Customer" WHERE "Email" LIKE \'%@gmail.com\'',
    'SELECT LOWER("EMAIL") FROM "Customer"',
    'WITH x AS (SELECT "Email" AS e FROM "Customer") SELECT e FROM x',
    'SELECT "FirstName" FROM "Customer" UNION ALL SELECT "Email" FROM "Customer"',
    'SELECT "Name" FROM "Artist" WHERE "Name" IN (SELECT "Email" FROM "Customer")',
    'SELECT c."FirstName" FROM "Customer" AS c NATURAL JOIN "Employee" AS e',
    'SELECT "FirstName" FROM "Customer" JOIN "Employee" USING ("Email")',
    'SELECT COUNT(*) FROM "Customer" GROUP BY "Email" HAVING COUNT(*) > 1',
    'SELECT "FirstName" FROM public."Customer" ORDER BY "email"',
    # unicode and quoting tricks
    'SELECT 1; \uff24\uff25\uff2c\uff25\uff34\uff25 FROM "Customer"',
    'DEL\u200bETE FROM "Customer"',
    'SELECT 1\u037e DELETE FROM "Customer"',
    '"DELETE" FROM "Customer"',
    # not SQL at all, or too much of it
    'SELECT 1 /* never closed',
    '',
    'SELECT 1 AS one' + ' ' * 100_000,
]
ENGINE_ONLY = {
    "postgres": [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        "SELECT \"pg_read_file\"('/etc/passwd')",
        "SELECT PG_READ_BINARY_FILE('/etc/passwd')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT lo_export(1, '/tmp/x')",
        "SELECT U&\"pg\\005fread_file\"('/etc/passwd')",
        "COPY \"Customer\" TO PROGRAM 'id'",
        "COPY \"Customer\" FROM '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/hil-copy'",
        "SET ROLE postgres",
        "SET default_transaction_read_only = off",
        "SET SESSION AUTHORIZATION postgres",
        "RESET ALL",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "GRANT SELECT ON \"Customer\" TO PUBLIC",
        "REVOKE SELECT ON \"Customer\" FROM PUBLIC",
        "CREATE ROLE intruder SUPERUSER",
        "ALTER ROLE CURRENT_USER SUPERUSER",
        "DO $$ BEGIN DELETE FROM \"Customer\"; END $$",
        "CREATE EXTENSION dblink",
        "CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
        "CALL p()",
        "LOCK TABLE \"Customer\"",
        "SELECT pg_sleep(10)",
        "SELECT pg_sleep_for('10 seconds')",
        "SELECT * FROM dblink('host=localhost', 'DELETE FROM \"Customer\"') AS t(x text)",
        "SELECT query_to_xml('DELETE FROM \"Customer\" RETURNING 1', true, true, '')",
        "SELECT table_to_xml('\"Customer\"', true, true, '')",
        "PREPARE p AS DELETE FROM \"Customer\"",
        "EXECUTE p",
        "LISTEN hil", "NOTIFY hil", "SELECT pg_notify('hil', 'x')",
        "MERGE INTO \"Genre\" g USING \"Genre\" s ON g.\"GenreId\" = s.\"GenreId\" WHEN MATCHED THEN DELETE",
        "SELECT * FROM pg_authid", "SELECT passwd FROM pg_catalog.pg_shadow", "SELECT * FROM pg_user_mappings",
        "SELECT query FROM pg_stat_activity", "SELECT most_common_vals FROM pg_stats",
        "SELECT pg_terminate_backend(pg_backend_pid())", "SELECT pg_advisory_lock(1)", "SELECT nextval('s')",
        "SELECT \"FirstName\" FROM \"Customer\" FOR UPDATE",
        "SELECT $$x$$; DELETE FROM \"Customer\"",
        "SELECT row_to_json(c) FROM \"Customer\" AS c",
        "SELECT (c).\"Email\" FROM \"Customer\" AS c",
        "START TRANSACTION READ WRITE",
        "SAVEPOINT s",
        "SELECT em FROM \"Customer\" AS c(id, fn, ln, co, ad, ci, st, cn, pc, ph, fx, em)",
        "SELECT to_json(\"Customer\") FROM \"Customer\"",
        "SELECT json_extract_path_text(row_to_json(c), 'Email') FROM \"Customer\" AS c",
        "SELECT loread(lo_open(1, 262144), 100)",
        "SELECT query FROM pg_stat_statements",
        "SELECT * FROM pg_stat_get_activity(NULL)",
        "DECLARE c CURSOR FOR SELECT 1",
        "SHOW ALL",
        "COMMENT ON TABLE \"Customer\" IS 'x'",
        "REFRESH MATERIALIZED VIEW v",
        "DISCARD ALL",
        "SELECT 1 FROM \"Genre\" FOR SHARE",
        "EXPLAIN (ANALYZE) DELETE FROM \"Customer\"",
        "PREPARE TRANSACTION 'x'",
    ],
    "sqlite": [
        "SELECT readfile('/etc/passwd')",
        "SELECT writefile('/tmp/hil-x', 'x')",
        "SELECT load_extension('/tmp/x.so')",
        "SELECT edit('x')",
        "SELECT fts3_tokenizer('simple')",
        "SELECT * FROM zipfile('/tmp/x.zip')",
        "SELECT * FROM fsdir('/etc')",
        "SELECT * FROM sqlite_dbpage",
        "SELECT * FROM sqlite_stat4",
        "SELECT eval('DELETE FROM \"Customer\"')",
        "ATTACH DATABASE '/tmp/hil-x.db' AS x",
        "DETACH DATABASE main",
        "PRAGMA query_only = 0",
        "PRAGMA writable_schema = 1",
        "PRAGMA table_info(\"Customer\")",
        "VACUUM INTO '/tmp/hil-x.db'",
        "REPLACE INTO \"Genre\" VALUES (1, 'x')",
        "INSERT OR REPLACE INTO \"Genre\" VALUES (1, 'x')",
        "SELECT 1 /* /* */ ; DELETE FROM \"Customer\"; SELECT 1 /* */",
        "CREATE TRIGGER t AFTER INSERT ON \"Genre\" BEGIN DELETE FROM \"Customer\"; END",
        "SAVEPOINT s",
        "ANALYZE",
        "REINDEX",
        "SELECT * FROM \"sqlite_stat4\"",
    ],
    "duckdb": [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM read_json_auto('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM parquet_scan('/tmp/x.parquet')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '/etc/passwd'",
        "FROM '/etc/passwd'",
        "SELECT * FROM \"/etc/passwd.csv\"",
        "SELECT * FROM 'https://example.com/data.csv'",
        "SELECT * FROM query('DELETE FROM \"Customer\"')",
        "SELECT * FROM query_table('Customer')",
        "SELECT getenv('HOME')",
        "SELECT * FROM duckdb_secrets()",
        "ATTACH ':memory:' AS m",
        "ATTACH '/tmp/hil-x.duckdb' AS x",
        "DETACH chinook",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA enable_profiling",
        "COPY \"Customer\" TO '/tmp/hil-customers.csv'",
        "EXPORT DATABASE '/tmp/hil-export'",
        "CREATE MACRO m(a) AS a",
        "CALL checkpoint()",
        "CHECKPOINT",
        "SUMMARIZE \"Customer\"",
        "SELECT COLUMNS(*) FROM \"Customer\"",
        "SELECT COLUMNS('.*') FROM \"Customer\"",
        "SELECT \"Customer\" FROM \"Customer\"",
        "SELECT to_json(c) FROM \"Customer\" AS c",
        "SELECT * EXCLUDE (\"Phone\") FROM \"Customer\"",
        "SELECT #12 FROM \"Customer\"",
        "SELECT em FROM \"Customer\" AS c(id, fn, ln, co, ad, ci, st, cn, pc, ph, fx, em)",
        "SELECT struct_extract(c, 'Email') FROM \"Customer\" AS c",
        "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "USE memory",
        "SET VARIABLE x = 1",
        "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
        "SELECT * FROM st_read('/etc/passwd')",
        "IMPORT DATABASE '/tmp/hil-export'",
        "FROM \"Customer\" SELECT *",
    ],
}
ATTACKS = [(engine, attack) for attack in EVERY_ENGINE for engine in sql.ENGINES] + \
          [(engine, attack) for engine, attacks in ENGINE_ONLY.items() for attack in attacks]


@pytest.mark.parametrize("engine, attack", ATTACKS, ids=[f"{e}:{a[:50]}" for e, a in ATTACKS])
def test_an_attack_is_refused_with_a_reason_and_changes_nothing(sources, pristine, engine, attack):
    target = sources[engine]
    before = counts(target)

    with pytest.raises(SqlRefused) as refused:
        sql.query(target, attack)

    assert len(refused.value.reason) > 20 and refused.value.reason == str(refused.value)
    assert counts(target) == before


@pytest.mark.parametrize("engine, attack, words", [
    ("postgres", 'WITH d AS (DELETE FROM "Customer" RETURNING *) SELECT * FROM d',
     ["DELETE", "WITH", "only reads", "approval"]),
    ("postgres", 'SELECT 1; DELETE FROM "Customer"', ["2 statements", "DELETE", "one statement"]),
    ("sqlite", 'SELECT 1 /* harmless */; DROP TABLE "Customer"', ["2 statements", "DROP TABLE"]),
    ("duckdb", "SELECT * FROM read_csv('/etc/passwd')", ["read_csv", "files"]),
    ("postgres", "SELECT pg_read_file('/etc/passwd')", ["pg_read_file", "files"]),
    ("postgres", "SELECT query_to_xml('DELETE FROM x', true, true, '')", ["query_to_xml", "SQL given as text"]),
    ("sqlite", "SELECT load_extension('/tmp/x.so')", ["load_extension"]),
    ("duckdb", "FROM '/etc/passwd'", ["/etc/passwd", "file"]),
    ("postgres", 'SELECT "FirstName" INTO "Stolen" FROM "Customer"', ["INTO", "write"]),
    ("postgres", 'EXPLAIN ANALYZE DELETE FROM "Customer"', ["EXPLAIN ANALYZE DELETE"]),
    ("postgres", "SET ROLE postgres", ["SET ROLE", "role"]),
    ("sqlite", "ATTACH DATABASE '/tmp/x.db' AS x", ["ATTACH", "another database"]),
    ("sqlite", "PRAGMA query_only = 0", ["PRAGMA"]),
    ("duckdb", "COPY \"Customer\" TO '/tmp/x.csv'", ["COPY", "files"]),
    ("postgres", "BEGIN", ["BEGIN", "transactions"]),
    ("postgres", 'DeLeTe FROM "Customer"', ["DELETE", "write"]),
    ("postgres", 'SELECT "Email" FROM "Customer"', ["customer.email", "hidden"]),
    ("sqlite", 'SELECT * FROM "Customer"', ["customer.email", "name the columns"]),
    ("duckdb", 'SELECT c FROM "Customer" AS c', ["customer.email", "whole rows"]),
    ("postgres", "SELECT * FROM pg_authid", ["pg_authid"]),
    ("postgres", 'SELEC "Name" FROM "Genre"', ["could not parse"]),
])
def test_a_refusal_names_what_it_refused(sources, engine, attack, words):
    with pytest.raises(SqlRefused) as refused:
        sql.query(sources[engine], attack)

    for word in words:
        assert word in refused.value.reason


@pytest.mark.parametrize("engine, statement, runs", [
    ("postgres", 'SELECT "Name" FROM "Genre"', 'SELECT "Name" FROM "Genre" LIMIT 11'),
    ("postgres", 'SELECT "Name" FROM "Genre" LIMIT 500', 'SELECT "Name" FROM "Genre" LIMIT 11'),
    ("postgres", 'SELECT "Name" FROM "Genre" LIMIT 3 OFFSET 4', 'SELECT "Name" FROM "Genre" LIMIT 3 OFFSET 4'),
    ("sqlite", 'SELECT "Name" FROM "Genre" LIMIT 4, 30', 'SELECT "Name" FROM "Genre" LIMIT 11 OFFSET 4'),
    ("postgres", 'SELECT "Name" FROM "Genre" FETCH FIRST 30 ROWS ONLY',
     'SELECT * FROM (SELECT "Name" FROM "Genre" FETCH FIRST 30 ROWS ONLY) AS _limited LIMIT 11'),
    ("postgres", 'SELECT "Name" FROM "Genre" LIMIT ALL', 'SELECT * FROM (SELECT "Name" FROM "Genre" LIMIT ALL) AS _limited LIMIT 11'),
    ("duckdb", 'SELECT "Name" FROM "Genre" UNION SELECT "Name" FROM "MediaType" LIMIT 50',
     'SELECT "Name" FROM "Genre" UNION SELECT "Name" FROM "MediaType" LIMIT 11'),
    ("duckdb", 'FROM "Genre" SELECT "Name"', 'SELECT "Name" FROM "Genre" LIMIT 11'),
    ("sqlite", '  -- the genres\nselect "Name" from "Genre";  -- done', 'SELECT "Name" FROM "Genre" LIMIT 11'),
])
def test_a_read_runs_as_generated_with_its_limit_capped(engine, statement, runs):
    guarded = sql.guard(statement, engine=engine, row_cap=10, hidden=HIDDEN)

    assert guarded.sql == runs and guarded.kind == "read" and guarded.statement == "select"
    assert set(guarded.tables) <= {"Genre", "MediaType"}


def test_a_write_is_guarded_as_one_statement_with_its_tables():
    guarded = sql.guard('UPDATE "Track" SET "UnitPrice" = 1.29 FROM "Genre" g '
                        'WHERE g."GenreId" = "Track"."GenreId" AND g."Name" = \'Jazz\'',
                        engine="postgres", row_cap=10, hidden=HIDDEN, write=True)

    assert (guarded.kind, guarded.statement, guarded.tables) == ("write", "update", ("Track", "Genre"))
    assert "LIMIT" not in guarded.sql


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_a_statement_in_a_comment_is_not_run(sources, engine):
    """What runs is the statement generated from the checked tree, without comments: text that a comment
    hides never reaches the database as a statement."""
    target = sources[engine]
    before = counts(target)

    dashes = sql.query(target, 'SELECT 1 AS one -- ; DELETE FROM "Customer"')
    trailing = sql.query(target, 'SELECT 1 AS one; -- DELETE FROM "Customer"')
    block = sql.query(target, 'SELECT /* DELETE FROM "Customer" */ 1 AS one;')

    assert dashes["rows"] == trailing["rows"] == block["rows"] == [[1]]
    assert not any("DELETE" in result["sql"] for result in (dashes, trailing, block))
    assert counts(target) == before


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_a_line_comment_ended_by_a_carriage_return_hides_nothing(sources, engine):
    """PostgreSQL ends a -- comment at a carriage return, SQLite only at a line feed; sqlglot reads it one way
    per dialect. Either the guard sees two statements, or what runs is the one statement it saw."""
    target = sources[engine]
    before = counts(target)

    try:
        result = sql.query(target, 'SELECT 1 AS one --x\r; DELETE FROM "Customer"')
    except SqlRefused as refused:
        assert "2 statements" in refused.reason
    else:
        assert result["rows"] == [[1]] and "DELETE" not in result["sql"]
    assert counts(target) == before


def test_a_nested_comment_reads_as_postgresql_reads_it(sources):
    """PostgreSQL nests /* */ comments, and so does sqlglot's PostgreSQL dialect: the DELETE below is inside
    the comment for both, and what runs has no comment at all."""
    target = sources["postgres"]
    before = counts(target)

    result = sql.query(target, 'SELECT 1 AS one /* /* */ ; DELETE FROM "Customer"; -- */')

    assert result["rows"] == [[1]] and result["sql"] == "SELECT 1 AS one LIMIT 201"
    assert counts(target) == before
    with pytest.raises(SqlRefused, match="statements were sent"):  # SQLite does not nest: two statements
        sql.query(sources["sqlite"], 'SELECT 1 AS one /* /* */ ; DELETE FROM "Customer"; -- */')


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_hidden_columns_need_not_block_the_rest_of_the_table(sources, engine):
    result = sql.query(sources[engine], 'SELECT c."FirstName", COUNT(*) AS n FROM "Customer" AS c '
                                        'WHERE c."Country" = \'Canada\' GROUP BY c."FirstName"')

    assert result["columns"] == ["FirstName", "n"] and result["row_count"] == 8


# --- the database layer alone ----------------------------------------------------------------------

BYPASS = {
    "sqlite": [
        ('DELETE FROM "Customer"', "not authorized"),
        ("ATTACH DATABASE '/tmp/hil-attached.db' AS x", "not authorized"),
        ("PRAGMA query_only = 0", "not authorized"),
        ('CREATE TABLE "Stolen" AS SELECT 1', "not authorized"),
        ("BEGIN", "not authorized"),
        ("SELECT load_extension('/tmp/x.so')", "not authorized"),
        ("SELECT length(zeroblob(100000000))", "too big"),
    ],
    "duckdb": [
        ('DELETE FROM "Customer"', "read-only"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        ("COPY \"Customer\" TO '/tmp/hil-customers.csv'", "disabled by configuration"),
        ("ATTACH '/tmp/hil-x.duckdb' AS x", "disabled by configuration"),
        ("SET enable_external_access = true", "locked"),
        ("LOAD httpfs", "disabled"),
        ('CREATE TABLE "Stolen" AS SELECT 1', "read-only"),
    ],
    "postgres": [
        ('DELETE FROM "Customer"', "read-only transaction"),
        ('SELECT 1; DELETE FROM "Customer"', "multiple commands"),
        ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
        ("COPY \"Customer\" TO PROGRAM 'id'", "permission denied"),
        ("SET ROLE postgres", "permission denied"),
        ('CREATE TABLE "Stolen" AS SELECT 1', "read-only transaction"),
        ("SELECT lo_import('/etc/passwd')", "permission denied"),
        ("SELECT * FROM pg_authid", "permission denied"),
    ],
}


@pytest.mark.parametrize("engine, statement, refusal",
                         [(engine, statement, refusal) for engine, cases in BYPASS.items() for statement, refusal in cases])
def test_the_database_refuses_what_the_guard_would_have(sources, engine, statement, refusal):
    target = sources[engine]
    before = counts(target)

    with pytest.raises(SourceError) as failed:
        sql._execute_read(target, statement)

    assert refusal in str(failed.value)
    assert counts(target) == before


def test_sqlite_reads_a_hidden_column_as_null_when_the_guard_is_bypassed(sources):
    _, rows, _ = sql._execute_read(sources["sqlite"], 'SELECT "FirstName", "Email" FROM "Customer" LIMIT 3')

    assert [row[1] for row in rows] == [None, None, None] and all(row[0] for row in rows)


def test_postgres_read_only_transaction_holds_even_for_a_superuser(postgres_db):
    """The READ ONLY transaction is enforced by the server whatever the role's grants."""
    owner = Target(engine="postgres", location=postgres_db["admin_url"])
    before = counts(owner)

    with pytest.raises(SourceError, match="read-only transaction"):
        sql._execute_read(owner, 'DELETE FROM "Customer"')
    with pytest.raises(SourceError, match="read-write mode"):
        sql._execute_read(owner, "SELECT set_config('transaction_read_only', 'off', false)")
    with pytest.raises(SourceError, match="read-only transaction"):
        sql._execute_read(owner, 'WITH d AS (DELETE FROM "Customer" RETURNING 1) SELECT COUNT(*) FROM d')
    assert counts(owner) == before


def test_postgres_sleep_is_stopped_by_the_server_when_the_guard_is_bypassed(sources):
    target = Target(engine="postgres", location=sources["postgres"].location, password=sources["postgres"].password,
                    timeout_ms=300)

    with pytest.raises(SourceError, match="took longer than 300 ms"):
        sql._execute_read(target, "SELECT pg_sleep(30)")


# --- gold questions --------------------------------------------------------------------------------


def normalised(rows) -> Counter:
    """Rows as a multiset: numbers rounded to 2 decimals, timestamps in one format."""
    def value(v):
        v = sql._json_value(v)
        if isinstance(v, float):
            return round(v, 2)
        if isinstance(v, str):
            return re.sub(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)$", r"\1 \2", v)
        return v
    return Counter(tuple(value(v) for v in row) for row in rows)


def test_there_are_enough_questions():
    assert len(QUESTIONS) >= 30
    assert all(q["question"].strip() and ("sql" in q or set(q["sql_by_engine"]) == set(sql.ENGINES))
               for q in QUESTIONS)


@pytest.mark.parametrize("engine", sql.ENGINES)
@pytest.mark.parametrize("question", QUESTIONS, ids=[q["question"][:40] for q in QUESTIONS])
def test_a_gold_question_gives_the_rows_the_sql_gives_directly(sources, engine, question):
    target = sources[engine]
    gold = chinook.gold_sql(question, engine)
    roomy = Target(engine=engine, location=target.location, password=target.password, row_cap=10_000,
                   hidden=target.hidden)

    result = sql.query(roomy, gold)

    direct = run_directly(target, gold)
    assert normalised(result["rows"]) == normalised(direct) and result["row_count"] == len(direct)
    assert not result["truncated"] and len(result["columns"]) == len(direct[0])


@pytest.mark.parametrize("question", QUESTIONS, ids=[q["question"][:40] for q in QUESTIONS])
def test_a_gold_question_has_one_answer_on_the_three_engines(sources, question):
    answers = [normalised(run_directly(sources[engine], chinook.gold_sql(question, engine)))
               for engine in sql.ENGINES]

    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_rows_past_the_cap_are_cut_and_said_to_be(sources, engine):
    base = sources[engine]
    capped = Target(engine=engine, location=base.location, password=base.password, row_cap=10)

    everything = sql.query(capped, 'SELECT "TrackId", "Name" FROM "Track" ORDER BY "TrackId"')
    exactly = sql.query(capped, 'SELECT "TrackId" FROM "Track" ORDER BY "TrackId" LIMIT 10')
    fewer = sql.query(capped, 'SELECT "TrackId" FROM "Track" ORDER BY "TrackId" LIMIT 5 OFFSET 20')
    union = sql.query(capped, 'SELECT "GenreId" FROM "Genre" UNION SELECT "MediaTypeId" FROM "MediaType"')

    assert everything["row_count"] == 10 and everything["truncated"] is True
    assert [row[0] for row in everything["rows"]] == list(range(1, 11))
    assert everything["sql"].endswith("LIMIT 11")
    assert exactly["row_count"] == 10 and exactly["truncated"] is False
    assert [row[0] for row in fewer["rows"]] == list(range(21, 26)) and fewer["truncated"] is False
    assert union["row_count"] == 10 and union["truncated"] is True


def test_values_are_json_the_same_way_on_each_engine(sources):
    """Decimals as numbers (SQLite stores them as floats anyway), timestamps as ISO text, bytes as a size."""
    for engine, target in sources.items():
        result = sql.query(target, 'SELECT "InvoiceDate", "Total", "BillingCity", SUM("Total") OVER () AS "All" '
                                   'FROM "Invoice" WHERE "InvoiceId" = 1')
        assert json.loads(json.dumps(result["rows"])) == result["rows"], engine
        date, total, city, everything = result["rows"][0]
        assert total == 1.98 and isinstance(everything, float) and city == "Stuttgart", engine
        assert date.replace("T", " ") == "2021-01-01 00:00:00", engine


def test_bytes_and_special_values_are_json():
    assert sql._json_value(b"\x00\x01") == "<2 bytes>"
    assert sql._json_value(decimal.Decimal("12.50")) == 12.5 and sql._json_value(decimal.Decimal("NaN")) == "NaN"
    assert sql._json_value(datetime.datetime(2024, 5, 1, 12, 30)) == "2024-05-01T12:30:00"
    assert sql._json_value(datetime.timedelta(hours=1)) == "1:00:00"
    assert sql._json_value({"a": [decimal.Decimal("1.5"), None]}) == {"a": [1.5, None]}


# --- dry runs and writes ---------------------------------------------------------------------------


@pytest.fixture
def writable(tmp_path, sqlite_file, duckdb_file, postgres_db):
    """engine -> a Target on a copy of Chinook that may be written."""
    admin_url = os.environ["DATABASE_URL"]
    copy_name = f"{postgres_db['dbname']}_w"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            pgsql.Identifier(copy_name), pgsql.Identifier(postgres_db["dbname"])))
    copy_url = postgres_db["admin_url"].replace(f"dbname={postgres_db['dbname']}", f"dbname={copy_name}")
    yield {
        "sqlite": Target(engine="sqlite", location=str(shutil.copy(sqlite_file, tmp_path / "w.sqlite")), hidden=HIDDEN),
        "duckdb": Target(engine="duckdb", location=str(shutil.copy(duckdb_file, tmp_path / "w.duckdb")), hidden=HIDDEN),
        "postgres": Target(engine="postgres", location=copy_url, hidden=HIDDEN),
    }
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(copy_name)))


def count_lines(target: Target, invoice: int | None = None) -> int:
    where = f' WHERE "InvoiceId" = {invoice}' if invoice else ""
    return run_directly(target, f'SELECT COUNT(*) FROM "InvoiceLine"{where}')[0][0]


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_a_dry_run_shows_the_change_and_makes_none_then_the_write_makes_it_once(writable, engine):
    target = writable[engine]
    delete = 'DELETE FROM "InvoiceLine" WHERE "InvoiceId" = 1'

    preview = sql.dry_run(target, delete, sample=1)

    assert preview["statement"] == "delete" and preview["rows_affected"] == 2
    assert preview["columns"] == ["InvoiceLineId", "InvoiceId", "TrackId", "UnitPrice", "Quantity"]
    assert preview["rows"] == [[1, 1, 2, 0.99, 1]]
    assert count_lines(target) == 2240 and count_lines(target, 1) == 2

    done = sql.execute_write(target, delete)
    again = sql.execute_write(target, delete)

    assert done["rows_affected"] == 2 and done["statement"] == "delete" and again["rows_affected"] == 0
    assert count_lines(target) == 2238 and count_lines(target, 1) == 0


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_a_dry_run_leaves_hidden_columns_out_of_its_sample(writable, engine):
    target = Target(engine=engine, location=writable[engine].location, hidden=frozenset({"invoiceline.unitprice"}))

    preview = sql.dry_run(target, 'UPDATE "InvoiceLine" SET "Quantity" = 5 WHERE "InvoiceLineId" = 1')

    assert preview["rows_affected"] == 1 and preview["columns"] == ["InvoiceLineId", "InvoiceId", "TrackId", "Quantity"]
    assert preview["rows"] == [[1, 1, 2, 5]]
    assert run_directly(target, 'SELECT "Quantity" FROM "InvoiceLine" WHERE "InvoiceLineId" = 1') == [(1,)]


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_ddl_is_a_write_that_a_dry_run_rolls_back(writable, engine):
    target = writable[engine]
    create = 'CREATE TABLE "Note" ("NoteId" INTEGER PRIMARY KEY, "Text" VARCHAR(100))'

    preview = sql.dry_run(target, create)

    assert preview["statement"] == "create" and preview["rows"] == []
    assert "Note" not in fingerprint(target)["tables"]

    sql.execute_write(target, create)
    inserted = sql.execute_write(target, "INSERT INTO \"Note\" VALUES (1, 'hello')")

    assert inserted["rows_affected"] == 1 and run_directly(target, 'SELECT "Text" FROM "Note"') == [("hello",)]


@pytest.mark.parametrize("statement, words", [
    ('SELECT "Name" FROM "Genre"', ["read, not a write"]),
    ('DELETE FROM "Genre" WHERE "GenreId" = 1; DROP TABLE "Genre"', ["2 statements"]),
    ("CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql", ["CREATE FUNCTION", "not allowed"]),
    ('TRUNCATE "Genre"', ["TRUNCATE", "DELETE FROM"]),
    ('WITH d AS (DELETE FROM "Genre" RETURNING *) INSERT INTO "Genre" SELECT * FROM d', ["second write"]),
    ("UPDATE \"Customer\" SET \"Email\" = 'x@y.z'", ["customer.email", "hidden"]),
    ('INSERT INTO "Genre" SELECT "CustomerId", "Email" FROM "Customer"', ["customer.email"]),
    ("COPY \"Genre\" FROM '/etc/passwd'", ["COPY", "not allowed"]),
    ("GRANT ALL ON \"Genre\" TO PUBLIC", ["GRANT", "not allowed"]),
    ('CREATE TABLE "x" AS SELECT pg_read_file(\'/etc/passwd\') AS f', ["pg_read_file"]),
])
def test_a_write_is_refused_unless_it_is_one_plain_write(writable, statement, words):
    target = writable["postgres"]
    before = counts(target)

    for action in (sql.dry_run, sql.execute_write):
        with pytest.raises(SqlRefused) as refused:
            action(target, statement)
        for word in words:
            assert word in refused.value.reason
    assert counts(target) == before


def test_the_sqlite_write_connection_still_refuses_attach_and_pragmas_when_the_guard_is_bypassed(writable):
    target = writable["sqlite"]

    for statement in ("ATTACH DATABASE '/tmp/hil-attached.db' AS x", "PRAGMA writable_schema = 1",
                      "SELECT load_extension('/tmp/x.so')"):
        with sql._Session(target, write=True) as session, pytest.raises(SourceError, match="not authorized"), \
                session.statement():
            session.execute(statement)


# --- introspection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_introspection_lists_tables_columns_keys_counts_and_examples(sources, engine):
    schema = sql.introspect(sources[engine], examples=3)

    tables = {table["name"]: table for table in schema["tables"]}
    assert set(tables) == set(chinook.TABLES)
    assert {name: table["row_count"] for name, table in tables.items()} == chinook.ROW_COUNTS
    customer = {column["name"]: column for column in tables["Customer"]["columns"]}
    assert list(customer) == ["CustomerId", "FirstName", "LastName", "Company", "Address", "City", "State", "Country",
                              "PostalCode", "Phone", "Fax", "Email", "SupportRepId"]
    assert customer["CustomerId"]["pk"] and not customer["FirstName"]["pk"]
    assert customer["SupportRepId"]["fk"] == "Employee.EmployeeId"
    assert customer["Email"]["hidden"] is True and customer["Email"]["examples"] == []
    assert not customer["FirstName"]["hidden"] and len(customer["FirstName"]["examples"]) == 3
    invoice = {column["name"]: column for column in tables["Invoice"]["columns"]}
    assert invoice["CustomerId"]["fk"] == "Customer.CustomerId" and invoice["InvoiceId"]["fk"] is None
    assert all(column["pk"] for column in tables["PlaylistTrack"]["columns"])
    genres = {row[0] for row in run_directly(sources[engine], 'SELECT "Name" FROM "Genre"')}
    genre_examples = next(c for c in tables["Genre"]["columns"] if c["name"] == "Name")["examples"]
    assert len(genre_examples) == 3 and set(genre_examples) <= genres


# --- checks and timeouts ---------------------------------------------------------------------------


def test_check_passes_on_each_source(sources):
    for target in sources.values():
        sql.check(target)


def test_check_says_what_is_wrong_with_a_file(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file at all, just some bytes" * 100)

    cases = [(Target(engine="sqlite", location="/nonexistent/x.sqlite"),
              "could not open the SQLite file /nonexistent/x.sqlite: no such file"),
             (Target(engine="duckdb", location="/nonexistent/x.duckdb"),
              "could not open the DuckDB file /nonexistent/x.duckdb: no such file"),
             (Target(engine="sqlite", location=str(junk)), "not a SQLite database")]
    for target, message in cases:
        with pytest.raises(SourceError) as failed:
            sql.check(target)
        assert message in str(failed.value)


def test_check_says_the_password_was_refused_without_showing_it(postgres_db):
    wrong = "Wr0ng-Secret-Passw0rd"
    target = Target(engine="postgres", location=postgres_db["reader_url"], password=wrong)

    with pytest.raises(SourceError) as failed:
        sql.check(target)

    assert str(failed.value) == f"PostgreSQL refused the password for user {postgres_db['reader']}"
    assert wrong not in repr(target) and postgres_db["password"] not in repr(Target(
        engine="postgres", location=postgres_db["reader_url"], password=postgres_db["password"]))


@pytest.mark.parametrize("location, message", [
    ("postgresql://reader@nohost.invalid:5432/chinook", "could not reach PostgreSQL at nohost.invalid:5432"),
    ("postgresql://reader@127.0.0.1:1/chinook", "could not reach PostgreSQL at 127.0.0.1:1: connection refused"),
])
def test_check_says_the_server_could_not_be_reached(location, message):
    with pytest.raises(SourceError) as failed:
        sql.check(Target(engine="postgres", location=location, password="s3cret-pw", timeout_ms=2000))

    assert str(failed.value).startswith(message) and "s3cret-pw" not in str(failed.value)


def test_a_guarded_statement_failing_in_the_database_says_why(sources):
    for engine, target in sources.items():
        with pytest.raises(SourceError) as failed:
            sql.query(target, "SELECT no_such_column FROM \"Genre\"")
        assert "no_such_column" in str(failed.value) and sql.ENGINE_NAME[engine] in str(failed.value)


def test_a_quoted_unknown_column_is_an_error_on_every_engine(sources):
    """SQLite would read "Nation" as the string 'Nation' and answer 0 rows; every engine says it has no such column,
    the names a statement defines itself (aliases, a CTE's columns) being known."""
    for engine, target in sources.items():
        with pytest.raises(SourceError) as failed:
            sql.query(target, 'SELECT COUNT(*) FROM "Customer" WHERE "Nation" = \'Canada\'')
        assert "Nation" in str(failed.value) and sql.ENGINE_NAME[engine] in str(failed.value), engine
        defined = sql.query(target, 'WITH c("Land") AS (SELECT "Country" FROM "Customer") '
                                    'SELECT "Land" AS "Where", COUNT(*) AS "N" FROM c GROUP BY "Where" ORDER BY "N" DESC')
        assert defined["rows"][0] == ["USA", 13], engine


@pytest.mark.parametrize("engine", sql.ENGINES)
def test_a_long_query_is_stopped_at_the_timeout(sources, engine):
    base = sources[engine]
    target = Target(engine=engine, location=base.location, password=base.password, timeout_ms=300)
    endless = ('WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) '
               'SELECT COUNT(*) FROM r')

    with pytest.raises(SourceError) as failed:
        sql.query(target, endless)

    assert "took longer than 300 ms" in str(failed.value)
    assert sql.query(base, 'SELECT COUNT(*) AS n FROM "Genre"')["rows"] == [[25]]  # the source still answers


def test_the_attacks_left_every_source_as_it_was(sources, pristine):
    """Last in the file: after everything above, the read sources hold exactly what they held."""
    for engine, target in sources.items():
        assert fingerprint(target) == pristine[engine], engine
