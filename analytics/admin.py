from django.contrib import admin, messages

from accounts.admin import TenantScopedAdmin

from . import slos
from .models import Alert, Slo, WorkflowKpi


class WorkflowScopedAdmin(TenantScopedAdmin):
    """The row's tenant is its workflow's: chosen once, never at odds."""

    def save_model(self, request, obj, form, change):
        obj.tenant_id = obj.workflow.tenant_id
        super().save_model(request, obj, form, change)


@admin.register(Slo)
class SloAdmin(WorkflowScopedAdmin):
    """SLOs from a live spec (`slos:`) follow the spec: change them there."""

    list_display = ["workflow", "metric", "objective", "source", "enabled", "tenant"]
    list_filter = ["tenant", "source", "enabled", "metric"]
    fields = ["workflow", "metric", "objective", "enabled", "source"]
    readonly_fields = ["source"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.source == Slo.Source.SPEC:
            return ["workflow", "metric", "objective", "enabled", "source"]
        return self.readonly_fields


@admin.register(Alert)
class AlertAdmin(TenantScopedAdmin):
    list_display = ["slo", "severity", "state", "opened_at", "resolved_at", "burn", "acknowledged_by", "tenant"]
    list_filter = ["tenant", "state", "severity"]
    actions = ["acknowledge"]
    readonly_fields = ["tenant", "slo", "severity", "state", "opened_at", "resolved_at", "burn_rates",
                       "acknowledged_by", "acknowledged_at"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="highest burn rates")
    def burn(self, alert):
        return ", ".join(f"{window} {rate:.1f}×" for window, rate in alert.burn_rates.items())

    @admin.action(description="Acknowledge the selected alerts")
    def acknowledge(self, request, queryset):
        done = sum(slos.alert_acknowledge(alert=alert, actor=request.user) for alert in queryset)
        self.message_user(request, f"{done} alert(s) acknowledged; {queryset.count() - done} already were.",
                          messages.SUCCESS)


@admin.register(WorkflowKpi)
class WorkflowKpiAdmin(WorkflowScopedAdmin):
    list_display = ["workflow", "human_handling_minutes", "human_hourly_cost_usd", "tenant"]
    list_filter = ["tenant"]
    fields = ["workflow", "human_handling_minutes", "human_hourly_cost_usd"]
