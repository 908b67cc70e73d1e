#!/usr/bin/env python
import os
import sys
from pathlib import Path


def use_running_dev_servers() -> None:
    """From a plain shell, with no DATABASE_URL or REDIS_URL of its own, use the servers `make run` started:
    the launcher writes their URLs to .data/env while they run. Development only, as under the launcher."""
    env_file = Path(os.environ.get("HIL_DATA_DIR") or Path(__file__).resolve().parent / ".data") / "env"
    if os.environ.get("DATABASE_URL") or not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        os.environ.setdefault(name, value)
    if not os.environ.get("HIL_SECRET_KEY"):
        os.environ.setdefault("HIL_DEBUG", "1")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
    use_running_dev_servers()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
