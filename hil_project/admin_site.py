from django.contrib.auth.views import redirect_to_login
from django.urls import path, reverse
from django_otp.admin import OTPAdminSite


class AdminSite(OTPAdminSite):
    """The admin lets in only staff past the second factor, and signs people in as the console does."""

    def login(self, request, extra_context=None):
        return redirect_to_login(request.GET.get("next") or request.get_full_path())

    def get_urls(self):
        from analytics.views import dashboard_view

        return [path("analytics/dashboard/", self.admin_view(dashboard_view), name="analytics_dashboard"),
                *super().get_urls()]

    def get_app_list(self, request, app_label=None):
        """The analytics app starts with its dashboard, which every staff member may open (it shows the tenants
        they belong to)."""
        apps = super().get_app_list(request, app_label)
        if app_label not in (None, "analytics"):
            return apps
        analytics = next((app for app in apps if app["app_label"] == "analytics"), None)
        if analytics is None:
            analytics = {"name": "Analytics", "app_label": "analytics", "has_module_perms": True, "models": [],
                         "app_url": reverse("admin:analytics_dashboard")}
            apps = sorted([*apps, analytics], key=lambda app: app["name"].lower())
        analytics["models"].insert(0, {"name": "Dashboard", "object_name": "Dashboard", "perms": {"view": True},
                                       "admin_url": reverse("admin:analytics_dashboard"), "view_only": True})
        return apps
