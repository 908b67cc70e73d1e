"""MCP client for the tool layer: list a server's tools and call one, from synchronous code (Celery workers).

Each call opens a session (spawn or connect, initialize), does its one piece of work and closes it: nothing
outlives the call, so a worker holds no connection or child process between tasks. One deadline (`timeout_s`)
covers the whole exchange. No Django here: the caller passes plain values (secrets already decrypted).
"""

import sys
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, PaginatedRequestParams, TextContent


@dataclass(frozen=True)
class McpEndpoint:
    transport: str  # "stdio" or "http"
    command: tuple[str, ...] = ()  # stdio: argv
    # stdio: variables for the child, added to the SDK's minimal set (HOME, LOGNAME, PATH, SHELL, TERM, USER);
    # never os.environ, which holds the platform's secrets.
    env: dict | None = None
    url: str = ""  # http: the streamable HTTP endpoint
    headers: dict | None = None  # http: e.g. {"Authorization": "Bearer ..."}; values are secrets


class McpError(Exception):
    """The exchange failed: server unreachable or gone, protocol error, timeout. The message says what and where,
    and never holds a header value."""


def mcp_tools(endpoint: McpEndpoint, *, timeout_s: float = 20) -> list[dict]:
    """[{"name", "description", "input_schema", "output_schema" (None if the server gives none), "annotations"
    (dict in the protocol's spelling, e.g. {"readOnlyHint": True}; {} if none)}], every page of the listing."""

    async def list_all(session: ClientSession) -> list[dict]:
        tools, cursor = [], None
        while True:
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools += page.tools
            cursor = page.next_cursor
            if not cursor:
                break
        return [
            {
                "name": tool.name,
                "description": tool.description or "",
                "input_schema": tool.input_schema,
                "output_schema": tool.output_schema,
                "annotations": tool.annotations.model_dump(by_alias=True, exclude_none=True)
                if tool.annotations
                else {},
            }
            for tool in tools
        ]

    return _exchange(endpoint, list_all, timeout_s)


def mcp_call(endpoint: McpEndpoint, name: str, args: dict, *, timeout_s: float = 30) -> dict:
    """Call one tool: {"structured": <structuredContent or None>, "content": [text of each text block],
    "is_error": bool}. A tool that fails (isError) is returned with is_error=True, not raised; so is an unknown
    tool on servers built with the SDK, which answer it that way (a server answering with a JSON-RPC error
    raises McpError). The call is sent once, never retried: tools may not be idempotent."""

    async def call(session: ClientSession) -> dict:
        result = await session.call_tool(name, args)
        return {
            "structured": result.structured_content,
            "content": [block.text for block in result.content if isinstance(block, TextContent)],
            "is_error": bool(result.is_error),
        }

    return _exchange(endpoint, call, timeout_s)


def _exchange(endpoint: McpEndpoint, work: Callable[[ClientSession], Awaitable[Any]], timeout_s: float) -> Any:
    """Open a session, run `work` in it, close it, all within timeout_s; any failure becomes McpError."""
    if endpoint.transport not in ("stdio", "http"):
        raise McpError(f"MCP server: unknown transport {endpoint.transport!r} (expected 'stdio' or 'http')")
    if endpoint.transport == "stdio" and not endpoint.command:
        raise McpError("stdio MCP server: no command")
    if endpoint.transport == "http" and not endpoint.url:
        raise McpError("HTTP MCP server: no URL")
    where = _where(endpoint)
    # The SDK turns an HTTP error status into a vague JSON-RPC error; the status says more (401: credentials).
    http_errors: list[int] = []

    async def run() -> Any:
        # On the deadline the SDK's stdio transport still stops its child, shielded from the cancellation:
        # stdin closed, then SIGTERM to the child's process group after 2 s, SIGKILL 2 s later.
        with anyio.fail_after(timeout_s):
            async with (
                _transport(endpoint, timeout_s, http_errors) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await work(session)

    try:
        return anyio.run(run)
    except TimeoutError:
        raise McpError(f"{where}: no answer within {timeout_s:g}s") from None
    except Exception as exc:
        failure = _first_failure(exc)
        if not isinstance(failure, _EXPECTED):
            raise
        what = _describe(failure)
        if http_errors:
            status = http_errors[0]
            what += f"; it answered HTTP {status}" + (" (credentials refused)" if status in (401, 403) else "")
        # Not chained: the cause may quote a header value back, and a logged traceback would show it.
        raise McpError(_redacted(f"{where}: {what}", endpoint)) from None


# What a server that is missing, down, slow or misbehaving can cause; anything else is a bug of ours and is raised
# as is. RuntimeError: the SDK's rejections (a result that breaks its output schema, an unsupported protocol
# version); ValueError: a result that does not parse (pydantic), an argv with a NUL byte.
_EXPECTED = (
    OSError,
    httpx2.HTTPError,
    httpx2.InvalidURL,
    MCPError,
    RuntimeError,
    ValueError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@asynccontextmanager
async def _transport(endpoint: McpEndpoint, timeout_s: float, http_errors: list[int]):
    if endpoint.transport == "stdio":
        params = StdioServerParameters(
            command=endpoint.command[0], args=list(endpoint.command[1:]), env=dict(endpoint.env or {})
        )
        # The child writes its log to the process's real stderr: a Celery worker's sys.stderr is a logging proxy
        # with no file descriptor to hand down.
        async with stdio_client(params, errlog=sys.__stderr__) as streams:
            yield streams
    else:

        async def note_error(response: httpx2.Response) -> None:
            # POSTs only: a server may refuse the optional GET stream (405) and still serve requests.
            if response.status_code >= 400 and response.request.method == "POST":
                http_errors.append(response.status_code)

        client = httpx2.AsyncClient(
            headers=dict(endpoint.headers or {}),
            timeout=httpx2.Timeout(timeout_s),
            event_hooks={"response": [note_error]},
        )
        async with client, streamable_http_client(endpoint.url, http_client=client) as streams:
            yield streams


def _where(endpoint: McpEndpoint) -> str:
    """The server, for messages: the program (not its arguments) or the URL without credentials or query."""
    if endpoint.transport == "stdio":
        return f"stdio MCP server {endpoint.command[0]!r}"
    parts = urlsplit(endpoint.url)
    host = parts.netloc.rpartition("@")[2]
    return f"HTTP MCP server {parts.scheme}://{host}{parts.path}"


def _first_failure(exc: BaseException) -> BaseException:
    """The first real error inside the exception groups anyio's task groups wrap errors in."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"cannot start: command not found ({exc.filename})"
    if isinstance(exc, PermissionError):
        return f"cannot start: permission denied ({exc.filename})"
    if isinstance(exc, httpx2.ConnectError):
        return f"unreachable ({exc})"
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
        return "connection closed before an answer (a stdio server that exits does this: see its stderr)"
    if isinstance(exc, MCPError):
        return f"error {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _redacted(message: str, endpoint: McpEndpoint) -> str:
    """The message without any header value, nor the token part of one ("Bearer <token>"), whatever echoed it."""
    for value in (endpoint.headers or {}).values():
        for secret in sorted({str(value), *str(value).split()}, key=len, reverse=True):
            if len(secret) >= 8:
                message = message.replace(secret, "[redacted]")
    return message
