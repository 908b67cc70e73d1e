"""Agents from installed plug-ins: found by their `hil.agents` entry points, their configs checked by the
spec validator, a broken one left out without taking the rest down, and one running in a workflow.

The example plug-in, plugins/hil-canbus, is installed in the test environment (requirements.txt)."""

import json
import logging
import os
import textwrap

import pytest
from django.conf import settings

from agents import builtin, registry
from core.errors import ServiceError
from workflows import services, spec
from workflows.models import Message, WorkflowVersion
from conftest import verified_login

# A truck's telemetry (a node that would fetch it in real life), decoded, and a reply quoting it.
TRUCK = """
entry: telemetry
nodes:
  - id: telemetry
    agent: test_echo
    config:
      output:
        frames:
          - {id: 0x0CF00400, data: %s}
          - {id: "18FEF100", data: FF0050FFFFFFFFFF}
          - {id: 0x18FEEE00, data: 7D0000FFFFFFFFFF}
  - id: decode
    agent: can_decode
    config:
      input: telemetry.frames
      strict: %s
      frames:
        - id: %s
          name: EEC1
          signals:
            - {name: engine_speed, start: 24, length: 16, byte_order: little_endian, scale: 0.125, unit: rpm}
        - id: 0x18FEF100
          name: CCVS
          signals:
            - {name: speed, start: 8, length: 16, scale: 0.00390625, unit: km/h}
  - id: reply
    agent: responder
    config:
      template: "Engine at {{ decode.frames[?name=='EEC1'] | [0].signals.engine_speed }} rpm,
        {{ decode.frames[?name=='CCVS'] | [0].signals.speed }} km/h ({{ length(decode.skipped) }} frame skipped)."
edges:
  - {from: telemetry, to: decode}
  - {from: decode, to: reply}
  - {from: reply, to: FINISH}
"""


def truck(data="F07D7D401F00FFFF", strict="false", frame_id="0x0CF00400") -> str:
    return TRUCK % (data, strict, frame_id)


def test_the_installed_plugin_is_found_by_its_entry_point_without_hil_agent_modules(manage_py):
    assert not any("canbus" in module for module in settings.HIL_AGENT_MODULES)
    # A fresh process, as a worker starts: nothing has imported the plug-in, HIL_AGENT_MODULES is empty.
    shown = manage_py("shell", "--no-imports", "-c",
                      "import json; from agents import registry; "
                      "print(json.dumps([sorted(registry.agent_names()), registry.get('can_decode').__module__]))",
                      HIL_DEBUG="1", HIL_AGENT_MODULES="", DATABASE_URL=os.environ["DATABASE_URL"],
                      REDIS_URL=os.environ["REDIS_URL"])
    assert shown.returncode == 0, shown.stderr
    names, module = json.loads(shown.stdout.strip().splitlines()[-1])
    assert "can_decode" in names and {"intent", "responder", "rules"} <= set(names)
    assert "test_echo" not in names  # only what the process loaded by itself
    assert module == "hil_canbus.agent"
    assert registry.config_schema_of("can_decode")["required"] == ["input", "frames"]


def test_a_spec_using_the_plugin_agent_loads():
    loaded = spec.load(truck())
    assert spec.node(loaded, "decode")["config"]["frames"][0]["id"] == 0x0CF00400  # YAML's hex integer


@pytest.mark.parametrize("change,message", [
    ({"frame_id": "x"}, "node 'decode' (agent 'can_decode'): config/frames/0/id: 'x' is not of type 'integer'"),
    ({"strict": "sometimes"}, "node 'decode' (agent 'can_decode'): config/strict: 'sometimes' is not of type 'boolean'"),
], ids=["id not an integer", "strict not a boolean"])
def test_a_wrong_plugin_config_is_rejected_naming_node_agent_and_path(change, message):
    with pytest.raises(spec.SpecError) as error:
        spec.load(truck(**change))
    assert message in error.value.errors


def test_a_wrong_signal_is_rejected_with_its_path():
    bad = truck().replace("{name: speed, start: 8, length: 16,", "{name: speed, start: 8, length: 65, endian: big,")
    with pytest.raises(spec.SpecError) as error:
        spec.load(bad)
    assert error.value.errors == [
        "node 'decode' (agent 'can_decode'): config/frames/1/signals/0: Additional properties are not allowed "
        "('endian' was unexpected)",
        "node 'decode' (agent 'can_decode'): config/frames/1/signals/0/length: 65 is greater than the maximum of 64",
    ]


@pytest.mark.django_db
def test_a_wrong_plugin_config_added_in_the_admin_is_kept_as_a_draft_that_cannot_be_published(client, tenant,
                                                                                                 publish):
    from django.contrib.auth import get_user_model

    verified_login(client, get_user_model().objects.create_superuser("root", password="x"))
    workflow = publish(tenant, truck())
    response = client.post("/admin/workflows/workflowversion/add/",
                           {"workflow": workflow.pk, "spec_yaml": truck(frame_id="x")}, follow=True)
    assert "cannot be published" in response.content.decode()
    draft = WorkflowVersion.objects.get(workflow=workflow, number=2)
    message = "node 'decode' (agent 'can_decode'): config/frames/0/id: 'x' is not of type 'integer'"
    assert draft.errors == [message]
    page = client.get(f"/admin/workflows/workflowversion/{draft.pk}/change/").content.decode()
    assert message.replace("'", "&#x27;") in page
    with pytest.raises(ServiceError, match=r"wf v2 has errors and cannot be published: node 'decode' \(agent "):
        services.workflow_version_publish(version=draft)
    workflow.refresh_from_db()
    assert workflow.live_version.number == 1


@pytest.mark.django_db
def test_a_workflow_decodes_a_trucks_frames_through_the_engine(tenant, converse, drive):
    conversation, run = converse(tenant, truck(), text="how is truck 7 doing?")
    run = drive(run)
    assert run.sink == "FINISH", run.reason
    assert run.state["decode"] == {
        "frames": [
            {"id": "0x0CF00400", "name": "EEC1", "signals": {"engine_speed": 1000.0}, "units": {"engine_speed": "rpm"}},
            {"id": "0x18FEF100", "name": "CCVS", "signals": {"speed": 80.0}, "units": {"speed": "km/h"}},
        ],
        "skipped": [{"index": 2, "reason": "id 0x18FEEE00 is not in the signal table"}],
    }
    reply = Message.objects.get(conversation=conversation, role="ai").text
    assert reply == "Engine at 1000.0 rpm, 80.0 km/h (1 frame skipped)."


@pytest.mark.django_db
def test_a_strict_decoder_hands_malformed_frames_over_without_retrying(tenant, converse, drive):
    _, run = converse(tenant, truck(data="F07D7D4Z1F00FFFF", strict="true"))
    run = drive(run)
    assert run.sink == "HANDOVER"
    assert list(run.steps.filter(node_id="decode").values_list("attempt", "status")) == [(1, "failed")]
    assert "frame 0: data 'F07D7D4Z1F00FFFF' is not hex bytes (id 0x0CF00400)" in run.reason


# --- a broken plug-in ---------------------------------------------------------------------------------------

BROKEN = {
    # Registers an agent, then fails: the agent must not stay behind, half imported.
    "hil_broken_plugin": """
        from agents.registry import register

        @register("broken_agent")
        def broken_agent(ctx):
            return {}

        raise RuntimeError("the vendor SDK is not installed")
    """,
    "hil_bad_schema_plugin": """
        from agents.registry import register

        @register("bad_schema_agent", config_schema={"type": "objekt"})
        def bad_schema_agent(ctx):
            return {}
    """,
    "hil_clashing_plugin": """
        from agents.registry import register

        @register("intent")
        def intent(ctx):
            return {"intent": "hijacked"}
    """,
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    """An installed distribution, hil-broken-plugins, with three `hil.agents` entry points that fail to load,
    and a registry that loads again (its state is put back afterwards)."""
    for module, source in BROKEN.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = tmp_path / "hil_broken_plugins-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: hil-broken-plugins\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[hil.agents]\nbroken = hil_broken_plugin\nbad_schema = hil_bad_schema_plugin\nclash = hil_clashing_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.agent_names()  # everything else loaded as usual first
    for name in ("_agents", "_queues", "_config_schemas", "_failed_plugins"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    monkeypatch.setattr(registry, "_loaded", False)


def test_a_plugin_that_fails_to_load_is_logged_and_left_out(broken_plugins, caplog):
    with caplog.at_level(logging.ERROR, logger="agents.registry"):
        names = registry.agent_names()
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("'broken'" in m and "hil-broken-plugins" in m and "RuntimeError: the vendor SDK is not installed" in m
               for m in logged), logged
    assert any("'bad_schema'" in m and "SchemaError: 'objekt' is not valid" in m for m in logged), logged
    assert any("'clash'" in m and "ValueError: agent 'intent' is already registered" in m for m in logged), logged
    assert len(logged) == 3

    assert "broken_agent" not in names and "bad_schema_agent" not in names
    assert {"intent", "responder", "rules", "order_lookup", "issue_refund", "can_decode", "test_echo"} <= names
    assert registry.get("intent") is builtin.intent


def test_a_spec_using_a_broken_plugins_agent_is_rejected_and_the_others_still_load(broken_plugins):
    broken = "entry: a\nnodes: [{id: a, agent: broken_agent}]\nedges: [{from: a, to: FINISH}]\n"
    with pytest.raises(spec.SpecError) as error:
        spec.load(broken)
    [message] = error.value.errors
    assert message.startswith("node 'a': unknown agent 'broken_agent' (known: ")
    assert "plug-in 'broken' failed to load: RuntimeError: the vendor SDK is not installed" in message
    assert spec.load(truck())["entry"] == "telemetry"
