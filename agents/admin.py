"""Model endpoints, profiles, settings and calls in the admin. Saving goes through agents/services.py;
what a save would refuse (an endpoint that does not answer, a model of another tenant) is checked while
the form is validated, so that the refusal shows in the form."""

from django import forms
from django.contrib import admin
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.forms.models import BaseInlineFormSet

from accounts.admin import TenantScopedAdmin
from accounts.models import Tenant
from core.errors import ServiceError

from . import services
from .models import AgentSettings, CachedAnswer, EndpointModel, LLMCall, ModelEndpoint, ModelProfile, ProfileEntry


class ServiceSavedAdmin(TenantScopedAdmin):
    """An admin whose rows, with their inline rows, are written by a service in `save_related`; the inline
    formset checks what the service would refuse once the main form is valid (`form_is_valid`)."""

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "name"] if obj else []  # what the service finds the row by

    def save_form(self, request, form, change):
        # Called once the main form is valid and before the inline formsets are validated.
        obj = super().save_form(request, form, change)
        obj.form_is_valid = True
        return obj

    def save_model(self, request, obj, form, change):
        pass  # written with its inline rows by save_related

    def construct_change_message(self, request, form, formsets, add):
        return super().construct_change_message(request, form, [], add)  # the formsets were not saved by Django

    @staticmethod
    def kept_rows(formset) -> list[dict]:
        return [f.cleaned_data for f in formset.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]


class ServiceCheckedFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        if not any(self.errors) and getattr(self.instance, "form_is_valid", False):
            try:
                self.check(ServiceSavedAdmin.kept_rows(self))
            except ServiceError as e:
                raise forms.ValidationError(str(e)) from None

    def check(self, rows: list[dict]) -> None:
        raise NotImplementedError


class EndpointModelFormSet(ServiceCheckedFormSet):
    def check(self, rows):
        endpoint = self.instance
        services.endpoint_check(tenant=endpoint.tenant, name=endpoint.name, base_url=endpoint.base_url,
                                api_key_secret=endpoint.api_key_secret, enabled=endpoint.enabled,
                                models=[{f: row[f] for f in services.MODEL_FIELDS} for row in rows])


class EndpointModelInline(admin.TabularInline):
    model = EndpointModel
    formset = EndpointModelFormSet
    fields = services.MODEL_FIELDS
    extra = 0
    min_num = 1


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(ServiceSavedAdmin):
    """Saving an enabled endpoint first tests it with its key (its model list, or a 1-token completion);
    a failure shows in the form and nothing is saved."""

    list_display = ["name", "tenant", "base_url", "api_key_secret", "enabled", "updated_at"]
    list_filter = ["tenant", "enabled"]
    search_fields = ["name", "base_url"]
    fields = ["tenant", "name", "base_url", "api_key_secret", "enabled"]
    inlines = [EndpointModelInline]

    def save_related(self, request, form, formsets, change):
        endpoint = form.instance
        saved = services.endpoint_save(
            tenant=endpoint.tenant, name=endpoint.name, base_url=endpoint.base_url,
            api_key_secret=endpoint.api_key_secret, enabled=endpoint.enabled, actor=request.user,
            models=[{f: row[f] for f in services.MODEL_FIELDS} for row in self.kept_rows(formsets[0])])
        endpoint.pk = saved.pk

    def delete_model(self, request, obj):
        services.endpoint_delete(tenant=obj.tenant, name=obj.name, actor=request.user)

    def delete_queryset(self, request, queryset):
        for endpoint in queryset.select_related("tenant"):
            services.endpoint_delete(tenant=endpoint.tenant, name=endpoint.name, actor=request.user)


class ProfileEntryFormSet(ServiceCheckedFormSet):
    def check(self, rows):
        services.profile_entries_resolve(tenant=self.instance.tenant, entries=entries_of(rows))


def entries_of(rows: list[dict]) -> list[tuple[str, str]]:
    rows = sorted(rows, key=lambda row: row["position"])  # stable: rows of one position keep the form's order
    return [(row["endpoint_model"].endpoint.name, row["endpoint_model"].model) for row in rows]


class ProfileEntryInline(admin.TabularInline):
    model = ProfileEntry
    formset = ProfileEntryFormSet
    fields = ["position", "endpoint_model"]
    extra = 0
    min_num = 1

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "endpoint_model":
            models = EndpointModel.objects.select_related("endpoint__tenant")
            if not request.user.is_superuser:
                models = models.filter(endpoint__tenant__in=Tenant.objects.filter(memberships__user=request.user))
            kwargs["queryset"] = models
            field = super().formfield_for_foreignkey(db_field, request, **kwargs)
            field.label_from_instance = lambda m: f"{m.endpoint.tenant.slug} / {m}"  # one may see several tenants
            return field
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(ModelProfile)
class ModelProfileAdmin(ServiceSavedAdmin):
    """A profile's models are tried in the order of their positions. Agents that name a profile this
    tenant has not defined use the offline model."""

    list_display = ["name", "tenant", "updated_at"]
    list_filter = ["tenant"]
    search_fields = ["name"]
    fields = ["tenant", "name"]
    inlines = [ProfileEntryInline]

    def save_related(self, request, form, formsets, change):
        profile = form.instance
        saved = services.profile_save(tenant=profile.tenant, name=profile.name,
                                      entries=entries_of(self.kept_rows(formsets[0])), actor=request.user)
        profile.pk = saved.pk

    def delete_model(self, request, obj):
        services.profile_delete(tenant=obj.tenant, name=obj.name, actor=request.user)

    def delete_queryset(self, request, queryset):
        for profile in queryset.select_related("tenant"):
            services.profile_delete(tenant=profile.tenant, name=profile.name, actor=request.user)


@admin.register(AgentSettings)
class AgentSettingsAdmin(TenantScopedAdmin):
    list_display = ["tenant", "store_prompts", "monthly_budget_usd", "updated_at"]
    fields = ["tenant", "store_prompts", "monthly_budget_usd"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant"] if obj else []

    def save_model(self, request, obj, form, change):
        obj.pk = services.agent_settings_save(tenant=obj.tenant, store_prompts=obj.store_prompts,
                                              monthly_budget_usd=obj.monthly_budget_usd, actor=request.user).pk


@admin.register(LLMCall)
class LLMCallAdmin(TenantScopedAdmin):
    """The record of model calls: read only."""

    list_display = ["created_at", "tenant", "model", "profile", "endpoint", "outcome", "tokens_in", "tokens_out",
                    "cost", "latency_ms", "cache", "node_id"]
    list_filter = ["tenant", "outcome", "model", "created_at"]
    list_select_related = ["tenant", "endpoint"]
    date_hierarchy = "created_at"
    search_fields = ["node_id", "error"]
    readonly_fields = [f.name for f in LLMCall._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # what was spent stays on record


@admin.register(CachedAnswer)
class CachedAnswerAdmin(TenantScopedAdmin):
    """The router's cached answers (agents/cache.py): to look at, and to delete one that should not be served
    again (a wrong answer, or one given before a prompt changed)."""

    list_display = ["created_at", "tenant", "model", "short_answer", "cost", "semantic", "expires_at"]
    list_filter = ["tenant", "model", "created_at"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    search_fields = ["answer"]
    readonly_fields = ["tenant", "model", "answer", "data", "cost", "scope", "created_at", "expires_at"]
    fields = readonly_fields

    @admin.display(description="answer")
    def short_answer(self, obj: CachedAnswer) -> str:
        return obj.answer if len(obj.answer) <= 80 else obj.answer[:79] + "…"

    @admin.display(boolean=True, description="semantic")
    def semantic(self, obj: CachedAnswer) -> bool:
        return obj.semantic

    def get_queryset(self, request):  # not the 384 floats of each embedding, only whether there is one
        return super().get_queryset(request).defer("embedding").annotate(
            semantic=ExpressionWrapper(Q(embedding__isnull=False), output_field=BooleanField()))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
