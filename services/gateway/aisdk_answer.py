"""Which agent message answers a user message, and its events as AI SDK UI message chunks.

An ``Answer`` follows a session's log in sequence order after the user message (stored at
sequence S) and turns the events of *the answer* into chunks of the Vercel AI SDK's UI
message stream protocol (``start``, ``text-start``, ``text-delta``, ``text-end``,
``finish``, ``error``, ``abort``). The answer is decided by stream sequence (docs/protocol.md
§21):

* the answer's run is the first ``run.started`` after S whose ``data.reply_to`` is the user
  message's id or absent (a run whose ``reply_to`` names another message is skipped);
* the answer's message is the first agent message that *begins* after S (``message.start``,
  a checkpoint ``message.snapshot``, ``message.created`` or a rolled-up
  ``message.complete``) and belongs to that run (its ``run`` is the run, or absent), or,
  when no run started first, the first such agent message of a run not skipped;
* it is over when the message has its final form and its run ended (``run.completed``:
  ``finish``; ``run.failed``: ``error``; ``run.cancelled``: ``abort``), or at the final form
  when the message names no run. A run that ends before any message ends the answer too.

Text is sent as the difference to what the client already has: a delta appends; a reset,
snapshot or final form whose text extends what was sent sends only the rest; one that
rewrites it closes the text part and opens a new one with the new text (the UI message
stream cannot retract text).
"""

from __future__ import annotations

from typing import Any

from shared import wire

Chunk = dict[str, Any]

# Events that can begin an agent message in a stretch read after the user message.
_BEGINS = frozenset(
    {wire.MESSAGE_START, wire.MESSAGE_SNAPSHOT, wire.MESSAGE_CREATED, wire.MESSAGE_COMPLETE}
)
# Events that carry the message's whole text so far.
_WHOLE_TEXT = frozenset(
    {
        wire.MESSAGE_RESET,
        wire.MESSAGE_SNAPSHOT,
        wire.MESSAGE_CREATED,
        wire.MESSAGE_COMPLETE,
        wire.MESSAGE_EDIT,
    }
)
_FINAL = frozenset({wire.MESSAGE_CREATED, wire.MESSAGE_COMPLETE, wire.MESSAGE_EDIT})


class Answer:
    """The answer to one user message (``None``: to whatever the agent does next)."""

    def __init__(self, user_message: str | None) -> None:
        self.user_message = user_message
        self.run: str | None = None
        self.message: str | None = None
        self.skipped_runs: set[str] = set()
        self.started = False  # the ``start`` chunk was produced
        self.final = False  # the message reached its final form
        self.done = False  # the stream is over
        self.text_id: str | None = None  # the open text part
        self.parts = 0
        self.sent = ""  # the open part's text

    @property
    def begun(self) -> bool:
        """An agent has started answering (a run or a message of the answer is known)."""
        return self.run is not None or self.message is not None

    @property
    def in_progress(self) -> bool:
        return self.begun and not self.done

    def feed(self, event: wire.Event) -> list[Chunk]:
        """The chunks one stored (or compacted) event of the session adds to the stream."""
        if self.done:
            return []
        kind = event.get("type")
        if kind in wire.RUN_TYPES:
            return self._on_run(kind, event)
        if kind not in wire.MESSAGE_TYPES or event.get("role") == "user":
            return []
        message = event.get("message")
        if not isinstance(message, str):
            return []
        out: list[Chunk] = []
        if self.message is None:
            if kind not in _BEGINS or not self._claims(event.get("run")):
                return []  # an earlier message's tail, or another run's message
            run = event.get("run")
            if self.run is None and isinstance(run, str):
                self.run = run
            self.message = message
            out += self._start()
        elif message != self.message or self.final:
            return []
        text = event.get("text")
        text = text if isinstance(text, str) else ""
        if kind == wire.MESSAGE_DELTA:
            out += self._append(text)
        elif kind in _WHOLE_TEXT:
            out += self._replace(text)
        if kind in _FINAL or kind == wire.MESSAGE_DELETE:
            self.final = True
            out += self._close_text()
            if self.run is None:
                out += self._finish({"type": "finish"})
        return out

    def fail(self, reason: str) -> list[Chunk]:
        """The gateway cannot follow the session any more (NATS trouble): end with an error."""
        if self.done:
            return []
        return (
            self._start()
            + self._close_text()
            + self._finish({"type": "error", "errorText": reason})
        )

    def _claims(self, run: object) -> bool:
        """Whether a beginning agent message with this ``run`` field is the answer."""
        if run is None:
            return True
        if self.run is not None:
            return run == self.run
        return run not in self.skipped_runs

    def _on_run(self, kind: object, event: wire.Event) -> list[Chunk]:
        run = event.get("run")
        if not isinstance(run, str):
            return []
        if kind == wire.RUN_STARTED and not self.begun:
            data = event.get("data")
            reply_to = data.get("reply_to") if isinstance(data, dict) else None
            if self.user_message is None or reply_to is None or reply_to == self.user_message:
                self.run = run
            else:
                self.skipped_runs.add(run)
            return []
        if run != self.run or kind not in wire.RUN_TERMINAL_TYPES:
            return []
        out = self._start() + self._close_text()
        if kind == wire.RUN_FAILED:
            error = event.get("error")
            reason = error if isinstance(error, str) and error else "the agent's run failed"
            return out + self._finish({"type": "error", "errorText": reason})
        if kind == wire.RUN_CANCELLED:
            return out + self._finish({"type": "abort"})
        return out + self._finish({"type": "finish"})

    def _start(self) -> list[Chunk]:
        if self.started:
            return []
        self.started = True
        if self.message is None:
            return [{"type": "start"}]
        return [{"type": "start", "messageId": self.message}]

    def _open_text(self) -> list[Chunk]:
        if self.text_id is not None:
            return []
        self.parts += 1
        base = self.message or "text"
        self.text_id = base if self.parts == 1 else f"{base}-{self.parts}"
        self.sent = ""
        return [{"type": "text-start", "id": self.text_id}]

    def _append(self, text: str) -> list[Chunk]:
        if not text:
            return []
        out = self._open_text()
        self.sent += text
        out.append({"type": "text-delta", "id": self.text_id, "delta": text})
        return out

    def _replace(self, text: str) -> list[Chunk]:
        if self.text_id is not None and not text.startswith(self.sent):
            return self._close_text() + self._append(text)  # rewritten: a new text part
        return self._append(text[len(self.sent) :] if self.text_id is not None else text)

    def _close_text(self) -> list[Chunk]:
        if self.text_id is None:
            return []
        chunk = {"type": "text-end", "id": self.text_id}
        self.text_id = None
        return [chunk]

    def _finish(self, last: Chunk) -> list[Chunk]:
        self.done = True
        return [last]
