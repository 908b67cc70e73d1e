"""Model endpoints, profiles and the record of model calls: an endpoint is saved only once a real request to
it with its key succeeded, the key is never shown, and no tenant sees or uses another's."""

import logging
import re
import socket
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry, Role
from accounts.services import membership_set, user_ensure
from agents import services
from agents.local_llm import _Handler, hang, wrong_key
from agents.models import AgentSettings, CachedAnswer, EndpointModel, LLMCall, ModelEndpoint, ModelProfile
from agents.services import EndpointCheckFailed
from core.errors import ServiceError
from tools.services import secret_set

from .conftest import LLM_TEST_KEY
from conftest import verified_login

pytestmark = pytest.mark.django_db

CANARY = "sk-live-CANARY-93c1d7e0b5a24f68-tail"  # a key the endpoint refuses

MINI = {"model": "hil-local-chat", "context_window": 128_000, "input_price": "0.15", "output_price": "0.60",
        "cached_input_price": "0.075", "supports_json_schema": True}
EMBED = {"model": "hil-local-embed", "context_window": 8192, "input_price": "0.02", "output_price": "0"}


def shows_a_key(text: str) -> bool:
    return LLM_TEST_KEY in text or CANARY[:-4] in text


@pytest.fixture
def keys(tenant):
    """The tenant's secrets: `llm-key`, the key the local server takes, and `stale-key`, one it refuses."""
    secret_set(tenant=tenant, name="llm-key", value=LLM_TEST_KEY)
    secret_set(tenant=tenant, name="stale-key", value=CANARY)


@pytest.fixture
def closed_url():
    """The URL of a port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class WithoutModelList(_Handler):
    """A server that answers chat completions but serves no GET /models (as some gateways and proxies)."""

    def do_GET(self):
        self._send_json(404, {"error": {"message": "Not Found", "type": "invalid_request_error", "param": None,
                                        "code": None}})


def drop_model_list(server):
    server._httpd.RequestHandlerClass = WithoutModelList  # the requests that follow; no other way to change it


@pytest.fixture
def unlisted_server(llm_server):
    """`llm_server`, but without a model list: an endpoint is then tested with a 1-token chat completion."""
    drop_model_list(llm_server)
    return llm_server


def save(tenant, base_url, secret="llm-key", models=(MINI,), name="local", **kwargs):
    return services.endpoint_save(tenant=tenant, name=name, base_url=base_url, api_key_secret=secret,
                                  models=[dict(m) for m in models], **kwargs)


@pytest.fixture
def endpoint(tenant, keys, llm_server):
    return save(tenant, llm_server.base_url, models=(MINI, EMBED))


# --- saving an endpoint tests it ----------------------------------------------------------------------


def test_an_endpoint_that_answers_with_its_key_is_saved_with_its_models(tenant, keys, llm_server):
    user = user_ensure(username="ops")
    endpoint = save(tenant, llm_server.base_url, models=(MINI, EMBED), actor=user)

    assert [(r.method, r.path, r.headers["authorization"]) for r in llm_server.requests] == [
        ("GET", "/v1/models", f"Bearer {LLM_TEST_KEY}")]
    assert (endpoint.name, endpoint.base_url, endpoint.api_key_secret, endpoint.enabled) == (
        "local", llm_server.base_url, "llm-key", True)
    mini = endpoint.models.get(model="hil-local-chat")
    assert (mini.context_window, mini.input_price, mini.output_price, mini.cached_input_price,
            mini.supports_json_schema) == (128_000, Decimal("0.15"), Decimal("0.6"), Decimal("0.075"), True)
    embed = endpoint.models.get(model="hil-local-embed")
    assert embed.cached_input_price is None and embed.supports_json_schema is False
    entry = AuditEntry.objects.get(action="model_endpoint.create")
    assert entry.actor == user and entry.old is None and entry.new["models"][0]["input_price"] == "0.150000"


def test_a_closed_port_is_reported_as_connection_refused(tenant, keys, closed_url):
    with pytest.raises(EndpointCheckFailed, match=re.escape(f"connection refused at {closed_url}")):
        save(tenant, closed_url)
    assert not ModelEndpoint.objects.exists()


def test_a_wrong_key_is_reported_as_a_401(tenant, keys, llm_server):
    with pytest.raises(EndpointCheckFailed) as refused:
        save(tenant, llm_server.base_url, secret="stale-key")
    assert str(refused.value) == "401 from the endpoint: the API key was refused"
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {CANARY}"  # it was the key that was sent
    assert not ModelEndpoint.objects.exists()


def test_a_missing_secret_is_named(tenant, keys, llm_server):
    with pytest.raises(ServiceError, match="api_key_secret: secret 'nope' not found in tenant acme"):
        save(tenant, llm_server.base_url, secret="nope")
    assert llm_server.requests == [] and not ModelEndpoint.objects.exists()


def test_an_endpoint_without_a_model_list_is_tested_with_a_one_token_completion(tenant, keys, unlisted_server):
    save(tenant, unlisted_server.base_url)
    assert [(r.method, r.path, r.model, r.body["max_tokens"]) for r in unlisted_server.requests] == [
        ("POST", "/v1/chat/completions", "hil-local-chat", 1)]  # (the GET /models it answered 404 is not kept)
    assert ModelEndpoint.objects.get().models.get().model == "hil-local-chat"

    unlisted_server.script(wrong_key())
    with pytest.raises(EndpointCheckFailed, match="^401 from the endpoint: the API key was refused$"):
        save(tenant, unlisted_server.base_url, name="other")


def test_an_endpoint_that_never_answers_times_out_after_5_s(tenant, keys, unlisted_server):
    unlisted_server.script(hang())
    with pytest.raises(EndpointCheckFailed, match=re.escape(
            f"timed out after 5 s waiting for {unlisted_server.base_url}")):
        save(tenant, unlisted_server.base_url)
    assert not ModelEndpoint.objects.exists()


def test_a_server_that_is_not_an_openai_api_is_reported(tenant, keys, llm_server):
    wrong_path = llm_server.base_url.removesuffix("/v1")  # GET /models and POST /chat/completions: 404s
    with pytest.raises(EndpointCheckFailed, match=r"^404 from the endpoint \(is base_url right\? It often ends in "
                                                  r"/v1\): Unknown request URL: POST /chat/completions"):
        save(tenant, wrong_path)


def test_a_disabled_endpoint_is_saved_untested(tenant, closed_url):
    endpoint = save(tenant, closed_url, secret="not-set-yet", enabled=False)
    assert ModelEndpoint.objects.get() == endpoint and not endpoint.enabled
    with pytest.raises(ServiceError, match="secret 'not-set-yet' not found"):
        save(tenant, closed_url, secret="not-set-yet", enabled=True)  # enabling it tests it


def test_saving_again_replaces_the_models_and_audits_the_change(tenant, keys, llm_server, endpoint):
    user = user_ensure(username="ops")
    kept = endpoint.models.get(model="hil-local-chat")
    save(tenant, llm_server.base_url, models=({**MINI, "input_price": "0.2"},), actor=user)
    assert list(EndpointModel.objects.values_list("pk", "model", "input_price")) == [
        (kept.pk, "hil-local-chat", Decimal("0.2"))]
    entry = AuditEntry.objects.get(action="model_endpoint.update")
    assert [m["model"] for m in entry.old["models"]] == ["hil-local-chat", "hil-local-embed"]
    assert entry.new["models"] == [{**MINI, "input_price": "0.200000", "output_price": "0.600000",
                                    "cached_input_price": "0.075000"}]
    save(tenant, llm_server.base_url, models=({**MINI, "input_price": "0.2"},), actor=user)
    assert AuditEntry.objects.filter(action__startswith="model_endpoint.").count() == 1  # no change, no row


@pytest.mark.parametrize("change, error", [
    ({"name": "bad name"}, "name: Enter a valid “slug”"),
    ({"base_url": "ftp://example.com/v1"}, "base_url: an http or https URL is required"),
    ({"base_url": "api.openai.com/v1"}, "base_url: an http or https URL is required"),
    ({"base_url": "https://user:pw@example.com/v1"}, "base_url: must not hold credentials"),
    ({"base_url": "https://example.com/v1?key=x"}, "base_url: must have no query"),
    ({"base_url": "https://example.com:99999/v1"}, "is not a valid URL"),
    ({"base_url": "https://a..b/v1"}, "is not a valid URL"),
    ({"base_url": "https://exa mple.com/v1"}, "base_url: no spaces"),
    ({"api_key_secret": ""}, "api_key_secret: this field is required"),
    ({"models": []}, "models: an endpoint needs at least one model"),
    ({"models": [MINI, MINI]}, "models[1].model: 'hil-local-chat' is listed twice"),
    ({"models": [{**MINI, "input_price": "-1"}]}, "models[0].input_price: Ensure this value is greater than or equal"),
    ({"models": [{**MINI, "output_price": "0.1234567"}]}, "models[0].output_price: Ensure that there are no more"),
    ({"models": [{**MINI, "output_price": "NaN"}]}, "models[0].output_price"),
    ({"models": [{**MINI, "context_window": 0}]}, "models[0].context_window: Ensure this value is greater than or"),
    ({"models": [{**MINI, "context_window": 12.5}]}, "models[0].context_window: a whole number"),
    ({"models": [{**MINI, "supports_json_schema": "yes"}]}, "models[0].supports_json_schema: true or false"),
    ({"models": [{**MINI, "price": 1}]}, "models[0]: unknown field 'price'"),
    ({"models": [{"model": "x"}]}, "models[0].context_window"),
])
def test_bad_settings_are_refused_naming_the_field_before_any_request(tenant, keys, llm_server, change, error):
    settings = {"tenant": tenant, "name": "local", "base_url": llm_server.base_url, "api_key_secret": "llm-key",
                "models": [MINI], **change}
    with pytest.raises(ServiceError, match=re.escape(error)):
        services.endpoint_save(**settings)
    assert llm_server.requests == [] and not ModelEndpoint.objects.exists()


def test_prices_may_be_given_as_numbers(tenant, keys, llm_server):
    save(tenant, llm_server.base_url, models=({**MINI, "input_price": 0.15, "output_price": 2},))
    assert EndpointModel.objects.values_list("input_price", "output_price").get() == (Decimal("0.15"), Decimal("2"))


# --- profiles -----------------------------------------------------------------------------------------


def test_a_profile_lists_the_tenants_models_in_order(tenant, endpoint):
    user = user_ensure(username="ops")
    profile = services.profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-embed"),
                                                                          ("local", "hil-local-chat")], actor=user)
    assert [(e.position, e.endpoint_model.model) for e in profile.entries.all()] == [
        (0, "hil-local-embed"), (1, "hil-local-chat")]
    services.profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-chat")], actor=user)
    assert [e.endpoint_model.model for e in ModelProfile.objects.get().entries.all()] == ["hil-local-chat"]
    audited = AuditEntry.objects.filter(action__startswith="model_profile.").order_by("id")
    assert [(e.action, e.new) for e in audited] == [
        ("model_profile.create", {"name": "fast", "entries": [["local", "hil-local-embed"],
                                                              ["local", "hil-local-chat"]]}),
        ("model_profile.update", {"name": "fast", "entries": [["local", "hil-local-chat"]]})]


@pytest.mark.parametrize("entries, error", [
    ([], "entries: a profile needs at least one model"),
    ([("nowhere", "hil-local-chat")], "entries[0].endpoint: tenant acme has no model endpoint 'nowhere'"),
    ([("local", "gpt-5")], "entries[0].model: endpoint 'local' has no model 'gpt-5'; add it, with its prices"),
    ([("local", "hil-local-chat")] * 2, "entries[1]: 'local' 'hil-local-chat' is listed twice"),
    ([("local",)], "entries[0]: an endpoint's name and one of its models"),
])
def test_a_profile_of_models_the_tenant_does_not_have_is_refused(tenant, endpoint, entries, error):
    with pytest.raises(ServiceError, match=re.escape(error)):
        services.profile_save(tenant=tenant, name="fast", entries=entries)
    assert not ModelProfile.objects.exists()


def test_a_model_in_a_profile_is_neither_removed_nor_deleted_with_its_endpoint(tenant, llm_server, endpoint):
    services.profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-embed")])
    with pytest.raises(ServiceError, match=r"models: 'hil-local-embed' \(profile 'fast'\) cannot be removed"):
        save(tenant, llm_server.base_url, models=(MINI,))
    with pytest.raises(ServiceError, match="model endpoint 'local' is used by the profiles fast"):
        services.endpoint_delete(tenant=tenant, name="local")
    assert endpoint.models.count() == 2

    services.profile_delete(tenant=tenant, name="fast")
    services.endpoint_delete(tenant=tenant, name="local")
    assert not ModelEndpoint.objects.exists() and not EndpointModel.objects.exists()


# --- the API ------------------------------------------------------------------------------------------


def test_an_operator_adds_changes_and_deletes_endpoints_and_profiles(api, tenant, keys, llm_server):
    created = api.post("/api/v1/model-endpoints/", {"name": "local", "base_url": llm_server.base_url,
                                                    "api_key_secret": "llm-key", "models": [MINI]}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["models"] == [{**MINI, "input_price": "0.150000", "output_price": "0.600000",
                                         "cached_input_price": "0.075000"}]
    assert api.post("/api/v1/model-endpoints/", {"name": "local", "base_url": llm_server.base_url,
                                                 "api_key_secret": "llm-key", "models": [MINI]},
                    format="json").json() == {"name": ["a model endpoint named 'local' already exists; PUT changes it"]}

    changed = api.put("/api/v1/model-endpoints/local/", {"base_url": llm_server.base_url, "api_key_secret": "llm-key",
                                                         "models": [MINI, EMBED]}, format="json")
    assert changed.status_code == 200 and [m["model"] for m in changed.json()["models"]] == [
        "hil-local-chat", "hil-local-embed"]
    assert api.get("/api/v1/model-endpoints/local/").json() == changed.json()
    assert [e["name"] for e in api.get("/api/v1/model-endpoints/").json()["results"]] == ["local"]

    profile = api.post("/api/v1/model-profiles/", {"name": "fast", "entries": [
        {"endpoint": "local", "model": "hil-local-embed"}, {"endpoint": "local", "model": "hil-local-chat"}]},
        format="json")
    assert profile.status_code == 201, profile.content
    assert profile.json()["entries"] == [{"endpoint": "local", "model": "hil-local-embed"},
                                         {"endpoint": "local", "model": "hil-local-chat"}]
    assert api.put("/api/v1/model-profiles/fast/", {"entries": [{"endpoint": "local", "model": "hil-local-chat"}]},
                   format="json").json()["entries"] == [{"endpoint": "local", "model": "hil-local-chat"}]
    assert api.get("/api/v1/model-profiles/").json()["results"][0]["name"] == "fast"

    refused = api.delete("/api/v1/model-endpoints/local/")
    assert refused.status_code == 400 and "used by the profiles fast" in refused.json()["detail"]
    assert api.delete("/api/v1/model-profiles/fast/").status_code == 204
    assert api.delete("/api/v1/model-endpoints/local/").status_code == 204
    assert api.get("/api/v1/model-endpoints/local/").status_code == 404
    assert api.put("/api/v1/model-profiles/fast/", {"entries": [{"endpoint": "local", "model": "x"}]},
                   format="json").status_code == 404
    assert [e.action for e in AuditEntry.objects.order_by("id") if e.action.startswith("model_")] == [
        "model_endpoint.create", "model_endpoint.update", "model_profile.create", "model_profile.update",
        "model_profile.delete", "model_endpoint.delete"]


def test_the_connection_test_failing_is_a_400_that_says_why(api, keys, llm_server, closed_url):
    body = {"name": "local", "base_url": closed_url, "api_key_secret": "llm-key", "models": [MINI]}
    refused = api.post("/api/v1/model-endpoints/", body, format="json")
    assert refused.status_code == 400 and refused.json() == {"detail": f"connection refused at {closed_url}"}
    wrong = api.post("/api/v1/model-endpoints/",
                     {**body, "base_url": llm_server.base_url, "api_key_secret": "stale-key"}, format="json")
    assert wrong.status_code == 400 and wrong.json() == {"detail": "401 from the endpoint: the API key was refused"}
    missing = api.post("/api/v1/model-endpoints/", {**body, "api_key_secret": "nope"}, format="json")
    assert missing.status_code == 400 and "api_key_secret: secret 'nope' not found" in missing.json()["detail"]
    assert not ModelEndpoint.objects.exists()


@pytest.mark.parametrize("body, field", [
    ({"base_url": "http://x/v1", "api_key_secret": "llm-key", "models": [MINI]}, "name"),
    ({"name": "a b", "base_url": "http://x/v1", "api_key_secret": "llm-key", "models": [MINI]}, "name"),
    ({"name": "local", "base_url": 5, "api_key_secret": "llm-key", "models": [MINI]}, "base_url"),
    ({"name": "local", "base_url": "http://x/v1", "api_key_secret": "a key", "models": [MINI]}, "api_key_secret"),
    ({"name": "local", "base_url": "http://x/v1", "api_key_secret": "llm-key", "models": []}, "models"),
    ({"name": "local", "base_url": "http://x/v1", "api_key_secret": "llm-key",
      "models": [{**MINI, "input_price": "cheap"}]}, "models"),
    ({"name": "local", "base_url": "http://x/v1", "api_key_secret": "llm-key",
      "models": [{**MINI, "context_window": -1}]}, "models"),
])
def test_a_malformed_endpoint_is_a_400_naming_the_field(api, keys, body, field):
    response = api.post("/api/v1/model-endpoints/", body, format="json")
    assert response.status_code == 400 and response.json()[field], response.content


@pytest.mark.parametrize("body, message", [
    ({"base_url": "gopher://x/v1"}, "base_url: an http or https URL is required"),
    ({"models": [MINI, MINI]}, "models[1].model: 'hil-local-chat' is listed twice"),
])
def test_settings_the_service_refuses_are_a_400_naming_the_field(api, keys, llm_server, body, message):
    body = {"name": "local", "base_url": llm_server.base_url, "api_key_secret": "llm-key", "models": [MINI], **body}
    response = api.post("/api/v1/model-endpoints/", body, format="json")
    assert response.status_code == 400 and message in response.json()["detail"]


def test_a_malformed_profile_is_a_400_naming_the_field(api, endpoint):
    responses = [api.post("/api/v1/model-profiles/", {"name": "fast", "entries": []}, format="json"),
                 api.post("/api/v1/model-profiles/", {"name": "fast", "entries": [{"endpoint": "local"}]},
                          format="json"),
                 api.post("/api/v1/model-profiles/", {"entries": [{"endpoint": "local", "model": "x"}]}, format="json"),
                 api.post("/api/v1/model-profiles/", {"name": "fast", "entries": [{"endpoint": "local", "model": "x"}]},
                          format="json")]
    assert [r.status_code for r in responses] == [400] * 4
    assert responses[0].json()["entries"] and responses[1].json()["entries"] and responses[2].json()["name"]
    assert responses[3].json()["detail"] == ("entries[0].model: endpoint 'local' has no model 'x'; "
                                             "add it, with its prices, to the endpoint first")


@pytest.mark.parametrize("role", [Role.AGENT, Role.VIEWER])
def test_only_operators_and_admins_see_or_change_models(tenant, endpoint, member, client_for, llm_server, role):
    client = client_for(member(tenant, role=role)[1])
    body = {"name": "x", "base_url": llm_server.base_url, "api_key_secret": "llm-key", "models": [MINI]}
    responses = [client.get("/api/v1/model-endpoints/"), client.get("/api/v1/model-endpoints/local/"),
                 client.post("/api/v1/model-endpoints/", body, format="json"),
                 client.delete("/api/v1/model-endpoints/local/"), client.get("/api/v1/model-profiles/"),
                 client.get("/api/v1/llm-calls/")]
    assert [r.status_code for r in responses] == [403] * 6
    assert list(ModelEndpoint.objects.values_list("name", flat=True)) == ["local"]
    admin = client_for(member(tenant, role=Role.ADMIN)[1])
    assert admin.get("/api/v1/model-endpoints/").json()["results"][0]["name"] == "local"


def test_another_tenants_admin_can_neither_see_nor_use_endpoints_or_profiles(
        tenant, other_tenant, endpoint, member, client_for, llm_server):
    services.profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-chat")])
    globex = client_for(member(other_tenant, role=Role.ADMIN)[1])
    assert globex.get("/api/v1/model-endpoints/").json()["results"] == []
    assert globex.get("/api/v1/model-profiles/").json()["results"] == []
    assert [globex.get("/api/v1/model-endpoints/local/").status_code,
            globex.get("/api/v1/model-profiles/fast/").status_code,
            globex.put("/api/v1/model-endpoints/local/", {"base_url": llm_server.base_url, "api_key_secret": "llm-key",
                                                          "models": [MINI]}, format="json").status_code,
            globex.delete("/api/v1/model-profiles/fast/").status_code,
            globex.delete("/api/v1/model-endpoints/local/").status_code] == [404] * 5

    # Its profiles cannot name acme's endpoint, nor its endpoints acme's secret.
    planted = globex.post("/api/v1/model-profiles/", {"name": "fast", "entries": [
        {"endpoint": "local", "model": "hil-local-chat"}]}, format="json")
    assert planted.status_code == 400 and "tenant globex has no model endpoint 'local'" in planted.json()["detail"]
    with pytest.raises(ServiceError, match="tenant globex has no model endpoint 'local'"):
        services.profile_save(tenant=other_tenant, name="fast", entries=[("local", "hil-local-chat")])
    borrowed = globex.post("/api/v1/model-endpoints/", {"name": "mine", "base_url": llm_server.base_url,
                                                        "api_key_secret": "llm-key", "models": [MINI]}, format="json")
    assert borrowed.status_code == 400 and "secret 'llm-key' not found in tenant globex" in borrowed.json()["detail"]
    assert len(llm_server.requests) == 1  # acme's own test request; globex's never reached the endpoint

    assert ModelEndpoint.objects.get().tenant == tenant and ModelProfile.objects.get().tenant == tenant
    assert [e.endpoint_model.endpoint.tenant for e in ModelProfile.objects.get().entries.all()] == [tenant]


# --- the key is never shown ----------------------------------------------------------------------------


def test_no_response_error_or_log_line_holds_a_key(api, tenant, keys, llm_server, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx2")  # the `openai` client's requests, at WARNING in the settings
    body = {"name": "local", "base_url": llm_server.base_url, "api_key_secret": "stale-key", "models": [MINI]}
    responses = [api.post("/api/v1/model-endpoints/", body, format="json")]
    assert responses[-1].json()["detail"] == "401 from the endpoint: the API key was refused"
    responses.append(api.post("/api/v1/model-endpoints/", {**body, "api_key_secret": "llm-key"}, format="json"))
    assert responses[-1].status_code == 201
    responses += [api.get("/api/v1/model-endpoints/"), api.get("/api/v1/model-endpoints/local/")]
    errors = []
    drop_model_list(llm_server)  # through the 1-token completion too
    llm_server.script(wrong_key())
    for secret in ("stale-key", "llm-key"):  # refused by the server's key check, then by the script
        try:
            save(tenant, llm_server.base_url, secret=secret, name=f"via-{secret}")
        except EndpointCheckFailed as e:
            errors.append(str(e))
    assert errors == ["401 from the endpoint: the API key was refused"] * 2

    sent = [r.headers["authorization"] for r in llm_server.requests]
    assert f"Bearer {CANARY}" in sent and f"Bearer {LLM_TEST_KEY}" in sent  # the keys were used, and...
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "/v1/models" in logged and "/v1/chat/completions" in logged  # the requests were logged, and...
    assert not any(shows_a_key(text) for text in [*(r.content.decode() for r in responses), *errors, logged])
    assert not any(shows_a_key(str(e.old) + str(e.new)) for e in AuditEntry.objects.all())


@pytest.mark.parametrize("value", [CANARY + "\n", f" {CANARY}", CANARY.replace("-", "\n"), CANARY + "é"])
def test_a_key_that_cannot_be_sent_is_refused_without_quoting_it(tenant, llm_server, value):
    secret_set(tenant=tenant, name="pasted-key", value=value)
    with pytest.raises(ServiceError, match="^api_key_secret: the value of secret 'pasted-key' cannot be sent as an "
                                           "API key: it has spaces, line breaks or characters outside ASCII$") as no:
        save(tenant, llm_server.base_url, secret="pasted-key")
    assert "CANARY" not in str(no.value) and llm_server.requests == []


# --- model calls -----------------------------------------------------------------------------------------


def test_agent_settings_are_saved_with_an_audit_and_checked(tenant):
    # Whether a call's prompt is kept by these settings: agents/tests/test_router.py, through real calls.
    services.agent_settings_save(tenant=tenant, store_prompts=True, monthly_budget_usd=Decimal("50"),
                                 actor=user_ensure(username="ops"))
    assert AuditEntry.objects.get(action="agent_settings.update").new == {"store_prompts": True,
                                                                         "monthly_budget_usd": "50.00"}
    with pytest.raises(ServiceError, match="monthly_budget_usd: Ensure this value is greater than or equal to 0"):
        services.agent_settings_save(tenant=tenant, store_prompts=True, monthly_budget_usd=Decimal("-1"))
    assert AgentSettings.objects.get().monthly_budget_usd == Decimal("50")


def test_the_api_lists_the_tenants_calls_newest_first_and_by_run(api, tenant, other_tenant, endpoint, converse):
    _, run = converse(tenant)
    _, other_run = converse(tenant, turn_id="t2", text="again")
    LLMCall.objects.create(tenant=tenant, run=run, node_id="a", endpoint=endpoint, model="hil-local-chat",
                           outcome="ok", tokens_in=10, tokens_out=5, cost=Decimal("0.0000045"), latency_ms=120)
    LLMCall.objects.create(tenant=tenant, run=other_run, node_id="a", model="hil-offline-1", outcome="timeout",
                           error="timed out after 30 s")
    LLMCall.objects.create(tenant=other_tenant, model="hil-local-chat", outcome="ok")

    calls = api.get("/api/v1/llm-calls/").json()["results"]
    assert [(c["model"], c["outcome"], c["endpoint"]) for c in calls] == [
        ("hil-offline-1", "timeout", None), ("hil-local-chat", "ok", "local")]
    assert calls[1]["cost"] == "0.0000045000" and calls[1]["latency_ms"] == 120 and calls[1]["prompt"] is None
    by_run = api.get(f"/api/v1/llm-calls/?run={run.id}").json()["results"]
    assert [(c["run"], c["tokens_in"]) for c in by_run] == [(str(run.id), 10)]
    bad = api.get("/api/v1/llm-calls/?run=not-a-run")
    assert bad.status_code == 400 and bad.json()["run"]


# --- the admin -------------------------------------------------------------------------------------------


@pytest.fixture
def root(db):
    client = Client()
    verified_login(client, user_ensure(username="root", is_staff=True, is_superuser=True))
    return client


def endpoint_form(tenant, base_url, secret="llm-key", **extra):
    return {"tenant": tenant.pk, "name": "local", "base_url": base_url, "api_key_secret": secret, "enabled": "on",
            "models-TOTAL_FORMS": "1", "models-INITIAL_FORMS": "0", "models-MIN_NUM_FORMS": "1",
            "models-MAX_NUM_FORMS": "1000", "models-0-model": "hil-local-chat", "models-0-context_window": "128000",
            "models-0-input_price": "0.15", "models-0-output_price": "0.6", "models-0-cached_input_price": "",
            **extra}


def test_the_admin_add_page_shows_the_connection_error_in_the_form(root, tenant, keys, llm_server, closed_url):
    pages = [root.post("/admin/agents/modelendpoint/add/", endpoint_form(tenant, closed_url)),
             root.post("/admin/agents/modelendpoint/add/", endpoint_form(tenant, llm_server.base_url, "stale-key")),
             root.post("/admin/agents/modelendpoint/add/", endpoint_form(tenant, llm_server.base_url, "nope"))]
    assert [p.status_code for p in pages] == [200, 200, 200]  # the form again, with the error
    assert f"connection refused at {closed_url}" in pages[0].content.decode()
    assert "401 from the endpoint: the API key was refused" in pages[1].content.decode()
    assert "api_key_secret: secret &#x27;nope&#x27; not found" in pages[2].content.decode()
    assert not ModelEndpoint.objects.exists() and not any(shows_a_key(p.content.decode()) for p in pages)

    saved = root.post("/admin/agents/modelendpoint/add/", endpoint_form(tenant, llm_server.base_url))
    assert saved.status_code == 302
    endpoint = ModelEndpoint.objects.get()
    assert endpoint.models.get().input_price == Decimal("0.15")
    assert AuditEntry.objects.get(action="model_endpoint.create").actor.username == "root"
    page = root.get(f"/admin/agents/modelendpoint/{endpoint.pk}/change/").content.decode()
    assert "hil-local-chat" in page and not shows_a_key(page)


def test_the_admin_changes_an_endpoint_and_its_models_through_the_service(root, tenant, keys, llm_server, endpoint):
    chat, embed = endpoint.models.get(model="hil-local-chat"), endpoint.models.get(model="hil-local-embed")
    form = endpoint_form(tenant, llm_server.base_url, **{
        "models-TOTAL_FORMS": "2", "models-INITIAL_FORMS": "2", "models-0-id": chat.pk,
        "models-0-endpoint": endpoint.pk, "models-0-input_price": "0.25", "models-1-id": embed.pk,
        "models-1-endpoint": endpoint.pk,
        "models-1-model": "hil-local-embed", "models-1-context_window": "8192", "models-1-input_price": "0.02",
        "models-1-output_price": "0"})
    services.profile_save(tenant=tenant, name="fast", entries=[("local", "hil-local-embed")])
    page = root.post(f"/admin/agents/modelendpoint/{endpoint.pk}/change/", {**form, "models-1-DELETE": "on"})
    assert ("Deleting endpoint model local: hil-local-embed would require deleting the following protected related "
            "objects: profile entry 0. local: hil-local-embed") in page.content.decode()
    assert endpoint.models.get(model="hil-local-chat").input_price == Decimal("0.15")

    services.profile_delete(tenant=tenant, name="fast")
    page = root.post(f"/admin/agents/modelendpoint/{endpoint.pk}/change/", {**form, "models-1-DELETE": "on"})
    assert page.status_code == 302, page.content.decode()
    assert list(endpoint.models.values_list("model", "input_price")) == [("hil-local-chat", Decimal("0.25"))]
    assert AuditEntry.objects.get(action="model_endpoint.update").actor.username == "root"


def test_the_admin_saves_agent_settings_through_the_service(root, tenant):
    assert root.post("/admin/agents/agentsettings/add/", {"tenant": tenant.pk, "store_prompts": "on",
                                                          "monthly_budget_usd": "120.50"}).status_code == 302
    assert AgentSettings.objects.values_list("store_prompts", "monthly_budget_usd").get() == (True, Decimal("120.50"))
    assert AuditEntry.objects.get(action="agent_settings.update").new == {"store_prompts": True,
                                                                         "monthly_budget_usd": "120.50"}


def test_the_admin_saves_a_profile_through_the_service(root, tenant, endpoint):
    chat, embed = endpoint.models.get(model="hil-local-chat"), endpoint.models.get(model="hil-local-embed")
    form = {"tenant": tenant.pk, "name": "fast", "entries-TOTAL_FORMS": "2", "entries-INITIAL_FORMS": "0",
            "entries-MIN_NUM_FORMS": "1", "entries-MAX_NUM_FORMS": "1000",
            "entries-0-position": "2", "entries-0-endpoint_model": chat.pk,
            "entries-1-position": "1", "entries-1-endpoint_model": embed.pk}
    assert root.post("/admin/agents/modelprofile/add/", form).status_code == 302
    profile = ModelProfile.objects.get()
    assert [e.endpoint_model.model for e in profile.entries.all()] == ["hil-local-embed", "hil-local-chat"]
    assert AuditEntry.objects.get(action="model_profile.create").actor.username == "root"


def test_the_admin_refuses_a_profile_of_another_tenants_models(root, tenant, other_tenant, endpoint):
    form = {"tenant": other_tenant.pk, "name": "fast", "entries-TOTAL_FORMS": "1", "entries-INITIAL_FORMS": "0",
            "entries-MIN_NUM_FORMS": "1", "entries-MAX_NUM_FORMS": "1000",
            "entries-0-position": "0", "entries-0-endpoint_model": endpoint.models.first().pk}
    page = root.post("/admin/agents/modelprofile/add/", form)
    assert page.status_code == 200 and "tenant globex has no model endpoint &#x27;local&#x27;" in page.content.decode()
    assert not ModelProfile.objects.exists()


def test_a_staff_member_sees_only_their_tenants_models_calls_and_cached_answers(tenant, other_tenant, endpoint, llm_server):
    secret_set(tenant=other_tenant, name="llm-key", value=LLM_TEST_KEY)
    theirs = save(other_tenant, llm_server.base_url, name="globex-endpoint",
                  models=({**MINI, "model": "hil-local-embed"},))
    LLMCall.objects.create(tenant=tenant, endpoint=endpoint, model="acme-model", outcome="ok")
    LLMCall.objects.create(tenant=other_tenant, endpoint=theirs, model="globex-model", outcome="rate_limited")
    user = user_ensure(username="ops", is_staff=True)
    membership_set(tenant=tenant, user=user, role=Role.ADMIN)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="agents"))
    client = Client()
    verified_login(client, user)

    listed = client.get("/admin/agents/modelendpoint/").content.decode()
    assert ">local<" in listed and "globex-endpoint" not in listed
    assert client.get(f"/admin/agents/modelendpoint/{theirs.pk}/change/").status_code == 302  # as for a wrong id
    choices = re.search(r'<select name="entries-0-endpoint_model".*?</select>',
                        client.get("/admin/agents/modelprofile/add/").content.decode(), re.S)[0]
    assert "acme / local: hil-local-chat" in choices and "globex" not in choices

    calls = client.get("/admin/agents/llmcall/")
    assert [c.model for c in calls.context["cl"].result_list] == ["acme-model"]
    assert "globex-model" not in calls.content.decode()  # nor among the filters' choices
    assert list(client.get("/admin/agents/llmcall/?outcome__exact=ok").context["cl"].result_list) == list(
        LLMCall.objects.filter(tenant=tenant))
    assert list(client.get("/admin/agents/llmcall/?outcome__exact=rate_limited").context["cl"].result_list) == []
    assert client.get("/admin/agents/llmcall/add/").status_code == 403
    assert LLMCall.objects.count() == 2

    answers = {t: CachedAnswer.objects.create(
        tenant=t, scope="s", request_hash=f"r{t.pk}", context_hash="c", answer=f"{t.slug}'s answer", model="m",
        cost="0.0001", expires_at=timezone.now() + timedelta(hours=1)) for t in (tenant, other_tenant)}
    page = client.get("/admin/agents/cachedanswer/")
    assert [a.answer for a in page.context["cl"].result_list] == [f"{tenant.slug}'s answer"]
    assert f"{other_tenant.slug}'s answer" not in page.content.decode()
    assert client.get("/admin/agents/cachedanswer/add/").status_code == 403
    assert f"{tenant.slug}&#x27;s answer" in client.get(
        f"/admin/agents/cachedanswer/{answers[tenant].pk}/change/").content.decode()
    assert client.post(f"/admin/agents/cachedanswer/{answers[other_tenant].pk}/delete/", {"post": "yes"}).status_code == 302
    assert CachedAnswer.objects.filter(pk=answers[other_tenant].pk).exists()  # not theirs: as for a wrong id
    client.post(f"/admin/agents/cachedanswer/{answers[tenant].pk}/delete/", {"post": "yes"})
    assert list(CachedAnswer.objects.values_list("tenant", flat=True)) == [other_tenant.pk]
