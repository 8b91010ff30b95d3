"""A streamed agent message: deltas, coalescing, checkpoints, reset and completion."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shared import directget, subjects, wire
from shared.errors import PublishError, TetherError

if TYPE_CHECKING:
    from shared.agent import Session

# A streaming message stores a checkpoint (its text so far, rolling its subject up) every
# this many chunks, so a device that reconnects mid-answer reads at most this many deltas.
DEFAULT_CHECKPOINT_CHUNKS = 256
RESUME_MODES = ("continue", "reset")


class Stored:
    """What the log holds of one agent message: its text, last chunk index, completeness."""

    def __init__(self) -> None:
        self.text = ""
        self.last_i = -1
        self.events = 0
        self.complete = False

    def apply(self, event: wire.Event) -> None:
        kind, text, index = event.get("type"), event.get("text"), event.get("i")
        self.events += 1
        if isinstance(index, int):
            self.last_i = max(self.last_i, index)
        if not isinstance(text, str):
            return
        if kind == wire.MESSAGE_DELTA:
            self.text += text
        elif kind in (wire.MESSAGE_RESET, wire.MESSAGE_SNAPSHOT, wire.MESSAGE_CREATED):
            self.text = text
        elif kind in (wire.MESSAGE_COMPLETE, wire.MESSAGE_EDIT):
            self.text, self.complete = text, True
            chunks = event.get("chunks")
            if isinstance(chunks, int):
                self.last_i = max(self.last_i, chunks - 1)


class Message:
    """A streamed agent message: ``start()``, ``append(delta)``..., ``complete()``."""

    def __init__(
        self,
        session: Session,
        run_id: str | None,
        message_id: str,
        coalesce_ms: float,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_CHUNKS,
        resume: str | None = None,
    ) -> None:
        if resume is not None and resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, not {resume!r}")
        self.resume = resume
        self.stored_text = ""  # what the log held when a resumed message started
        self.resumed_complete = False  # the log already holds the final form
        self.session = session
        self.run_id = run_id
        self.id = message_id
        self.subject = subjects.agent_message(session.id, message_id)
        self.coalesce = coalesce_ms / 1000.0
        self.checkpoint_every = checkpoint_every
        self.text = ""
        self.chunks = 0
        self._checkpointed_at = 0
        self._start_data: dict[str, Any] | None = None
        self.started = False
        self.completed = False
        self._buffer: list[str] = []
        self._unacked: str | None = None  # a delta whose publish failed, sent again first
        self._flush_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._error: BaseException | None = None

    def _dedupe(self, part: str) -> str:
        return wire.msg_id(self.session.id, subjects.AGENT, self.id, part)

    async def start(self, **data: Any) -> int:
        self.started = True
        self._start_data = data or None
        await self.session.set_state("streaming")
        event = self.session._event(
            wire.MESSAGE_START, message=self.id, run=self.run_id, role="agent", data=data or None
        )
        seq = await self.session._publish(self.subject, event, self._dedupe("start"))
        if self.resume is not None:
            await self._resume()
        return seq

    async def read_stored(self) -> Stored:
        """Read what the log holds of this message (checkpoint and deltas, or final form)."""
        stored = Stored()

        def handle(seq: int, headers: dict[str, str], data: bytes) -> bool:
            event = wire.decode_event(data)
            if event is not None:
                stored.apply(event)
            return True

        client = self.session.client
        stream = client.log_settings.stream_for(self.session.id)
        await directget.scan(client.nc, stream, self.subject, 0, handle)
        return stored

    async def _resume(self) -> None:
        stored = await self.read_stored()
        self.stored_text = stored.text
        if stored.complete:
            self.resumed_complete, self.completed, self.text = True, True, stored.text
            return
        self.chunks = stored.last_i + 1
        self._checkpointed_at = self.chunks
        if self.resume == "continue":
            self.text = stored.text
        elif self.chunks > 0:
            await self.reset("")

    async def extend_to(self, text: str) -> None:
        """Bring the message to ``text`` (the whole answer so far): append only what is not
        stored yet, or reset to it when it no longer starts with what is stored."""
        if self.resumed_complete:
            return
        if not self.started:
            await self.start()
        await self.flush()
        if self.text.startswith(text):
            return  # already stored (a retry regenerating the same answer)
        if text.startswith(self.text):
            await self.append(text[len(self.text) :])
        else:
            await self.reset(text)

    async def append(self, delta: str) -> None:
        """Add text; published at once (window 0) or at the end of the coalescing window."""
        if self.resumed_complete:
            return
        self._check()
        if not self.started:
            await self.start()
            if self.resumed_complete:
                return
        if not delta:
            return
        self._buffer.append(delta)
        if self.coalesce <= 0:
            await self.flush()
        elif self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.coalesce)
        self._flush_task = None
        try:
            await self.flush()
        except BaseException as exc:  # surfaced on the next append or complete
            self._error = exc

    async def flush(self) -> None:
        """Publish what is buffered as one ``message.delta``."""
        async with self._lock:
            # A delta whose publish failed keeps its index and text: it is sent again, the
            # same, before anything newer (its dedupe id may already be stored; a different
            # text under that id would be dropped as a duplicate and lost).
            if self._unacked is None:
                if not self._buffer:
                    return
                self._unacked = "".join(self._buffer)
                self._buffer.clear()
            text = self._unacked
            index = self.chunks
            event = self.session._event(wire.MESSAGE_DELTA, message=self.id, i=index, text=text)
            await self.session._publish(self.subject, event, self._dedupe(str(index)))
            self._unacked = None
            self.chunks += 1
            self.text += text
            await self._maybe_checkpoint()
        if self._buffer and self.coalesce <= 0:
            await self.flush()  # text appended while a failed delta was being resent

    async def _maybe_checkpoint(self) -> None:
        """Every ``checkpoint_every`` chunks, store the text so far and roll the deltas up."""
        if (
            self.checkpoint_every <= 0
            or self.chunks - self._checkpointed_at < self.checkpoint_every
        ):
            return
        self._checkpointed_at = self.chunks
        # A checkpoint carries the whole text so far; past half the stream's message size
        # limit it would be refused, so such a message keeps its deltas (replay then merges
        # them) instead of failing every append.
        if len(self.text.encode()) > self.session.client.log_settings.max_msg_size // 2:
            return
        last = self.chunks - 1
        event = self.session._event(
            wire.MESSAGE_SNAPSHOT,
            message=self.id,
            run=self.run_id,
            role="agent",
            text=self.text,
            i=last,
            status="streaming",
            data=self._start_data,
        )
        await self.session._publish(
            self.subject, event, self._dedupe(f"checkpoint-{last}"), rollup=True
        )

    async def reset(self, text: str = "") -> None:
        """Replace everything streamed so far with ``text``; devices replace, not append."""
        if self.resumed_complete:
            return
        self._check()
        await self.flush()
        async with self._lock:
            index = self.chunks
            event = self.session._event(wire.MESSAGE_RESET, message=self.id, i=index, text=text)
            await self.session._publish(self.subject, event, self._dedupe(str(index)))
            self.chunks += 1
            self.text = text
            await self._maybe_checkpoint()

    async def complete(self, **data: Any) -> int:
        """Publish the full text as ``message.complete``; the stored deltas are rolled up."""
        if self.resumed_complete:
            return 0
        self._check()
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        if not self.started:
            await self.start()
            if self.resumed_complete:
                return 0
        await self.flush()
        self.completed = True
        event = self.session._event(
            wire.MESSAGE_COMPLETE,
            message=self.id,
            run=self.run_id,
            role="agent",
            text=self.text,
            chunks=self.chunks,
            data=data or None,
        )
        seq = await self.session._publish(
            self.subject, event, self._dedupe("complete"), rollup=True
        )
        await self.session.set_state("thinking" if self.run_id else "idle")
        return seq

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise PublishError(f"a coalesced publish failed: {error!r}") from error
        if self.completed:
            raise TetherError(f"message {self.id} is already complete")
