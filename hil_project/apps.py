from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """The admin, with HIL's own site; and, the project's one app config, what every process sets up once."""

    default_site = "hil_project.admin_site.AdminSite"

    def ready(self):
        super().ready()
        from core import tracing

        tracing.setup()
