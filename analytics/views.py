"""The analytics dashboard in the admin: charts of the rollups for the tenants a staff member may see (a superuser:
every tenant), filtered by tenant, workflow, version and time range, with a CSV export of the same points."""

from django import forms
from django.contrib import admin
from django.http import HttpResponse
from django.template.response import TemplateResponse

from accounts.models import Tenant
from core import charts
from workflows.models import Workflow, WorkflowVersion

from . import dashboard

LABEL = {"minute": "%H:%M", "hour": "%d %H:00", "day": "%m-%d"}


class DashboardFilters(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.none(), required=False, empty_label="All tenants")
    workflow = forms.ModelChoiceField(Workflow.objects.none(), required=False, empty_label="All workflows")
    version = forms.ModelChoiceField(WorkflowVersion.objects.none(), required=False, empty_label="All versions")
    range = forms.ChoiceField(choices=[(r, r) for r in dashboard.RANGES], initial=dashboard.DEFAULT_RANGE,
                              required=False)

    def __init__(self, data, *, tenants):
        super().__init__(data)
        self.fields["tenant"].queryset = tenants.order_by("slug")
        chosen = tenants.filter(pk=data.get("tenant")) if str(data.get("tenant", "")).isdigit() else tenants
        self.fields["workflow"].queryset = Workflow.objects.filter(tenant__in=chosen).order_by("tenant__slug", "slug")
        self.fields["version"].queryset = WorkflowVersion.objects.filter(
            workflow__tenant__in=chosen,
            workflow_id=data.get("workflow") if str(data.get("workflow", "")).isdigit() else None).order_by("number")
        self.fields["workflow"].label_from_instance = lambda w: f"{w.tenant.slug} / {w.slug}"
        self.fields["version"].label_from_instance = lambda v: f"v{v.number}"

    def filters(self, tenants) -> dashboard.Filters:
        data = self.cleaned_data
        chosen = [data["tenant"].pk] if data["tenant"] else list(tenants.values_list("pk", flat=True))
        return dashboard.Filters(tenant_ids=tuple(chosen), range=data["range"] or dashboard.DEFAULT_RANGE,
                                 workflow_id=data["workflow"] and data["workflow"].pk,
                                 version_id=data["version"] and data["version"].pk)


def dashboard_view(request):
    tenants = Tenant.objects.all() if request.user.is_superuser else Tenant.objects.filter(
        memberships__user=request.user)
    form = DashboardFilters(request.GET, tenants=tenants)
    context = {**admin.site.each_context(request), "title": "Analytics dashboard", "form": form}
    if not form.is_valid():
        return TemplateResponse(request, "admin/analytics/dashboard.html", context, status=400)
    data = dashboard.dashboard(form.filters(tenants))
    if request.GET.get("format") == "csv":
        response = HttpResponse(dashboard.as_csv(data), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="hil-analytics-{data["range"]}.csv"'
        return response
    query = request.GET.copy()
    query["format"] = "csv"
    return TemplateResponse(request, "admin/analytics/dashboard.html", {
        **context, "data": data, "tiles": _tiles(data["totals"]), "charts": _charts(data),
        "csv_query": query.urlencode()})


def _tiles(totals: dict) -> list[tuple[str, str]]:
    def share(value):
        return "—" if value is None else f"{value:.1%}"

    def usd(value):
        return "—" if value is None else f"${value:,.2f}"

    return [("Runs", f"{totals['runs']:,}"), ("Success", share(totals["success_rate"])),
            ("Handover (intervention)", share(totals["handover_rate"])),
            ("Latency p50 / p95", f"{totals['p50_ms'] or '—'} / {totals['p95_ms'] or '—'} ms"),
            ("Cost", usd(totals["cost"])), ("Cost per run", usd(totals["cost_per_run"])),
            ("Resolved without a human", f"{totals['finished']:,}"),
            ("Time saved", "—" if totals["minutes_saved"] is None else f"{totals['minutes_saved'] / 60:,.1f} h"),
            ("Cost saved", usd(totals["cost_saved"])), ("Revenue", usd(totals["revenue"])),
            ("CSAT", "—" if totals["csat_score"] is None else
             f"{totals['csat_score']:.2f} / 5 ({share(totals['csat_satisfied_rate'])} satisfied, "
             f"{totals['csat_responses']} ratings)")]


def _charts(data: dict) -> list:
    """The charts, each an <svg>: figures per bucket, then cost per tenant, the SLOs' burn and where runs fail."""
    points = data["series"]
    labels = [p["bucket"].strftime(LABEL[data["period"]]) for p in points]

    def values(name, scale=1.0):
        return [None if p[name] is None else float(p[name]) * scale for p in points]

    def lines(title, series, **options):
        return charts.plot(labels, series, title=title, **options)

    shown = [
        lines("Runs", {"ended": values("runs"), "handed over": values("handover"), "failed": values("failed"),
                       "resolved by AI": values("finished")}),
        lines("Success and handover (intervention) rate, %", {"success": values("success_rate", 100),
                                                              "handover": values("handover_rate", 100)}),
        lines("Latency, ms", {"p50": values("p50_ms"), "p95": values("p95_ms")}),
        lines("Cost per run, USD", {"cost per run": values("cost_per_run")}),
        lines("Resolved without a human and hours saved", {"resolved": values("finished"),
                                                           "hours saved": values("minutes_saved", 1 / 60)}),
        lines("Revenue and cost saved, USD", {"revenue": values("revenue"), "cost saved": values("cost_saved")}),
        lines("Customer satisfaction (1-5)", {"CSAT": values("csat_score")}),
    ]
    if len(data["tenants"]) > 1:
        shown.append(charts.plot([t["tenant"] for t in data["tenants"]],
                                 {"cost": [float(t["cost"]) for t in data["tenants"]]}, kind="bar",
                                 title="Cost per tenant, USD"))
    for slo in data["slos"]:
        shown.append(lines(f"SLO burn: {slo['workflow']} {slo['metric']} {slo['objective']:g}"
                           + (f" — {', '.join(slo['firing'])} alert firing" if slo["firing"] else ""),
                           {"burn rate": slo["burn"]}, rule=1.0))
    slowest = data["totals"]["slowest_nodes"][:10]
    if slowest:
        shown.append(charts.plot([n for n, _ in slowest], {"mean ms": [ms for _, ms in slowest]}, kind="bar",
                                 title="Slowest nodes (mean step duration, ms)"))
    return shown
