"""Agents that think with a model over the run's state: the planner and the reasoner."""

import json
from decimal import Decimal

from tools.mediation import tool_call, tool_specs

from . import registry, router
from .builtin import prompt
from .registry import AgentResult, StepContext, StepFailure, register


def plan_schema(uses: list[str]) -> dict:
    step = {"type": "object", "required": ["step", "use", "why"],
            "properties": {"step": {"type": "string"}, "use": {"enum": uses}, "why": {"type": "string"}}}
    return {"type": "object", "required": ["plan", "question"],
            "properties": {"plan": {"type": "array", "items": step}, "question": {"type": ["string", "null"]}}}


ANSWER_SCHEMA = {"type": "object", "required": ["reasoning", "answer", "confidence"], "properties": {
    "reasoning": {"type": "string"}, "answer": {"type": "string", "minLength": 1},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}


def facts(ctx: StepContext) -> str:
    """The run's state as the model sees it: the customer's words and each earlier node's output."""
    return json.dumps(ctx.state, indent=1, default=str)


@register("planner", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"capabilities": {"type": "object", "additionalProperties": {"type": "string"}},
                   "profile": {"type": "string"}, "cache": router.CACHE_CONFIG,
                   "max_tokens": {"type": "integer", "minimum": 1}}})
def planner(ctx: StepContext) -> AgentResult:
    """Plan the request: steps, each naming an agent or tool and why, kept as the run's `plan` artifact; or,
    when the request is unclear, a clarifying question, sent as the reply (route `when: <node>.question`
    to FINISH: the turn ends and the customer's answer starts the next). Config: `capabilities`
    {name: what it does} (by default every registered agent), `profile` (default `balanced`)."""
    capabilities = ctx.config.get("capabilities") or {
        name: (registry.get(name).__doc__ or name).split("\n")[0] for name in sorted(registry.agent_names())}

    def offline() -> dict:  # not a plan anyone thought of: the capabilities in the order configured
        return {"plan": [{"step": about, "use": name, "why": "offline model: the configured order"}
                         for name, about in capabilities.items()], "question": None}

    answer = router.complete(
        ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config.get("profile", "balanced"),
        schema=plan_schema(sorted(capabilities)), max_tokens=ctx.config.get("max_tokens", 800),
        offline=offline, messages=[
            {"role": "system", "content": prompt("planner", facts=facts(ctx), capabilities="\n".join(
                f"- {name}: {about}" for name, about in capabilities.items()))},
            {"role": "user", "content": ctx.state["input"]["text"]}])
    question = answer.data["question"] or None
    output = {"plan": [] if question else answer.data["plan"], "question": question}
    if question:
        output["reply"] = question
    else:
        ctx.emit("artifact", {"node": ctx.node_id, "kind": "plan", "plan": output["plan"]})
    return AgentResult(output, cost=answer.cost, usage=answer.usage)


@register("reasoner", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"task": {"type": "string"}, "profile": {"type": "string"}, "cache": router.CACHE_CONFIG,
                   "max_tokens": {"type": "integer", "minimum": 1},
                   "max_tool_rounds": {"type": "integer", "minimum": 0, "maximum": 20}}})
def reasoner(ctx: StepContext) -> AgentResult:
    """Work toward an answer over the run's state and earlier artifacts, calling the tools granted to the node
    (each call through tools.mediation: a refusal is shown to the model, which may answer or try otherwise).
    Config: `task` (what to answer), `profile` (default `powerful`), `max_tool_rounds` (default 5). Offline
    there is nothing to reason with: the node fails to its failure path (HANDOVER) saying so."""
    task = ctx.config.get("task", "Answer the customer's request.")

    def offline():
        raise StepFailure(f"the reasoner needs a model, and profile '{ctx.config.get('profile', 'powerful')}' "
                          "has none for this tenant")

    messages = [{"role": "system", "content": prompt("reasoner", task=task, facts=facts(ctx))},
                {"role": "user", "content": ctx.state["input"]["text"]}]
    specs = tool_specs(ctx)
    rounds, cost, calls = ctx.config.get("max_tool_rounds", 5) if specs else 0, Decimal(0), []
    for round_ in range(rounds + 1):
        answer = router.complete(
            ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config.get("profile", "powerful"),
            schema=ANSWER_SCHEMA, max_tokens=ctx.config.get("max_tokens", 1000), offline=offline, messages=messages,
            tools=specs if round_ < rounds else None)
        cost += answer.cost
        if not answer.tool_calls:
            break
        messages.append({"role": "assistant", "content": answer.text or None, "tool_calls": answer.tool_calls})
        for call in answer.tool_calls:
            name = call["function"]["name"].replace("__", ".")
            try:
                args = json.loads(call["function"]["arguments"] or "{}")
            except json.JSONDecodeError:
                args = call["function"]["arguments"]  # not an object: refused (and audited) as any other would be
            result = tool_call(ctx, name, args)
            calls.append({"tool": name, "refused": bool(result.get("refused"))})
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
    if answer.data is None:
        raise StepFailure(f"the model still called tools after {rounds} rounds")
    return AgentResult({**answer.data, "tool_calls": calls}, cost=cost, usage=answer.usage)
