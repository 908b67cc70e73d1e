"""The sql agent over each engine's copy of Chinook, for every question of the gold set: a scripted model first
proposes the gold SQL with a column that does not exist, is told the database's error, then proposes the gold
SQL; the agent's result holds the rows the engine's own driver returns for it (order aside)."""

import os
import re

import pytest

from agents import local_llm
from tools.datasources import data_source_save, data_source_target
from tools.models import DataSource
from tools.services import secret_set
from tools.tests import chinook
from tools.tests.test_sql import run_directly
from workflows import services

pytestmark = pytest.mark.django_db

ASK = """
entry: ask
nodes:
  - id: ask
    agent: sql
    tools: [sql.query]
    config: {source: chinook, profile: powerful, max_attempts: 2}
edges:
  - {from: ask, to: FINISH}
"""


@pytest.fixture(params=["sqlite", "duckdb", "postgres"])
def source(request, tenant, data_dir, settings):
    engine, folder = request.param, data_dir / tenant.slug
    folder.mkdir(parents=True)
    made = None
    if engine == "sqlite":
        chinook.sqlite_copy(folder / "chinook.sqlite")
        location = "chinook.sqlite"
    elif engine == "duckdb":
        chinook.duckdb_copy(folder / "chinook.duckdb")
        location = "chinook.duckdb"
    else:  # on the test server, which a data source may be only in tests
        settings.HIL_DATA_SOURCES_ON_OWN_SERVER = True
        made = chinook.postgres_copy(os.environ["DATABASE_URL"])
        secret_set(tenant=tenant, name="chinook-password", value=made["password"])
        location = made["reader_url"]
    yield data_source_save(source=DataSource(tenant=tenant, name="chinook", engine=engine, location=location,
                                             password_secret="chinook-password" if made else "", row_cap=1000),
                           actor=None)
    if made:
        chinook.postgres_drop(os.environ["DATABASE_URL"], made)


def wrong_column(statement: str, source: DataSource) -> str:
    """The statement with its first real column name replaced by one that no table has (or, naming none, with
    that column selected first)."""
    columns = {c["name"] for t in source.schema["tables"] for c in t["columns"]}
    first = next((name for name in re.findall(r'"([^"]+)"', statement) if name in columns), None)
    if first is None:
        return re.sub(r"^SELECT ", 'SELECT "NoSuchColumn", ', statement, count=1, flags=re.IGNORECASE)
    return statement.replace(f'"{first}"', '"NoSuchColumn"', 1)


def same_rows(got: list[list], want: list[tuple]) -> bool:
    def cell(value):  # as JSON carries it: dates as ISO text, numbers to 2 decimals
        if hasattr(value, "isoformat"):
            return value.isoformat()
        try:
            return round(float(value), 2)
        except (TypeError, ValueError):
            return str(value) if value is not None else None

    return sorted(map(repr, ([cell(v) for v in row] for row in got))) == sorted(
        map(repr, ([cell(v) for v in row] for row in want)))


def test_every_gold_question_is_answered_after_a_wrong_column(tenant, source, publish, drive, model):
    publish(tenant, ASK, slug="ask")
    direct = data_source_target(source)
    for n, question in enumerate(chinook.questions()):
        gold = chinook.gold_sql(question, source.engine)
        model.script(local_llm.json_answer({"sql": wrong_column(gold, source)}), local_llm.json_answer({"sql": gold}))
        conversation = services.conversation_start(tenant=tenant, workflow_slug="ask")
        message, _ = services.message_post(conversation=conversation, text=question["question"], turn_id=f"t{n}")
        run = drive(message.run)
        assert run.sink == "FINISH", (question["question"], run.reason)
        output = run.steps.get(node_id="ask").output
        assert output["attempts"] == 2 and not output["truncated"], question["question"]
        assert same_rows(output["rows"], run_directly(direct, gold)), question["question"]
