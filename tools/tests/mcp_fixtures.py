"""The test MCP server (tools/tests/mcp_server.py) as the tests start it: over HTTP in a subprocess, or as a
stdio endpoint that tools/mcp.py spawns itself."""

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tools.mcp import McpEndpoint

REPO = Path(__file__).resolve().parents[2]
SERVER = ("-m", "tools.tests.mcp_server")


def stdio_endpoint(*, tag: str = "", env: dict | None = None) -> McpEndpoint:
    """The test server over stdio. `tag` goes on its command line, so a test can find its process in /proc."""
    command = (sys.executable, *SERVER, "stdio", *(("--tag", tag) if tag else ()))
    # The child gets no os.environ (tools/mcp.py's rule): it needs to be told where the repository is.
    return McpEndpoint("stdio", command=command, env={"PYTHONPATH": str(REPO), **(env or {})})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mcp_http_server(folder: Path, *, start_timeout_s: float = 30):
    """Run the test server over streamable HTTP; yield (url, token, calls_file) once it accepts connections."""
    token = secrets.token_urlsafe(24)
    calls_file = folder / "mcp_calls.jsonl"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *SERVER, "http", "--port", str(port), f"--token={token}"],  # a token may start with "-"
        cwd=REPO,
        env={**os.environ, "MCP_CALLS_FILE": str(calls_file)},
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the test MCP server exited with status {process.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the test MCP server did not listen on port {port} within {start_timeout_s}s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", token, calls_file
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
