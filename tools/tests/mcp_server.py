"""A real MCP server (the SDK's MCPServer, formerly FastMCP) for the tests of tools/mcp.py.

    python -m tools.tests.mcp_server stdio [--tag T]
    python -m tools.tests.mcp_server http --port N --token T

Over HTTP (streamable HTTP at /mcp) a request without `Authorization: Bearer T` gets a 401.
`--tag` is ignored: it makes a test's server findable in /proc by its command line.
Each run of `issue_refund` appends a JSON line to the file named by MCP_CALLS_FILE, so tests count executions.
"""

import argparse
import hmac
import json
import os
import uuid

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, below Python 3.12


class Order(TypedDict):
    order_id: int
    total: float
    status: str


class Refund(TypedDict):
    refund_id: str
    order_id: int
    amount: float


class Deletion(TypedDict):
    deleted: bool


class EnvProbe(TypedDict):
    canary_visible: bool


def lookup_order(order_id: int) -> Order:
    """Look an order up by its id."""
    return {"order_id": order_id, "total": round(order_id * 1.5, 2), "status": "shipped" if order_id % 2 else "open"}


def issue_refund(order_id: int, amount: float, reason: str = "") -> Refund:
    """Refund part or all of an order."""
    refund = {"refund_id": uuid.uuid4().hex, "order_id": order_id, "amount": amount}
    if path := os.environ.get("MCP_CALLS_FILE"):
        with open(path, "a") as calls:
            calls.write(json.dumps({**refund, "reason": reason}) + "\n")
    return refund


def delete_account(customer_id: int) -> Deletion:
    """Delete a customer's account for good."""
    return {"deleted": True}


def fail(message: str) -> str:
    """Always fails, with the given message."""
    raise ToolError(message)  # a deliberate failure: the SDK passes its message on (a crash's it hides)


async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await anyio.sleep(seconds)
    return f"slept {seconds}s"


def env_probe() -> EnvProbe:
    """Whether the HIL_CANARY_SECRET variable reached this process."""
    return {"canary_visible": "HIL_CANARY_SECRET" in os.environ}


class TokenVerifier:
    """The SDK's bearer-token hook: one fixed token is valid."""

    def __init__(self, token: str):
        self.token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return AccessToken(token=token, client_id="hil-tests", scopes=[])
        return None


def build_server(token: str | None = None) -> MCPServer:
    auth = {}
    if token is not None:
        # issuer_url is required by the settings but unused: this server checks a static token, no OAuth flow.
        auth = {
            "token_verifier": TokenVerifier(token),
            "auth": AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None),
        }
    server = MCPServer("hil-test-server", log_level="WARNING", **auth)
    server.add_tool(lookup_order, annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(issue_refund, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    server.add_tool(delete_account, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    server.add_tool(fail)
    server.add_tool(slow, annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(env_probe, annotations=ToolAnnotations(read_only_hint=True))
    return server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.tests.mcp_server")
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--tag", default="")
    options = parser.parse_args()
    if options.transport == "stdio":
        build_server().run("stdio")
    else:
        if not options.port or not options.token:
            parser.error("http needs --port and --token")
        build_server(options.token).run("streamable-http", host="127.0.0.1", port=options.port)


if __name__ == "__main__":
    main()
