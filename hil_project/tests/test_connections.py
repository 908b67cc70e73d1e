"""Under Daphne (ASGI), a request leaves no database connection open behind it: each request may be
served on another thread, and connections kept per thread would pile up (Django's advice for ASGI)."""

import httpx
import pytest
from channels.db import database_sync_to_async
from django.db import connection

from hil_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def connections_to_this_database() -> set[int]:
    """The backends (pids) connected to the test database; other tests' connections may close meanwhile."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return {pid for (pid,) in cursor.fetchall()}


async def test_requests_through_the_asgi_app_leave_no_connection_open(tenant, member):
    _, token = await database_sync_to_async(member)(tenant)
    before = await database_sync_to_async(connections_to_this_database)()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(20):
            response = await client.get("/api/v1/conversations/", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
    assert await database_sync_to_async(connections_to_this_database)() - before == set()
