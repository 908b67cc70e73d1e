"""tools/mcp.py against a real MCP server (tools/tests/mcp_server.py) over stdio and streamable HTTP: tools listed
with their schemas, calls answered, executed once, failures reported without leaking secrets or processes."""

import json
import os
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tools.mcp import McpEndpoint, McpError, mcp_call, mcp_tools
from tools.tests.mcp_fixtures import free_port, mcp_http_server, stdio_endpoint

TOOLS = {"lookup_order", "issue_refund", "delete_account", "fail", "slow", "env_probe"}


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    with mcp_http_server(tmp_path_factory.mktemp("mcp")) as server:
        yield server


@pytest.fixture(params=["stdio", "http"])
def server(request, tmp_path) -> tuple[McpEndpoint, Path]:
    """(endpoint, calls file): the test server over one transport, and where it records each refund it issues."""
    if request.param == "stdio":
        calls_file = tmp_path / "mcp_calls.jsonl"
        return stdio_endpoint(env={"MCP_CALLS_FILE": str(calls_file)}), calls_file
    url, token, calls_file = request.getfixturevalue("http_server")
    return McpEndpoint("http", url=url, headers={"Authorization": f"Bearer {token}"}), calls_file


def recorded_refunds(calls_file: Path) -> list[dict]:
    return [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []


def processes_with(tag: str) -> list[int]:
    """Live processes whose command line holds `tag` (zombies have none, and are gone for good)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if tag.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass  # ended while we looked
    return found


def test_lists_the_tools_with_their_schemas_and_hints(server):
    endpoint, _ = server
    tools = {tool["name"]: tool for tool in mcp_tools(endpoint)}

    assert set(tools) == TOOLS
    refund = tools["issue_refund"]
    assert refund["description"] == "Refund part or all of an order."
    assert refund["input_schema"]["type"] == "object"
    assert refund["input_schema"]["required"] == ["order_id", "amount"]  # reason has a default
    assert {name: field["type"] for name, field in refund["input_schema"]["properties"].items()} == {
        "order_id": "integer",
        "amount": "number",
        "reason": "string",
    }
    assert refund["output_schema"]["required"] == ["refund_id", "order_id", "amount"]
    order = tools["lookup_order"]["output_schema"]
    assert {name: field["type"] for name, field in order["properties"].items()} == {
        "order_id": "integer",
        "total": "number",
        "status": "string",
    }
    assert tools["delete_account"]["annotations"] == {"readOnlyHint": False, "destructiveHint": True}
    assert tools["lookup_order"]["annotations"] == {"readOnlyHint": True}
    assert tools["fail"]["annotations"] == {}


def test_a_call_returns_the_structured_result(server):
    endpoint, _ = server
    result = mcp_call(endpoint, "lookup_order", {"order_id": 7})

    assert result == {
        "structured": {"order_id": 7, "total": 10.5, "status": "shipped"},
        "content": [json.dumps({"order_id": 7, "total": 10.5, "status": "shipped"}, indent=2)],
        "is_error": False,
    }


def test_each_call_executes_the_tool_exactly_once(server):
    endpoint, calls_file = server
    before = len(recorded_refunds(calls_file))

    refunds = [mcp_call(endpoint, "issue_refund", {"order_id": 42, "amount": 5.0 + n})["structured"] for n in range(3)]

    executed = recorded_refunds(calls_file)[before:]
    assert [r["refund_id"] for r in executed] == [r["refund_id"] for r in refunds]
    assert [r["amount"] for r in executed] == [5.0, 6.0, 7.0]


def test_a_failing_tool_is_an_error_result_not_an_exception(server):
    endpoint, _ = server
    result = mcp_call(endpoint, "fail", {"message": "card declined"})

    assert result["is_error"] is True
    assert result["structured"] is None
    assert "card declined" in result["content"][0]


def test_an_unknown_tool_is_an_error_result(server):
    # The SDK's servers answer an unknown tool with an isError result, which mcp_call returns as it is.
    endpoint, _ = server
    result = mcp_call(endpoint, "refund_everything", {})

    assert result["is_error"] is True
    assert "Unknown tool: refund_everything" in result["content"][0]


def test_arguments_that_break_the_input_schema_are_an_error_result(server):
    endpoint, calls_file = server
    before = len(recorded_refunds(calls_file))

    result = mcp_call(endpoint, "issue_refund", {"order_id": "not a number", "amount": 5})

    assert result["is_error"] is True
    assert "order_id" in result["content"][0]
    assert len(recorded_refunds(calls_file)) == before


def test_a_slow_tool_times_out_and_leaves_no_process(server):
    endpoint, _ = server
    tag = f"hil-mcp-test-{uuid.uuid4().hex}"
    if endpoint.transport == "stdio":
        endpoint = stdio_endpoint(tag=tag)
    started = time.monotonic()

    with pytest.raises(McpError, match=r"no answer within 2s"):
        mcp_call(endpoint, "slow", {"seconds": 60}, timeout_s=2)

    # The server stops as soon as its stdin closes; one that did not would be killed 2 to 4 s later.
    assert time.monotonic() - started < 2 + 2
    assert processes_with(tag) == []


def test_a_stdio_server_that_ignores_the_end_of_its_input_and_sigterm_is_killed_with_its_children():
    tag = f"hil-mcp-test-{uuid.uuid4().hex}"
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)', sys.argv[1]]); time.sleep(60)"
    )
    endpoint = McpEndpoint("stdio", command=(sys.executable, "-c", stubborn, tag))

    with pytest.raises(McpError, match=r"no answer within 1s"):
        mcp_tools(endpoint, timeout_s=1)

    assert processes_with(tag) == []


def test_a_wrong_token_is_refused_without_showing_any_token(http_server):
    url, token, _ = http_server
    wrong = "wrong-" + token[::-1]

    with pytest.raises(McpError) as refused:
        mcp_tools(McpEndpoint("http", url=url, headers={"Authorization": f"Bearer {wrong}"}))

    message = str(refused.value)
    assert "HTTP 401" in message and url in message
    assert wrong not in message and token not in message


def test_no_token_is_refused(http_server):
    url, _, _ = http_server
    with pytest.raises(McpError, match="HTTP 401"):
        mcp_call(McpEndpoint("http", url=url), "lookup_order", {"order_id": 1})


@contextmanager
def echoing_server():
    """An HTTP endpoint refusing every request with a JSON-RPC error that quotes the Authorization header back."""

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            error = {"code": -32001, "message": f"bad credentials: {self.headers['Authorization']}"}
            body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/mcp"
    finally:
        server.shutdown()
        server.server_close()


def test_a_header_value_a_server_echoes_back_is_not_in_the_error():
    token = "sk-live-" + uuid.uuid4().hex
    with echoing_server() as url, pytest.raises(McpError) as refused:
        mcp_tools(McpEndpoint("http", url=url, headers={"Authorization": f"Bearer {token}"}))

    assert "bad credentials: [redacted]" in str(refused.value)
    assert token not in "".join(traceback.format_exception(refused.value))  # as a log would show it


def test_an_unreachable_url_is_an_error_that_names_it():
    url = f"http://127.0.0.1:{free_port()}/mcp"
    token = "sk-live-" + uuid.uuid4().hex

    with pytest.raises(McpError) as unreachable:
        mcp_tools(McpEndpoint("http", url=url, headers={"Authorization": f"Bearer {token}"}), timeout_s=5)

    assert str(unreachable.value).startswith(f"HTTP MCP server {url}: unreachable")
    assert token not in str(unreachable.value)


def test_a_stdio_command_that_does_not_exist_is_an_error_that_names_it():
    with pytest.raises(McpError, match=r"'hil-no-such-mcp-server': cannot start: command not found"):
        mcp_tools(McpEndpoint("stdio", command=("hil-no-such-mcp-server", "--serve")))


def test_a_stdio_server_that_exits_at_once_is_an_error():
    with pytest.raises(McpError, match="connection closed before an answer"):
        mcp_tools(McpEndpoint("stdio", command=(sys.executable, "-c", "import sys; sys.exit(3)")))


def test_the_stdio_server_does_not_inherit_the_platform_environment(monkeypatch):
    monkeypatch.setenv("HIL_CANARY_SECRET", "sk-platform-" + uuid.uuid4().hex)

    assert mcp_call(stdio_endpoint(), "env_probe", {})["structured"] == {"canary_visible": False}
    # The probe can see the variable when the endpoint gives it.
    given = stdio_endpoint(env={"HIL_CANARY_SECRET": "for this server"})
    assert mcp_call(given, "env_probe", {})["structured"] == {"canary_visible": True}
