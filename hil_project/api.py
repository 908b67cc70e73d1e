"""API plumbing shared by the apps: the error format, service errors as HTTP answers, and the one
JSON parser, which refuses what Postgres could not store or Python could not walk."""

import json
import math

from django.conf import settings
from rest_framework import exceptions, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import Conflict, ServiceError


def exception_handler(exc, context):
    """Every error is JSON with a `detail` saying what is wrong; a service's refusal is a 400, a
    request that lost a race or came too late a 409."""
    if isinstance(exc, ServiceError):
        return Response({"detail": str(exc)}, status=409 if isinstance(exc, Conflict) else 400)
    return drf_exception_handler(exc, context)


class TenantScopedMixin:
    """Querysets limited to the caller's tenant: another tenant's ids answer 404."""

    def tenant_queryset(self, queryset):
        return queryset.filter(tenant_id=self.request.auth.tenant_id)


class Pagination(LimitOffsetPagination):
    max_limit = 500
    max_offset = 2**31

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)


class StrictCharField(serializers.CharField):
    """A CharField that takes only strings: 5 is not the text "5"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class BodyTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "body_too_large"


class StrictJSONParser(JSONParser):
    """JSON bodies up to HIL_MAX_BODY_BYTES and HIL_MAX_JSON_DEPTH levels, with finite numbers only
    and strings that Postgres can store (no NUL, no lone surrogate), keys included."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.HIL_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
        try:
            data = json.loads(raw.decode(), parse_constant=_not_a_number, parse_float=_finite)
        except RecursionError:
            raise exceptions.ParseError(f"the body: JSON nested deeper than {settings.HIL_MAX_JSON_DEPTH} levels") from None
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise exceptions.ParseError(f"JSON parse error: {e}") from None
        _check(data)
        return data


def _not_a_number(constant: str):
    raise ValueError(f"{constant} is not a number JSON allows")


def _finite(text: str) -> float:
    if math.isinf(number := float(text)):
        raise ValueError(f"{text} is out of range for a number")
    return number


def _check(data) -> None:
    """Walk the parsed body without recursion: its depth, and every string in it (keys too). An error
    names where it is: `payload.notes[0]: ...`."""
    pending = [(data, 1, "")]
    while pending:
        value, depth, path = pending.pop()
        if isinstance(value, (dict, list)):
            if depth > settings.HIL_MAX_JSON_DEPTH:
                raise exceptions.ParseError(f"{path or 'the body'}: JSON nested deeper than "
                                            f"{settings.HIL_MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    key_shown = key.encode(errors="backslashreplace").decode()  # the error is JSON too
                    where = f"{path}.{key_shown}" if path else key_shown
                    pending += [(key, depth, where), (item, depth + 1, where)]
            else:
                pending += [(item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value)]
        elif isinstance(value, str):
            if "\x00" in value:
                raise exceptions.ParseError(f"{path}: NUL characters (\\u0000) are not allowed")
            try:
                value.encode()
            except UnicodeEncodeError:
                raise exceptions.ParseError(f"{path}: lone surrogates (such as \\ud800) are not allowed") from None
