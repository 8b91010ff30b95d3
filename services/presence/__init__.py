"""The presence service (issue 3): who is in a session, agent state, crashes as events."""
