"""How a run reaches people. The approvals app sits above workflows and owns approval requests
and handover tickets; it registers its services here at start-up (approvals/apps.py), so that
the engine can ask for a decision or a handover without importing it."""

from typing import Protocol


class Desk(Protocol):
    def approval_open(self, *, run, node_id: str, call_key: str, request: dict):
        """The approval request a waiting run waits on (the same one if asked again); returns it."""

    def handover_open(self, *, run, reason: str):
        """The conversation's live handover ticket, opened for `run` if there is none; returns it."""

    def approvals_withdraw(self, *, run) -> None:
        """Withdraw the pending approval requests of a run that was cancelled."""


desk: Desk


def register(implementation: Desk) -> None:
    global desk
    desk = implementation
