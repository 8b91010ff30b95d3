"""The demo page in a real browser: Debian's Chromium driven by Playwright, two tabs of one
session, a Python agent streaming a long answer, a gateway restart and a reload mid-answer;
a message sent while the gateway is down, then a reload.

Chromium is found at ``TETHER_CHROMIUM`` or on the PATH (``apt-get install chromium``);
Playwright's own browser downloads are never used. Screenshots and the measured
reload-to-first-token time go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from shared import agent, demo_agent
from shared.ids import new_id
from shared.inbox import UserMessage
from tests.conftest import ROOT, GatewayProcess, token

ARTIFACTS = ROOT / "test-artifacts"
WORDS = ("tether", "keeps", "every", "token", "durable", "across", "tabs", "and", "restarts")
MIN_TOKENS = 300  # the answer streams at least this many tokens, then until told to finish
MAX_TOKENS = 3000
TOKENS_PER_SECOND = 36.0
WAIT_MS = 30_000


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("TETHER_CHROMIUM", ""),
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium, or set TETHER_CHROMIUM)",
)


def answer_tokens(count: int) -> list[str]:
    """Numbered words, so a duplicated or lost token is visible in the text."""
    return [("" if n == 0 else " ") + f"{WORDS[n % len(WORDS)]}{n}" for n in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def streaming_agent(
    client: agent.Client, session_id: str, *, approval: bool = False, demo: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """An agent (the Python SDK, reading its own durable inbox) that answers each user
    message of ``session_id`` with a long streamed answer, optionally asking first; or,
    with ``demo``, the demo agent's answer."""
    state: dict[str, Any] = {
        "decision": None,
        "tokens": 0,
        "finish": asyncio.Event(),  # set: stop after MIN_TOKENS (the test saw what it needed)
        "ended": asyncio.Event(),
    }
    inbox = client.inbox(f"browser-{new_id()}", batch=4)
    await inbox.open()

    async def answer(item: UserMessage) -> None:
        if demo:
            await demo_agent.answer(client, session_id, item.message, item.text, 200.0)
            state["ended"].set()
            return
        session = client.session(session_id)
        async with session.run(f"run-{item.message}") as run:
            if approval:
                state["decision"] = await run.request_approval(
                    "Stream a very long answer?", ["yes", "no"], timeout=120
                )
            message = run.message(f"reply-{item.message}", coalesce_ms=0)
            await message.start()
            for n, piece in enumerate(answer_tokens(MAX_TOKENS)):
                if run.cancelled.is_set() or (n >= MIN_TOKENS and state["finish"].is_set()):
                    break
                await message.append(piece)
                state["tokens"] = n + 1
                await asyncio.sleep(1 / TOKENS_PER_SECOND)
            await message.complete()
        state["ended"].set()

    async def consume() -> None:
        async for item in inbox:
            if isinstance(item, UserMessage) and item.session == session_id:
                try:
                    await answer(item)
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    state["error"] = repr(exc)
                    raise
            await item.ack()

    task = asyncio.create_task(consume())
    try:
        yield state
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await inbox.close()


async def open_tab(browser: Browser, url: str, context: Any = None) -> Page:
    ctx = context or await browser.new_context(viewport={"width": 900, "height": 760})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Refused WebSocket connects while the gateway restarts are expected console noise.
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("WebSocket connection to")
            else None
        ),
    )
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await wait_live(page)
    return page


async def wait_live(page: Page) -> None:
    await page.wait_for_function(
        "() => document.getElementById('conn-badge').dataset.state === 'live'", timeout=WAIT_MS
    )


async def agent_text(page: Page) -> str:
    texts: list[str] = await page.eval_on_selector_all(
        ".msg.agent .bubble", "nodes => nodes.map(n => n.textContent)"
    )
    return texts[-1] if texts else ""


async def wait_words(page: Page, count: int) -> None:
    await page.wait_for_function(
        """n => {
          const nodes = document.querySelectorAll('.msg.agent .bubble');
          const text = nodes.length ? nodes[nodes.length - 1].textContent : '';
          return text.split(' ').filter(Boolean).length >= n;
        }""",
        arg=count,
        timeout=WAIT_MS,
    )


async def restart(
    gateway: GatewayProcess, start: Callable[..., GatewayProcess], port: int
) -> GatewayProcess:
    """SIGTERM (every socket closes with 1012), then a new gateway on the same port."""
    await asyncio.to_thread(gateway.stop)
    return await asyncio.to_thread(start, TETHER_GATEWAY_PORT=str(port))


async def test_two_tabs_survive_a_gateway_restart_and_a_reload_mid_answer(
    browser: Browser,
    client: agent.Client,
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """Two tabs, restart and reload mid-answer: identical complete text, no duplicated word."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    gateway = await asyncio.to_thread(gateway_process, TETHER_GATEWAY_PORT=str(port))
    session = f"demo-{new_id()[:12]}"
    url = f"http://127.0.0.1:{port}/?session={session}#token=" + token(
        ["demo-*"], subject="browser"
    )
    async with streaming_agent(client, session) as run:
        context = await browser.new_context(viewport={"width": 900, "height": 760})
        tab1 = await open_tab(browser, url, context)
        tab2 = await open_tab(browser, url, context)  # same profile: two tabs of one browser
        assert await tab2.evaluate("location.hash") == "", "the token must leave the address bar"

        await tab1.fill("#input", "Please stream a long answer")
        await tab1.press("#input", "Enter")
        await wait_words(tab1, 20)
        await wait_words(tab2, 20)
        await tab1.wait_for_selector(".msg.agent.streaming", timeout=WAIT_MS)
        await tab1.screenshot(path=str(ARTIFACTS / "browser-tab1-streaming.png"))
        await tab2.wait_for_function(
            "() => ['streaming', 'thinking'].includes("
            "document.getElementById('agent-badge').dataset.state)",
            timeout=WAIT_MS,
        )

        # Cut every connection mid-answer: the gateway restarts while the agent streams on.
        gateway = await restart(gateway, gateway_process, port)
        await wait_live(tab1)
        await wait_live(tab2)
        await wait_words(tab2, 110)

        # Reload tab 2 mid-answer and time its first token.
        before = len((await agent_text(tab2)).split())
        await tab2.reload()
        await wait_live(tab2)
        await tab2.wait_for_function(
            "() => tetherDemo.metrics.firstLiveToken !== null", timeout=WAIT_MS
        )
        reloaded: dict[str, Any] = await tab2.evaluate("() => ({...tetherDemo.metrics})")

        # A new tab with nothing stored joins mid-answer (a compacted snapshot, then live).
        dark = await browser.new_context(
            viewport={"width": 900, "height": 760}, color_scheme="dark"
        )
        fresh = await open_tab(browser, url, dark)
        try:
            await fresh.wait_for_function(
                "() => tetherDemo.metrics.firstLiveToken !== null", timeout=WAIT_MS
            )
        except Exception as exc:
            metrics = await fresh.evaluate("() => ({...tetherDemo.metrics})")
            raise AssertionError(
                f"no live token in a fresh tab: agent {run}, page {metrics}, "
                f"words {len((await agent_text(fresh)).split())}"
            ) from exc
        await fresh.wait_for_timeout(500)  # let the entry animation finish
        await fresh.screenshot(path=str(ARTIFACTS / "browser-fresh-tab-dark.png"))
        joined: dict[str, Any] = await fresh.evaluate("() => ({...tetherDemo.metrics})")

        run["finish"].set()
        await asyncio.wait_for(run["ended"].wait(), 60)
        expected = "".join(answer_tokens(run["tokens"]))
        tabs = (tab1, tab2, fresh)
        for tab in tabs:
            await tab.wait_for_function(
                "() => document.querySelectorAll('.msg.agent.streaming').length === 0",
                timeout=WAIT_MS,
            )
        texts = [await agent_text(tab) for tab in tabs]
        views = [
            await tab.evaluate(
                "() => tetherDemo.client.messages().filter(m => m.role === 'agent')"
                ".map(m => m.text)"
            )
            for tab in tabs
        ]
        await tab1.screenshot(path=str(ARTIFACTS / "browser-tab1.png"))
        await tab2.screenshot(path=str(ARTIFACTS / "browser-tab2-reloaded.png"))
        await tab1.set_viewport_size({"width": 420, "height": 760})
        await tab1.screenshot(path=str(ARTIFACTS / "browser-tab1-narrow.png"))
        user_texts = [
            await tab.eval_on_selector_all(".msg.user .bubble", "ns => ns.map(n => n.textContent)")
            for tab in tabs
        ]
        errors = [getattr(tab, "errors", []) for tab in tabs]

    timings = {
        "reload_to_first_text_ms": round(reloaded["firstText"], 1),
        "reload_to_first_live_token_ms": round(reloaded["firstLiveToken"], 1),
        "reload_to_caught_up_ms": round(reloaded["caughtUp"], 1),
        "reload_restored_text_from_storage": reloaded["restoredText"],
        "words_before_reload": before,
        "fresh_tab_first_text_ms": round(joined["firstText"], 1),
        "fresh_tab_first_live_token_ms": round(joined["firstLiveToken"], 1),
        "agent_tokens_per_second": TOKENS_PER_SECOND,
        "note": "ms since navigation start (performance.now()); headless Chromium, localhost",
    }
    (ARTIFACTS / "browser-reload-first-token.json").write_text(json.dumps(timings, indent=2))
    print("reload timings:", json.dumps(timings))

    for text in texts:
        assert text == expected
        words = text.split()
        assert len(words) == len(set(words)) == run["tokens"], "a word is duplicated or lost"
    for view in views:
        assert view == [expected]
    assert user_texts == [["Please stream a long answer"]] * 3
    assert reloaded["restoredText"], "the reloaded tab did not restore its view from storage"
    assert errors == [[], [], []], f"browser errors: {errors}"


async def test_approval_buttons_and_stop_in_two_tabs(
    browser: Browser,
    client: agent.Client,
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """An approval shows in both tabs; one tab answers; the other stops the streamed answer."""
    ARTIFACTS.mkdir(exist_ok=True)
    gateway = await asyncio.to_thread(gateway_process)
    session = f"demo-{new_id()[:12]}"
    url = f"{gateway.url}/?session={session}#token=" + token(["demo-*"], subject="browser")
    async with streaming_agent(client, session, approval=True) as run:
        tab1 = await open_tab(browser, url)
        tab2 = await open_tab(browser, url)
        await tab1.fill("#input", "Ask me first")
        await tab1.press("#input", "Enter")
        for tab in (tab1, tab2):
            await tab.wait_for_selector(".approval.open button:not([disabled])", timeout=WAIT_MS)
        await tab1.screenshot(path=str(ARTIFACTS / "browser-approval.png"))
        await tab2.click(".approval.open button[data-option='yes']")
        for tab in (tab1, tab2):
            await tab.wait_for_selector(".approval.done .btn.chosen", timeout=WAIT_MS)
        await wait_words(tab1, 10)
        await tab1.wait_for_selector("#cancel:not([hidden]):not([disabled])", timeout=WAIT_MS)
        await tab1.click("#cancel")
        await asyncio.wait_for(run["ended"].wait(), 30)
        for tab in (tab1, tab2):
            await tab.wait_for_selector(".msg.agent .tag.cancelled", timeout=WAIT_MS)
            await tab.wait_for_selector("#cancel[hidden]", state="attached", timeout=WAIT_MS)
        texts = [await agent_text(tab) for tab in (tab1, tab2)]
        outcome = await tab1.text_content(".approval .outcome")
    assert run["decision"] is not None and run["decision"].option == "yes"
    assert texts[0] == texts[1] and 0 < len(texts[0].split()) < MIN_TOKENS
    assert outcome is not None and "yes" in outcome


async def test_demo_agent_asks_first_when_told_to(
    browser: Browser,
    client: agent.Client,
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """The demo agent's ``/approve``: the page offers yes/no; "no" gets the short refusal."""
    gateway = await asyncio.to_thread(gateway_process)
    session = f"demo-{new_id()[:12]}"
    url = f"{gateway.url}/?session={session}#token=" + token(["demo-*"], subject="browser")
    async with streaming_agent(client, session, demo=True) as run:
        tab = await open_tab(browser, url)
        await tab.fill("#input", "/approve then answer")
        await tab.press("#input", "Enter")
        await tab.wait_for_selector(".approval.open button:not([disabled])", timeout=WAIT_MS)
        assert await tab.text_content(".approval .q") == demo_agent.ASK_PROMPT
        await tab.wait_for_function(
            "() => document.getElementById('agent-label').textContent === 'Agent waiting for you'",
            timeout=WAIT_MS,
        )
        await tab.click(".approval.open button[data-option='no']")
        await asyncio.wait_for(run["ended"].wait(), 30)
        await tab.wait_for_function(
            "text => [...document.querySelectorAll('.msg.agent .bubble')]"
            ".some(n => n.textContent === text)",
            arg=demo_agent.DECLINED,
            timeout=WAIT_MS,
        )
        assert getattr(tab, "errors", []) == []


async def test_page_without_a_token_says_how_to_get_one(
    browser: Browser, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """Opened without a token, the page explains itself and puts a demo session in the URL."""
    gateway = await asyncio.to_thread(gateway_process)
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(gateway.url + "/")
    await page.wait_for_selector("#notice:not([hidden])")
    assert "tether up" in (await page.text_content("#notice") or "")
    assert await page.text_content("#conn-label") == "No token"
    assert (await page.evaluate("location.search")).startswith("?session=demo-")
    await context.close()


@pytest.fixture
async def offline_browser() -> AsyncIterator[Browser]:
    """Chromium for pages answered from a cache: a page Playwright fulfils counts as public
    to Chromium's local network access checks, which would then block its WebSocket to
    127.0.0.1 (the gateway of the test)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--disable-features=LocalNetworkAccessChecks"],
        )
        try:
            yield launched
        finally:
            await launched.close()


async def serve_from_cache_when_down(context: Any) -> None:
    """Route the context's HTTP through a cache: the page still loads (and reloads) while the
    gateway is down, as from an offline cache. WebSockets are not routed: they fail while
    the gateway is down."""
    cache: dict[str, tuple[int, dict[str, str], bytes]] = {}

    async def serve(route: Any) -> None:
        url = route.request.url
        try:
            response = await route.fetch(max_retries=0, timeout=5000)
        except Exception:  # noqa: BLE001 - the gateway is down: answer from the cache
            if url not in cache:
                await route.abort()
                return
            status, headers, body = cache[url]
            await route.fulfill(status=status, headers=headers, body=body)
            return
        body = await response.body()
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        cache[url] = (response.status, headers, body)
        await route.fulfill(status=response.status, headers=headers, body=body)

    await context.route("**/*", serve)


async def test_message_sent_while_the_gateway_is_down_survives_a_reload_and_is_stored_once(
    offline_browser: Browser, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """A message sent with the gateway down, then a reload: sent on return, stored once."""
    port = free_port()
    gateway = await asyncio.to_thread(gateway_process, TETHER_GATEWAY_PORT=str(port))
    session = f"demo-{new_id()[:12]}"
    jwt = token(["demo-*"], subject="browser")
    url = f"http://127.0.0.1:{port}/?session={session}#token={jwt}"
    text = f"Sent offline {new_id()[:8]}"
    browser = offline_browser
    context = await browser.new_context(viewport={"width": 900, "height": 760})
    await serve_from_cache_when_down(context)
    page = await open_tab(browser, url, context)

    await asyncio.to_thread(gateway.stop)
    await page.wait_for_function(
        "() => document.getElementById('conn-badge').dataset.state !== 'live'", timeout=WAIT_MS
    )
    await page.fill("#input", text)
    await page.press("#input", "Enter")
    await page.wait_for_selector(".msg.user.pending", timeout=WAIT_MS)

    await page.reload()  # still down: the page comes from the cache, the message from storage
    await page.wait_for_selector(".msg.user.pending .tag.sending", timeout=WAIT_MS)
    assert await page.text_content(".msg.user.pending .bubble") == text
    stored = await page.evaluate(f"() => localStorage.getItem('tether:v1:{session}:outbox')")
    assert stored is not None and text in stored

    gateway = await asyncio.to_thread(gateway_process, TETHER_GATEWAY_PORT=str(port))
    await wait_live(page)
    await page.wait_for_selector(".msg.user:not(.pending)", timeout=WAIT_MS)
    assert await page.eval_on_selector_all(
        ".msg.user .bubble", "nodes => nodes.map(n => n.textContent)"
    ) == [text]
    await page.wait_for_function(
        f"() => localStorage.getItem('tether:v1:{session}:outbox') === null", timeout=WAIT_MS
    )

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gateway.url}/v1/sessions/{session}/events",
            params={"since": "0", "limit": "1000"},
            headers={"Authorization": f"Bearer {jwt}"},
        ) as response,
    ):
        assert response.status == 200
        history = await response.json()
    created = [
        item["event"]
        for item in history["events"]
        if item["event"]["type"] == "message.created" and item["event"]["role"] == "user"
    ]
    assert [event["text"] for event in created] == [text], history
    assert created[0]["participant"] == "browser"
    assert getattr(page, "errors", []) == []
    await context.close()
