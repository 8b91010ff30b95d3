"""The Vercel AI SDK endpoints (/api/chat, /api/chat/{id}/stream) against a real gateway."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.gateway.aisdk_answer import Answer
from services.gateway.aisdk_watch import GONE, AgentWatch, agents_present
from services.gateway.app import Gateway
from services.gateway.roster import Roster
from shared import agent
from shared.presence import Change, Entry
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.agentprocs import StartAgent
from tests.agents.aisdk_agent import answer_tokens
from tests.conftest import ROOT, ServiceProcess, gateway_settings, token, wait_for

JS_DIR = ROOT / "tests" / "js" / "ai-sdk"
TOKENS = [f"w{i} " for i in range(8)]
RESUMER = "tests.agents.resume_agent"  # run-resume, message run-resume-m1, word by word
GRACE = 2.0  # TETHER_AISDK_AGENT_GRACE_SECONDS of the quick_gateway fixture


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def chat_body(sid: str, mid: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    message = {"id": mid, "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": sid, "messages": [message], "trigger": "submit-message", **extra}


def auth(sid: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token([sid], **claims)}"}


async def read_sse(resp: aiohttp.ClientResponse, chunks: list[Any] | None = None) -> list[Any]:
    """Every ``data:`` item of an SSE response until ``[DONE]`` (decoded JSON, or "[DONE]")."""
    chunks = [] if chunks is None else chunks
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line.startswith("data: "):
            continue
        data = line[6:]
        chunks.append(data if data == "[DONE]" else orjson.loads(data))
        if data == "[DONE]":
            break
    return chunks


def text_of(chunks: list[Any]) -> str:
    return "".join(c["delta"] for c in chunks if isinstance(c, dict) and c["type"] == "text-delta")


def types_of(chunks: list[Any]) -> list[str]:
    return [c if isinstance(c, str) else c["type"] for c in chunks]


async def stream_answer(
    client: agent.Client,
    sid: str,
    mid: str,
    tokens: list[str],
    delay: float = 0.0,
    fail: bool = False,
) -> None:
    """Answer user message ``mid`` like the demo agent (run ``run-{mid}``, reply_to)."""
    async with client.session(sid).run(f"run-{mid}", reply_to=mid) as run:
        message = run.message(f"reply-{mid}")
        await message.start()
        for token_ in tokens:
            if run.cancelled.is_set():
                break
            await message.append(token_)
            await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("model exploded")
        await message.complete()


async def stored_events(gateway: Gateway, sid: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base(gateway)}/v1/sessions/{sid}/events", headers=auth(sid)) as r:
            assert r.status == 200
            return [e["event"] for e in orjson.loads(await r.read())["events"]]


async def test_post_streams_the_answer_as_ui_message_stream(
    gateway: Gateway, client: agent.Client
) -> None:
    """POST /api/chat stores the user message and streams the agent's answer as UI chunks."""
    sid, mid = "aisdk-post-1", "u-msg-1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            assert resp.status == 200
            assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            agent_task = asyncio.create_task(stream_answer(client, sid, mid, TOKENS))
            chunks = await asyncio.wait_for(read_sse(resp), 15)
            await agent_task
    reply = f"reply-{mid}"
    assert chunks == [
        {"type": "start", "messageId": reply},
        {"type": "text-start", "id": reply},
        *[{"type": "text-delta", "id": reply, "delta": t} for t in TOKENS],
        {"type": "text-end", "id": reply},
        {"type": "finish"},
        "[DONE]",
    ]
    users = [e for e in await stored_events(gateway, sid) if e.get("role") == "user"]
    assert [(u["message"], u["text"], u["participant"]) for u in users] == [
        (mid, "hello", "tester")
    ]


async def test_retried_post_is_deduplicated_and_replays_the_answer(
    gateway: Gateway, client: agent.Client
) -> None:
    """A retried POST (same UIMessage id) stores nothing new and gets the stored answer."""
    sid, mid = "aisdk-retry-1", "u-retry-1"
    async with aiohttp.ClientSession() as http:
        url, body = f"{base(gateway)}/api/chat", chat_body(sid, mid)
        async with http.post(url, json=body, headers=auth(sid)) as resp:
            task = asyncio.create_task(stream_answer(client, sid, mid, TOKENS))
            first = await asyncio.wait_for(read_sse(resp), 15)
            await task
        async with http.post(url, json=body, headers=auth(sid)) as resp:
            assert resp.status == 200
            again = await asyncio.wait_for(read_sse(resp), 15)
    assert text_of(first) == text_of(again) == "".join(TOKENS)
    # The stored answer is one rolled-up message.complete: one delta with the whole text.
    assert types_of(again) == ["start", "text-start", "text-delta", "text-end", "finish", "[DONE]"]
    users = [e for e in await stored_events(gateway, sid) if e.get("role") == "user"]
    assert len(users) == 1


async def test_resume_returns_204_when_nothing_is_in_progress(
    gateway: Gateway, client: agent.Client
) -> None:
    """GET /api/chat/{id}/stream is 204 for an empty session and after the answer ended."""
    sid, mid = "aisdk-idle-1", "u-idle-1"
    async with aiohttp.ClientSession() as http:
        stream_url = f"{base(gateway)}/api/chat/{sid}/stream"
        async with http.get(stream_url, headers=auth(sid)) as resp:
            assert resp.status == 204
        async with http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            task = asyncio.create_task(stream_answer(client, sid, mid, TOKENS))
            await asyncio.wait_for(read_sse(resp), 15)
            await task
        async with http.get(stream_url, headers=auth(sid)) as resp:
            assert resp.status == 204


async def test_resume_mid_answer_sends_accumulated_text_then_live_deltas(
    gateway: Gateway, client: agent.Client
) -> None:
    """A resumed stream starts with one delta holding the text so far, then live deltas."""
    sid, mid = "aisdk-resume-1", "u-resume-1"
    tokens = [f"tok{i} " for i in range(30)]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            task = asyncio.create_task(stream_answer(client, sid, mid, tokens, delay=0.05))
            first: list[Any] = []
            reader = asyncio.create_task(read_sse(resp, first))
            while sum(1 for c in first if isinstance(c, dict) and c["type"] == "text-delta") < 5:
                await asyncio.sleep(0.01)
            async with http.get(
                f"{base(gateway)}/api/chat/{sid}/stream", headers=auth(sid)
            ) as resumed:
                assert resumed.status == 200
                assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
                second = await asyncio.wait_for(read_sse(resumed), 15)
            await asyncio.wait_for(reader, 15)
            await task
    full = "".join(tokens)
    assert text_of(first) == text_of(second) == full
    reply = f"reply-{mid}"
    assert second[:2] == [
        {"type": "start", "messageId": reply},
        {"type": "text-start", "id": reply},
    ]
    catch_up = second[2]
    assert catch_up["type"] == "text-delta" and len(catch_up["delta"]) > len(tokens[0])
    assert full.startswith(catch_up["delta"]) and catch_up["delta"] != full
    assert types_of(second)[-3:] == ["text-end", "finish", "[DONE]"]


async def test_failed_run_ends_with_an_error_chunk(gateway: Gateway, client: agent.Client) -> None:
    """A run.failed of the answer's run closes the text and sends an error chunk."""
    sid, mid = "aisdk-fail-1", "u-fail-1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            task = asyncio.create_task(stream_answer(client, sid, mid, TOKENS[:3], fail=True))
            chunks = await asyncio.wait_for(read_sse(resp), 15)
            with pytest.raises(RuntimeError):
                await task
    assert text_of(chunks) == "".join(TOKENS[:3])
    assert types_of(chunks)[-3:] == ["text-end", "error", "[DONE]"]
    assert chunks[-2]["errorText"] == "RuntimeError: model exploded"


async def test_cancelled_run_ends_with_an_abort_chunk(
    gateway: Gateway, client: agent.Client
) -> None:
    """A device's cancel ends the answer's run cancelled: the stream ends with abort."""
    sid, mid = "aisdk-cancel-1", "u-cancel-1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            task = asyncio.create_task(stream_answer(client, sid, mid, TOKENS * 20, delay=0.02))
            chunks: list[Any] = []
            reader = asyncio.create_task(read_sse(resp, chunks))
            while not any(isinstance(c, dict) and c["type"] == "text-delta" for c in chunks):
                await asyncio.sleep(0.01)
            async with http.post(
                f"{base(gateway)}/v1/sessions/{sid}/control",
                json={"action": "cancel", "run": f"run-{mid}"},
                headers=auth(sid),
            ) as cancel:
                assert cancel.status == 201
            await asyncio.wait_for(reader, 15)
            await task
    assert types_of(chunks)[-3:] == ["text-end", "abort", "[DONE]"]
    assert 0 < len(text_of(chunks)) < len("".join(TOKENS * 20))


async def test_answers_are_matched_to_their_message_by_reply_to(
    gateway: Gateway, client: agent.Client
) -> None:
    """Two questions answered in reverse order: each POST streams its own answer."""
    sid = "aisdk-pair-1"
    async with aiohttp.ClientSession() as http:
        url = f"{base(gateway)}/api/chat"
        async with (
            http.post(url, json=chat_body(sid, "q-a", "a"), headers=auth(sid)) as first,
            http.post(url, json=chat_body(sid, "q-b", "b"), headers=auth(sid)) as second,
        ):
            await stream_answer(client, sid, "q-b", ["answer b"])
            await stream_answer(client, sid, "q-a", ["answer a"])
            a = await asyncio.wait_for(read_sse(first), 15)
            b = await asyncio.wait_for(read_sse(second), 15)
    assert (a[0]["messageId"], text_of(a)) == ("reply-q-a", "answer a")
    assert (b[0]["messageId"], text_of(b)) == ("reply-q-b", "answer b")


async def test_a_client_that_leaves_mid_answer_releases_the_session(
    gateway: Gateway, client: agent.Client
) -> None:
    """Closing the POST's connection mid-answer unsubscribes; the answer is still stored."""
    sid, mid = "aisdk-leave-1", "u-leave-1"
    tokens = [f"x{i} " for i in range(40)]
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{base(gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        )
        task = asyncio.create_task(stream_answer(client, sid, mid, tokens, delay=0.02))
        await resp.content.readline()
        resp.close()
    for _ in range(300):
        if sid not in gateway.hubs.hubs:
            break
        await asyncio.sleep(0.01)
    assert sid not in gateway.hubs.hubs
    await task
    replies = [e for e in await stored_events(gateway, sid) if e.get("role") == "agent"]
    assert [(e["type"], e["text"]) for e in replies] == [("message.complete", "".join(tokens))]


def _body(sid: str, mid: str, **override: Any) -> bytes:
    return orjson.dumps({**chat_body(sid, mid), **override})


BAD_REQUESTS: list[tuple[str, bytes | None, str, int, str]] = [
    # (name, body (None: a valid one), content type, status, code)
    ("not-json", b"{nope", "application/json", 400, "bad_frame"),
    ("not-object", b"[1, 2]", "application/json", 400, "bad_frame"),
    ("form", None, "application/x-www-form-urlencoded", 415, "bad_frame"),
    ("no-messages", orjson.dumps({"id": "SID"}), "application/json", 400, "bad_frame"),
    ("empty-messages", _body("SID", "m-1", messages=[]), "application/json", 400, "bad_frame"),
    (
        "assistant-last",
        _body("SID", "m-1", messages=[{"id": "m-1", "role": "assistant", "parts": []}]),
        "application/json",
        400,
        "bad_frame",
    ),
    (
        "no-text",
        _body(
            "SID",
            "m-1",
            messages=[{"id": "m-1", "role": "user", "parts": [{"type": "file", "url": "x"}]}],
        ),
        "application/json",
        400,
        "bad_frame",
    ),
    (
        "blank-text",
        _body("SID", "m-1", messages=[{"id": "m-1", "role": "user", "parts": [{"type": "text"}]}]),
        "application/json",
        400,
        "bad_frame",
    ),
    ("bad-chat-id", _body("bad.id", "m-1"), "application/json", 400, "invalid_id"),
    ("bad-message-id", _body("SID", "m 1"), "application/json", 400, "invalid_id"),
    (
        "regenerate",
        _body("SID", "m-1", trigger="regenerate-message"),
        "application/json",
        400,
        "bad_frame",
    ),
    ("too-large", _body("SID", "m-1", pad="x" * (1024 * 1024)), "application/json", 413, ""),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_chat_requests_are_rejected_and_store_nothing(
    gateway: Gateway, body: bytes | None, content_type: str, status: int, code: str
) -> None:
    """Malformed chat requests get a 4xx JSON error naming the problem; nothing is stored."""
    sid = "aisdk-bad-1"
    payload = (body if body is not None else _body("SID", "m-1")).replace(b"SID", sid.encode())
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(gateway)}/api/chat",
            data=payload,
            headers={**auth(sid), "Content-Type": content_type},
        ) as resp:
            assert resp.status == status
            assert resp.headers["Content-Type"].startswith("application/json")
            error = orjson.loads(await resp.read())["error"]
    assert error["code"] == (code or "frame_too_large") and error["message"]
    assert await stored_events(gateway, sid) == []


async def test_chat_endpoints_need_a_token_for_the_session(gateway: Gateway) -> None:
    """No token is 401, a token for another session 403, a bad id in the path 400; a
    read-only token may resume but not send."""
    sid = "aisdk-auth-1"
    async with aiohttp.ClientSession() as http:
        url = f"{base(gateway)}/api/chat"
        for headers, status in (({}, 401), (auth("someone-else"), 403)):
            async with http.post(url, json=chat_body(sid, "m-1"), headers=headers) as resp:
                assert resp.status == status
            async with http.get(f"{url}/{sid}/stream", headers=headers) as resp:
                assert resp.status == status
        async with http.get(f"{url}/bad%20id/stream", headers=auth("*")) as resp:
            assert resp.status == 400
            assert orjson.loads(await resp.read())["error"]["code"] == "invalid_id"
        read_only = auth(sid, scopes=["read"])  # may resume, may not send
        async with http.post(url, json=chat_body(sid, "m-1"), headers=read_only) as resp:
            assert resp.status == 403
        async with http.get(f"{url}/{sid}/stream", headers=read_only) as resp:
            assert resp.status == 204
    assert await stored_events(gateway, sid) == []


def test_a_reset_that_rewrites_sent_text_opens_a_new_text_part() -> None:
    """Text already sent cannot be retracted: a rewriting reset starts a new text part."""
    answer = Answer("q")
    chunks = [
        *answer.feed({"type": "run.started", "run": "r", "data": {"reply_to": "q"}}),
        *answer.feed({"type": "message.start", "message": "m", "run": "r", "role": "agent"}),
        *answer.feed({"type": "message.delta", "message": "m", "i": 0, "text": "Hel"}),
        *answer.feed({"type": "message.reset", "message": "m", "i": 1, "text": "Hello"}),
        *answer.feed({"type": "message.reset", "message": "m", "i": 2, "text": "Bye"}),
        *answer.feed({"type": "message.complete", "message": "m", "run": "r", "text": "Bye!"}),
        *answer.feed({"type": "run.completed", "run": "r"}),
    ]
    assert chunks == [
        {"type": "start", "messageId": "m"},
        {"type": "text-start", "id": "m"},
        {"type": "text-delta", "id": "m", "delta": "Hel"},
        {"type": "text-delta", "id": "m", "delta": "lo"},
        {"type": "text-end", "id": "m"},
        {"type": "text-start", "id": "m-2"},
        {"type": "text-delta", "id": "m-2", "delta": "Bye"},
        {"type": "text-delta", "id": "m-2", "delta": "!"},
        {"type": "text-end", "id": "m-2"},
        {"type": "finish"},
    ]
    assert answer.done


@pytest.fixture(scope="module")
def ai_sdk_dir() -> Path:
    """tests/js/ai-sdk with the real `ai` package installed (skip only without node/npm)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (JS_DIR / "node_modules" / "ai").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("node_modules is missing and npm is not installed")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return JS_DIR


async def test_real_ai_sdk_sends_and_resumes_mid_answer(
    ai_sdk_dir: Path, nats_server: EmbeddedNats, gateway: Gateway, agent_proc: StartAgent
) -> None:
    """The real `ai` package: DefaultChatTransport sends; a second transport resumes mid-answer."""
    sid, durable, count = "aisdk-node-1", "aisdk-test-agent", 40
    await agent_proc("tests.agents.aisdk_agent", durable, TEST_TOKENS=str(count))
    try:
        process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(ai_sdk_dir / "chat.mjs"),
            cwd=ai_sdk_dir,
            env={
                **os.environ,
                "TETHER_URL": base(gateway),
                "TETHER_TOKEN": token([sid], subject="alice"),
                "CHAT_ID": sid,
                "TEXT": "hi there",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        cleanup = await agent.connect(nats_server.settings("cleanup"), log_settings=LogSettings())
        await cleanup.nc.jetstream().delete_consumer(cleanup.log_settings.stream, durable)
        await cleanup.close()
    assert process.returncode == 0, f"node failed:\n{stdout.decode()}\n{stderr.decode()}"
    result = orjson.loads(stdout.splitlines()[-1])
    full = "".join(answer_tokens("hi there", count))
    assert result["errors"] == []
    for stream in ("first", "second"):
        assert result[stream] == {"id": result["messageId"], "text": full, "parts": 1}
    assert result["messageId"] == f"reply-{result['userMessageId']}"
    # The reconnect happened mid-answer, and its first delta carried the text so far.
    assert 0 < len(result["textAtReconnect"]) < len(full)
    first_delta = next(c for c in result["secondChunks"] if c["type"] == "text-delta")
    assert len(first_delta["delta"]) >= len(result["textAtReconnect"])
    assert [c["type"] for c in result["secondChunks"]][-2:] == ["text-end", "finish"]
    assert result["afterwards"] is None  # 204 once the answer is over


@pytest.fixture
async def quick_gateway(nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway that gives up on a gone agent after ``GRACE`` seconds."""
    gw = Gateway(gateway_settings(nats_server, aisdk_agent_grace_seconds=GRACE))
    await gw.start()
    yield gw
    await gw.stop()


StartPresence = Callable[..., Awaitable[ServiceProcess]]
WORDS = " ".join(f"word{n}" for n in range(60))


def agent_in(gateway: Gateway, sid: str) -> bool:
    hub = gateway.hubs.hubs.get(sid)
    return hub is not None and agents_present(hub.roster)


def deltas(chunks: list[Any]) -> int:
    return sum(1 for c in chunks if isinstance(c, dict) and c["type"] == "text-delta")


async def start_answer(
    http: aiohttp.ClientSession, gateway: Gateway, agent_proc: StartAgent, sid: str
) -> tuple[aiohttp.ClientResponse, list[Any], asyncio.Task[list[Any]], ServiceProcess]:
    """POST a question, start a resume agent answering it; returns once text is streaming."""
    resp = await http.post(
        f"{base(gateway)}/api/chat", json=chat_body(sid, f"q-{sid}"), headers=auth(sid)
    )
    assert resp.status == 200
    chunks: list[Any] = []
    reader = asyncio.create_task(read_sse(resp, chunks))
    doomed = await agent_proc(RESUMER, sid, "continue", WORDS, TEST_TOKEN_DELAY="0.05")
    await wait_for(lambda: deltas(chunks) >= 5, what="text streaming")
    assert agent_in(gateway, sid)
    return resp, chunks, reader, doomed


async def test_post_ends_with_an_error_when_the_agent_dies_mid_answer(
    quick_gateway: Gateway, agent_proc: StartAgent, presence_process: StartPresence
) -> None:
    """SIGKILL of the agent mid-answer: the POST stream ends with an error chunk after the grace."""
    await presence_process()
    sid = "aisdk-gone-1"
    async with aiohttp.ClientSession() as http:
        resp, chunks, reader, doomed = await start_answer(http, quick_gateway, agent_proc, sid)
        doomed.kill()
        killed = time.monotonic()
        await asyncio.wait_for(reader, GRACE + 5)
        elapsed = time.monotonic() - killed
        resp.close()
    assert GRACE - 0.5 <= elapsed <= GRACE + 4
    assert 0 < len(text_of(chunks)) < len(WORDS)
    assert WORDS.startswith(text_of(chunks))
    assert types_of(chunks)[-3:] == ["text-end", "error", "[DONE]"]
    assert chunks[-2]["errorText"] == GONE
    assert quick_gateway.counters["aisdk_agent_gone"] == 1


async def test_an_agent_restarted_within_the_grace_continues_without_error(
    gateway: Gateway, agent_proc: StartAgent, presence_process: StartPresence
) -> None:
    """An agent SIGKILLed and restarted within the grace resumes: the stream completes, no error."""
    await presence_process()
    sid = "aisdk-back-1"
    async with aiohttp.ClientSession() as http:
        resp, chunks, reader, doomed = await start_answer(http, gateway, agent_proc, sid)
        doomed.kill()
        await wait_for(lambda: not agent_in(gateway, sid), what="the crash seen in presence")
        await agent_proc(RESUMER, sid, "continue", WORDS, TEST_TOKEN_DELAY="0.01")
        await asyncio.wait_for(reader, 15)
        resp.close()
    assert text_of(chunks) == WORDS
    assert types_of(chunks)[-3:] == ["text-end", "finish", "[DONE]"]
    assert "error" not in types_of(chunks)
    assert gateway.counters["aisdk_agent_gone"] == 0


async def test_resume_ends_with_an_error_when_the_agent_is_gone(
    quick_gateway: Gateway, agent_proc: StartAgent, presence_process: StartPresence
) -> None:
    """A resume GET of an answer whose agent died sends the text so far, then an error."""
    await presence_process()
    sid = "aisdk-gone-2"
    async with aiohttp.ClientSession() as http:
        resp, chunks, reader, doomed = await start_answer(http, quick_gateway, agent_proc, sid)
        doomed.kill()
        await wait_for(lambda: not agent_in(quick_gateway, sid), what="the crash seen in presence")
        opened = time.monotonic()
        async with http.get(
            f"{base(quick_gateway)}/api/chat/{sid}/stream", headers=auth(sid)
        ) as resumed:
            assert resumed.status == 200
            second = await asyncio.wait_for(read_sse(resumed), GRACE + 5)
        elapsed = time.monotonic() - opened
        await asyncio.wait_for(reader, GRACE + 5)
        resp.close()
    assert GRACE - 0.5 <= elapsed <= GRACE + 4
    assert text_of(second) == text_of(chunks) and text_of(second)
    assert types_of(second) == ["start", "text-start", "text-delta", "text-end", "error", "[DONE]"]
    assert second[-2]["errorText"] == GONE
    assert types_of(chunks)[-2:] == ["error", "[DONE]"]


async def test_a_post_with_no_agent_yet_waits_past_the_grace(
    quick_gateway: Gateway, client: agent.Client
) -> None:
    """With no agent seen in the session, a POST waits past the grace for one to start."""
    sid, mid = "aisdk-late-1", "u-late-1"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base(quick_gateway)}/api/chat", json=chat_body(sid, mid), headers=auth(sid)
        ) as resp:
            chunks: list[Any] = []
            reader = asyncio.create_task(read_sse(resp, chunks))
            await asyncio.sleep(GRACE + 1.5)
            assert chunks == [] and not reader.done()
            await stream_answer(client, sid, mid, TOKENS)
            await asyncio.wait_for(reader, 15)
    assert text_of(chunks) == "".join(TOKENS)
    assert types_of(chunks)[-2:] == ["finish", "[DONE]"]


def _roster(*roles: str) -> Roster:
    roster = Roster()
    for n, role in enumerate(roles, 1):
        entry = Entry("s", role, f"p{n}", f"c{n}", "idle" if role == "agent" else "online")
        roster.apply(Change(entry.key, n, entry))
    return roster


def test_agent_watch_waits_for_an_agent_then_gives_up_after_the_grace() -> None:
    """The watch starts once an agent was seen or the answer began; output or presence renew it."""
    idle, agent_ = Answer("q"), _roster("user", "agent")
    users = _roster("user")
    watch = AgentWatch(2.0, now=0.0)
    assert not watch.gone(users, idle, 100.0)  # no agent seen, nothing begun: wait
    assert not watch.gone(agent_, idle, 101.0)  # an agent: watched from now on
    assert not watch.gone(users, idle, 102.5)
    watch.output(102.5)  # output without presence (an agent writing none) keeps it open
    assert not watch.gone(users, idle, 104.0)
    assert watch.gone(users, idle, 104.5)
    assert not watch.gone(users, idle, 105.0)  # answered once
    begun = Answer("q")
    begun.feed({"type": "run.started", "run": "r", "data": {"reply_to": "q"}})
    resumed = AgentWatch(2.0, now=0.0)
    resumed.output(0.0)  # the replayed run.started
    assert not resumed.gone(users, begun, 1.0) and resumed.gone(users, begun, 2.0)
    assert not AgentWatch(0.0, now=0.0).gone(users, begun, 50.0)  # 0: never
