from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path

from .models import ApiToken, AuditEntry, Membership, Tenant


class TenantScopedAdmin(admin.ModelAdmin):
    """Shows a member only the rows of the tenants they belong to, and offers only those in forms and
    filters; a superuser sees everything. `tenant_path` leads from the model to its tenant."""

    tenant_path = "tenant"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.tenant_path}__in": _member_tenants(request.user)})

    def get_list_filter(self, request):
        # A plain related filter lists every tenant (every workflow, ...); this one only those in the rows shown.
        return [(f, admin.RelatedOnlyFieldListFilter)
                if isinstance(f, str) and get_fields_from_path(self.model, f)[-1].is_relation else f
                for f in super().get_list_filter(request)]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        related = db_field.related_model
        if not request.user.is_superuser:
            if related is Tenant:
                kwargs["queryset"] = _member_tenants(request.user)
            elif any(f.name == "tenant" for f in related._meta.fields):
                kwargs["queryset"] = related.objects.filter(tenant__in=_member_tenants(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def _member_tenants(user):
    return Tenant.objects.filter(memberships__user=user)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_path = "pk"
    list_display = ["slug", "name", "approval_timeout_s", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ["user", "tenant", "role"]
    list_filter = ["tenant", "role"]


@admin.register(ApiToken)
class ApiTokenAdmin(TenantScopedAdmin):
    """Tokens are created with `manage.py hil_token` (the key is shown once); here they are revoked."""

    list_display = ["prefix", "name", "tenant", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tenant"]
    readonly_fields = ["tenant", "user", "name", "prefix", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        from .services import api_token_revoke

        for token in queryset:
            api_token_revoke(token=token)


@admin.register(AuditEntry)
class AuditEntryAdmin(TenantScopedAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id"]
    list_filter = ["tenant", "action", "object_type", "actor", "created_at"]
    search_fields = ["action", "object_id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
