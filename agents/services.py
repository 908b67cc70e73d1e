"""Model endpoints, profiles, the tenant's agent settings and the record of model calls.

An enabled endpoint is saved only after a real request to it succeeded, with its key, so that a wrong URL or
key is reported when it is entered rather than at a run's first model call. A key is read from the tenant's
secrets for that request only: it is never stored here, logged, or put in an error message."""

import socket
import ssl
from decimal import Decimal
from urllib.parse import urlsplit

import openai
from django.core.exceptions import ValidationError
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from accounts.models import Tenant
from accounts.services import audit_record
from core.errors import NotFound, SecretNotFound, SecretUnreadable, ServiceError
from tools.services import secret_value

from . import router
from .models import AgentSettings, EndpointModel, ModelEndpoint, ModelProfile, ProfileEntry

CHECK_TIMEOUT_S = 5
MODEL_FIELDS = ("model", "context_window", "input_price", "output_price", "cached_input_price", "supports_json_schema")
MAX_MODELS = 200
MAX_ENTRIES = 50


class EndpointCheckFailed(ServiceError):
    """The request that tests an endpoint before it is saved did not succeed; the message says why."""


# --- endpoints ------------------------------------------------------------------------------------------


def endpoint_check(*, tenant: Tenant, name: str, base_url: str, api_key_secret: str, models: list[dict],
                   enabled: bool = True) -> list[dict]:
    """Everything `endpoint_save` checks before it writes, the request to the endpoint included (when enabled):
    a ServiceError naming the field, or EndpointCheckFailed. Returns the models, cleaned."""
    if not isinstance(enabled, bool):
        raise ServiceError("enabled: true or false")
    _check_field(ModelEndpoint, "name", name)
    _check_base_url(base_url)
    _check_field(ModelEndpoint, "api_key_secret", api_key_secret)
    models = _clean_models(models)
    if enabled:  # a disabled endpoint is saved untested: disabling one must work while it is down
        _test_connection(tenant=tenant, base_url=base_url, api_key_secret=api_key_secret, model=models[0]["model"])
    return models


def _config_changed(tenant: Tenant) -> None:
    """Routers everywhere read the tenant's models again: now, and once more after commit, so that none
    keeps what it read in between."""
    router.config_changed(tenant.pk)
    transaction.on_commit(lambda: router.config_changed(tenant.pk))


def endpoint_save(*, tenant: Tenant, name: str, base_url: str, api_key_secret: str, models: list[dict],
                  enabled: bool = True, actor=None) -> ModelEndpoint:
    """Create the tenant's endpoint `name`, or replace its settings and its models (by model id: the models not
    listed are removed, unless a profile uses one). `models` are dicts of MODEL_FIELDS
    (`cached_input_price` and `supports_json_schema` optional), prices in USD per 1M tokens.
    An enabled endpoint is first tested, before the transaction (no lock is held while it waits):
    GET <base_url>/models with the key from the secret `api_key_secret`, or a 1-token chat completion from
    the first model if the endpoint lists no models; it is saved only if that succeeds."""
    models = endpoint_check(tenant=tenant, name=name, base_url=base_url, api_key_secret=api_key_secret,
                            models=models, enabled=enabled)
    with transaction.atomic():
        _config_changed(tenant)
        endpoint = ModelEndpoint.objects.select_for_update().filter(tenant=tenant, name=name).first()
        old = _endpoint_state(endpoint) if endpoint else None
        if endpoint is None:
            endpoint = ModelEndpoint.objects.create(tenant=tenant, name=name, base_url=base_url,
                                                    api_key_secret=api_key_secret, enabled=enabled)
        else:
            endpoint.base_url, endpoint.api_key_secret, endpoint.enabled = base_url, api_key_secret, enabled
            endpoint.save()
        existing = {m.model: m for m in endpoint.models.all()}
        wanted = {m["model"] for m in models}
        removed = [m for key, m in existing.items() if key not in wanted]
        in_use = ProfileEntry.objects.filter(endpoint_model__in=removed).select_related("profile", "endpoint_model")
        if in_use:
            uses = ", ".join(sorted({f"'{e.endpoint_model.model}' (profile '{e.profile.name}')" for e in in_use}))
            raise ServiceError(f"models: {uses} cannot be removed while a profile uses it; "
                               f"take it out of the profile first")
        EndpointModel.objects.filter(pk__in=[m.pk for m in removed]).delete()
        for fields in models:
            EndpointModel.objects.update_or_create(endpoint=endpoint, model=fields["model"], defaults=fields)
        new = _endpoint_state(endpoint)
        if actor is not None and old != new:
            audit_record(tenant_id=tenant.pk, actor=actor, action="model_endpoint.create" if old is None else
                         "model_endpoint.update", obj=endpoint, old=old, new=new)
    return endpoint


@transaction.atomic
def endpoint_delete(*, tenant: Tenant, name: str, actor=None) -> None:
    _config_changed(tenant)
    endpoint = ModelEndpoint.objects.select_for_update().filter(tenant=tenant, name=name).first()
    if endpoint is None:
        raise NotFound(f"no model endpoint '{name}' in tenant {tenant.slug}")
    profiles = sorted(set(ProfileEntry.objects.filter(endpoint_model__endpoint=endpoint)
                          .values_list("profile__name", flat=True)))
    if profiles:
        raise ServiceError(f"model endpoint '{name}' is used by the profiles {', '.join(profiles)}; "
                           f"take its models out of them first")
    if actor is not None:
        audit_record(tenant_id=tenant.pk, actor=actor, action="model_endpoint.delete", obj=endpoint,
                     old=_endpoint_state(endpoint))
    endpoint.delete()


def _endpoint_state(endpoint: ModelEndpoint) -> dict:
    """The endpoint as audit rows show it (prices as strings: JSON has no decimals)."""
    return {"name": endpoint.name, "base_url": endpoint.base_url, "api_key_secret": endpoint.api_key_secret,
            "enabled": endpoint.enabled,
            "models": [{f: str(v) if isinstance(v, Decimal) else v for f, v in m.items()}
                       for m in endpoint.models.order_by("model").values(*MODEL_FIELDS)]}


def _check_field(model, field: str, value) -> None:
    """`value` passes the field's own validators (a slug, a length), or a ServiceError names the field."""
    try:
        if not isinstance(value, str) or not value:
            raise ValidationError("this field is required")
        model._meta.get_field(field).run_validators(value)
    except ValidationError as e:
        raise ServiceError(f"{field}: {' '.join(e.messages)}") from None


def _check_base_url(base_url) -> None:
    def refuse(why: str):
        raise ServiceError(f"base_url: {why}")

    if not isinstance(base_url, str) or not base_url:
        refuse("this field is required")
    if len(base_url) > ModelEndpoint._meta.get_field("base_url").max_length:
        refuse(f"at most {ModelEndpoint._meta.get_field('base_url').max_length} characters")
    if any(c.isspace() or not c.isprintable() for c in base_url):
        refuse("no spaces or control characters")
    try:
        parts = urlsplit(base_url)
        port, host = parts.port, parts.hostname  # .port raises on one out of range
        if host:
            host.encode("idna")  # raises on a name that cannot be looked up: an empty label, one too long
    except ValueError:  # UnicodeError is one
        refuse(f"'{base_url}' is not a valid URL")
    if parts.scheme not in ("http", "https") or not host:
        refuse("an http or https URL is required, e.g. https://api.openai.com/v1")
    if port == 0:
        refuse("port 0 is not a port")
    if parts.username is not None or parts.password is not None:
        refuse("must not hold credentials: put the key in a secret and name it in api_key_secret")
    if parts.query or parts.fragment:
        refuse("must have no query (?...) or fragment (#...)")


def _clean_models(models) -> list[dict]:
    if not isinstance(models, (list, tuple)) or not models:
        raise ServiceError("models: an endpoint needs at least one model")
    if len(models) > MAX_MODELS:
        raise ServiceError(f"models: at most {MAX_MODELS}")
    cleaned, seen = [], set()
    for i, fields in enumerate(models):
        if not isinstance(fields, dict):
            raise ServiceError(f"models[{i}]: an object with {', '.join(MODEL_FIELDS)}")
        if unknown := sorted(set(fields) - set(MODEL_FIELDS)):
            raise ServiceError(f"models[{i}]: unknown field '{unknown[0]}'")
        fields = {"cached_input_price": None, "supports_json_schema": False, **fields}
        if not isinstance(fields.get("model"), str):
            raise ServiceError(f"models[{i}].model: a string is required")
        if not isinstance(fields["supports_json_schema"], bool):
            raise ServiceError(f"models[{i}].supports_json_schema: true or false")
        if not isinstance(fields.get("context_window"), int) or isinstance(fields["context_window"], bool):
            raise ServiceError(f"models[{i}].context_window: a whole number of tokens is required")
        for field in ("input_price", "output_price", "cached_input_price"):
            if isinstance(fields.get(field), bool):
                raise ServiceError(f"models[{i}].{field}: a number is required")
            if isinstance(fields.get(field), float):  # as written, not as the nearest binary fraction
                fields[field] = Decimal(repr(fields[field]))
        row = EndpointModel(**fields)
        try:
            row.full_clean(exclude=["endpoint"], validate_unique=False, validate_constraints=False)
        except ValidationError as e:
            field, messages = next(iter(e.message_dict.items()))
            raise ServiceError(f"models[{i}].{field}: {' '.join(messages)}") from None
        if row.model in seen:
            raise ServiceError(f"models[{i}].model: '{row.model}' is listed twice")
        seen.add(row.model)
        cleaned.append({f: getattr(row, f) for f in MODEL_FIELDS})
    return cleaned


@sensitive_variables("key")
def _test_connection(*, tenant: Tenant, base_url: str, api_key_secret: str, model: str) -> None:
    try:
        key = secret_value(tenant=tenant, name=api_key_secret)
    except SecretNotFound:
        raise ServiceError(f"api_key_secret: secret '{api_key_secret}' not found in tenant {tenant.slug}") from None
    except SecretUnreadable as e:
        raise ServiceError(f"api_key_secret: {e}") from None
    if not all("!" <= c <= "~" for c in key):  # else the HTTP client's error would quote the header, key and all
        raise ServiceError(f"api_key_secret: the value of secret '{api_key_secret}' cannot be sent as an API key: "
                           f"it has spaces, line breaks or characters outside ASCII")

    def failed(why: str):
        return EndpointCheckFailed(why.replace(key, "••••"))

    listing = f"GET {base_url.rstrip('/')}/models"
    try:
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=CHECK_TIMEOUT_S) as client:
            try:
                answer, asked = client.models.with_raw_response.list().http_response, listing
            except openai.NotFoundError:  # not every server lists its models: ask the first one for a token
                answer = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=1).http_response
                asked = f"a 1-token chat completion from '{model}' (the endpoint does not serve {listing})"
            body = _json_or_none(answer)
            if not isinstance(body, dict) or not isinstance(body.get("data" if asked == listing else "choices"), list):
                raise failed(f"the endpoint answered {asked} with something that is not an OpenAI-compatible "
                             f"answer: is base_url right? It often ends in /v1")
    except openai.APITimeoutError:
        raise failed(f"timed out after {CHECK_TIMEOUT_S} s waiting for {base_url}") from None
    except openai.APIConnectionError as e:
        raise failed(_connection_problem(e, base_url)) from None
    except openai.AuthenticationError:
        raise failed("401 from the endpoint: the API key was refused") from None
    except openai.APIStatusError as e:
        hint = " (is base_url right? It often ends in /v1)" if e.status_code == 404 else ""
        raise failed(f"{e.status_code} from the endpoint{hint}: {_provider_message(e)}") from None
    except openai.APIError as e:
        raise failed(f"unexpected answer from the endpoint: {type(e).__name__}") from None
    except ValueError as e:  # a URL that passed our checks but not the HTTP client's
        raise ServiceError(f"base_url: '{base_url}' is not a URL the client can use ({e})") from None


def _json_or_none(response):
    try:
        return response.json()
    except ValueError:
        return None


def _connection_problem(error: Exception, base_url: str) -> str:
    """What the innermost cause of a connection error says, in words an operator acts on."""
    cause, innermost, seen = error, error, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused at {base_url}"
        if isinstance(cause, socket.gaierror):
            return f"cannot connect to {base_url}: its host name does not resolve ({cause.strerror})"
        if isinstance(cause, ssl.SSLError):
            return f"cannot connect to {base_url}: TLS failed ({cause.reason or cause})"
        innermost, cause = cause, cause.__cause__ or cause.__context__
    return f"cannot connect to {base_url}: {innermost}"


def _provider_message(error: openai.APIStatusError) -> str:
    """The error's message when the endpoint sent one as OpenAI does; only that, and shortened: an endpoint
    that is not one (a web page at a wrong URL) is not repeated."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return message[:300] if isinstance(message, str) and message else "no error message"


# --- profiles -------------------------------------------------------------------------------------------


def profile_entries_resolve(*, tenant: Tenant, entries) -> list[EndpointModel]:
    """The tenant's models for `entries`, [(endpoint name, model id), ...] in order; a ServiceError naming the
    entry for one that the tenant does not have (an endpoint of another tenant is not found either)."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ServiceError("entries: a profile needs at least one model")
    if len(entries) > MAX_ENTRIES:
        raise ServiceError(f"entries: at most {MAX_ENTRIES}")
    resolved = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(p, str) for p in entry)):
            raise ServiceError(f"entries[{i}]: an endpoint's name and one of its models")
        endpoint_name, model = entry
        found = EndpointModel.objects.select_related("endpoint").filter(
            endpoint__tenant=tenant, endpoint__name=endpoint_name, model=model).first()
        if found is None:
            if not ModelEndpoint.objects.filter(tenant=tenant, name=endpoint_name).exists():
                raise ServiceError(f"entries[{i}].endpoint: tenant {tenant.slug} has no model endpoint "
                                   f"'{endpoint_name}'")
            raise ServiceError(f"entries[{i}].model: endpoint '{endpoint_name}' has no model '{model}'; "
                               f"add it, with its prices, to the endpoint first")
        if found in resolved:
            raise ServiceError(f"entries[{i}]: '{endpoint_name}' '{model}' is listed twice")
        resolved.append(found)
    return resolved


@transaction.atomic
def profile_save(*, tenant: Tenant, name: str, entries, actor=None) -> ModelProfile:
    """Create the tenant's profile `name`, or replace its models: `entries` is [(endpoint name, model id), ...],
    tried in that order. Models of the tenant's endpoints only."""
    _config_changed(tenant)
    _check_field(ModelProfile, "name", name)
    models = profile_entries_resolve(tenant=tenant, entries=entries)
    profile = ModelProfile.objects.select_for_update().filter(tenant=tenant, name=name).first()
    old = _profile_state(profile) if profile else None
    if profile is None:
        profile = ModelProfile.objects.create(tenant=tenant, name=name)
    else:
        profile.entries.all().delete()
        profile.save(update_fields=["updated_at"])
    ProfileEntry.objects.bulk_create(ProfileEntry(profile=profile, endpoint_model=m, position=i)
                                     for i, m in enumerate(models))
    new = _profile_state(profile)
    if actor is not None and old != new:
        audit_record(tenant_id=tenant.pk, actor=actor, action="model_profile.create" if old is None else
                     "model_profile.update", obj=profile, old=old, new=new)
    return profile


@transaction.atomic
def profile_delete(*, tenant: Tenant, name: str, actor=None) -> None:
    _config_changed(tenant)
    profile = ModelProfile.objects.select_for_update().filter(tenant=tenant, name=name).first()
    if profile is None:
        raise NotFound(f"no model profile '{name}' in tenant {tenant.slug}")
    if actor is not None:
        audit_record(tenant_id=tenant.pk, actor=actor, action="model_profile.delete", obj=profile,
                     old=_profile_state(profile))
    profile.delete()


def _profile_state(profile: ModelProfile) -> dict:
    return {"name": profile.name, "entries": [[e.endpoint_model.endpoint.name, e.endpoint_model.model] for e in
                                              profile.entries.select_related("endpoint_model__endpoint")]}


# --- settings and the record of calls -----------------------------------------------------------------


def agent_settings_get(*, tenant: Tenant) -> AgentSettings:
    """The tenant's settings; the defaults (unsaved) when it has none."""
    return AgentSettings.objects.filter(tenant=tenant).first() or AgentSettings(tenant=tenant)


@transaction.atomic
def agent_settings_save(*, tenant: Tenant, store_prompts: bool, monthly_budget_usd: Decimal | None,
                        actor=None) -> AgentSettings:
    _config_changed(tenant)
    settings = AgentSettings.objects.select_for_update().filter(tenant=tenant).first()
    old = _settings_state(settings) if settings else None
    settings = settings or AgentSettings(tenant=tenant)
    settings.store_prompts, settings.monthly_budget_usd = store_prompts, monthly_budget_usd
    try:
        settings.full_clean(exclude=["tenant"], validate_unique=False)
    except ValidationError as e:
        field, messages = next(iter(e.message_dict.items()))
        raise ServiceError(f"{field}: {' '.join(messages)}") from None
    settings.save()
    if actor is not None and old != _settings_state(settings):
        audit_record(tenant_id=tenant.pk, actor=actor, action="agent_settings.update", obj=settings, old=old,
                     new=_settings_state(settings))
    return settings


def _settings_state(settings: AgentSettings) -> dict:
    budget = settings.monthly_budget_usd
    return {"store_prompts": settings.store_prompts, "monthly_budget_usd": None if budget is None else f"{budget:.2f}"}
