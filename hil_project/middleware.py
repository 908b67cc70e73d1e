import logging
from http import HTTPStatus

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class ApiErrorsAsJson(MiddlewareMixin):
    """Under /api/ every error is JSON, whatever raised it and whether DEBUG is on: Django's own pages
    (a malformed id's 404, a 500) become `{"detail": ...}`, a database that cannot be reached is a
    503 with Retry-After, and no stack trace reaches the client."""

    def process_exception(self, request, exception):
        if not request.path.startswith("/api/"):
            return None
        if isinstance(exception, (OperationalError, InterfaceError)):
            log.warning("database unavailable for %s %s: %s", request.method, request.path, exception)
            response = JsonResponse({"detail": "the database is unavailable; try again shortly"}, status=503)
            response["Retry-After"] = str(RETRY_AFTER_S)
            return response
        log.error("internal error on %s %s", request.method, request.path, exc_info=exception)
        return JsonResponse({"detail": "internal error"}, status=500)

    def process_response(self, request, response):
        if (request.path.startswith("/api/") and response.status_code >= 400 and not response.streaming
                and not response.get("Content-Type", "").startswith("application/json")):
            phrase = HTTPStatus(response.status_code).phrase
            detail = f"{phrase}: no such resource {request.path}" if response.status_code == 404 else phrase
            json_response = JsonResponse({"detail": detail}, status=response.status_code)
            if "Retry-After" in response:
                json_response["Retry-After"] = response["Retry-After"]
            return json_response
        return response
