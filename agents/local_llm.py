"""A local OpenAI-compatible server, so that tests and the offline demo call models with the real
`openai` client over real HTTP.

It serves `POST /v1/chat/completions` (plain, or streamed as server-sent events),
`POST /v1/embeddings` (real MiniLM sentence embeddings, from `core.embeddings`) and `GET /v1/models`.
Chat answers are scripted: `server.script(text("hi"), rate_limited(), model=None)` queues behaviours,
one taken per request. A request takes the next behaviour scripted for its model; a chat completion
with none takes the next one scripted for no model in particular, and else the default, which echoes
the last user message. Embeddings requests only take behaviours scripted for their model (to make
them fail or wait; an answer behaviour means "embed as usual").
Every request received is kept in `server.requests`.

In a test:  `with LocalLLMServer(api_key="sk-test") as server: openai.OpenAI(base_url=server.base_url, ...)`
As a process:  `python -m agents.local_llm --port 8100 [--api-key KEY] [--latency-ms MS] [--demo]`
"""

import argparse
import base64
import json
import logging
import re
import select
import socket
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.embeddings import embed
from agents.llm import OfflineModel

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("hil-local-chat", "hil-local-embed")


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request. Build one with the functions below."""

    kind: str  # "answer", "echo", "error", "hang" or "truncate"
    content: str | None = None
    tool_calls: tuple[tuple[str, dict], ...] = ()
    status: int = 200
    error: dict | None = None  # the OpenAI error object sent with an "error"
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


def echo() -> Behaviour:
    """Answers "echo: <the last user message>"."""
    return Behaviour("echo")


def text(content: str) -> Behaviour:
    return Behaviour("answer", content=content)


def demo() -> Behaviour:
    """An answer made up from the request, for the demo (`--demo`; `make run` with HIL_DEMO_LLM=local): for
    the intent agent's schema, the offline keyword model's pick among the intents its prompt lists; for a
    reply's, the facts its prompt gives; for another JSON Schema, its smallest valid instance; else the echo.
    Not an LLM: it shows the way a model's answer goes (HTTP, budgets, accounting), not what one would say."""
    return Behaviour("demo")


def json_answer(value) -> Behaviour:
    """An answer whose content is `value` as a JSON string."""
    return Behaviour("answer", content=json.dumps(value))


def tool_calls(*calls: tuple[str, dict]) -> Behaviour:
    """An answer that calls tools: `tool_calls(("lookup_order", {"order_id": 1}), ...)`."""
    return Behaviour("answer", tool_calls=tuple(calls))


def delayed(seconds: float, behaviour: Behaviour | None = None) -> Behaviour:
    """`behaviour` (by default the echo), after waiting `seconds` before answering."""
    return replace(behaviour or echo(), delay_s=seconds)


def rate_limited(retry_after: int = 1) -> Behaviour:
    return Behaviour("error", status=429, headers={"Retry-After": str(retry_after)},
                     error=_error("Rate limit reached for requests.", "requests", "rate_limit_exceeded"))


def server_error() -> Behaviour:
    return Behaviour("error", status=500, error=_error(
        "The server had an error while processing your request. Sorry about that!", "server_error"))


def wrong_key() -> Behaviour:
    return Behaviour("error", status=401, error=_invalid_key_error())


def hang() -> Behaviour:
    """Never answers: holds the connection until the client gives up or the server stops."""
    return Behaviour("hang")


def truncated_stream(content: str = "This answer is cut off in the middle") -> Behaviour:
    """Sends the first half of the answer, then closes the connection without ending the response."""
    return Behaviour("truncate", content=content)


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict  # names in lower case
    body: dict

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def messages(self) -> list:
        return self.body.get("messages", [])


class LocalLLMServer:
    """The server, on 127.0.0.1 and a free port unless told one. `start()`/`stop()`, or use it as a
    context manager. With `api_key`, a request without `Authorization: Bearer <api_key>` gets a 401.
    `default` answers chat completions that no script does (the echo unless set)."""

    def __init__(self, *, api_key: str | None = None, port: int = 0, models=DEFAULT_MODELS):
        self.api_key = api_key
        self.models = tuple(models)
        self.default = echo()
        self._scripts: dict[str | None, deque[Behaviour]] = {}
        self._received: list[ReceivedRequest] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.llm = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour, model: str | None = None) -> None:
        """Queue behaviours for requests to `model`, or to any chat model when None."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(behaviours)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """The requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._received)

    def start(self) -> "LocalLLMServer":
        # A short poll interval, so that stop() returns at once rather than after up to half a second.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="local-llm", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stops accepting, ends the waits of delayed and hanging answers, and closes every open
        connection, idle keep-alive ones included, so that no client is answered after this."""
        self._stopping.set()
        if self._thread:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler

    def __enter__(self) -> "LocalLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_behaviour(self, model: str | None, chat: bool) -> Behaviour:
        with self._lock:
            for key in (model, None) if chat else (model,):
                if self._scripts.get(key):
                    return self._scripts[key].popleft()
        return self.default if chat else text("")  # any answer behaviour: embed as usual


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall per answer
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams that can be cut off mid-way
    server_version = "hil-local-llm"

    @property
    def llm(self) -> LocalLLMServer:
        return self.server.llm

    def setup(self):
        super().setup()
        with self.llm._lock:
            self.llm._connections.add(self.connection)

    def finish(self):
        with self.llm._lock:
            self.llm._connections.discard(self.connection)
        super().finish()

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, e.g. timed out during a delay

    def log_message(self, format, *args):
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
        self._handle({})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self._handle(body)

    def _handle(self, body):
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?")[0].rstrip("/")
        with self.llm._lock:
            self.llm._received.append(ReceivedRequest(self.command, path, headers, body if isinstance(body, dict) else {}))
        if self.llm.api_key and headers.get("authorization") != f"Bearer {self.llm.api_key}":
            return self._send_json(401, {"error": _invalid_key_error()})
        if not isinstance(body, dict):
            return self._send_json(400, {"error": _error("The body is not a JSON object.", "invalid_request_error")})
        route = (self.command, path)
        if route == ("GET", "/v1/models"):
            return self._send_json(200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "hil-local"} for model in self.llm.models]})
        if route == ("POST", "/v1/chat/completions"):
            return self._chat_completion(body)
        if route == ("POST", "/v1/embeddings"):
            return self._embeddings(body)
        self._send_json(404, {"error": _error(f"Unknown request URL: {self.command} {path}", "invalid_request_error",
                                              "unknown_url")})

    def _chat_completion(self, body: dict):
        behaviour = self.llm._next_behaviour(body.get("model"), chat=True)
        if not self._wait_before_answering(behaviour):
            return
        if behaviour.kind == "demo":
            behaviour = replace(behaviour, kind="answer", content=_demo_answer(body))
        if behaviour.kind == "echo":
            behaviour = text(f"echo: {_last_user_text(body.get('messages') or [])}")
        model = body.get("model") or ""
        usage = _usage(body.get("messages") or [], behaviour)
        if body.get("stream"):
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(model, behaviour, usage if with_usage else None)
        calls = _tool_calls_json(behaviour.tool_calls)
        self._send_json(200, {
            "id": _new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls" if calls else "stop",
                         "message": {"role": "assistant", "content": behaviour.content, "refusal": None,
                                     "tool_calls": calls or None}}],
            "usage": usage,
        }, truncate=behaviour.kind == "truncate")

    def _stream(self, model: str, behaviour: Behaviour, usage: dict | None):
        chunk_id, created = _new_id("chatcmpl"), int(time.time())

        def chunk(choices, **extra):
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra}

        def delta(finish_reason=None, **fields):
            return chunk([{"index": 0, "delta": fields, "logprobs": None, "finish_reason": finish_reason}])

        pieces = re.findall(r"\S*\s*", behaviour.content or "")[:-1]  # words with their trailing spaces
        events = [delta(role="assistant", content="")]
        events += [delta(content=piece) for piece in pieces]
        events += [delta(tool_calls=[{"index": i, **call}]) for i, call in enumerate(_tool_calls_json(behaviour.tool_calls))]
        events.append(delta(finish_reason="tool_calls" if behaviour.tool_calls else "stop"))
        if usage:
            events.append(chunk([], usage=usage))

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", _new_id("req"))
        self.end_headers()
        if behaviour.kind == "truncate":
            events = events[:1 + len(pieces) // 2]
        for event in events:
            self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        if behaviour.kind == "truncate":
            self.close_connection = True  # without the last, empty chunk: the client sees the body cut short
            return
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _embeddings(self, body: dict):
        behaviour = self.llm._next_behaviour(body.get("model"), chat=False)
        if not self._wait_before_answering(behaviour):
            return
        texts = [body["input"]] if isinstance(body.get("input"), str) else body.get("input")
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return self._send_json(400, {"error": _error(
                "input must be a non-empty string or list of non-empty strings (token arrays are not supported).",
                "invalid_request_error", param="input")})
        vectors = embed(texts)
        if body.get("encoding_format") == "base64":  # what the openai client asks for unless told otherwise
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        tokens = sum(len(t.split()) for t in texts)
        self._send_json(200, {
            "object": "list", "model": body.get("model") or "",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    def _wait_before_answering(self, behaviour: Behaviour) -> bool:
        """Plays the behaviour's delay, hang or error; False when nothing more is to be sent."""
        if behaviour.delay_s and self.llm._stopping.wait(behaviour.delay_s):
            self.close_connection = True
            return False
        if behaviour.kind == "hang":
            while not self.llm._stopping.wait(0.05) and not self._client_gone():
                pass
            self.close_connection = True
            return False
        if behaviour.kind == "error":
            self._send_json(behaviour.status, {"error": behaviour.error}, headers=behaviour.headers)
            return False
        return True

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _send_json(self, status: int, payload: dict, headers: dict | None = None, truncate: bool = False):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", _new_id("req"))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if truncate:
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            self.wfile.write(data)

    def _write_chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"message": message, "type": type_, "param": param, "code": code}


def _invalid_key_error() -> dict:
    return _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _tool_calls_json(calls) -> list[dict]:
    return [{"id": _new_id("call"), "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for name, args in calls]


def _text_of(content) -> str:
    """A message's text, whether its content is a string or a list of parts."""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _last_user_text(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _text_of(users[-1].get("content")) if users else ""


def _demo_answer(body: dict) -> str:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    system = "\n".join(_text_of(m.get("content")) for m in messages if m.get("role") == "system")
    user = _last_user_text(messages)
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return f"echo: {user}"
    properties = schema.get("properties") or {}
    if "intent" in properties:  # agents/prompts/intent.txt lists them as "- name: what it covers"
        labels = dict(re.findall(r"^- (\S+): (.*)$", system, re.MULTILINE))
        found = OfflineModel().classify(user, labels, fallback=(properties["intent"].get("enum") or ["unknown"])[-1])
        return json.dumps({"intent": found.label, "confidence": found.confidence, "entities": found.entities})
    if "reply" in properties:  # agents/prompts/responder.txt gives the facts as JSON after this line
        facts = json.loads(system.split("Facts gathered so far (JSON):", 1)[-1].split("\n\nAnswer", 1)[0] or "{}")
        scalars = {node: {k: v for k, v in output.items() if isinstance(v, (str, int, float)) and v is not True}
                   for node, output in facts.items() if isinstance(output, dict)}
        said = "; ".join(f"{node}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
                         for node, values in scalars.items() if values)
        return json.dumps({"reply": f"(HIL's local demo model) From our records: {said or 'nothing yet'}."[:600]})
    return json.dumps(_smallest(schema))


def _smallest(schema: dict):
    """A small instance valid against simple schemas: required properties only, enums' first values."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        return {name: _smallest(schema["properties"].get(name, {})) for name in schema.get("required", [])}
    return {"array": [], "string": "x" * schema.get("minLength", 1), "integer": schema.get("minimum", 0),
            "number": schema.get("minimum", 0), "boolean": False, "null": None}.get(kind, None)


def _usage(messages: list, behaviour: Behaviour) -> dict:
    """Token counts, as words: deterministic, and enough to test accounting with."""
    prompt = sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    completion = len((behaviour.content or "").split()) + sum(len(json.dumps(a).split()) for _, a in behaviour.tool_calls)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", help="the key clients must send as 'Authorization: Bearer <key>'")
    parser.add_argument("--latency-ms", type=float, default=0, help="how long each unscripted answer takes")
    parser.add_argument("--demo", action="store_true", help="answer as `demo()` says, not with the echo")
    args = parser.parse_args(argv)
    server = LocalLLMServer(api_key=args.api_key, port=args.port)
    server.default = delayed(args.latency_ms / 1000, demo() if args.demo else None)
    print(f"local OpenAI-compatible server on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
