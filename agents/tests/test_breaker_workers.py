"""A model's circuit breaker as real workers see it: failures counted in one worker process keep another's
calls away from the model, and a probe after the cooldown closes it for everyone."""

import pytest

from agents import breaker, local_llm
from agents.models import LLMCall
from agents.services import endpoint_save, profile_save
from agents.tests.conftest import LLM_TEST_KEY
from agents.tests.test_router import REFUND, chats, classify
from core.redis import client
from tools.services import secret_set
from workflows import services
from workflows.models import Run
from workflows.tests.conftest import start_worker, wait  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_breaker_opened_by_one_worker_keeps_another_away_until_a_probe_closes_it(
        tenant, publish, llm_server, start_worker, wait, monkeypatch):
    monkeypatch.setenv("HIL_BREAKER_FAILURES", "2")
    monkeypatch.setenv("HIL_BREAKER_COOLDOWN_S", "600")  # longer than the test: it ends the cooldown itself
    secret_set(tenant=tenant, name="llm-key", value=LLM_TEST_KEY)
    for name, model in (("main", "primary"), ("backup", "spare")):
        endpoint_save(tenant=tenant, name=name, base_url=llm_server.base_url, api_key_secret="llm-key", models=[
            {"model": model, "context_window": 8000, "input_price": "1.0", "output_price": "2.0"}])
    profile_save(tenant=tenant, name="fast", entries=[("main", "primary"), ("backup", "spare")])
    workflow = publish(tenant, classify().replace("fallback: unknown}", "fallback: unknown, cache: none}"))  # every turn asks
    llm_server.script(local_llm.server_error(), local_llm.server_error(), model="primary")
    llm_server.script(*[local_llm.json_answer(REFUND)] * 3, model="spare")

    def turn(n) -> Run:
        conversation = services.conversation_start(tenant=tenant, workflow_slug=workflow.slug)
        run = services.message_post(conversation=conversation, text="refund", turn_id=f"t{n}")[0].run
        wait(lambda: Run.objects.filter(id=run.id, status="done").exists(), what=f"run {n}")
        return Run.objects.get(id=run.id)

    first = start_worker()
    assert [turn(n).sink for n in (1, 2)] == ["FINISH", "FINISH"]  # primary failed twice: the breaker opens
    key = breaker.model_key(tenant_id=tenant.id, endpoint=LLMCall.objects.filter(model="primary").first().endpoint_id,
                            model="primary")
    assert breaker.state(key) == "open"
    start_worker()  # another process
    first.stop()
    third = turn(3)
    assert list(LLMCall.objects.filter(run=third).order_by("created_at").values_list("model", "outcome")) == [
        ("primary", "breaker_open"), ("spare", "ok")]
    assert chats(llm_server) == ["primary", "spare", "primary", "spare", "spare"]

    llm_server.script(local_llm.json_answer(REFUND), model="primary")  # it recovered
    seconds, micros = client().time()
    client().set(f"{key}:open", seconds * 1000 + micros // 1000)  # the cooldown ends now (Redis's clock)
    assert breaker.state(key) == "half-open"
    assert turn(4).sink == "FINISH" and chats(llm_server)[-1] == "primary"  # the probe
    assert breaker.state(key) == "closed"
