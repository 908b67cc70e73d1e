from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"

    def ready(self):
        from workflows import humans

        from . import services

        humans.register(services)  # the engine asks people through these services
