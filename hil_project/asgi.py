import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
django_asgi = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from approvals.consumers import ConsoleConsumer  # noqa: E402
from hil_project import http_limits  # noqa: E402
from workflows.consumers import RunEventsConsumer  # noqa: E402

http_limits.install()
application = ProtocolTypeRouter({
    "http": django_asgi,
    "websocket": URLRouter([
        path("ws/runs/<uuid:run_id>/", RunEventsConsumer.as_asgi()),
        # Signed in by its session cookie, so only from this site's own pages (no cross-site socket hijacking).
        path("ws/console/", AllowedHostsOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi()))),
    ]),
})
