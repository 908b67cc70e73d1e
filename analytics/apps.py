from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    """Metrics, SLOs, evaluations and dashboards: nothing here yet (see ARCHITECTURE.md)."""

    name = "analytics"
