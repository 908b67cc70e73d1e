"""The API's one JSON parser, which refuses what Postgres could not store or Python could not walk. A module
of its own: DRF imports it while `rest_framework.views` loads, so it must not import that."""

import json
import math

from django.conf import settings
from rest_framework import exceptions
from rest_framework.parsers import JSONParser


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
