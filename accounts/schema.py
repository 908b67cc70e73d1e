from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token: `python manage.py hil_token`."}


class SessionMemberScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.auth.SessionMemberAuthentication"
    name = "consoleSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": (
            "The console's session, signed in with two factors; unsafe methods need the X-CSRFToken header.")}
