"""Run Python code an LLM wrote, contained by bubblewrap (`bwrap`) and rlimits.

What runs: Debian's `/usr/bin/python3` (the `python3` package), started as
`python3 -I /main.py` with the code bound read-only at /main.py. It is used rather than the venv's
interpreter because it lives under /usr and needs nothing else: the venv's Python lives under
/root/.pyenv, and binding that would show the sandbox a path under /root. The code gets the standard
library only: no site-packages, no project code.

The command line (see `_command`), run as root by the platform:

    prlimit --cpu=S:S+1 --as=.. --fsize=.. --nproc=.. --nofile=256 --core=0 --          # as host uid U
      bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
            --hostname sandbox --uid 65534 --gid 65534 --clearenv --setenv PATH/HOME/LANG ..
            --ro-bind /usr/bin/python3.11 /usr/bin/python3 --ro-bind /usr/lib/python3.11 ..
            --ro-bind /usr/lib/<multiarch> .. --ro-bind /usr/lib64 .. (+ /lib, /lib64 symlinks)
            --ro-bind-try /usr/share/zoneinfo .. --dev /dev --size .. --tmpfs /dev/shm
            --size .. --tmpfs /tmp --bind <fresh temp dir> /sandbox --ro-bind-data <fd> /main.py
            --remount-ro /dev --remount-ro / --chdir /sandbox --info-fd <fd>
            /usr/bin/python3 -I /main.py

What that protects against:
- Reading the platform's secrets: the environment is empty but for PATH, HOME and LANG; the filesystem
  holds only the interpreter, its standard library, the system's shared libraries and time zones,
  read-only. No /etc, /root, /work, /home, /proc or /sys; no file descriptor but stdin, stdout and
  stderr (a directory descriptor would let `openat(fd, "..")` climb out of the mounts).
- Writing anywhere but /sandbox (a fresh host temp dir, deleted afterwards) and a private /tmp and
  /dev/shm (memory, each capped at `file_mb`).
- The network: a network namespace of its own, holding only a loopback that bwrap brings up; it
  reaches no host port, no other machine and no DNS.
- Privilege: uid 65534 inside, no capabilities, no_new_privs, no nested user namespaces. Outside it is a
  random host uid of its own per run (never 0), so RLIMIT_NPROC counts its processes only and one
  run's fork bomb does not starve another's.
- Resource exhaustion by one run: CPU seconds per process (SIGXCPU), address space, file size, open
  files, processes (bwrap's two count too), no core dumps; a wall-clock timeout after which the PID
  namespace's init is killed, which kills every process in it. The call returns only once they are all
  gone, whether the code ended, was killed, or left background processes behind. Output is capped while
  it is read, so a print loop cannot fill the platform's memory.

What it does NOT protect against:
- Kernel exploits: the code talks to the host's kernel (no seccomp filter, no VM). A kernel bug
  reachable from an unprivileged user namespace is a way out.
- Resources between the limits: the CPU time and memory bandwidth a run takes from other tenants while
  within its limits; RLIMIT_CPU and RLIMIT_AS are per process, so up to `processes` processes may each
  use them (the wall clock bounds the total). Disk in the work dir: each file is capped at `file_mb`,
  but not their number, so a run may fill the host's temp disk for as long as it runs.
- Side channels (timing, cache, Spectre-class) and what the shared libraries and kernel reveal
  (kernel version via uname, CPU count).
- What the code returns: stdout, stderr and files are written by untrusted code; treat them as such.

The work dir is made in tempfile.gettempdir(), which bwrap, running as the run's uid, must be able to
traverse: the default /tmp is; a TMPDIR of mode 0700 makes SandboxUnavailable say "Can't find source path".

Exit statuses: bwrap reports a child killed by signal N as exit code 128+N, so an exit code above 128
is reported as that signal (a program that calls `sys.exit(137)` looks killed by SIGKILL).
"""

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"
PYTHON = "/usr/bin/python3"
SANDBOX_HOME = "/sandbox"
SANDBOX_UID = 65534  # "nobody", as the code sees itself
# Host uids given to runs, one at random per run. High enough to be nobody's, below 2**31 for the
# tools that still read a uid as a signed int.
HOST_UID_BASE, HOST_UID_COUNT = 1_500_000_000, 500_000_000
WORK_DIR_PREFIX = "hil-sandbox-"
KILL_GRACE_S = 5  # how long bwrap may take to exit once its namespace is killed


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the code is never run without it."""


@dataclass(frozen=True)  # frozen: one instance is the shared default of run_python
class SandboxLimits:
    timeout_s: float = 10  # wall clock
    cpu_s: int = 5  # RLIMIT_CPU, per process
    memory_mb: int = 256  # RLIMIT_AS, per process
    file_mb: int = 16  # RLIMIT_FSIZE; also the size of the private /tmp and /dev/shm
    processes: int = 32  # RLIMIT_NPROC, for the run's own host uid, bwrap's two processes included
    output_bytes: int = 64_000  # stdout/stderr kept, each; the rest is cut with a marker


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> dict:
    """Run `code` with `stdin` in a fresh sandbox and wait for it to end or be killed.

    -> {"exit_code": int | None, "stdout": str, "stderr": str, "timed_out": bool, "signal": str | None,
    "duration_ms": int}. exit_code is None when the code was killed by a signal (named in "signal"):
    SIGKILL after the wall clock, SIGXCPU after the CPU limit. Raises SandboxUnavailable when
    bubblewrap or Debian's python3 is missing, or cannot isolate a process on this machine.
    """
    _check_sandbox()
    return _run(code, stdin, limits)


@functools.cache  # once per process: a failure raises, so it is not cached and is checked again
def _check_sandbox() -> None:
    for path, package in ((BWRAP, "bubblewrap"), (PRLIMIT, "util-linux"), (PYTHON, "python3")):
        if not os.access(path, os.X_OK):
            raise SandboxUnavailable(f"{path} is missing: apt-get install {package}")
    if os.geteuid() != 0:
        # Without root the code would share the platform's uid, and with it RLIMIT_NPROC's count.
        raise SandboxUnavailable("the platform must run as root to give the code a uid of its own")
    # bwrap reports failures to set the sandbox up (no user namespaces, mounts refused) the way the
    # code reports its own, as exit 1 and a message, so a trial run tells them apart.
    trial = _run("", "", SandboxLimits())
    if trial["exit_code"] != 0:
        raise SandboxUnavailable(f"bwrap cannot create a sandbox here: {trial['stderr'].strip()}")


def _run(code: str, stdin: str, limits: SandboxLimits) -> dict:
    host_uid = HOST_UID_BASE + secrets.randbelow(HOST_UID_COUNT)
    work_dir = tempfile.mkdtemp(prefix=WORK_DIR_PREFIX)
    try:
        os.chown(work_dir, host_uid, host_uid)
        # The code and stdin go through unlinked files: bwrap copies the code in, and a file, unlike a
        # pipe, needs no writer thread and cannot block.
        with tempfile.TemporaryFile() as code_file, tempfile.TemporaryFile() as stdin_file:
            code_file.write(code.encode())
            code_file.seek(0)
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            info_r, info_w = os.pipe()
            try:
                started = time.monotonic()
                try:
                    process = subprocess.Popen(
                        _command(limits, work_dir, code_fd=code_file.fileno(), info_fd=info_w),
                        stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        pass_fds=(code_file.fileno(), info_w), env={},
                        user=host_uid, group=host_uid, extra_groups=[])
                finally:
                    os.close(info_w)
                return _collect(process, info_r, limits, started)
            finally:
                os.close(info_r)
    finally:
        shutil.rmtree(work_dir)


def _command(limits: SandboxLimits, work_dir: str, *, code_fd: int, info_fd: int) -> list[str]:
    python = os.path.realpath(PYTHON)  # /usr/bin/python3.11
    stdlib = f"/usr/lib/{os.path.basename(python)}"
    multiarch = f"/usr/lib/{os.uname().machine}-linux-gnu"  # the shared libraries, as Debian lays them out
    tmpfs_bytes = str(limits.file_mb * 1024 * 1024)
    return [
        PRLIMIT,
        # The hard CPU limit is a second above the soft one so that the code gets SIGXCPU, which
        # says why it stopped, before SIGKILL.
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_mb * 1024 * 1024}",
        f"--fsize={limits.file_mb * 1024 * 1024}",
        f"--nproc={limits.processes}",
        "--nofile=256",
        "--core=0",
        "--",
        BWRAP,
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--hostname", "sandbox",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", SANDBOX_HOME,
        "--setenv", "LANG", "C.UTF-8",
        "--ro-bind", python, PYTHON,
        "--ro-bind", stdlib, stdlib,
        "--ro-bind", multiarch, multiarch,
        "--ro-bind", "/usr/lib64", "/usr/lib64",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--ro-bind-try", "/usr/share/zoneinfo", "/usr/share/zoneinfo",
        "--dev", "/dev",
        "--size", tmpfs_bytes, "--tmpfs", "/dev/shm",
        "--size", tmpfs_bytes, "--tmpfs", "/tmp",
        "--bind", work_dir, SANDBOX_HOME,
        "--ro-bind-data", str(code_fd), "/main.py",
        # bwrap leaves its root and /dev writable tmpfs; read-only, they cannot fill memory.
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", SANDBOX_HOME,
        "--info-fd", str(info_fd),
        PYTHON, "-I", "/main.py",
    ]


def _collect(process: subprocess.Popen, info_r: int, limits: SandboxLimits, started: float) -> dict:
    """Read the output until it ends or the wall clock runs out, then make sure every process is gone."""
    deadline = started + limits.timeout_s
    out_fd, err_fd = process.stdout.fileno(), process.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    cut = {out_fd: 0, err_fd: 0}  # bytes read past output_bytes and dropped
    info = bytearray()  # bwrap's JSON, with the pid of the namespace's init
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in (out_fd, err_fd, info_r):
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not timed_out:
            remaining = deadline - time.monotonic()
            timed_out = remaining <= 0
            for key, _ in selector.select(max(remaining, 0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == info_r:
                    info += chunk
                else:
                    # Reading on past the cap, rather than stopping, lets the code run to its end.
                    room = max(limits.output_bytes - len(kept[key.fd]), 0)
                    kept[key.fd] += chunk[:room]
                    cut[key.fd] += len(chunk[room:])
    if not timed_out:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill(process, info)
    process.stdout.close()
    process.stderr.close()

    exit_code, signal_name = process.returncode, None
    if timed_out:
        exit_code, signal_name = None, "SIGKILL"
    elif exit_code < 0:
        exit_code, signal_name = None, signal.Signals(-exit_code).name
    elif exit_code > 128 and exit_code - 128 in signal.valid_signals():
        exit_code, signal_name = None, signal.Signals(exit_code - 128).name
    return {
        "exit_code": exit_code,
        "stdout": _text(kept[out_fd], cut[out_fd]),
        "stderr": _text(kept[err_fd], cut[err_fd]),
        "timed_out": timed_out,
        "signal": signal_name,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def _kill(process: subprocess.Popen, info: bytes) -> None:
    """Kill the sandbox's PID namespace and wait until all its processes are gone.

    Killing the namespace's init (bwrap's child) makes the kernel kill every process in it, and bwrap
    exits only once they are all reaped. Killing bwrap instead would also end them, through
    --die-with-parent, but without a way to wait for it.
    """
    try:
        init_pid = json.loads(info)["child-pid"]
    except (ValueError, KeyError):
        init_pid = None  # bwrap had not started it
    # The pid is init's until bwrap reaps it, which bwrap does just before it exits: checking that
    # bwrap still runs leaves a window of microseconds, and a reuse needs the pid space to wrap.
    if init_pid and process.poll() is None:
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _text(data: bytes, cut: int) -> str:
    text = data.decode("utf-8", errors="replace")
    return f"{text}\n[... {cut} more bytes cut by the sandbox]\n" if cut else text
