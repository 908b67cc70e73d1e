"""The local OpenAI-compatible server, driven by the real `openai` client over real HTTP."""

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from core import embeddings
from agents.local_llm import (LocalLLMServer, delayed, hang, json_answer, rate_limited, server_error, text,
                              tool_calls, truncated_stream, wrong_key)
from agents.tests.conftest import LLM_TEST_KEY

USER = [{"role": "user", "content": "Where is my order?"}]


def client(server, *, api_key=LLM_TEST_KEY, timeout=30.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def chat(server, messages=USER, model="hil-local-chat", **kwargs):
    timeout = kwargs.pop("timeout", 30.0)
    return client(server, timeout=timeout).chat.completions.create(model=model, messages=messages, **kwargs)


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def test_a_scripted_text_answer_then_the_echo(llm_server):
    llm_server.script(text("Your order ships tomorrow."))

    answer = chat(llm_server)
    assert answer.object == "chat.completion" and answer.id and answer.created > 0
    assert answer.model == "hil-local-chat"
    choice = answer.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant", "Your order ships tomorrow.", "stop")
    assert choice.message.tool_calls is None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (4, 4, 8)

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "refund order 5"}]
    assert chat(llm_server, messages).choices[0].message.content == "echo: refund order 5"


def test_a_json_answer(llm_server):
    llm_server.script(json_answer({"intent": "refund", "order_id": 5}))

    answer = chat(llm_server, response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content) == {"intent": "refund", "order_id": 5}


def test_tool_calls(llm_server):
    llm_server.script(tool_calls(("lookup_order", {"order_id": 5}), ("refund", {"order_id": 5, "amount": "13.86"})))

    answer = chat(llm_server, tools=[{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "lookup_order", {"order_id": 5}), ("function", "refund", {"order_id": 5, "amount": "13.86"})]
    assert len({c.id for c in calls}) == 2


def test_streaming_ends_with_usage_when_asked(llm_server):
    llm_server.script(text("One two three four five."), text("Not counted."))

    chunks = list(chat(llm_server, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "One two three four five."
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5  # it really streams
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens, chunks[-1].usage.total_tokens) == (
        4, 5, 9)

    chunks = list(chat(llm_server, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Not counted."
    assert all(c.usage is None for c in chunks)


def test_streamed_tool_calls(llm_server):
    llm_server.script(tool_calls(("lookup_order", {"order_id": 7})))

    chunks = list(chat(llm_server, stream=True))
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "lookup_order", {"order_id": 7})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_429_is_a_rate_limit_error_with_retry_after(llm_server):
    llm_server.script(rate_limited(retry_after=7))

    with pytest.raises(openai.RateLimitError) as caught:
        chat(llm_server)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert chat(llm_server).choices[0].message.content == "echo: Where is my order?"  # one request only


def test_500_is_an_internal_server_error(llm_server):
    llm_server.script(server_error())

    with pytest.raises(openai.InternalServerError) as caught:
        chat(llm_server)
    assert caught.value.status_code == 500 and caught.value.type == "server_error"


def test_a_scripted_401_is_an_authentication_error(llm_server):
    llm_server.script(wrong_key())

    with pytest.raises(openai.AuthenticationError) as caught:
        chat(llm_server)
    assert caught.value.code == "invalid_api_key"


def test_the_server_checks_the_key_and_logs_which_was_sent(llm_server):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(llm_server, api_key="sk-wrong").chat.completions.create(model="hil-local-chat", messages=USER)
    assert caught.value.code == "invalid_api_key"
    assert chat(llm_server).choices[0].message.content == "echo: Where is my order?"

    assert [r.headers["authorization"] for r in llm_server.requests] == ["Bearer sk-wrong", f"Bearer {LLM_TEST_KEY}"]
    assert [(r.path, r.model, r.messages) for r in llm_server.requests] == [
        ("/v1/chat/completions", "hil-local-chat", USER)] * 2


def test_without_a_key_of_its_own_any_key_is_accepted():
    with LocalLLMServer() as server:
        answer = client(server, api_key="sk-anything").chat.completions.create(model="m", messages=USER)
        assert answer.choices[0].message.content == "echo: Where is my order?"


def test_a_hang_ends_in_a_timeout_of_the_client(llm_server):
    llm_server.script(hang())

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(llm_server, timeout=0.5)
    assert time.monotonic() - started < 15  # the client's timeout ended it, not the server
    assert chat(llm_server).choices[0].message.content == "echo: Where is my order?"


def test_stopping_the_server_ends_a_hang_at_once():
    server = LocalLLMServer().start()
    server.script(hang())
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(_error_of(lambda: chat(server, timeout=120))))
    caller.start()
    wait_for(lambda: server.requests)

    server.stop()
    caller.join(timeout=30)
    assert not caller.is_alive()
    assert isinstance(outcome[0], openai.APIConnectionError)
    assert not isinstance(outcome[0], openai.APITimeoutError)


def test_once_stopped_it_answers_nothing_not_even_on_a_kept_alive_connection():
    server = LocalLLMServer().start()
    kept_alive = client(server)
    assert kept_alive.chat.completions.create(model="m", messages=USER).choices[0].message.content

    server.stop()
    with pytest.raises(openai.APIConnectionError):
        kept_alive.chat.completions.create(model="m", messages=USER)


def test_a_latency_before_answering(llm_server):
    llm_server.script(delayed(0.3, text("Sorry for the wait.")), delayed(60))

    started = time.monotonic()
    assert chat(llm_server).choices[0].message.content == "Sorry for the wait."
    assert time.monotonic() - started >= 0.3
    with pytest.raises(openai.APITimeoutError):
        chat(llm_server, timeout=0.5)


def test_a_truncated_stream_fails_while_iterating(llm_server):
    llm_server.script(truncated_stream("one two three four five six seven eight"))

    received = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for chunk in chat(llm_server, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert not isinstance(caught.value, openai.APITimeoutError)  # cut off, not left waiting
    assert "".join(received) == "one two three four "


def test_a_truncated_answer_fails(llm_server):
    llm_server.script(truncated_stream())

    with pytest.raises(openai.APIConnectionError) as caught:
        chat(llm_server)
    assert not isinstance(caught.value, openai.APITimeoutError)


def test_scripts_per_model(llm_server):
    llm_server.script(text("from the big model"), model="big")
    llm_server.script(text("from any model"))

    assert chat(llm_server, model="small").choices[0].message.content == "from any model"
    assert chat(llm_server, model="small").choices[0].message.content == "echo: Where is my order?"
    assert chat(llm_server, model="big").choices[0].message.content == "from the big model"
    assert chat(llm_server, model="big").choices[0].message.content == "echo: Where is my order?"
    assert [r.model for r in llm_server.requests] == ["small", "small", "big", "big"]


def test_models_are_listed(llm_server):
    assert [m.id for m in client(llm_server).models.list()] == ["hil-local-chat", "hil-local-embed"]


def test_embeddings_are_real_sentence_embeddings(llm_server):
    llm_server.script(text("for the next chat, not for embeddings"))
    sentences = ["How do I get a refund for my order?", "I want my money back for this purchase.",
                 "The weather in Paris is sunny today."]

    result = client(llm_server, timeout=300).embeddings.create(model="hil-local-embed", input=sentences)
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2] and result.model == "hil-local-embed"
    assert [len(v) for v in vectors] == [384] * 3
    refund, money_back, weather = vectors
    assert cosine(refund, money_back) > cosine(refund, weather) + 0.3
    assert result.usage.prompt_tokens == result.usage.total_tokens == 24

    as_floats = client(llm_server).embeddings.create(model="x", input=sentences[0], encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(refund, abs=1e-6)  # base64 (the default) and floats agree
    assert chat(llm_server).choices[0].message.content == "for the next chat, not for embeddings"


def test_embeddings_fail_as_scripted_for_their_model(llm_server):
    llm_server.script(rate_limited(retry_after=2), model="hil-local-embed")

    with pytest.raises(openai.RateLimitError):
        client(llm_server).embeddings.create(model="hil-local-embed", input="hello")


def test_embed_gives_unit_vectors_that_rank_by_meaning():
    query, close, far = embeddings.embed(["cancel my subscription", "I'd like to stop my plan", "a recipe for bread"])
    assert len(query) == embeddings.DIMENSIONS == 384
    assert math.hypot(*query) == pytest.approx(1.0, abs=1e-4)
    assert cosine(query, close) > cosine(query, far) + 0.2
    assert embeddings.embed(["cancel my subscription"])[0] == pytest.approx(query, abs=1e-6)
    assert embeddings.embed([]) == []


def test_it_runs_as_a_process():
    process = subprocess.Popen([sys.executable, "-m", "agents.local_llm", "--port", "0", "--api-key", "sk-proc"],
                               cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().split()[-1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        answer = openai.OpenAI(base_url=base_url, api_key="sk-proc", max_retries=0, timeout=30).chat.completions.create(
            model="hil-local-chat", messages=USER)
        assert answer.choices[0].message.content == "echo: Where is my order?"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _error_of(call):
    try:
        call()
    except Exception as error:
        return error
    return None
