"""SQL data sources: a guard that decides what an agent's SQL may do, and the engines that run it.

No Django here: callers pass plain values (a `Target`), so the module is easy to test and to benchmark.
Engines: DuckDB and SQLite files, PostgreSQL servers.

Two layers, so that neither alone has to be perfect.

1. `guard` (in code). The SQL is parsed with sqlglot in the source's dialect; exactly one statement may
   be sent. The whole tree is walked, not only its root: a read is a SELECT (or a set operation of
   SELECTs) with no write anywhere in it (a DELETE in a CTE, SELECT ... INTO, FOR UPDATE), no generic
   command, no function of the engine's deny list (files, SQL run from a string, sleeps and locks,
   server control, other servers), no file read as a table, no secret-holding catalog, and no hidden
   column (nor `*`, nor a whole row of a table that has one). A write is one INSERT, UPDATE, DELETE,
   MERGE, or CREATE / ALTER / DROP of a table, index or view, under the same rules otherwise.
   What runs is the statement sqlglot generates back from the tree it checked, without comments, never
   the text as sent: a trick that parses differently in the engine (nested comments, dollar quotes,
   unicode escapes) cannot smuggle a second statement past the guard. A read gets
   LIMIT min(its own, row_cap + 1), so that a truncated result is told from a complete one.

2. The database, so that a gap in the parser is still caught:
   - SQLite: the file is opened with `mode=ro` (reads) or `mode=rw` (writes, never created), with
     `query_only` on for reads, no ATTACH possible (SQLITE_LIMIT_ATTACHED = 0), values capped in size,
     `trusted_schema` off, and an authorizer that allows only the actions of a SELECT (and, for a write,
     those of DML and table/index/view DDL); it denies ATTACH, PRAGMA, transaction control, triggers,
     virtual tables and the deny-listed functions, and reads a hidden column as NULL. A progress handler
     stops a statement at `timeout_ms`.
   - DuckDB: opened `read_only=True` for reads, with external access off (no file, URL, ATTACH of a
     file, COPY, INSTALL or LOAD), no extension auto-install or auto-load, and the configuration locked
     (a SET cannot undo any of it). A timer interrupts the connection at `timeout_ms`. DuckDB lets one
     process at a time open a file read-write, so every call opens, acts and closes (opening costs some
     30 ms); within a process, a file open with other settings (a write under way in another thread, a
     connection of its own) makes the open fail with a SourceError.
   - PostgreSQL (psycopg 3): the password is passed apart from the URL and never shown. Every session
     gets `statement_timeout` and `lock_timeout` from the server's side, so whatever the statement it
     ends at `timeout_ms`. Reads run with `default_transaction_read_only=on` and inside a READ ONLY
     transaction (psycopg's `read_only`), which the server enforces for every statement, functions that
     write included, and are never committed. The statement is prepared on the server, which refuses
     more than one command in it. (The settings go in the startup packet's `options`, which a pooler in
     transaction mode, PgBouncer's, may not pass on.) Recommended, and what the tests use: a role with only SELECT grants
     (column grants leave out hidden columns), since a read-only transaction still lets a superuser read
     files or call functions with side effects outside the database.

What is not covered: views or functions defined in the source that read hidden columns; in DuckDB, hidden
columns rest on the guard alone (it has no column permissions; SQLite reads them as NULL, PostgreSQL should
leave them out of the role's grants); and the memory a statement uses within its time (DuckDB and PostgreSQL
have limits of their own; SQLite caps each value).
"""

import contextlib
import datetime
import decimal
import functools
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
import sqlglot
from psycopg.conninfo import conninfo_to_dict
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, SqlglotError

ENGINES = ("duckdb", "sqlite", "postgres")
DIALECT = {"duckdb": "duckdb", "sqlite": "sqlite", "postgres": "postgres"}  # sqlglot dialects
ENGINE_NAME = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgres": "PostgreSQL"}
MAX_VALUE_BYTES = 10_000_000  # SQLite: the largest string or blob a statement may make
EXAMPLE_CHARS = 80  # introspection: longer example values are cut
DUCKDB_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,  # last: it locks the options above too
}


class SqlRefused(Exception):
    """The guard said no; `reason` is one sentence for the model's retry and for a human."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SourceError(Exception):
    """The source could not be reached, or the statement failed in it. Never holds a password."""


@dataclass(frozen=True)
class Target:
    """How to reach one data source."""

    engine: str  # one of ENGINES
    location: str  # a file path (duckdb, sqlite) or a PostgreSQL URL without the password
    password: str = field(default="", repr=False)  # postgres only
    timeout_ms: int = 5000
    row_cap: int = 200
    hidden: frozenset[str] = frozenset()  # "table.column", lower-case: never read

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: one of {', '.join(ENGINES)}")
        object.__setattr__(self, "hidden", frozenset(h.lower() for h in self.hidden))


@dataclass(frozen=True)
class Guarded:
    sql: str  # the statement to run, as generated from the checked tree
    kind: str  # "read" or "write"
    statement: str  # "select", "insert", "update", "delete", "merge", "create", "drop", "alter"
    tables: tuple[str, ...]


# --- the guard ---------------------------------------------------------------------------------

ONLY_READS = "the SQL agent only reads; a write needs an approval"
WRITES_ALLOWED = "a write is one INSERT, UPDATE, DELETE, MERGE, or CREATE, ALTER or DROP of a table, index or view"
WRITE_NODES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)
WRITE_KINDS = {"TABLE", "INDEX", "VIEW"}  # what CREATE, ALTER and DROP may make or change
# Statements that are neither a query nor an allowed write, by sqlglot's node for them; exp.Command is
# whatever sqlglot could not parse further (EXPLAIN, VACUUM, CALL, DO, SET ROLE, CREATE EXTENSION, ...).
COMMAND_NODES = (exp.Command, exp.Copy, exp.Pragma, exp.Set, exp.Attach, exp.Detach, exp.Install, exp.Transaction,
                 exp.Commit, exp.Rollback, exp.Grant, exp.Revoke, exp.Use, exp.Describe, exp.Show, exp.Summarize,
                 exp.Analyze, exp.Kill, exp.Export, exp.Declare, exp.Execute, exp.Comment, exp.Cache, exp.Uncache,
                 exp.Refresh, exp.LoadData)
COMMAND_WHY = {
    "ATTACH": "it opens another database", "DETACH": "it changes the attached databases",
    "COPY": "it reads or writes files", "EXPORT": "it writes files", "LOAD": "it loads code into the engine",
    "INSTALL": "it installs code into the engine", "PRAGMA": "it reads or changes the engine's settings",
    "SET": "it changes the session's settings or role", "RESET": "it changes the session's settings",
    "BEGIN": "HIL manages transactions", "START": "HIL manages transactions", "COMMIT": "HIL manages transactions",
    "END": "HIL manages transactions", "ROLLBACK": "HIL manages transactions", "SAVEPOINT": "HIL manages transactions",
    "RELEASE": "HIL manages transactions", "ABORT": "HIL manages transactions",
    "GRANT": "it changes permissions", "REVOKE": "it changes permissions",
    "DO": "it runs procedural code", "CALL": "it runs a procedure", "EXECUTE": "it runs a prepared statement",
    "PREPARE": "it prepares a statement to run later", "VACUUM": "it rewrites the database",
    "LOCK": "it takes locks", "LISTEN": "it waits for notifications", "NOTIFY": "it sends notifications",
    "EXPLAIN": "it plans or runs another statement", "CHECKPOINT": "it writes the database",
    "REPLACE": "it writes rows", "CREATE": "it changes the schema", "ALTER": "it changes the schema or a role",
    "DROP": "it removes objects", "CREATE EXTENSION": "it loads code into the server",
    "CREATE ROLE": "it changes roles", "ALTER ROLE": "it changes roles", "DROP ROLE": "it changes roles",
}

# Functions by lower-case name or prefix (a name ending in "_" or "*" is a prefix), with why they are denied.
_FILES, _SQL_TEXT = "it reads or writes files", "it runs SQL given as text, which the guard cannot check"
_WAITS, _SERVER = "it waits or takes locks", "it controls the server, its settings or its processes"
_OTHER_DB, _CHANGES = "it reaches another database", "it changes data or state outside a query"
DENIED_FUNCTIONS = {
    "postgres": {
        "pg_read_file": _FILES, "pg_read_binary_file": _FILES, "pg_ls_*": _FILES, "pg_stat_file": _FILES,
        "pg_file_*": _FILES, "pg_logdir_ls": _FILES, "lo_*": _FILES, "loread": _FILES, "lowrite": _FILES,
        "copy": _FILES,
        "query_to_xml*": _SQL_TEXT, "cursor_to_xml*": _SQL_TEXT, "table_to_xml*": _SQL_TEXT,
        "schema_to_xml*": _SQL_TEXT, "database_to_xml*": _SQL_TEXT,
        "pg_sleep*": _WAITS, "pg_advisory*": _WAITS, "pg_try_advisory*": _WAITS,
        "set_config": _SERVER, "pg_terminate_backend": _SERVER, "pg_cancel_backend": _SERVER,
        "pg_reload_conf": _SERVER, "pg_rotate_logfile": _SERVER, "pg_switch_wal": _SERVER, "pg_promote": _SERVER,
        "pg_backup_*": _SERVER, "pg_wal_replay_*": _SERVER, "pg_logical_*": _SERVER, "pg_create_*": _SERVER,
        "pg_drop_replication_slot": _SERVER, "pg_replication_*": _SERVER, "pg_stat_reset*": _SERVER,
        "pg_log*": _SERVER, "pg_import_system_collations": _SERVER,
        "pg_stat_get_activity": _SERVER, "pg_stat_get_backend_activity": _SERVER,
        "binary_upgrade_*": _SERVER,
        "dblink*": _OTHER_DB,
        "nextval": _CHANGES, "setval": _CHANGES, "pg_notify": _CHANGES,
    },
    "sqlite": {
        "load_extension": _FILES, "readfile": _FILES, "writefile": _FILES, "edit": _FILES, "fsdir": _FILES,
        "lsmode": _FILES, "zipfile*": _FILES, "sqlar_*": _FILES, "sqlite_dbpage": _FILES, "sqlite_dbdata": _FILES,
        "sqlite_dbptr": _FILES, "fts3_tokenizer": _SERVER, "shell_*": _SERVER, "eval": _SQL_TEXT,
        "sha3_query": _SQL_TEXT,
    },
    "duckdb": {
        "read_*": _FILES, "parquet_*": _FILES, "csv_scan": _FILES, "sniff_csv": _FILES, "glob": _FILES,
        "iceberg_*": _FILES, "delta_scan": _FILES, "st_read*": _FILES, "sqlite_scan": _OTHER_DB, "sqlite_attach": _OTHER_DB,
        "postgres_*": _OTHER_DB, "mysql_*": _OTHER_DB, "http*": _OTHER_DB, "getenv": _SERVER,
        "duckdb_secrets": _SERVER, "which_secret": _SERVER, "pragma_*": _SERVER, "checkpoint": _SERVER,
        "force_checkpoint": _SERVER, "load_extension": _FILES, "install_extension": _FILES,
        "query": _SQL_TEXT, "query_table": _SQL_TEXT, "sql_auto_complete": _SQL_TEXT,
        "json_execute_serialized_sql": _SQL_TEXT, "json_deserialize_sql": _SQL_TEXT,
    },
}
MAX_SQL_CHARS = 100_000  # longer SQL is refused: parsing it would cost more than it is worth
CACHED_SQL_CHARS = 10_000  # the guard's cache keeps statements up to this long

# Catalogs that hold secrets, other sessions' SQL or sampled column values (which would show hidden ones).
DENIED_TABLES = {
    "postgres": {"pg_authid", "pg_shadow", "pg_user_mapping", "pg_user_mappings", "pg_file_settings",
                 "pg_hba_file_rules", "pg_ident_file_mappings", "pg_stat_activity", "pg_stats", "pg_stats_ext",
                 "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data", "pg_largeobject", "pg_config",
                 "pg_stat_statements"},
    "sqlite": {"sqlite_stat3", "sqlite_stat4", "sqlite_dbpage", "sqlite_dbdata", "fsdir", "zipfile"},
    "duckdb": {"duckdb_secrets"},
}


def _denied_why(engine: str, name: str) -> str | None:
    name = name.lower()
    for denied, why in DENIED_FUNCTIONS[engine].items():
        if name == denied.rstrip("*") or (denied.endswith(("*", "_")) and name.startswith(denied.rstrip("*"))):
            return why
    return None


def guard(sql: str, *, engine: str, row_cap: int, hidden=frozenset(), write: bool = False) -> Guarded:
    """Check one statement and return what to run, or raise SqlRefused saying why not."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"the SQL is longer than {MAX_SQL_CHARS:,} characters: send a shorter statement")
    hidden = frozenset(h.lower() for h in hidden)
    if len(sql) > CACHED_SQL_CHARS:
        outcome = _guard_uncached(sql, engine, row_cap, hidden, write)
    else:
        outcome = _guard_cached(sql, engine, row_cap, hidden, write)
    if isinstance(outcome, str):
        raise SqlRefused(outcome)
    return outcome


def _guard_uncached(sql, engine, row_cap, hidden, write) -> "Guarded | str":
    try:
        return _guard(sql, engine, row_cap, hidden, write)
    except SqlRefused as refused:
        return refused.reason


# The same statement comes again (retries, dashboards, the same question); parsing it costs 1-2 ms.
_guard_cached = functools.lru_cache(maxsize=2048)(_guard_uncached)


def _guard(sql: str, engine: str, row_cap: int, hidden: frozenset[str], write: bool) -> Guarded:
    dialect = DIALECT[engine]
    try:
        parsed = sqlglot.parse(sql, read=dialect, error_level=ErrorLevel.RAISE)
        # A trailing ";" (even followed by a comment) is no statement.
        statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    except SqlglotError as error:
        raise SqlRefused(f"could not parse the SQL as {ENGINE_NAME[engine]} SQL: {_first_line(error)}") from None
    except RecursionError:
        raise SqlRefused("the SQL is nested too deeply to check: simplify it") from None
    if not statements:
        raise SqlRefused("the SQL holds no statement: send one SELECT query")
    if len(statements) > 1:
        kinds = ", ".join(_what(s, sql if i == 0 else "") for i, s in enumerate(statements))
        raise SqlRefused(f"{len(statements)} statements were sent ({kinds}): send exactly one statement")
    tree = statements[0]
    _check_root(tree, sql, write)
    _check_nodes(tree, engine, write)
    tables = _tables(tree)
    _check_hidden(tree, tables, hidden)
    statement = _statement(tree)
    if not write:
        tree = _limited(tree, row_cap + 1)
    return Guarded(sql=_generate(tree, dialect), kind="write" if write else "read", statement=statement,
                   tables=tuple(dict.fromkeys(name for name, _ in tables)))


def _generate(tree: exp.Expression, dialect: str) -> str:
    """The SQL to run, from the checked tree, without comments. The tree is ours and thrown away after:
    no defensive copy (a quarter of the generator's time)."""
    return Dialect.get_or_raise(dialect).generate(tree, copy=False, comments=False)


def _check_root(tree: exp.Expression, sql: str, write: bool) -> None:
    what = _what(tree, sql)
    is_query = isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery))
    if isinstance(tree, COMMAND_NODES) or not (is_query or isinstance(tree, WRITE_NODES)):
        why = COMMAND_WHY.get(what, COMMAND_WHY.get(what.split()[0], ""))
        why = f" ({why})" if why else ""
        if write:
            raise SqlRefused(f"{what} is not allowed{why}: {WRITES_ALLOWED}")
        raise SqlRefused(f"{what} is not a query{why}: the SQL agent only runs SELECT queries")
    if not write and not is_query:
        raise SqlRefused(f"{what} is a write: {ONLY_READS}")
    if write and is_query:
        raise SqlRefused(f"{what} is a read, not a write: run it as a query")
    if write and isinstance(tree, (exp.Create, exp.Drop, exp.Alter)) and (tree.args.get("kind") or "") not in WRITE_KINDS:
        raise SqlRefused(f"{what} is not allowed: {WRITES_ALLOWED}")
    if write and isinstance(tree, exp.TruncateTable):
        raise SqlRefused(f"TRUNCATE is not allowed: {WRITES_ALLOWED} (use DELETE FROM)")


def _check_nodes(tree: exp.Expression, engine: str, write: bool) -> None:
    denied_tables = DENIED_TABLES[engine]
    for node in tree.walk():
        if node is not tree and isinstance(node, WRITE_NODES):
            where = "a WITH clause" if node.find_ancestor(exp.CTE) else "a subquery"
            if write:
                raise SqlRefused(f"a {_what(node)} inside {where} is a second write: send one write at a time")
            raise SqlRefused(f"a {_what(node)} inside {where} is a write: {ONLY_READS}")
        if node is not tree and isinstance(node, COMMAND_NODES):
            raise SqlRefused(f"{_what(node)} inside a statement is not allowed: send one plain statement")
        if isinstance(node, exp.Into):
            raise SqlRefused("SELECT ... INTO creates a table, which is a write: " +
                             (ONLY_READS if not write else "use CREATE TABLE ... AS SELECT"))
        if isinstance(node, exp.Lock):
            raise SqlRefused("SELECT ... FOR UPDATE/SHARE locks rows: leave out the FOR clause")
        if isinstance(node, exp.Func):
            if isinstance(node, exp.Anonymous) and not _PLAIN_NAME.match(node.name):
                raise SqlRefused(f"the function name {node.name!r} is not a plain name: call functions by their "
                                 "usual names")
            for name in _function_names(node):
                why = _denied_why(engine, name)
                if why:
                    raise SqlRefused(f"the function {name}() is not allowed on {ENGINE_NAME[engine]}: {why}")
        elif isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            name = node.name.lower()
            if name in denied_tables:
                raise SqlRefused(f"{node.name} is a system catalog that holds secrets or sampled values: "
                                 "it may not be read")
            if engine == "duckdb" and any(c in name for c in "/\\.:"):
                raise SqlRefused(f"FROM '{node.name}' reads a file, which a data source may not: "
                                 "query the source's tables")


def _function_names(node: exp.Func) -> set[str]:
    if isinstance(node, exp.Anonymous):
        return {node.name.lower()}
    return {name.lower() for name in type(node).sql_names()}


def _tables(tree: exp.Expression) -> list[tuple[str, str]]:
    """The real tables a statement names (not its CTEs), as written, each with its alias or name, lower-case."""
    ctes = {cte.alias.lower() for cte in tree.find_all(exp.CTE)}
    tables, seen = [], set()
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function: checked by name above
        name = ".".join(part.name for part in table.parts)
        if not table.db and name.lower() in ctes:
            continue
        key = (name.lower(), (table.alias or table.name).lower())
        if key not in seen:
            seen.add(key)
            tables.append((name, key[1]))
    return tables


def _check_hidden(tree: exp.Expression, tables: list[tuple[str, str]], hidden: frozenset[str]) -> None:
    """Refuse any mention of a hidden column of a table the statement names, `*` over such a table, and
    a table's name or alias used as a value (a whole row: `SELECT c FROM "Customer" c`, `row_to_json(c)`)."""
    if not hidden:
        return
    columns, rows = {}, {}  # hidden column name -> "table.column"; row name or alias -> "table.column"
    for name, alias in tables:
        lowered = name.lower()
        for item in hidden:
            table, _, column = item.rpartition(".")
            if table in (lowered, lowered.rpartition(".")[2]):
                columns.setdefault(column, item)
                rows.setdefault(alias, item)  # an aliased table is known by its alias only
    if not columns:
        return
    first = next(iter(columns.values()))
    for node in tree.walk():
        if isinstance(node, exp.Identifier) and node.name.lower() in columns:
            raise SqlRefused(f"the column {columns[node.name.lower()]} is hidden: leave it out of the query")
        if isinstance(node, (exp.Star, exp.Columns)) and not isinstance(node.parent, exp.Count):
            raise SqlRefused(f"* would read the hidden column {first}: name the columns you need instead")
        if isinstance(node, exp.PositionalColumn):
            raise SqlRefused(f"a column picked by its position could be the hidden column {first}: "
                             "name the columns you need instead")
        if isinstance(node, exp.Join) and (node.args.get("method") or "").upper() == "NATURAL":
            raise SqlRefused(f"a NATURAL JOIN compares the hidden column {first} too: join ON the columns you mean")
        if isinstance(node, exp.TableAlias) and node.columns and isinstance(node.parent, exp.Table) and \
                _hidden_table(node.parent, hidden):
            raise SqlRefused(f"renaming the columns of a table that has the hidden column {first} is not allowed: "
                             "name the columns you need instead")
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier) and node.name.lower() in rows:
            raise SqlRefused(f"{node.name} stands for whole rows, which hold the hidden column "
                             f"{rows[node.name.lower()]}: name the columns you need, and give no output column "
                             "the name of a table")


def _hidden_table(table: exp.Table, hidden: frozenset[str]) -> bool:
    name = ".".join(part.name for part in table.parts).lower()
    return any(item.rpartition(".")[0] in (name, name.rpartition(".")[2]) for item in hidden)


def _limited(tree: exp.Expression, cap: int) -> exp.Expression:
    """LIMIT min(the query's own, cap) on the outermost query; OFFSET is kept."""
    limit = tree.args.get("limit")
    if isinstance(tree, (exp.Select, exp.SetOperation)):
        if limit is None:
            tree.set("limit", exp.Limit(expression=exp.Literal.number(cap)))
            return tree
        value = limit.expression if isinstance(limit, exp.Limit) else None
        if isinstance(value, exp.Literal) and value.is_int and not limit.args.get("limit_options"):
            limit.set("expression", exp.Literal.number(min(int(value.this), cap)))
            return tree
    # FETCH FIRST, LIMIT ALL, a computed or percent limit, a parenthesised query: wrapped, same rows.
    return exp.select("*").from_(tree.subquery("_limited")).limit(cap)


def _statement(tree: exp.Expression) -> str:
    if isinstance(tree, (exp.SetOperation, exp.Subquery)):
        return "select"
    return tree.key.lower()


def _what(node: exp.Expression, sql: str = "") -> str:
    """What a statement or node is, in SQL words: "DELETE", "CREATE FUNCTION", "SET ROLE"."""
    if isinstance(node, exp.Command):
        words = [str(node.this).upper(), *node.text("expression").upper().split()[:3]]
        if words[0] == "EXPLAIN":  # EXPLAIN ANALYZE DELETE: say what it would run
            return " ".join(words[:{"ANALYZE": 3, "QUERY": 4}.get(words[1] if len(words) > 1 else "", 2)])
        if words[0] in ("CREATE", "ALTER", "DROP", "SET") and len(words) > 1:
            second = words[2] if words[1] in ("OR", "TEMP", "TEMPORARY", "UNIQUE") and len(words) > 2 else words[1]
            return f"{words[0]} {second.strip('(')}"
        return words[0]
    if isinstance(node, (exp.Create, exp.Drop, exp.Alter)):
        return f"{node.key.upper()} {node.args.get('kind') or ''}".strip()
    if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        return node.key.upper()
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE"
    if isinstance(node, exp.Transaction):
        return "BEGIN"
    if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
        return "SELECT"
    word = _FIRST_WORD.match(sql)
    if sql and word:
        return word.group(1).upper()
    return node.key.upper()


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*\n?|/\*.*?\*/|\()*([A-Za-z_]+)", re.DOTALL)


def _first_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # sqlglot underlines with terminal colours
    return text.splitlines()[0] if text else type(error).__name__


# --- running statements ------------------------------------------------------------------------


def query(target: Target, sql: str) -> dict:
    """Guard a read, run it read-only, and return at most row_cap rows. "ms" is the time in the database
    (connect, run, fetch), the guard's left out."""
    guarded = guard(sql, engine=target.engine, row_cap=target.row_cap, hidden=target.hidden)
    started = time.perf_counter()
    columns, rows, truncated = _execute_read(target, guarded.sql)
    return {"sql": guarded.sql, "columns": columns, "rows": rows, "row_count": len(rows),
            "truncated": truncated, "ms": _ms(started)}


def _execute_read(target: Target, sql: str) -> tuple[list[str], list[list], bool]:
    """Run `sql` on the read-only connection (the database's own layer), unguarded: (columns, rows, truncated)."""
    with _Session(target, write=False) as session, session.statement():
        cursor = session.execute(sql)
        columns = _columns(cursor)
        rows = cursor.fetchmany(target.row_cap + 1) if columns else []
    truncated = len(rows) > target.row_cap
    return columns, [[_json_value(v) for v in row] for row in rows[:target.row_cap]], truncated


def dry_run(target: Target, sql: str, sample: int = 20) -> dict:
    """Guard a write and run it in a transaction that is rolled back: what it would change."""
    guarded = guard(sql, engine=target.engine, row_cap=target.row_cap, hidden=target.hidden, write=True)
    tree = sqlglot.parse_one(guarded.sql, read=DIALECT[target.engine])
    if isinstance(tree, (exp.Insert, exp.Update, exp.Delete)) and not tree.args.get("returning"):
        tree.set("returning", exp.Returning(expressions=[exp.Star()]))
    run_sql = _generate(tree, DIALECT[target.engine])
    started = time.perf_counter()
    # Closing a session whose transaction is still open rolls it back too, on every engine (an error on the way).
    with _Session(target, write=True) as session, session.statement():
        cursor = session.execute(run_sql)
        columns = _columns(cursor)
        affected, rows = _count_and_sample(cursor, columns, sample, target.engine)
        session.end(commit=False)
    keep = [i for i, name in enumerate(columns) if not _is_hidden_name(name, guarded.tables, target.hidden)]
    return {"sql": guarded.sql, "statement": guarded.statement, "rows_affected": affected,
            "columns": [columns[i] for i in keep], "rows": [[_json_value(row[i]) for i in keep] for row in rows],
            "ms": _ms(started)}


def execute_write(target: Target, sql: str) -> dict:
    """Guard a write, run it and commit."""
    guarded = guard(sql, engine=target.engine, row_cap=target.row_cap, hidden=target.hidden, write=True)
    started = time.perf_counter()
    with _Session(target, write=True) as session, session.statement():
        cursor = session.execute(guarded.sql)
        affected, _ = _count_and_sample(cursor, _columns(cursor), 0, target.engine)
        session.end(commit=True)  # an error before this leaves the transaction to the close, which rolls it back
    return {"sql": guarded.sql, "statement": guarded.statement, "rows_affected": affected, "ms": _ms(started)}


def _count_and_sample(cursor, columns, sample, engine) -> tuple[int | None, list]:
    """Rows affected and the first `sample` rows returned; counting reads the rest in chunks."""
    if not columns:
        return (cursor.rowcount if cursor.rowcount >= 0 else None), []
    if engine == "duckdb" and columns == ["Count"]:  # DuckDB answers a DML without RETURNING with its count
        row = cursor.fetchone()
        return (row[0] if row else None), []
    rows, count = [], 0
    while chunk := cursor.fetchmany(1000):
        count += len(chunk)
        rows.extend(chunk[:max(0, sample - len(rows))])
    return count, rows


def unknown_columns(sql: str, known: set[str]) -> list[str]:
    """Quoted column names of a SQLite statement that are not `known` (the database's columns) nor defined by the
    statement. SQLite reads such a name as a string ("Nation" = 'Canada' is false, not an error): it is told as the
    error it would be without that quirk."""
    tree = sqlglot.parse_one(sql, read="sqlite")
    known = {name.lower() for name in known}
    known |= {alias.alias.lower() for alias in tree.find_all(exp.Alias, exp.TableAlias)}
    known |= {column.name.lower() for alias in tree.find_all(exp.TableAlias) for column in alias.columns}
    return list(dict.fromkeys(column.name for column in tree.find_all(exp.Column)
                              if column.this.args.get("quoted") and column.name.lower() not in known))


def _is_hidden_name(column: str, tables, hidden) -> bool:
    names = {t.lower().rpartition(".")[2] for t in tables} | {t.lower() for t in tables}
    return any(f"{t}.{column.lower()}" in hidden for t in names)


def introspect(target: Target, examples: int = 3) -> dict:
    """Tables and views, their columns (type, primary key, foreign key, a few example values) and row counts."""
    with _Session(target, write=False) as session:
        tables = session.schema()
        for table in tables:
            quoted = _quote_name(table["name"])
            try:
                with session.statement():
                    table["row_count"] = session.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
            except SourceError:
                table["row_count"] = None  # a view too slow to count, say
            for column in table["columns"]:
                column["hidden"] = f"{table['name'].lower()}.{column['name'].lower()}" in target.hidden
                column["examples"] = [] if column["hidden"] or not examples else session.examples(
                    quoted, column["name"], examples)
    return {"tables": tables}


def check(target: Target) -> None:
    """Connect and run a trivial query; SourceError says what went wrong."""
    with _Session(target, write=False) as session, session.statement():
        session.execute("SELECT 1").fetchall()  # a SQLite file's schema was read when it was opened


def _columns(cursor) -> list[str]:
    return [d[0] for d in cursor.description] if cursor.description else []


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_name(name: str) -> str:
    return ".".join(_quote(part) for part in name.split(".")) if "." in name else _quote(name)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _json_value(value):
    """A database value as JSON: numbers as numbers (Decimal as float), dates ISO, bytes as their size."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)  # timedelta, UUID, inet, ranges...


# --- the engines -------------------------------------------------------------------------------

SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
SQLITE_WRITE_ACTIONS = SQLITE_READ_ACTIONS | {
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TEMP_VIEW,
}


class _Session:
    """One connection to a source with the engine's limits applied (see the module docstring)."""

    def __init__(self, target: Target, *, write: bool):
        self.target, self.engine, self.write = target, target.engine, write
        self.timeout_s = target.timeout_ms / 1000
        self._deadline = math.inf
        self._timed_out = False
        self.conn = {"sqlite": self._open_sqlite, "duckdb": self._open_duckdb,
                     "postgres": self._open_postgres}[self.engine]()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            self.conn.close()

    def execute(self, sql: str):
        if self.engine == "postgres":
            # Prepared on the server, which refuses a second command in it (the simple protocol would run it).
            return self.conn.cursor().execute(sql, prepare=True)
        if self.engine == "sqlite" and '"' in sql and (unknown := unknown_columns(sql, self._sqlite_columns())):
            raise sqlite3.OperationalError(f"no such column: {', '.join(unknown)}")
        return self.conn.execute(sql)

    def end(self, *, commit: bool) -> None:
        if self.engine == "sqlite":
            self.conn.set_authorizer(None)  # our own COMMIT/ROLLBACK, not the statement's
            if self.conn.in_transaction:
                self.conn.execute("COMMIT" if commit else "ROLLBACK")
        elif self.engine == "duckdb":
            self.conn.execute("COMMIT" if commit else "ROLLBACK")
        else:
            self.conn.commit() if commit else self.conn.rollback()

    @contextlib.contextmanager
    def statement(self):
        """Time-limit one statement and its fetch, and turn the engine's errors into SourceError."""
        self._timed_out = False
        self._deadline = time.monotonic() + self.timeout_s
        timer = None
        if self.engine == "duckdb":
            timer = threading.Timer(self.timeout_s, self._interrupt_duckdb)
            timer.start()
        try:
            yield
        except (sqlite3.Error, duckdb.Error, psycopg.Error) as error:
            if isinstance(error, psycopg.Error):  # so that the session's next statement may run
                with contextlib.suppress(psycopg.Error):
                    self.conn.rollback()
            raise SourceError(self._message(error)) from None
        finally:
            self._deadline = math.inf
            if timer:
                timer.cancel()

    def _message(self, error: Exception) -> str:
        timed_out = (self._timed_out or isinstance(error, psycopg.errors.QueryCanceled)
                     or (isinstance(error, sqlite3.OperationalError) and str(error) == "interrupted"))
        if timed_out:
            return (f"the query took longer than {self.target.timeout_ms} ms and was stopped: "
                    "make it cheaper (filter, aggregate or LIMIT it)")
        if isinstance(error, psycopg.Error):
            message = error.diag.message_primary or _first_line(error)
            return _scrub(f"PostgreSQL: {message}", self.target.password)
        return f"{ENGINE_NAME[self.engine]}: {_first_line(error)}"

    def _interrupt_duckdb(self):
        self._timed_out = True
        with contextlib.suppress(Exception):
            self.conn.interrupt()

    # SQLite

    def _open_sqlite(self):
        path = Path(self.target.location)
        if not path.is_file():
            raise SourceError(f"could not open the SQLite file {path}: no such file")
        uri = path.resolve().as_uri() + ("?mode=rw" if self.write else "?mode=ro")
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise SourceError(f"could not open the SQLite file {path}: {error}") from None
        try:
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            conn.set_progress_handler(lambda: time.monotonic() > self._deadline, 10_000)
            conn.execute("PRAGMA trusted_schema = OFF")
            conn.execute("SELECT count(*) FROM sqlite_master")  # a file that is no database fails here
            if self.write:
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as error:
            conn.close()
            reason = "not a SQLite database" if "not a database" in str(error) else str(error)
            raise SourceError(f"could not open the SQLite file {path}: {reason}") from None
        conn.set_authorizer(self._sqlite_authorizer)
        return conn

    def _sqlite_columns(self) -> set[str]:
        self.conn.set_authorizer(None)  # our own read of the schema, not the statement's
        try:
            return {name for (name,) in self.conn.execute(
                "SELECT p.name FROM sqlite_schema m, pragma_table_info(m.name) p WHERE m.type IN ('table', 'view')")}
        finally:
            self.conn.set_authorizer(self._sqlite_authorizer)

    def _sqlite_authorizer(self, action, arg1, arg2, db_name, trigger):
        if action == sqlite3.SQLITE_READ:
            hidden = f"{arg1}.{arg2}".lower() in self.target.hidden
            return sqlite3.SQLITE_IGNORE if hidden else sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if _denied_why("sqlite", arg2 or "") else sqlite3.SQLITE_OK
        allowed = SQLITE_WRITE_ACTIONS if self.write else SQLITE_READ_ACTIONS
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    # DuckDB

    def _open_duckdb(self):
        path = Path(self.target.location)
        if not path.is_file():
            raise SourceError(f"could not open the DuckDB file {path}: no such file")
        try:
            conn = duckdb.connect(str(path), read_only=not self.write, config=DUCKDB_CONFIG)
        except duckdb.Error as error:
            raise SourceError(f"could not open the DuckDB file {path}: {_first_line(error)}") from None
        if self.write:
            conn.execute("BEGIN TRANSACTION")
        return conn

    # PostgreSQL

    def _open_postgres(self):
        ms = self.target.timeout_ms
        options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        if not self.write:
            options += " -c default_transaction_read_only=on"
        try:
            conn = psycopg.connect(self.target.location, password=self.target.password or None,
                                   connect_timeout=max(2, math.ceil(self.timeout_s)), options=options,
                                   application_name="hil-sql", autocommit=False)
        except psycopg.Error as error:
            raise SourceError(_postgres_connect_message(self.target, error)) from None
        conn.read_only = not self.write
        return conn

    # introspection

    def schema(self) -> list[dict]:
        with self.statement():
            if self.engine == "sqlite":
                return self._sqlite_schema()
            if self.engine == "duckdb":
                return self._duckdb_schema()
            return self._postgres_schema()

    def examples(self, quoted_table: str, column: str, n: int) -> list:
        col = _quote(column)
        sql = (f"SELECT DISTINCT {col} FROM (SELECT {col} FROM {quoted_table} WHERE {col} IS NOT NULL "
               f"LIMIT 1000) AS s LIMIT {int(n)}")
        try:
            with self.statement():
                rows = self.execute(sql).fetchall()
        except SourceError:
            return []
        return [_example(row[0]) for row in rows]

    def _sqlite_schema(self) -> list[dict]:
        self.conn.set_authorizer(None)  # introspection reads pragmas; it is our SQL, not the agent's
        tables = []
        for name, kind in self.conn.execute(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall():
            info = self.conn.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
            fks = {row[3]: (row[2], row[4]) for row in self.conn.execute(f"PRAGMA foreign_key_list({_quote(name)})")}
            columns = []
            for _, column, type_, _, _, pk in info:
                fk = fks.get(column)
                if fk and fk[1] is None:  # REFERENCES t without a column: t's primary key
                    pks = [r[1] for r in self.conn.execute(f"PRAGMA table_info({_quote(fk[0])})") if r[5]]
                    fk = (fk[0], pks[0] if pks else "rowid")
                columns.append({"name": column, "type": type_, "pk": bool(pk), "fk": f"{fk[0]}.{fk[1]}" if fk else None})
            tables.append({"name": name, "kind": kind, "columns": columns})
        self.conn.set_authorizer(self._sqlite_authorizer)
        return tables

    def _duckdb_schema(self) -> list[dict]:
        names = self.conn.execute(
            "SELECT schema_name, table_name, 'table' FROM duckdb_tables() WHERE NOT internal UNION ALL "
            "SELECT schema_name, view_name, 'view' FROM duckdb_views() WHERE NOT internal ORDER BY 1, 2").fetchall()
        columns = self.conn.execute(
            "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal "
            "ORDER BY schema_name, table_name, column_index").fetchall()
        keys = self.conn.execute(
            "SELECT schema_name, table_name, constraint_type, constraint_column_names, referenced_table, "
            "referenced_column_names FROM duckdb_constraints() "
            "WHERE constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')").fetchall()
        pks, fks = set(), {}
        for schema, table, kind, cols, ref_table, ref_cols in keys:
            for i, col in enumerate(cols):
                if kind == "PRIMARY KEY":
                    pks.add((schema, table, col))
                else:
                    fks[(schema, table, col)] = f"{ref_table}.{ref_cols[i]}"
        return self._assemble(names, columns, pks, fks, default_schema="main")

    def _postgres_schema(self) -> list[dict]:
        names = self.execute(
            "SELECT n.nspname, c.relname, CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
            "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2").fetchall()
        columns = self.execute(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND a.attnum > 0 AND NOT a.attisdropped "
            "AND has_table_privilege(c.oid, 'SELECT') ORDER BY n.nspname, c.relname, a.attnum").fetchall()
        keys = self.execute(
            "SELECT n.nspname, c.relname, con.contype, a.attname, rc.relname, ra.attname "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(con.conkey, con.confkey) AS k(col, refcol) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.col "
            "LEFT JOIN pg_class rc ON rc.oid = con.confrelid "
            "LEFT JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = k.refcol "
            "WHERE con.contype IN ('p', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        pks = {(s, t, c) for s, t, kind, c, _, _ in keys if kind == "p"}
        fks = {(s, t, c): f"{rt}.{rc}" for s, t, kind, c, rt, rc in keys if kind == "f"}
        return self._assemble(names, columns, pks, fks, default_schema="public")

    @staticmethod
    def _assemble(names, columns, pks, fks, *, default_schema) -> list[dict]:
        by_table = {}
        for schema, table, column, type_ in columns:
            by_table.setdefault((schema, table), []).append(
                {"name": column, "type": type_, "pk": (schema, table, column) in pks,
                 "fk": fks.get((schema, table, column))})
        return [{"name": table if schema == default_schema else f"{schema}.{table}", "kind": kind,
                 "columns": by_table.get((schema, table), [])} for schema, table, kind in names]


def _example(value):
    value = _json_value(value)
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return value[:EXAMPLE_CHARS] + "…"
    return value


def _scrub(message: str, password: str) -> str:
    return message.replace(password, "***") if password else message


def _postgres_connect_message(target: Target, error: psycopg.Error) -> str:
    try:
        params = conninfo_to_dict(target.location)
    except psycopg.Error:
        params = {}
    host, port = params.get("host", "localhost"), params.get("port", "5432")
    user, dbname = params.get("user", "?"), params.get("dbname", params.get("user", "?"))
    text = str(error)
    if "password authentication failed" in text:
        message = f"PostgreSQL refused the password for user {user}"
    elif "no password supplied" in text:
        message = f"PostgreSQL asked for a password for user {user} and none was given"
    elif "could not translate host name" in text or "Name or service not known" in text:
        message = f"could not reach PostgreSQL at {host}:{port}: unknown host {host}"
    elif "Connection refused" in text:
        message = f"could not reach PostgreSQL at {host}:{port}: connection refused"
    elif "timeout expired" in text:
        message = f"could not reach PostgreSQL at {host}:{port}: no answer in time"
    else:
        reason = re.sub(r"^.*?FATAL:\s*", "", text.strip().splitlines()[-1] if text.strip() else "")
        message = f"could not connect to PostgreSQL database {dbname} at {host}:{port} as {user}: {reason}"
    return _scrub(message, target.password)
