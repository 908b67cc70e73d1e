"""Data sources and knowledge sources through the API: saved only once they work, confined to the tenant, their
secrets never shown, their schema described to the model without what an operator hid."""

import shutil

import pytest
from django.conf import settings

from accounts.models import Role
from core import embeddings
from tools.datasources import schema_prompt
from tools.models import DataSource, Document, SqlExample
from tools.services import secret_set

pytestmark = pytest.mark.django_db


@pytest.fixture
def chinook_file(tenant, data_dir):
    folder = data_dir / tenant.slug
    folder.mkdir(parents=True)
    shutil.copyfile(settings.HIL_ORDERS_DB, folder / "chinook.sqlite")
    return folder / "chinook.sqlite"


def test_a_sqlite_source_is_saved_with_its_schema_and_hidden_columns_stay_out_of_prompts(api, chinook_file):
    created = api.post("/api/v1/data-sources/", {
        "name": "chinook", "engine": "sqlite", "location": "chinook.sqlite",
        "column_tags": {"Customer.Email": "pii", "Employee.BirthDate": "hidden"}}, format="json")
    assert created.status_code == 201, created.json()
    tables = {t["name"]: t for t in created.json()["schema"]["tables"]}
    assert len(tables) == 11 and tables["Customer"]["row_count"] == 59
    assert "embedding" not in tables["Customer"]
    source = DataSource.objects.get(pk=created.json()["id"])
    prompt = schema_prompt(source, embeddings.embed(["customers"])[0])
    assert '"BirthDate"' not in prompt and '"HireDate"' in prompt
    customer = prompt.split('"Customer" (')[1].split("\n\"")[0]
    assert '"Email"' in customer and "@" not in customer  # a PII column is named, its examples are not shown


@pytest.mark.parametrize("body, error", [
    ({"engine": "sqlite", "location": "../acme-other/x.sqlite"}, "tenant's data folder"),
    ({"engine": "sqlite", "location": "/etc/passwd"}, "tenant's data folder"),
    ({"engine": "sqlite", "location": "missing.sqlite"}, "missing.sqlite"),
    ({"engine": "postgres", "location": "postgresql://reader:hunter2@db.example.com/shop"}, "password out of the URL"),
    ({"engine": "postgres", "location": "mysql://reader@db.example.com/shop"}, "PostgreSQL URL"),
    ({"engine": "sqlite", "location": "chinook.sqlite", "column_tags": {"Customer": "secret"}}, "column_tags"),
])
def test_a_source_that_does_not_work_or_reaches_outside_the_tenant_is_refused(api, chinook_file, body, error):
    answer = api.post("/api/v1/data-sources/", {"name": "bad", **body}, format="json")
    assert answer.status_code == 400 and error in str(answer.json()), answer.json()
    assert "hunter2" not in str(answer.json())
    assert not DataSource.objects.filter(name="bad").exists()


def test_hil_own_database_server_is_not_a_data_source(api):
    own = settings.DATABASES["default"]
    url = f"postgresql://{own['USER'] or 'postgres'}@localhost:{own.get('PORT') or 5432}/{own['NAME']}"
    answer = api.post("/api/v1/data-sources/", {"name": "mine", "engine": "postgres", "location": url},
                      format="json")
    assert answer.status_code == 400 and "server HIL keeps its own data on" in str(answer.json())


def test_a_postgres_password_is_read_from_its_secret_and_never_shown(api, tenant, settings):
    settings.HIL_DATA_SOURCES_ON_OWN_SERVER = True
    secret_set(tenant=tenant, name="pg-password", value="not-the-password-123")
    own = settings.DATABASES["default"]
    answer = api.post("/api/v1/data-sources/", {
        "name": "pg", "engine": "postgres", "password_secret": "pg-password",
        "location": f"postgresql://no_such_user_x@localhost:{own.get('PORT') or 5432}/{own['NAME']}"}, format="json")
    assert answer.status_code == 400 and "no_such_user_x" in str(answer.json())
    assert "not-the-password-123" not in str(answer.json())


def test_another_tenants_sources_are_not_found(api, other_tenant, member, client_for, chinook_file):
    source = api.post("/api/v1/data-sources/", {"name": "chinook", "engine": "sqlite",
                                                "location": "chinook.sqlite"}, format="json").json()
    theirs = client_for(member(other_tenant)[1])
    assert theirs.get(f"/api/v1/data-sources/{source['id']}/").status_code == 404
    assert theirs.post("/api/v1/sql-examples/", {"source": source["id"], "question": "q", "sql": "SELECT 1"},
                       format="json").status_code == 400


def test_examples_marked_good_are_guarded_and_kept(api, chinook_file):
    source = api.post("/api/v1/data-sources/", {"name": "chinook", "engine": "sqlite",
                                                "location": "chinook.sqlite"}, format="json").json()
    good = api.post("/api/v1/sql-examples/", {"source": source["id"], "question": "How many artists?",
                                              "sql": 'SELECT COUNT(*) FROM "Artist"'}, format="json")
    assert good.status_code == 201 and good.json()["origin"] == "marked_good"
    bad = api.post("/api/v1/sql-examples/", {"source": source["id"], "question": "x",
                                             "sql": "SELECT 1; DROP TABLE \"Artist\""}, format="json")
    assert bad.status_code == 400 and "sql" in str(bad.json())
    assert SqlExample.objects.count() == 1


def test_only_operators_manage_sources(tenant, member, client_for):
    agent = client_for(member(tenant, role=Role.AGENT)[1])
    assert agent.get("/api/v1/data-sources/").status_code == 403
    assert agent.post("/api/v1/knowledge-sources/", {"name": "docs"}, format="json").status_code == 403


def test_a_document_uploaded_twice_is_one_document_and_shows_its_progress(api):
    source = api.post("/api/v1/knowledge-sources/", {"name": "docs"}, format="json").json()
    body = {"title": "faq.md", "text": "# FAQ\n\nWe answer within a day.", "media_type": "text/markdown"}
    first = api.post(f"/api/v1/knowledge-sources/{source['id']}/documents/", body, format="json")
    again = api.post(f"/api/v1/knowledge-sources/{source['id']}/documents/", body, format="json")
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    assert first.json()["status"] == "queued" and first.json()["progress"] == 0
    assert Document.objects.count() == 1
    neither = api.post(f"/api/v1/knowledge-sources/{source['id']}/documents/", {"title": "x"}, format="json")
    assert neither.status_code == 400 and "either a file or a text" in str(neither.json())
