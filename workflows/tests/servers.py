"""The test session's own Postgres and Redis, which `make test` starts for it in a temporary folder:
fault tests stop and start them. With DATABASE_URL or REDIS_URL set there are none to restart."""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from hil_project import launcher

PGDATA = os.environ.get("HIL_EMBEDDED_PGDATA")
REDIS_DIR = os.environ.get("HIL_EMBEDDED_REDIS")

needs_own_servers = pytest.mark.skipif(
    not (PGDATA and REDIS_DIR), reason="restarts the Postgres and Redis that `make test` starts for itself; "
                                       "with DATABASE_URL or REDIS_URL set, it has none")


def postgres_restart() -> None:
    """Stop Postgres (every connection is cut, statements in flight fail), then start it again."""
    launcher.postgres_restart(Path(PGDATA))


@contextmanager
def postgres_down():
    """Postgres stopped for the duration of the block, then started again as it was."""
    launcher.postgres_stop(Path(PGDATA))
    try:
        yield
    finally:
        launcher.postgres_restart(Path(PGDATA))


@contextmanager
def redis_down():
    """Redis stopped for the duration of the block, then started again on its port."""
    launcher.redis_stop(Path(REDIS_DIR), forget_port=False)
    try:
        yield
    finally:
        launcher.redis_start(Path(REDIS_DIR))


def redis_restart() -> None:
    """Stop Redis, which keeps nothing on disk (queued task messages are lost), then start it on its port."""
    launcher.redis_stop(Path(REDIS_DIR), forget_port=False)
    launcher.redis_start(Path(REDIS_DIR))
