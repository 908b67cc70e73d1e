"""The test session's own Postgres and Redis, which `make test` starts for it in a temporary folder:
fault tests stop and start them. With DATABASE_URL or REDIS_URL set there are none to restart."""

import logging
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
    _pg_ctl("-m", "fast", "restart")


@contextmanager
def postgres_down():
    """Postgres stopped for the duration of the block, then started again as it was."""
    _pg_ctl("-m", "fast", "stop")
    try:
        yield
    finally:
        _pg_ctl("restart")  # `start` would need the options it was started with; restart reads them back


def _pg_ctl(*args: str) -> None:
    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata = Path(PGDATA)
    pgserver.pg_ctl(["-w", "-l", str(pgdata / "log"), *args], pgdata=pgdata,
                    user="pgserver" if os.geteuid() == 0 else None, timeout=60)


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
