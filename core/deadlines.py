"""Deadlines: how long the work in hand may still take.

The engine opens one around each step. Code that spends time asks `remaining()` and passes it
to where the time goes: an HTTP client's timeout, Postgres's `statement_timeout` (see
`database_deadline`), a sqlite progress handler. Nothing is interrupted from outside, so it
works in any thread; a step that overstays anyway is killed by the worker's hard time limit.
Nested deadlines keep the shortest.
"""

import math
import time
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import DatabaseError

_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


class DeadlineExceeded(TimeoutError):
    pass


@contextmanager
def deadline(seconds: float):
    at = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the innermost deadline (negative once past it); None outside any."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def expired() -> bool:
    left = remaining()
    return left is not None and left <= 0


def check() -> None:
    if expired():
        raise DeadlineExceeded("the deadline has passed")


@contextmanager
def database_deadline(connection):
    """Give each statement run on `connection` in the block a `statement_timeout` of the time left,
    so that a slow query is cancelled by Postgres at the deadline and the connection stays usable."""
    touched = False

    def bounded(execute, sql, params, many, context):
        nonlocal touched
        left = remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineExceeded("the deadline passed before the query")
            # On the driver's cursor: through Django's it would come back through this wrapper.
            context["cursor"].cursor.execute("SELECT set_config('statement_timeout', %s, false)",
                                             [f"{math.ceil(left * 1000)}ms"])
            touched = True
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(bounded):
            yield
    finally:
        if touched:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("RESET statement_timeout")
            except DatabaseError:  # the block left its transaction aborted
                if not connection.in_atomic_block:  # else rolling it back restores the setting
                    connection.close()
