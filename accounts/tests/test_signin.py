"""Signing in to the console and the admin: a password, then a TOTP code or a backup code."""

import re

import pytest
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Role
from accounts.services import membership_set, totp_demo_device, totp_secret, user_ensure
from accounts.totp import totp_code

PASSWORD = "right-password"


@pytest.fixture
def agent(tenant):
    user = user_ensure(username="alice", password=PASSWORD)
    membership_set(tenant=tenant, user=user, role=Role.AGENT)
    return user


def password_step(client: Client, username="alice", next_="/console/"):
    return client.post(f"/console/signin/?next={next_}", {"username": username, "password": PASSWORD})


def code_now(user) -> str:
    return totp_code(totp_secret(TOTPDevice.objects.get(user=user, confirmed=True)))


def test_password_then_code_opens_the_console(agent):
    client = Client()
    totp_demo_device(user=agent)
    assert client.get("/console/").url.startswith("/console/signin/")

    response = password_step(client)
    assert response.status_code == 302 and response.url.startswith("/console/verify/")
    assert client.get("/console/").url.startswith("/console/verify/")  # a password alone is not enough

    response = client.post("/console/verify/?next=/console/", {"code": code_now(agent)})
    assert response.status_code == 302 and response.url == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and b"Queue" in page.content


def test_a_wrong_code_is_refused_and_more_wrong_codes_are_throttled(agent):
    client = Client()
    totp_demo_device(user=agent)
    password_step(client)
    right = code_now(agent)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = client.post("/console/verify/", {"code": wrong})
    assert response.status_code == 400 and "not right" in response.content.decode()
    response = client.post("/console/verify/", {"code": wrong})
    assert response.status_code == 400 and "Too many wrong codes: try again in" in response.content.decode()
    # Even the right code waits out the throttle: guessing a million codes takes a lifetime.
    response = client.post("/console/verify/", {"code": right})
    assert response.status_code == 400 and "Too many wrong codes" in response.content.decode()
    assert client.get("/console/").status_code == 302


def test_a_member_without_an_authenticator_enrols_and_gets_backup_codes_that_work_once(agent, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # so that the right code may follow a wrong one at once
    client = Client()
    password_step(client)
    assert client.get("/console/verify/").url.startswith("/console/enrol/")
    page = client.get("/console/enrol/").content.decode()
    assert "<svg" in page  # the QR code
    secret = re.search(r'class="secret">([A-Z2-7]+)<', page).group(1)

    response = client.post("/console/enrol/", {"code": "000000" if totp_code(secret) != "000000" else "111111"})
    assert response.status_code == 400 and "not right" in response.content.decode()
    response = client.post("/console/enrol/", {"code": totp_code(secret)})
    codes = re.findall(r"<li><code>([a-z0-9]+)</code></li>", response.content.decode())
    assert response.status_code == 200 and len(codes) == 10
    assert client.get("/console/").status_code == 200

    # Enrolled: a password alone can no longer add an authenticator.
    other = Client()
    password_step(other)
    assert other.get("/console/enrol/").url.startswith("/console/verify/")
    assert other.post("/console/verify/", {"code": codes[0]}).status_code == 302
    assert other.get("/console/").status_code == 200
    again = Client()
    password_step(again)
    assert again.post("/console/verify/", {"code": codes[0]}).status_code == 400  # used up


def test_the_admin_asks_for_the_second_factor_too(db):
    staff = user_ensure(username="op", password=PASSWORD, is_staff=True, is_superuser=True)
    totp_demo_device(user=staff)
    client = Client()
    assert client.get("/admin/").status_code == 302
    password_step(client, "op", "/admin/")
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith("/console/verify/")  # the password is not enough
    assert client.post("/console/verify/?next=/admin/", {"code": code_now(staff)}).url == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_next_never_leads_off_the_site(agent):
    client = Client()
    totp_demo_device(user=agent)
    password_step(client, next_="https://evil.example/")
    response = client.post("/console/verify/?next=https://evil.example/", {"code": code_now(agent)})
    assert response.url == "/console/"


def test_the_api_takes_a_verified_session_with_its_csrf_token_only(agent, tenant):
    signing_in, client = Client(), Client(enforce_csrf_checks=True)
    totp_demo_device(user=agent)
    password_step(signing_in)
    client.cookies = signing_in.cookies
    assert client.get("/api/v1/handovers/").status_code == 403  # past the password only
    signing_in.post("/console/verify/", {"code": code_now(agent)})
    client.get("/console/")  # sets the CSRF cookie
    assert client.get("/api/v1/handovers/").status_code == 200
    claim = "/api/v1/handovers/00000000-0000-0000-0000-000000000000/claim/"
    assert client.post(claim, {}, content_type="application/json").status_code == 403  # no CSRF token
    response = client.post(claim, {}, content_type="application/json",
                           HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert response.status_code == 404


def test_a_member_of_two_tenants_chooses_where_to_work(agent, other_tenant):
    membership_set(tenant=other_tenant, user=agent, role=Role.VIEWER)
    client = Client()
    totp_demo_device(user=agent)
    password_step(client)
    client.post("/console/verify/", {"code": code_now(agent)})
    assert b"Acme" in client.get("/console/").content  # the first by slug: acme
    client.post("/console/tenant/", {"tenant": "globex"})
    page = client.get("/console/").content.decode()
    assert "Globex" in page and "alice · viewer" in page and '"may_act": false' in page
    client.post("/console/tenant/", {"tenant": "initech"})  # not theirs: nothing changes
    assert "Globex" in client.get("/console/").content.decode()
    assert Client().post("/console/tenant/", {"tenant": "acme"}).status_code == 302  # signed out: to sign in
