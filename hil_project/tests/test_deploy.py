"""The README's production example passes Django's deployment checks, and `make run`'s demo stays on http."""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_production_env() -> dict[str, str]:
    """The variables of the first shell block in README.md's "Production" section."""
    section = re.search(r"^## Production\n(.*?)(?=^## )", (REPO / "README.md").read_text(), re.S | re.M)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_readme_production_environment_passes_check_deploy(manage_py):
    env = readme_production_env()
    assert {"HIL_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "HIL_ALLOWED_HOSTS"} <= env.keys()
    result = manage_py("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_secure_defaults_check_deploy_fails(manage_py):
    """The check the test above relies on can fail: turning the defaults off is reported."""
    env = {**readme_production_env(), "HIL_SECURE_SSL_REDIRECT": "0", "HIL_SESSION_COOKIE_SECURE": "0"}
    result = manage_py("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    assert "security.W008" in result.stderr and "security.W012" in result.stderr


def test_the_demo_serves_plain_http(manage_py):
    """`make run`: no secret key, HIL_DEBUG=1 (the launcher sets it), the embedded database."""
    env = {"HIL_DEBUG": "1", "DATABASE_URL": os.environ["DATABASE_URL"],
           "HIL_EMBEDDED_PGDATA": os.environ.get("HIL_EMBEDDED_PGDATA", "/tmp/pg")}
    code = ("from django.conf import settings as s; print(s.HIL_DEMO, s.SECURE_SSL_REDIRECT, "
            "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)")
    result = manage_py("shell", "--no-imports", "-c", code, **env)
    assert result.stdout.split() == ["True", "False", "False", "False", "0"], result.stderr
