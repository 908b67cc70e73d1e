"""The demo seed only in demo mode, its tokens across runs, login throttling, and the admin per tenant."""

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry, Role
from accounts.services import membership_set, user_ensure
from conftest import verified_login

pytestmark = pytest.mark.django_db
KEY = "a-production-secret-key-of-more-than-fifty-characters-0123456789"
MASTER_KEY = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="  # production needs one too (base64 of 32 bytes)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def seed() -> str:
    out = StringIO()
    call_command("hil_seed", stdout=out)
    return out.getvalue()


# --- the demo seed ------------------------------------------------------------------------


@pytest.mark.parametrize("env, demo", [
    ({"HIL_DEBUG": "1", "HIL_EMBEDDED_PGDATA": "/tmp/pg"}, True),            # make run
    ({"HIL_DEBUG": "1"}, False),                                            # make run on an external database
    ({"HIL_SECRET_KEY": KEY, "HIL_MASTER_KEY": MASTER_KEY, "HIL_EMBEDDED_PGDATA": "/tmp/pg"}, False),  # production
    ({"HIL_SECRET_KEY": KEY, "HIL_MASTER_KEY": MASTER_KEY, "HIL_DEMO": "1"}, True),                    # asked for
    ({"HIL_DEBUG": "1", "HIL_EMBEDDED_PGDATA": "/tmp/pg", "HIL_DEMO": "0"}, False),
])
def test_demo_mode_is_make_run_or_asked_for(manage_py, env, demo):
    result = manage_py("shell", "--no-imports", "-c", "from django.conf import settings; print(settings.HIL_DEMO)",
                       DATABASE_URL=os.environ["DATABASE_URL"], **env)
    assert result.stdout.strip() == str(demo), result.stderr


def test_outside_demo_mode_the_seed_refuses_and_creates_no_user(manage_py):
    result = manage_py("hil_seed", DATABASE_URL=os.environ["DATABASE_URL"], HIL_SECRET_KEY=KEY,
                       HIL_MASTER_KEY=MASTER_KEY, HIL_EMBEDDED_PGDATA="/tmp/pg")
    assert result.returncode == 1
    assert "runs only in demo mode" in result.stderr and "createsuperuser" in result.stderr


def test_the_seed_checks_demo_mode_before_writing_anything(settings):
    settings.HIL_DEMO = False
    with pytest.raises(CommandError, match="createsuperuser"):
        seed()
    assert not get_user_model().objects.exists()


def test_tokens_printed_by_one_seed_keep_working_after_the_next(client_for):
    first, second = seed(), seed()
    tokens = [re.search(rf"Token \({who}\):\s+(\S+)", text)[1] for text in (first, second) for who in ("operator", "alice")]
    assert len(set(tokens)) == 4
    for raw in tokens:
        assert client_for(raw).get("/api/v1/approvals/").status_code == 200


def test_the_printed_approval_step_picks_the_approval_of_the_run_just_started(client_for, drive):
    from workflows.models import Run

    text = seed()
    api = client_for(re.search(r"Token \(operator\): (\S+)", text)[1])
    run_of_post = re.search(r"REFUND_RUN=\$\(.*?python3 -c '([^']+)'\)", text)[1]
    approval_of_run = re.search(r"APPROVAL=\$\(.*?python3 -c '([^']+)' \$REFUND_RUN", text)[1]

    def python3(code: str, stdin, *args: str) -> str:
        result = subprocess.run([sys.executable, "-c", code, *args], input=json.dumps(stdin), capture_output=True,
                                text=True, check=True)
        return result.stdout.strip()

    runs = []
    for _ in range(2):  # the first run's approval is the one asked for; the newest pending one is the other
        conversation = api.post("/api/v1/conversations/", {"workflow": "customer_support"}, format="json").json()
        posted = api.post(f"/api/v1/conversations/{conversation['id']}/messages/",
                          {"text": "I want my money back for order 5", "turn_id": "t2"}, format="json").json()
        runs.append(python3(run_of_post, posted))
        assert drive(Run.objects.get(pk=runs[-1])).status == "waiting"
    pending = api.get("/api/v1/approvals/?status=pending").json()
    chosen = python3(approval_of_run, pending, runs[0])
    assert [a["run"] for a in pending["results"] if str(a["id"]) == chosen] == [runs[0]]


# --- login throttling ---------------------------------------------------------------------


def log_in(password: str, username: str = "op", address: str = "10.0.0.1") -> tuple[int, Client]:
    client = Client(REMOTE_ADDR=address)
    response = client.post("/console/signin/?next=/admin/", {"username": username, "password": password})
    return response, client


def logged_in(client: Client) -> bool:
    """Past the password: the second factor is next (accounts/tests/test_signin.py)."""
    return "_auth_user_id" in client.session


@pytest.fixture
def staff():
    user = user_ensure(username="op", password="right-password", is_staff=True)
    user_ensure(username="other", password="right-password", is_staff=True)
    return user


def test_below_the_limit_the_right_password_still_logs_in(staff, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in("wrong")[0].status_code == 400
    response, client = log_in("right-password")
    assert response.status_code == 302 and logged_in(client)


def test_after_30_wrong_passwords_the_right_one_is_refused_until_the_cooloff_passes(staff, settings):
    codes = [log_in("wrong")[0].status_code for _ in range(30)]
    assert codes[0] == 400 and codes[-1] == 429
    response, client = log_in("right-password")
    assert response.status_code == 429 and not logged_in(client)
    assert "Too many failed logins" in response.content.decode()
    assert "15 minutes" in response.content.decode()

    # Only that username from that address is locked out.
    assert logged_in(log_in("right-password", address="10.0.0.2")[1])
    assert logged_in(log_in("right-password", username="other")[1])

    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    response, client = log_in("right-password")
    assert response.status_code == 302 and logged_in(client)


# --- the admin, per tenant ----------------------------------------------------------------


@pytest.fixture
def tenant_admin(tenant, other_tenant):
    """A staff member of `tenant` (not of `other_tenant`) who may view and change the accounts models."""
    user = user_ensure(username="ops", is_staff=True)
    membership_set(tenant=tenant, user=user, role=Role.ADMIN)
    membership_set(tenant=other_tenant, user=user_ensure(username="globex-person"), role=Role.AGENT)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="accounts"))
    for t in (tenant, other_tenant):
        AuditEntry.objects.create(tenant=t, action=f"{t.slug}-action", object_type="x", object_id="1")
    client = Client()
    verified_login(client, user)
    return client


@pytest.mark.parametrize("page", ["tenant", "membership", "apitoken", "auditentry"])
def test_a_member_sees_only_their_tenants_rows(tenant_admin, member, tenant, other_tenant, page):
    member(tenant, username="acme-token-owner")
    member(other_tenant, username="globex-token-owner")
    html = tenant_admin.get(f"/admin/accounts/{page}/").content.decode()
    assert "acme" in html and "globex" not in html


def test_a_member_cannot_open_another_tenants_rows(tenant_admin, tenant, other_tenant):
    assert tenant_admin.get(f"/admin/accounts/tenant/{tenant.pk}/change/").status_code == 200
    response = tenant_admin.get(f"/admin/accounts/tenant/{other_tenant.pk}/change/")
    assert response.status_code == 302 and response.url == "/admin/"  # "does not exist", as for a wrong id
    add_form = tenant_admin.get("/admin/accounts/membership/add/").content.decode()
    tenant_choices = re.search(r'<select name="tenant".*?</select>', add_form, re.S)[0]
    assert "acme" in tenant_choices and "globex" not in tenant_choices


def test_a_superuser_sees_every_tenant(tenant, other_tenant):
    client = Client()
    verified_login(client, user_ensure(username="root", is_staff=True, is_superuser=True))
    html = client.get("/admin/accounts/tenant/").content.decode()
    assert "acme" in html and "globex" in html


@pytest.mark.parametrize("page", ["workflows/workflow", "workflows/workflowversion", "workflows/run"])
def test_a_member_sees_only_their_tenants_workflows_and_runs(tenant_admin, tenant, other_tenant, converse, page):
    get_user_model().objects.get(username="ops").user_permissions.add(
        *Permission.objects.filter(content_type__app_label__in=["workflows", "approvals", "tools"]))
    converse(tenant, slug="acme-flow")
    converse(other_tenant, slug="globex-flow")
    html = tenant_admin.get(f"/admin/{page}/").content.decode()
    assert "acme-flow" in html and "globex-flow" not in html
