"""Secrets: stored encrypted and bound to their tenant and name, rotated under a new master key, and never
shown again, by the API, the admin, the logs, an error or the database."""

import base64
import logging
import os
import re
from io import StringIO

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AuditEntry, Role
from accounts.services import membership_set, user_ensure
from core.errors import SecretNotFound, SecretUnreadable, ServiceError
from tools import crypto
from tools.models import Secret
from tools.services import secret_delete, secret_set, secret_value
from conftest import verified_login

pytestmark = pytest.mark.django_db

CANARY = "sk-live-CANARY-5f1e0c9a7b3d4e21-tail"
SHOWN = "••••tail"  # all that may ever be shown of it


def shows_value(text: str) -> bool:
    """Whether `text` holds more of the canary than its last 4 characters, the one part that may be shown."""
    return CANARY[:-4] in text


def new_key() -> bytes:
    return os.urandom(32)


# --- the services -----------------------------------------------------------------------------------


def test_a_secret_is_read_back_replaced_and_deleted(tenant):
    secret = secret_set(tenant=tenant, name="db-password", value=CANARY)
    assert secret_value(tenant=tenant, name="db-password") == CANARY
    assert secret.last4 == "tail" and secret.masked == SHOWN

    secret_set(tenant=tenant, name="db-password", value="short")
    assert secret_value(tenant=tenant, name="db-password") == "short"
    assert Secret.objects.get(tenant=tenant, name="db-password").last4 == ""  # under 8 characters: nothing shown
    assert Secret.objects.count() == 1

    secret_delete(tenant=tenant, name="db-password")
    with pytest.raises(SecretNotFound, match="no secret 'db-password' in tenant acme"):
        secret_value(tenant=tenant, name="db-password")
    with pytest.raises(SecretNotFound):
        secret_delete(tenant=tenant, name="db-password")


def test_a_change_by_a_human_is_audited_without_the_value(tenant):
    user = user_ensure(username="ops")
    secret_set(tenant=tenant, name="db-password", value="first-value-1111", actor=user)
    secret_set(tenant=tenant, name="db-password", value=CANARY, actor=user)
    secret_delete(tenant=tenant, name="db-password", actor=user)
    entries = AuditEntry.objects.filter(tenant=tenant, actor=user).order_by("id")
    assert [(e.action, e.old, e.new) for e in entries] == [
        ("secret.set", None, {"name": "db-password", "last4": "1111"}),
        ("secret.set", {"name": "db-password", "last4": "1111"}, {"name": "db-password", "last4": "tail"}),
        ("secret.delete", {"name": "db-password", "last4": "tail"}, None),
    ]
    secret_set(tenant=tenant, name="by-code", value=CANARY)  # no actor: no human made the change
    assert AuditEntry.objects.count() == 3


@pytest.mark.parametrize("name, value, error", [
    ("db-password", "", "non-empty string"),
    ("db-password", 12345678, "non-empty string"),
    ("db-password", CANARY * 3000, "at most 65536 bytes"),
    ("db-password", "é" * 40_000, "at most 65536 bytes"),  # 40,000 characters, 80,000 bytes
    ("db-password", CANARY + "\ud800", "lone surrogates"),
    ("bad name", CANARY, "secret name"),
    ("", CANARY, "secret name"),
    ("x" * 101, CANARY, "secret name"),
])
def test_a_bad_name_or_value_is_refused_without_repeating_the_value(tenant, name, value, error):
    with pytest.raises(ServiceError, match=error) as refused:
        secret_set(tenant=tenant, name=name, value=value)
    assert not shows_value(str(refused.value)) and not Secret.objects.exists()


def test_the_database_holds_no_plaintext(tenant):
    secret_set(tenant=tenant, name="db-password", value=CANARY, actor=user_ensure(username="ops"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT ciphertext, t::text FROM tools_secret t")
        (ciphertext, row), = cursor.fetchall()
        ciphertext = bytes(ciphertext)
        assert len(ciphertext) == 12 + len(CANARY.encode()) + 16  # nonce, ciphertext, tag
        assert CANARY[:-4].encode() not in ciphertext
        assert "db-password" in row and not shows_value(row)

        # Like searching a pg_dump: every row of every table as text (bytea as hex) holds no part of the value.
        cursor.execute("SELECT table_name FROM information_schema.tables "
                       "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        dump = []
        for (table,) in cursor.fetchall():
            cursor.execute(f"SELECT t::text FROM {connection.ops.quote_name(table)} t")
            dump += [text for (text,) in cursor.fetchall()]
    dump = "\n".join(dump)
    assert "db-password" in dump and "secret.set" in dump  # the search reaches the secret's row and its audit row
    assert not shows_value(dump) and CANARY[:-4].encode().hex() not in dump


def test_a_ciphertext_moved_to_another_tenant_or_name_does_not_decrypt(tenant, other_tenant):
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    secret_set(tenant=tenant, name="api-key", value="acme-api-key-value")
    secret_set(tenant=other_tenant, name="db-password", value="globex-password")
    stolen = Secret.objects.get(tenant=tenant, name="db-password").ciphertext

    Secret.objects.filter(tenant=other_tenant, name="db-password").update(ciphertext=stolen)
    with pytest.raises(SecretUnreadable, match="secret 'db-password' of tenant globex does not decrypt") as refused:
        secret_value(tenant=other_tenant, name="db-password")
    assert not shows_value(str(refused.value))

    Secret.objects.filter(tenant=tenant, name="api-key").update(ciphertext=stolen)
    with pytest.raises(SecretUnreadable, match="secret 'api-key' of tenant acme"):
        secret_value(tenant=tenant, name="api-key")

    altered = bytearray(stolen)
    altered[-1] ^= 1
    Secret.objects.filter(tenant=tenant, name="api-key").update(ciphertext=bytes(altered))
    with pytest.raises(SecretUnreadable):
        secret_value(tenant=tenant, name="api-key")
    Secret.objects.filter(tenant=tenant, name="api-key").update(ciphertext=b"short")
    with pytest.raises(SecretUnreadable):
        secret_value(tenant=tenant, name="api-key")

    assert secret_value(tenant=tenant, name="db-password") == CANARY  # where it belongs, it still decrypts


def test_each_tenant_has_a_key_of_its_own(tenant, other_tenant):
    master = django_settings.HIL_MASTER_KEY
    assert crypto.tenant_key(master, tenant.pk) != crypto.tenant_key(master, other_tenant.pk)
    sealed = crypto.encrypt(master, tenant.pk, "db-password", CANARY)
    nonce, body = sealed[:12], sealed[12:]
    aad = crypto._associated_data(tenant.pk, "db-password")
    assert AESGCM(crypto.tenant_key(master, tenant.pk)).decrypt(nonce, body, aad) == CANARY.encode()
    with pytest.raises(InvalidTag):  # the other tenant's key fails even with the right associated data
        AESGCM(crypto.tenant_key(master, other_tenant.pk)).decrypt(nonce, body, aad)


def test_each_encryption_has_a_fresh_nonce(tenant):
    first = crypto.encrypt(django_settings.HIL_MASTER_KEY, tenant.pk, "db-password", CANARY)
    second = crypto.encrypt(django_settings.HIL_MASTER_KEY, tenant.pk, "db-password", CANARY)
    assert first[:12] != second[:12] and first != second


# --- rotation ---------------------------------------------------------------------------------------


def rotate(monkeypatch, new_master: bytes | str) -> str:
    monkeypatch.setenv("HIL_NEW_MASTER_KEY", new_master if isinstance(new_master, str) else
                       base64.b64encode(new_master).decode())
    out = StringIO()
    call_command("hil_secrets", "rotate", stdout=out)
    return out.getvalue()


def test_rotation_re_encrypts_every_secret_of_every_tenant(tenant, other_tenant, settings, monkeypatch):
    old, new = new_key(), new_key()
    settings.HIL_MASTER_KEY = old
    values = {(tenant, "db-password"): CANARY, (tenant, "api-key"): "acme-api-key-1234",
              (other_tenant, "db-password"): "globex-password-5678"}
    for (t, name), value in values.items():
        secret_set(tenant=t, name=name, value=value)
    before = dict(Secret.objects.values_list("pk", "ciphertext"))

    out = rotate(monkeypatch, new)
    assert "Re-encrypted 3 secrets under the new master key." in out and "set HIL_MASTER_KEY" in out
    after = dict(Secret.objects.values_list("pk", "ciphertext"))
    assert after.keys() == before.keys() and all(bytes(after[pk]) != bytes(before[pk]) for pk in before)

    for t, name in values:  # the old key no longer decrypts them
        with pytest.raises(SecretUnreadable):
            secret_value(tenant=t, name=name)
    settings.HIL_MASTER_KEY = new
    assert {(t, name): secret_value(tenant=t, name=name) for t, name in values} == values
    assert not shows_value(out)


def test_rotating_again_re_encrypts_only_what_the_old_key_still_holds(tenant, settings, monkeypatch):
    old, new = new_key(), new_key()
    settings.HIL_MASTER_KEY = old
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    rotate(monkeypatch, new)
    secret_set(tenant=tenant, name="late", value="set-by-a-process-on-the-old-key")  # before it restarted

    assert "Re-encrypted 1 secrets under the new master key (1 already were)." in rotate(monkeypatch, new)
    settings.HIL_MASTER_KEY = new
    assert secret_value(tenant=tenant, name="db-password") == CANARY
    assert secret_value(tenant=tenant, name="late") == "set-by-a-process-on-the-old-key"


def test_rotation_is_all_or_nothing(tenant, other_tenant, settings, monkeypatch):
    settings.HIL_MASTER_KEY = new_key()
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    secret_set(tenant=other_tenant, name="broken", value="globex-password-5678")
    Secret.objects.filter(name="broken").update(ciphertext=b"\x00" * 40)
    before = dict(Secret.objects.values_list("pk", "ciphertext"))
    with pytest.raises(CommandError, match="secret 'broken' of tenant globex decrypts under neither"):
        rotate(monkeypatch, new_key())
    assert {pk: bytes(c) for pk, c in Secret.objects.values_list("pk", "ciphertext")} == {
        pk: bytes(c) for pk, c in before.items()}
    assert secret_value(tenant=tenant, name="db-password") == CANARY


@pytest.mark.parametrize("text, error", [
    ("", "set HIL_NEW_MASTER_KEY"),
    ("not base64 at all!", "base64 of 32 bytes"),
    (base64.b64encode(b"sixteen bytes!!!").decode(), "base64 of 32 bytes"),
])
def test_rotation_needs_a_new_master_key(tenant, monkeypatch, text, error):
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    before = Secret.objects.get().ciphertext
    with pytest.raises(CommandError, match=error) as refused:
        rotate(monkeypatch, text)
    assert text not in str(refused.value) or not text
    assert bytes(Secret.objects.get().ciphertext) == bytes(before)


def test_rotation_refuses_the_current_key(settings, monkeypatch):
    settings.HIL_MASTER_KEY = new_key()
    with pytest.raises(CommandError, match="is the current master key"):
        rotate(monkeypatch, settings.HIL_MASTER_KEY)


# --- the master key at start-up -----------------------------------------------------------------------

KEY = "a-production-secret-key-of-more-than-fifty-characters-0123456789"
GOOD = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("env, outcome", [
    ({"HIL_SECRET_KEY": KEY}, "HIL_MASTER_KEY must be set"),                   # production: no default
    ({"HIL_SECRET_KEY": KEY, "HIL_MASTER_KEY": "c2hvcnQ="}, "base64 of 32 bytes"),
    ({"HIL_SECRET_KEY": KEY, "HIL_MASTER_KEY": "not base64!"}, "base64 of 32 bytes"),
    ({"HIL_SECRET_KEY": KEY, "HIL_MASTER_KEY": GOOD}, "32 True"),
    ({"HIL_DEBUG": "1"}, "32 False"),                                          # development: derived
])
def test_the_master_key_is_required_in_production(manage_py, env, outcome):
    code = ("from django.conf import settings as s; "
            f"print(len(s.HIL_MASTER_KEY), s.HIL_MASTER_KEY == {b'k' * 32!r})")
    result = manage_py("shell", "--no-imports", "-c", code, DATABASE_URL=os.environ["DATABASE_URL"], **env)
    if outcome[0].isdigit():
        assert result.returncode == 0 and result.stdout.strip() == outcome, result.stderr
    else:
        assert result.returncode != 0 and outcome in result.stderr
        assert env.get("HIL_MASTER_KEY", "-unset-") not in result.stderr


# --- the API ------------------------------------------------------------------------------------------


def test_an_operator_sets_lists_and_deletes_secrets_and_never_gets_a_value_back(api, tenant):
    responses = [api.put("/api/v1/secrets/db-password/", {"value": CANARY}, format="json")]
    assert responses[-1].status_code == 200
    assert set(responses[-1].json()) == {"name", "last4", "updated_at"} and responses[-1].json()["last4"] == "tail"
    assert secret_value(tenant=tenant, name="db-password") == CANARY

    responses.append(api.get("/api/v1/secrets/"))
    assert [(s["name"], s["last4"]) for s in responses[-1].json()["results"]] == [("db-password", "tail")]

    responses.append(api.put("/api/v1/secrets/db-password/", {"value": CANARY + "-v2-9999"}, format="json"))
    assert responses[-1].status_code == 200 and responses[-1].json()["last4"] == "9999"
    assert secret_value(tenant=tenant, name="db-password") == CANARY + "-v2-9999"

    responses.append(api.delete("/api/v1/secrets/db-password/"))
    assert responses[-1].status_code == 204 and not Secret.objects.exists()
    responses.append(api.delete("/api/v1/secrets/db-password/"))
    assert responses[-1].status_code == 404 and "no secret 'db-password'" in responses[-1].json()["detail"]
    assert AuditEntry.objects.filter(action__startswith="secret.").count() == 3
    assert not any(shows_value(r.content.decode()) for r in responses)


@pytest.mark.parametrize("path, body, field", [
    ("db-password", {"value": ""}, "value"),
    ("db-password", {"value": 12345678}, "value"),
    ("db-password", {"value": [CANARY]}, "value"),
    ("db-password", {"value": {"v": CANARY}}, "value"),
    ("db-password", {"secret": CANARY}, "value"),
    ("db-password", [CANARY], "non_field_errors"),
    ("db-password", CANARY, "non_field_errors"),
    ("db-password", {"value": CANARY * 3000}, "value"),          # over 65,536 characters
    ("db-password", {"value": CANARY + "é" * 40_000}, "detail"),  # under that in characters, over 64 KiB in bytes
    ("db-password", {"value": CANARY + "\u0000"}, "detail"),    # JSON Postgres could not store, refused by the parser
    ("bad%20name", {"value": CANARY}, "name"),
    ("a.b", {"value": CANARY}, "name"),
    ("x" * 101, {"value": CANARY}, "name"),
    ("%C3%A9t%C3%A9", {"value": CANARY}, "name"),
])
def test_bad_input_is_a_400_that_says_what_is_wrong_and_never_repeats_the_value(api, path, body, field):
    response = api.put(f"/api/v1/secrets/{path}/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()[field] and not shows_value(response.content.decode())
    assert not Secret.objects.exists()


@pytest.mark.parametrize("role", [Role.AGENT, Role.VIEWER])
def test_only_operators_and_admins_manage_secrets(tenant, member, client_for, role):
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    client = client_for(member(tenant, role=role)[1])
    responses = [client.get("/api/v1/secrets/"),
                 client.put("/api/v1/secrets/db-password/", {"value": "x" * 20}, format="json"),
                 client.put("/api/v1/secrets/new-one/", {"value": "x" * 20}, format="json"),
                 client.delete("/api/v1/secrets/db-password/")]
    assert [r.status_code for r in responses] == [403] * 4
    assert list(Secret.objects.values_list("name", flat=True)) == ["db-password"]
    assert secret_value(tenant=tenant, name="db-password") == CANARY

    admin = client_for(member(tenant, role=Role.ADMIN)[1])
    assert admin.get("/api/v1/secrets/").json()["results"][0]["name"] == "db-password"
    assert APIClient().get("/api/v1/secrets/").status_code == 401


def test_another_tenants_member_can_neither_see_nor_change_a_secret(tenant, other_tenant, member, client_for):
    secret_set(tenant=tenant, name="db-password", value=CANARY)
    secret_set(tenant=tenant, name="acme-only", value="acme-only-value")
    globex = client_for(member(other_tenant, role=Role.ADMIN)[1])

    responses = [globex.get("/api/v1/secrets/")]
    assert responses[-1].status_code == 200 and responses[-1].json()["results"] == []
    responses.append(globex.put("/api/v1/secrets/db-password/", {"value": "globex-own-password"}, format="json"))
    assert responses[-1].status_code == 200  # a secret of its own tenant, of the same name
    responses.append(globex.delete("/api/v1/secrets/acme-only/"))
    assert responses[-1].status_code == 404
    assert secret_value(tenant=tenant, name="db-password") == CANARY
    assert secret_value(tenant=tenant, name="acme-only") == "acme-only-value"
    assert secret_value(tenant=other_tenant, name="db-password") == "globex-own-password"
    assert not any(shows_value(r.content.decode()) for r in responses)


# --- the logs -------------------------------------------------------------------------------------------


def test_no_log_line_holds_the_value(api, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True  # every SQL statement and its parameters logged, as with DEBUG on
    try:
        secret_set(tenant=tenant, name="db-password", value=CANARY, actor=user_ensure(username="ops"))
        assert secret_value(tenant=tenant, name="db-password") == CANARY
        assert api.put("/api/v1/secrets/api-key/", {"value": CANARY}, format="json").status_code == 200
        assert api.put("/api/v1/secrets/bad%20name/", {"value": CANARY}, format="json").status_code == 400
        assert api.get("/api/v1/secrets/").status_code == 200
        assert api.delete("/api/v1/secrets/api-key/").status_code == 204
    finally:
        connection.force_debug_cursor = False
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "tools_secret" in logged and "Bad Request" in logged  # the queries and the refusal were logged
    assert not shows_value(logged)


# --- the admin ------------------------------------------------------------------------------------------


@pytest.fixture
def root(db):
    client = Client()
    verified_login(client, user_ensure(username="root", is_staff=True, is_superuser=True))
    return client


def test_the_admin_sets_a_secret_and_shows_only_its_last_4_characters(root, tenant):
    pages = [root.post("/admin/tools/secret/add/", {"tenant": tenant.pk, "name": "db-password", "value": CANARY},
                       follow=True)]
    assert pages[-1].status_code == 200 and secret_value(tenant=tenant, name="db-password") == CANARY
    secret = Secret.objects.get()
    assert AuditEntry.objects.get(action="secret.set").actor.username == "root"

    pages.append(root.get("/admin/tools/secret/"))
    pages.append(root.get(f"/admin/tools/secret/{secret.pk}/change/"))
    assert all(SHOWN in p.content.decode() for p in pages[-2:])
    change_page = pages[-1].content.decode()
    assert re.search(r'<input type="password" name="value"[^>]*>', change_page)
    assert 'name="value" value=' not in change_page

    # Saved with the value left empty, it keeps the value; with one, it replaces it.
    pages.append(root.post(f"/admin/tools/secret/{secret.pk}/change/", {"value": ""}, follow=True))
    assert secret_value(tenant=tenant, name="db-password") == CANARY
    pages.append(root.post(f"/admin/tools/secret/{secret.pk}/change/", {"value": "replaced-value-7777"}, follow=True))
    assert secret_value(tenant=tenant, name="db-password") == "replaced-value-7777"
    pages.append(root.get(f"/admin/tools/secret/{secret.pk}/history/"))
    assert not any(shows_value(p.content.decode()) for p in pages)


def test_an_admin_form_with_errors_does_not_show_the_value_again(root, tenant):
    secret_set(tenant=tenant, name="db-password", value="the-first-value")
    pages = [root.post("/admin/tools/secret/add/", {"tenant": tenant.pk, "name": "bad name", "value": CANARY}),
             root.post("/admin/tools/secret/add/", {"tenant": tenant.pk, "name": "db-password", "value": CANARY}),
             root.post("/admin/tools/secret/add/", {"tenant": tenant.pk, "name": "new-one", "value": ""})]
    assert [p.status_code for p in pages] == [200, 200, 200]  # the form again, with its errors
    assert "already exists" in pages[1].content.decode() and "needs a value" in pages[2].content.decode()
    assert not any(shows_value(p.content.decode()) for p in pages)
    assert secret_value(tenant=tenant, name="db-password") == "the-first-value"
    assert list(Secret.objects.values_list("name", flat=True)) == ["db-password"]


def test_the_admin_deletes_a_secret_through_the_service(root, tenant):
    secret = secret_set(tenant=tenant, name="db-password", value=CANARY)
    root.post(f"/admin/tools/secret/{secret.pk}/delete/", {"post": "yes"})
    assert not Secret.objects.exists()
    assert AuditEntry.objects.get(action="secret.delete").old == {"name": "db-password", "last4": "tail"}


def test_a_staff_member_sees_only_their_tenants_secrets(tenant, other_tenant):
    secret_set(tenant=tenant, name="acme-secret", value=CANARY)
    theirs = secret_set(tenant=other_tenant, name="globex-secret", value="globex-password-5678")
    user = user_ensure(username="ops", is_staff=True)
    membership_set(tenant=tenant, user=user, role=Role.ADMIN)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tools"))
    client = Client()
    verified_login(client, user)

    listed = client.get("/admin/tools/secret/").content.decode()
    assert "acme-secret" in listed and "globex-secret" not in listed
    assert client.get(f"/admin/tools/secret/{theirs.pk}/change/").status_code == 302  # as for a wrong id
    add_form = client.get("/admin/tools/secret/add/").content.decode()
    tenant_choices = re.search(r'<select name="tenant".*?</select>', add_form, re.S)[0]
    assert "acme" in tenant_choices and "globex" not in tenant_choices
    client.post("/admin/tools/secret/add/", {"tenant": other_tenant.pk, "name": "planted", "value": "x" * 20})
    assert not Secret.objects.filter(name="planted").exists()
