from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    """Rollups of runs per minute, hour and day; SLOs with burn-rate alerts; business KPIs (see ARCHITECTURE.md)."""

    name = "analytics"
