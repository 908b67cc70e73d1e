"""Agents by name. Built-ins register themselves; custom agents come from the modules
listed in the HIL_AGENT_MODULES setting, imported once on first use.

An agent is a function `(ctx: StepContext) -> dict | AgentResult`.
"""

import importlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from django.conf import settings

_agents: dict[str, Callable] = {}
_loaded = False


@dataclass(frozen=True)
class StepContext:
    tenant_id: int
    run_id: str
    node_id: str
    attempt: int
    idempotency_key: str  # the same for a redelivered attempt: pass it to every side effect
    config: dict
    state: dict


@dataclass
class AgentResult:
    output: dict
    cost: Decimal = Decimal(0)
    usage: dict = field(default_factory=dict)


def register(name: str):
    def decorate(fn):
        if name in _agents and _agents[name] is not fn:
            raise ValueError(f"agent {name!r} is already registered")
        _agents[name] = fn
        return fn

    return decorate


def _load():
    global _loaded
    if not _loaded:
        importlib.import_module("agents.builtin")
        for module in settings.HIL_AGENT_MODULES:
            importlib.import_module(module)
        _loaded = True


def agent_names() -> set[str]:
    _load()
    return set(_agents)


def get(name: str) -> Callable:
    _load()
    return _agents[name]
