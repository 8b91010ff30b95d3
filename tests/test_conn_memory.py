"""What keeps an idle WebSocket small on the gateway: direct NATS subscriptions (no queue
or task each), a send queue created only when a frame waits, and one shared timer for the
token expiries."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway.deadlines import COMPACT_MIN, Deadlines
from services.gateway.device import Device
from shared import natsconn, natsfast
from shared.server import EmbeddedNats

# ---- direct subscriptions --------------------------------------------------------------


async def test_direct_subscription_delivers_in_order_without_task(
    nats_server: EmbeddedNats,
) -> None:
    """A direct subscription hands every message to its callback in order, with no task."""
    nc = await natsconn.connect(nats_server.settings("direct-order"))
    got: list[bytes] = []
    sub = await natsfast.subscribe_direct(nc, "direct.order", lambda m: got.append(m.data))
    assert isinstance(sub, natsfast.DirectSubscription)
    assert sub._wait_for_msgs_task is None
    assert set(vars(Subscription(nc, 0, "x"))) <= set(vars(sub))  # nats-py's whole layout
    for i in range(500):
        await nc.publish("direct.order", str(i).encode())
    await nc.flush()
    for _ in range(100):
        if len(got) == 500:
            break
        await asyncio.sleep(0.01)
    assert got == [str(i).encode() for i in range(500)]
    assert sub.pending_msgs == 0 and sub._pending_size == 0
    await natsconn.close(nc)


async def test_direct_subscription_survives_failing_callback(nats_server: EmbeddedNats) -> None:
    """A callback that raises loses only its message: the connection and later messages go on."""
    nc = await natsconn.connect(nats_server.settings("direct-fail"))
    got: list[bytes] = []

    def callback(msg: Msg) -> None:
        if msg.data == b"bad":
            raise ValueError("boom")
        got.append(msg.data)

    await natsfast.subscribe_direct(nc, "direct.fail", callback)
    for data in (b"1", b"bad", b"2"):
        await nc.publish("direct.fail", data)
    reply = await nc.request("$JS.API.INFO", b"", timeout=2)  # the read loop still serves
    assert reply.data
    await nc.flush()
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.01)
    assert got == [b"1", b"2"] and nc.is_connected
    await natsconn.close(nc)


async def test_direct_subscription_unsubscribe_and_drain(nats_server: EmbeddedNats) -> None:
    """Unsubscribe stops delivery; drain and close of the connection complete with one open."""
    nc = await natsconn.connect(nats_server.settings("direct-unsub"))
    got: list[bytes] = []
    sub = await natsfast.subscribe_direct(nc, "direct.unsub", lambda m: got.append(m.data))
    other = await natsfast.subscribe_direct(nc, "direct.other", lambda m: got.append(m.data))
    await nc.publish("direct.unsub", b"before")
    await nc.flush()
    for _ in range(200):
        if got:
            break
        await asyncio.sleep(0.01)
    await sub.unsubscribe()
    await nc.publish("direct.unsub", b"after")
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got == [b"before"]
    assert sub._id not in nc._subs and other._id in nc._subs
    await other.drain()
    assert other._id not in nc._subs
    await natsfast.subscribe_direct(nc, "direct.left", lambda m: None)
    await asyncio.wait_for(natsconn.close(nc), 10)  # drains the one left open
    assert nc.is_closed


# ---- the device's send queue -----------------------------------------------------------


async def test_device_holds_no_queue_until_a_frame_waits() -> None:
    """An idle device has no deque; one is made when a frame queues and dropped once sent."""
    sent: list[bytes] = []
    release = asyncio.Event()

    async def send(frame: bytes) -> None:
        await release.wait()
        sent.append(frame)

    device = Device("s", 0, send, queue_frames=10, on_overflow=lambda d: None)
    assert device._queue is None and device._room is None and device.queued_frames == 0
    device.start()
    device.go_live(0)
    device.offer(1, b"one")
    device.offer(2, b"two")
    assert device.queued_frames == 2 and device.writer is not None
    release.set()
    await asyncio.wait_for(device.writer, 2)
    assert sent == [b"one", b"two"] and device._queue is None and device.queued_bytes == 0


async def test_paced_replay_waits_for_room_then_continues() -> None:
    """A replay over half the queue waits until the writer has sent down to a quarter."""
    gate = asyncio.Event()
    sent: list[bytes] = []

    async def send(frame: bytes) -> None:
        await gate.wait()
        sent.append(frame)

    device = Device("s", 0, send, queue_frames=8, on_overflow=lambda d: None)
    device.start()
    for seq in range(1, 6):
        await device.replayed(seq, b"f%d" % seq)
        await asyncio.sleep(0)  # the writer takes f1 and waits for the gate
    assert device.queued_frames == 4
    replay = asyncio.create_task(device.replayed(6, b"f6"))  # half of 8 queued: waits
    await asyncio.sleep(0.01)
    assert not replay.done() and device._room is not None
    gate.set()
    await asyncio.wait_for(replay, 2)
    assert device._room is None and not device.overflowed and device.delivered == 6


# ---- token-expiry deadlines ------------------------------------------------------------


async def test_deadlines_fire_in_order_and_skip_cancelled() -> None:
    """Deadlines on one timer run in time order; cancelled ones never run."""
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.call_later(0.03, lambda: fired.append("c"))
    deadlines.call_later(0.01, lambda: fired.append("a"))
    b = deadlines.call_later(0.02, lambda: fired.append("b"))
    deadlines.call_later(-1, lambda: fired.append("now"))
    b.cancel()
    assert b.cancelled() and len(deadlines) == 3
    await asyncio.sleep(0.1)
    assert fired == ["now", "a", "c"] and len(deadlines) == 0


async def test_deadlines_survive_a_failing_callback() -> None:
    """A callback that raises does not stop the deadlines due with or after it."""
    deadlines = Deadlines()
    fired: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    deadlines.call_later(0.01, boom)
    deadlines.call_later(0.01, lambda: fired.append(1))
    deadlines.call_later(0.03, lambda: fired.append(2))
    await asyncio.sleep(0.1)
    assert fired == [1, 2]


async def test_deadlines_compact_and_disarm_when_cancelled() -> None:
    """Cancelled deadlines do not pile up: the heap is compacted, and emptied with the timer."""
    deadlines = Deadlines()
    keep = deadlines.call_later(3600, lambda: None)
    gone = [deadlines.call_later(3600, lambda: None) for _ in range(4 * COMPACT_MIN)]
    for deadline in gone:
        deadline.cancel()
    assert len(deadlines._heap) <= 2 * COMPACT_MIN + 1 and len(deadlines) == 1
    keep.cancel()
    assert deadlines._heap == [] and deadlines._timer is None


# ---- presence refresh ------------------------------------------------------------------


async def test_presence_refresh_is_batched_and_skips_removed_entries() -> None:
    """A refresh puts at most REFRESH_BATCH entries at a time and never re-puts one removed
    (or replaced) while it runs."""
    from shared import presence

    writer = presence.Writer(None)  # type: ignore[arg-type]  # _put is replaced below
    entries = [presence.Entry(f"s{i}", "user", "u", f"c{i}", "online") for i in range(250)]
    for entry in entries:
        writer.entries[entry.key] = entry
    in_flight = peak = 0
    put: list[str] = []

    async def fake_put(entry: presence.Entry) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        if entry is entries[0]:  # while the first batch runs, one closes and one changes
            del writer.entries[entries[150].key]
            writer.entries[entries[200].key] = presence.Entry(
                "s200", "user", "u", "c200", "online", device="new"
            )
        put.append(entry.connection)
        in_flight -= 1

    writer._put = fake_put  # type: ignore[method-assign]
    await writer._refresh_all()
    assert peak == presence.REFRESH_BATCH
    assert len(put) == 248 and "c150" not in put and "c200" not in put
