"""Whether the agent an AI SDK stream waits for is gone (docs/protocol.md §21.4).

A chat stream is *watched* once an agent has been present in the session while it was open
(a presence entry with role ``agent`` in the hub's roster, §14) or the answer has begun (a
run or message of it is stored). From then on, when the session has had no agent present
and no agent output (a run event or an agent message event) for ``grace`` seconds while the
answer is not over, the agent is gone: the stream ends with an error. An agent that comes
back within the grace (a restarted agent re-puts its presence when it resumes the run, §19)
or keeps producing output keeps the stream open.

A stream for a fresh user message in a session where no agent has been seen is not watched:
an inbox agent (§18) writes its presence only when it starts the run, and the message waits
durably in the inbox for an agent that starts later, so the stream waits for it too.
"""

from __future__ import annotations

from services.gateway.aisdk_answer import Answer
from services.gateway.roster import Roster
from shared import wire

GONE = "the agent went away before answering; retry or resume later"


def agents_present(roster: Roster) -> bool:
    """Whether any agent connection is in the session now."""
    return any(
        change.entry is not None and change.entry.role == "agent"
        for change in roster.members.values()
    )


def agent_output(event: wire.Event) -> bool:
    """Whether a stored event is something an agent produced (a run or agent message event)."""
    kind = event.get("type")
    if kind in wire.RUN_TYPES:
        return True
    return kind in wire.MESSAGE_TYPES and event.get("role") != "user"


class AgentWatch:
    """The grace clock of one stream: ``gone`` is asked about once a second."""

    def __init__(self, grace: float, now: float) -> None:
        self.grace = grace
        self.watched = False
        self.expired = False  # gone was answered yes (once)
        self.alive_at = now  # the last moment an agent was known to be there

    def output(self, now: float) -> None:
        """An agent produced something in the session."""
        self.alive_at = now

    def gone(self, roster: Roster | None, answer: Answer, now: float) -> bool:
        """Whether to give up on the answer now."""
        if self.grace <= 0 or self.expired or answer.done or roster is None:
            return False
        if agents_present(roster):
            self.watched = True
            self.alive_at = now
            return False
        if not self.watched:
            if not answer.begun:
                return False  # no agent seen yet: wait for one to start
            self.watched = True  # its output was just counted: the grace starts there
        self.expired = now - self.alive_at >= self.grace
        return self.expired
