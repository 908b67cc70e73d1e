from django import forms
from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from accounts.admin import TenantScopedAdmin

from .models import Secret, ToolCall
from .services import secret_delete, secret_set


@admin.register(ToolCall)
class ToolCallAdmin(TenantScopedAdmin):
    list_display = ["tool", "run", "node_id", "idempotency_key", "created_at"]
    list_filter = ["tenant", "tool"]
    readonly_fields = [f.name for f in ToolCall._meta.fields]


class SecretForm(forms.ModelForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False), strip=False, required=False,
        help_text="Write-only: it is never shown again. To keep the current value, leave it empty.")

    class Meta:
        model = Secret
        fields = ["tenant", "name"]

    def clean_value(self):
        value = self.cleaned_data["value"]
        if not value and self.instance.pk is None:
            raise forms.ValidationError("A new secret needs a value.")
        if len(value.encode()) > Secret.MAX_VALUE_BYTES:
            raise forms.ValidationError(f"At most {Secret.MAX_VALUE_BYTES} bytes (UTF-8).")
        return value


@admin.register(Secret)
class SecretAdmin(TenantScopedAdmin):
    """Secrets are set here or with the API, and shown only as •••• and their last 4 characters. A secret is
    not renamed: its ciphertext is bound to its name (delete it and set it under the new one)."""

    form = SecretForm
    list_display = ["name", "tenant", "shown_value", "updated_at"]
    list_filter = ["tenant"]
    search_fields = ["name"]

    @admin.display(description="value")
    def shown_value(self, obj):
        return obj.masked

    def get_fields(self, request, obj=None):
        return ["tenant", "name", "shown_value", "updated_at", "value"] if obj else ["tenant", "name", "value"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "name", "shown_value", "updated_at"] if obj else []

    @method_decorator(sensitive_post_parameters("value"))
    def changeform_view(self, request, *args, **kwargs):
        return super().changeform_view(request, *args, **kwargs)

    def save_model(self, request, obj, form, change):
        if form.cleaned_data["value"]:
            obj.pk = secret_set(tenant=obj.tenant, name=obj.name, value=form.cleaned_data["value"],
                                actor=request.user).pk
            obj.refresh_from_db()

    def delete_model(self, request, obj):
        secret_delete(tenant=obj.tenant, name=obj.name, actor=request.user)

    def delete_queryset(self, request, queryset):
        for secret in queryset.select_related("tenant"):
            secret_delete(tenant=secret.tenant, name=secret.name, actor=request.user)
