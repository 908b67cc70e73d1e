import pytest

from agents.local_llm import LocalLLMServer

LLM_TEST_KEY = "sk-hil-test-key"


@pytest.fixture
def llm_server():
    """A local OpenAI-compatible server on a free port of 127.0.0.1, checking the key `LLM_TEST_KEY`
    (also `llm_server.api_key`): `.base_url`, `.script(...)`, `.requests`. See agents/local_llm.py."""
    with LocalLLMServer(api_key=LLM_TEST_KEY) as server:
        yield server


@pytest.fixture
def model(tenant, llm_server):
    """The local server as `tenant`'s model (endpoint `local`) for the profile `powerful`: script its answers."""
    from agents.services import endpoint_save, profile_save
    from tools.services import secret_set

    secret_set(tenant=tenant, name="llm-key", value=LLM_TEST_KEY)
    endpoint_save(tenant=tenant, name="local", base_url=llm_server.base_url, api_key_secret="llm-key", models=[
        {"model": "hil-local-chat", "context_window": 16000, "input_price": "1", "output_price": "2"}])
    profile_save(tenant=tenant, name="powerful", entries=[("local", "hil-local-chat")])
    return llm_server
