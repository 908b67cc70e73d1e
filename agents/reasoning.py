"""Agents that think with a model over the run's state: the planner and the reasoner."""

import json

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
                   "max_tokens": {"type": "integer", "minimum": 1}}})
def reasoner(ctx: StepContext) -> AgentResult:
    """Work toward an answer over the run's state and earlier artifacts. Config: `task` (what to answer),
    `profile` (default `powerful`). Offline there is nothing to reason with: the node fails to its
    failure path (HANDOVER) saying so."""
    task = ctx.config.get("task", "Answer the customer's request.")

    def offline():
        raise StepFailure(f"the reasoner needs a model, and profile '{ctx.config.get('profile', 'powerful')}' "
                          "has none for this tenant")

    answer = router.complete(
        ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config.get("profile", "powerful"),
        schema=ANSWER_SCHEMA,
        max_tokens=ctx.config.get("max_tokens", 1000), offline=offline, messages=[
            {"role": "system", "content": prompt("reasoner", task=task, facts=facts(ctx))},
            {"role": "user", "content": ctx.state["input"]["text"]}])
    return AgentResult(answer.data, cost=answer.cost, usage=answer.usage)
