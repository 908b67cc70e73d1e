"""The sandbox for LLM-written code: each test makes a real attempt to get out of it, or to exhaust the
host from it, and checks that the attempt was contained."""

import os
import resource
import socket
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tools import sandbox
from tools.sandbox import SandboxLimits, SandboxUnavailable, run_python

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def run(code: str, **kwargs) -> dict:
    return run_python(textwrap.dedent(code), **kwargs)


def work_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{sandbox.WORK_DIR_PREFIX}*"))


def processes_with(marker: str) -> list[int]:
    """The pids of the host's processes whose command line holds `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry.name))
            except OSError:
                pass  # it ended while we looked
    return found


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# A program that re-executes itself with `marker` in its arguments, so that every one of its processes
# can be found in /proc, then forks copies of itself without end.
FORK_BOMB = """
    import os, sys
    if sys.argv[1:] != ["{marker}"]:
        os.execv(sys.executable, [sys.executable, "-I", "/main.py", "{marker}"])
    refused = False
    while True:
        try:
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-I", "/main.py", "{marker}"])
        except OSError:
            if not refused:
                print("fork refused", flush=True)
                refused = True
"""


@pytest.fixture
def fresh_check():
    """Forget that the sandbox was found to work, before and after a test that breaks it."""
    sandbox._check_sandbox.cache_clear()
    yield
    sandbox._check_sandbox.cache_clear()


# --- what the code can do -----------------------------------------------------------------------------


def test_the_code_prints_reads_stdin_keeps_files_in_its_work_dir_and_exits_with_its_code():
    result = run("""
        import os, sys
        print("hello from", os.getcwd(), os.listdir())
        with open("notes.txt", "w") as f:
            f.write(sys.stdin.read().upper())
        print(open("notes.txt").read())
        sys.stdout.flush()
        sys.stdout.buffer.write(b"bad byte: \\xff\\n")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """, stdin="ship it")

    assert result["stdout"] == "hello from /sandbox []\nSHIP IT\nbad byte: \ufffd\n"
    assert result["stderr"] == "to stderr\n"
    assert result["exit_code"] == 3
    assert result["timed_out"] is False and result["signal"] is None
    assert 0 < result["duration_ms"] < SandboxLimits().timeout_s * 1000


def test_each_run_gets_a_fresh_work_dir_deleted_afterwards():
    before = work_dirs()
    first = run("open('left-behind.txt', 'w').write('x'); print(len(open('left-behind.txt').read()))")
    second = run("import os; print(os.listdir())")

    assert first["stdout"] == "1\n" and first["exit_code"] == 0
    assert second["stdout"] == "[]\n"
    assert work_dirs() <= before


# --- getting out -------------------------------------------------------------------------------------


def test_the_code_reaches_no_host_port_no_other_machine_and_no_dns():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run(f"""
            import socket
            print(socket.if_nameindex())
            for address in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
                try:
                    socket.create_connection(address, timeout=5)
                    print("connected to", address)
                except OSError as error:
                    print("no connection to", address, error.strerror)
            try:
                print("resolved", socket.getaddrinfo("example.com", 443))
            except OSError as error:
                print("no dns:", error)
        """)
        # The code has ended: a connection it made would be waiting to be accepted.
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()

    assert result["exit_code"] == 0, result["stderr"]
    lines = result["stdout"].splitlines()
    assert lines[0] == "[(1, 'lo')]"  # its own loopback, nothing else
    assert lines[1] == f"no connection to ('127.0.0.1', {port}) Connection refused"
    assert lines[2] == "no connection to ('1.1.1.1', 53) Network is unreachable"
    assert lines[3].startswith("no dns:")


def test_the_code_sees_no_secrets_files_or_descriptors_of_the_platform(monkeypatch):
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("HIL_MASTER_KEY", canary)
    settings_file = REPO / "hil_project" / "settings.py"
    assert settings_file.exists() and os.environ["HIL_MASTER_KEY"] == canary

    result = run(f"""
        import os, socket
        for path in ["/etc/shadow", "/etc/passwd", "/root/.bashrc", "{settings_file}", "/proc/self/environ",
                     "/proc/1/environ", "/sys/kernel/notes"]:
            try:
                print("read", path, open(path, "rb").read()[:20])
            except OSError as error:
                print("cannot read", path, type(error).__name__)
        print(sorted(os.listdir("/")))
        print(dict(os.environ))
        def is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False
        print("open descriptors", [fd for fd in range(256) if is_open(fd)])
        print("uid", os.getuid(), os.getgid(), os.getgroups())
        for attempt in [lambda: os.chroot("/tmp"), lambda: socket.create_server(("127.0.0.1", 80))]:
            try:
                attempt()
                print("privileged")
            except PermissionError:
                print("not privileged")
    """)

    assert result["exit_code"] == 0, result["stderr"]
    assert canary not in result["stdout"]
    lines = result["stdout"].splitlines()
    assert all(line.startswith("cannot read") for line in lines[:7]), lines[:7]
    lines = lines[7:]
    assert lines[0] == str(sorted(["dev", "lib", "lib64", "main.py", "sandbox", "tmp", "usr"]))
    assert lines[1] == str({"PATH": "/usr/bin", "HOME": "/sandbox", "LANG": "C.UTF-8", "PWD": "/sandbox"})
    assert lines[2] == "open descriptors [0, 1, 2]"  # a directory descriptor would lead out of the mounts
    assert lines[3] == "uid 65534 65534 []"
    assert lines[4:] == ["not privileged", "not privileged"]


def test_the_code_writes_nowhere_but_its_work_dir_and_private_tmp():
    name = f"sandbox-test-{uuid.uuid4().hex}"
    result = run(f"""
        for path in ["/{name}", "/usr/{name}", "/usr/lib/{name}", "/dev/{name}", "/main.py", "/etc/{name}",
                     "/tmp/{name}", "/dev/shm/{name}", "/sandbox/{name}"]:
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as error:
                print("cannot write", path, type(error).__name__)
    """)

    assert result["exit_code"] == 0, result["stderr"]
    assert result["stdout"].count("cannot write") == 6
    assert result["stdout"].endswith(f"wrote /tmp/{name}\nwrote /dev/shm/{name}\nwrote /sandbox/{name}\n")
    # /tmp and /dev/shm were the sandbox's own.
    assert not Path(f"/tmp/{name}").exists() and not Path(f"/dev/shm/{name}").exists()


# --- exhausting the host -------------------------------------------------------------------------------


def test_a_fork_bomb_is_capped_and_killed_to_the_last_process():
    marker = f"fork-bomb-{uuid.uuid4().hex}"
    limits = SandboxLimits(timeout_s=3)

    result = run(FORK_BOMB.format(marker=marker), limits=limits)

    assert "fork refused" in result["stdout"]  # RLIMIT_NPROC held
    assert result["timed_out"] is True and result["signal"] == "SIGKILL" and result["exit_code"] is None
    assert result["duration_ms"] < (limits.timeout_s + sandbox.KILL_GRACE_S) * 1000
    assert processes_with(marker) == []
    assert run("print('the host can still fork')")["stdout"] == "the host can still fork\n"


def test_processes_left_behind_by_the_code_end_with_it():
    marker = f"left-behind-{uuid.uuid4().hex}"
    result = run(f"""
        import os, subprocess, sys
        for _ in range(5):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"],
                             start_new_session=True)
        if os.fork() == 0:  # a daemon, orphaned on purpose
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "while True: pass", "{marker}"])
        print("spawned")
    """)

    assert result["stdout"] == "spawned\n" and result["exit_code"] == 0
    assert result["timed_out"] is False
    assert processes_with(marker) == []


def test_a_fork_bomb_does_not_starve_another_run():
    marker = f"fork-bomb-{uuid.uuid4().hex}"
    limits = SandboxLimits(timeout_s=20)
    bomb = threading.Thread(target=run, args=(FORK_BOMB.format(marker=marker),), kwargs={"limits": limits})
    bomb.start()
    try:
        # Wait until the bomb has its fill of processes (bwrap's two count towards its limit).
        deadline = time.monotonic() + limits.timeout_s
        most = 0
        while most < limits.processes - 2 and time.monotonic() < deadline:
            most = max(most, len(processes_with(marker)))
            time.sleep(0.01)
        assert most == limits.processes - 2

        result = run("print('still room')")

        assert result["stdout"] == "still room\n" and result["exit_code"] == 0
    finally:
        bomb.join()
    assert processes_with(marker) == []


def test_a_memory_bomb_gets_a_memory_error():
    result = run("""
        try:
            huge = bytearray(4 * 1024**3)
        except MemoryError:
            print("4 GB refused", flush=True)
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024**2))
    """)

    assert result["stdout"] == "4 GB refused\n"
    assert result["stderr"].endswith("MemoryError\n") and result["exit_code"] == 1


def test_a_cpu_loop_is_stopped_by_the_cpu_limit_or_else_the_wall_clock():
    by_cpu = run("while True: pass", limits=SandboxLimits(cpu_s=1, timeout_s=30))
    by_clock = run("while True: pass", limits=SandboxLimits(cpu_s=60, timeout_s=1))

    assert by_cpu["signal"] == "SIGXCPU" and by_cpu["exit_code"] is None and by_cpu["timed_out"] is False
    assert by_clock["signal"] == "SIGKILL" and by_clock["exit_code"] is None and by_clock["timed_out"] is True


def test_writing_100_mb_stops_at_the_file_size_limit():
    result = run("""
        import os
        for path in ["big", "/tmp/big"]:
            try:
                with open(path, "wb") as f:
                    for _ in range(100):
                        f.write(b"x" * 1024 * 1024)
            except OSError as error:
                print(path, "stopped:", error.strerror, os.path.getsize(path))
    """)

    assert result["exit_code"] == 0, result["stderr"]
    big, tmp_big = result["stdout"].splitlines()
    assert big == f"big stopped: File too large {16 * MB}"
    assert tmp_big.startswith("/tmp/big stopped:") and int(tmp_big.split()[-1]) <= 16 * MB


def test_an_output_flood_returns_promptly_with_capped_output():
    peak_before = peak_rss_mb()
    result = run("""
        import sys
        for _ in range(100_000):
            sys.stdout.write("x" * 1000)
            sys.stderr.write("y" * 1000)
    """)

    assert result["exit_code"] == 0 and result["timed_out"] is False
    kept = SandboxLimits().output_bytes
    assert result["stdout"] == "x" * kept + f"\n[... {100_000_000 - kept} more bytes cut by the sandbox]\n"
    assert result["stderr"] == "y" * kept + f"\n[... {100_000_000 - kept} more bytes cut by the sandbox]\n"
    assert peak_rss_mb() - peak_before < 50  # the platform held 64 kB of each, not 100 MB


def test_sleeping_past_the_wall_clock_times_out_and_keeps_the_output_so_far():
    result = run("""
        import time
        print("going to sleep", flush=True)
        time.sleep(600)
    """, limits=SandboxLimits(timeout_s=1))

    assert result["timed_out"] is True and result["signal"] == "SIGKILL" and result["exit_code"] is None
    assert result["stdout"] == "going to sleep\n"
    assert result["duration_ms"] < (1 + sandbox.KILL_GRACE_S) * 1000


# --- no sandbox, no run ---------------------------------------------------------------------------------


def test_without_bwrap_the_code_is_not_run(monkeypatch, fresh_check):
    ran = Path(tempfile.gettempdir()) / f"ran-{uuid.uuid4().hex}"
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")

    with pytest.raises(SandboxUnavailable, match="/nonexistent/bwrap is missing: apt-get install bubblewrap"):
        run_python(f"open({str(ran)!r}, 'w')")
    assert not ran.exists()


def test_without_root_the_code_is_not_run(monkeypatch, fresh_check):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    with pytest.raises(SandboxUnavailable, match="must run as root"):
        run_python("print(1)")


def test_a_sandbox_that_cannot_be_set_up_says_why(monkeypatch, fresh_check):
    command = sandbox._command

    def refused_mount(*args, **kwargs):
        # As a host that refuses a mount would: bwrap stops before the code runs.
        parts = command(*args, **kwargs)
        at = parts.index("--dev")
        return parts[:at] + ["--ro-bind", "/nonexistent-for-the-test", "/x"] + parts[at:]

    monkeypatch.setattr(sandbox, "_command", refused_mount)

    with pytest.raises(SandboxUnavailable, match="bwrap cannot create a sandbox here: bwrap: Can't find source"):
        run_python("print(1)")
