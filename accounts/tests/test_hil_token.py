"""`manage.py hil_token`: an operator mints an API token from the shell."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApiToken, Role
from accounts.services import user_ensure

pytestmark = pytest.mark.django_db


def hil_token(**options) -> str:
    out = StringIO()
    call_command("hil_token", stdout=out, **options)
    return out.getvalue().strip()


def test_it_prints_a_working_token_for_that_tenant(tenant, member, client_for, publish):
    user, _ = member(tenant, role=Role.AGENT, username="alice")
    publish(tenant)
    raw = hil_token(tenant="acme", user="alice", name="laptop")
    assert raw.startswith("hil_") and "\n" not in raw
    token = ApiToken.objects.get(name="laptop")
    assert (token.tenant, token.user) == (tenant, user)
    client = client_for(raw)
    assert client.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").status_code == 201
    assert client.get("/api/v1/conversations/").json()["count"] == 1


def test_each_call_prints_a_new_token(tenant, member):
    member(tenant, username="alice")
    assert hil_token(tenant="acme", user="alice") != hil_token(tenant="acme", user="alice")
    assert ApiToken.objects.filter(name="cli").count() == 2


@pytest.mark.parametrize("options,message", [
    ({"tenant": "nope", "user": "alice"}, "no tenant 'nope'"),
    ({"tenant": "acme", "user": "nobody"}, "no user 'nobody'"),
    ({"tenant": "globex", "user": "alice"}, "alice is not a member of tenant globex"),
])
def test_bad_arguments_fail_clearly_and_create_nothing(tenant, other_tenant, member, options, message):
    member(tenant, username="alice")
    tokens = ApiToken.objects.count()
    with pytest.raises(CommandError) as error:
        hil_token(**options)
    assert str(error.value) == message
    assert ApiToken.objects.count() == tokens


def test_a_user_with_no_membership_anywhere_gets_no_token(tenant):
    user_ensure(username="drifter")
    with pytest.raises(CommandError, match="drifter is not a member of tenant acme"):
        hil_token(tenant="acme", user="drifter")
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("missing", ["tenant", "user"])
def test_tenant_and_user_are_required(tenant, member, missing):
    member(tenant, username="alice")
    options = {"tenant": "acme", "user": "alice"}
    del options[missing]
    with pytest.raises(CommandError, match=f"--{missing}"):
        hil_token(**options)
