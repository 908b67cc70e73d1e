import pytest

from agents.local_llm import LocalLLMServer

LLM_TEST_KEY = "sk-hil-test-key"


@pytest.fixture
def llm_server():
    """A local OpenAI-compatible server on a free port of 127.0.0.1, checking the key `LLM_TEST_KEY`
    (also `llm_server.api_key`): `.base_url`, `.script(...)`, `.requests`. See agents/local_llm.py."""
    with LocalLLMServer(api_key=LLM_TEST_KEY) as server:
        yield server
