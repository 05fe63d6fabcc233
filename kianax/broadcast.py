"""Kianax's pub/sub layer: broadcaster's backend abstraction over Redis, minus its faults.

One :class:`Broadcast` per process carries real-time events (quotes, orders, portfolio,
agents, notifications) between processes through Redis pub/sub (DESIGN.md §6).

It rides on ``broadcaster``: events travel as :class:`broadcaster.Event` through a
:class:`broadcaster.BroadcastBackend` (:class:`RedisPubSubBackend` for ``redis://``,
``rediss://`` and ``unix://`` URLs, broadcaster's own ``MemoryBackend`` for
``memory://``), but the hub replaces :class:`broadcaster.Broadcast`, whose subscribe logic
is where 0.3.1 goes wrong. Compared with broadcaster 0.3.1:

* **Reconnect.** The backend owns one pub/sub connection per process. When it breaks
  (Redis restarted, or a health-check PING goes unanswered) it reconnects with capped,
  jittered exponential backoff, re-subscribes every channel still in use and resumes
  delivery; reconnects are logged and counted. ``publish`` retries for at most
  ``publish_timeout`` seconds and then raises :class:`BroadcastUnavailable`.
* **Bounded queues, no backlog in the hub.** Each subscription buffers at most
  ``queue_size`` messages. A ``strict`` subscription (the default: orders, portfolio) is
  terminated on overflow and its iterator raises :class:`SubscriberTooSlow`; a
  ``coalesce`` subscription (quotes) keeps only the latest message per channel. The
  reader hands each message to those queues as it reads it (there is no queue in
  between, so under overload quotes are coalesced rather than delayed) and never awaits a
  subscriber; it lets other tasks run after ``queue_size`` messages or
  ``MAX_BURST_SECONDS``, whichever comes first.
* **Race-free subscribe/unsubscribe.** A subscriber is registered for its channels
  before anything is awaited, and the backend SUBSCRIBE/UNSUBSCRIBE of a channel is
  serialised by a per-channel lock. ``subscribe()`` returns only once Redis has
  acknowledged the SUBSCRIBE, so every message published afterwards is delivered.
  :meth:`Subscription.add` and :meth:`Subscription.remove` change a live subscription's
  channels with the same guarantees, without ending it.
* **Serialise once.** ``publish`` encodes JSON once; the receiving process decodes each
  Redis message once and hands the same :class:`Message` to every local subscriber
  (treat ``Message.data`` as read-only). ``stats`` counts encodes and decodes.

Lifecycle::

    broadcast = Broadcast(settings.redis_url)
    await broadcast.connect()                   # e.g. in the starlette lifespan
    async with broadcast.subscribe(f"user:{uid}:orders") as sub:
        async for message in sub:               # may raise SubscriberTooSlow
            ...
    await broadcast.publish(f"user:{uid}:orders", {"id": "...", "status": "filled"})
    await broadcast.disconnect()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlparse

from broadcaster import Event
from broadcaster._backends.base import BroadcastBackend
from broadcaster._backends.memory import MemoryBackend
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    Connection,
    parse_url,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "Broadcast",
    "BroadcastError",
    "BroadcastStats",
    "BroadcastUnavailable",
    "Message",
    "RedisPubSubBackend",
    "SubscriberTooSlow",
    "Subscription",
    "SubscriptionInterrupted",
    "SubscriptionLost",
]

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 256
# How long the reader may route one burst of messages before it lets other tasks run.
MAX_BURST_SECONDS: Final = 0.02

# Errors that mean "the connection to Redis is (or may be) gone" rather than a bug.
_CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError)


# --------------------------------------------------------------------------- errors


class BroadcastError(Exception):
    """Base class of the errors raised by this module."""


class BroadcastUnavailable(BroadcastError):
    """``publish`` could not reach Redis within its bounded retry window.

    The event was probably not delivered (or, when the last attempt timed out after the
    command was sent, possibly delivered): the caller decides whether to retry, queue it
    or fail the request.
    """


class SubscriptionLost(BroadcastError):
    """The subscription was terminated and events may have been missed.

    The GraphQL layer should turn this into an error so the client re-subscribes and
    refetches the current state.
    """


class SubscriberTooSlow(SubscriptionLost):
    """A strict subscription's queue overflowed: the subscriber did not keep up."""


class SubscriptionInterrupted(SubscriptionLost):
    """The pub/sub connection to Redis was re-established; events may have been lost.

    Raised from strict subscriptions only when the hub was created with
    ``interrupt_strict_on_reconnect=True``.
    """


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded event. The same instance is handed to every local subscriber."""

    channel: str
    data: Any


@dataclass(slots=True)
class BroadcastStats:
    """A snapshot of the hub's counters (see :attr:`Broadcast.stats`)."""

    subscribers: dict[str, int]
    """Local subscriptions per channel."""
    subscriptions: int
    """Open subscriptions (each may cover several channels)."""
    published: int
    """Successful publishes."""
    encodes: int
    """JSON encodes (one per publish call)."""
    publish_failures: int
    """Publishes that raised :class:`BroadcastUnavailable`."""
    publish_retries: int
    """Publish attempts repeated after a connection error."""
    messages_received: int
    """Messages received from the backend."""
    decodes: int
    """JSON decodes (at most one per received message, none for unrouted ones)."""
    decode_errors: int
    """Received messages that were not valid JSON (dropped, logged)."""
    unrouted: int
    """Received messages for which there was no local subscriber any more."""
    delivered: int
    """Messages queued for a subscriber (one per subscriber per message)."""
    coalesced: int
    """Queued messages replaced by a newer one in a coalescing subscription."""
    dropped: int
    """Messages discarded by overflowing strict subscriptions."""
    too_slow: int
    """Strict subscriptions terminated with :class:`SubscriberTooSlow`."""
    interrupted: int
    """Strict subscriptions terminated with :class:`SubscriptionInterrupted`."""
    reconnects: int
    """Times the pub/sub connection was re-established after being lost."""
    connected: bool
    """Whether the pub/sub connection is currently up."""


@dataclass(slots=True)
class _Counters:
    published: int = 0
    encodes: int = 0
    publish_failures: int = 0
    messages_received: int = 0
    decodes: int = 0
    decode_errors: int = 0
    unrouted: int = 0
    delivered: int = 0
    coalesced: int = 0
    dropped: int = 0
    too_slow: int = 0
    interrupted: int = 0
    reconnects: int = 0


# --------------------------------------------------------------------------- backend


class _AckWaiter:
    """A ``subscribe`` call waiting for the ``seq``-th confirmation of its channel."""

    __slots__ = ("future", "seq")

    def __init__(self, seq: int, future: asyncio.Future[None]) -> None:
        self.seq = seq
        self.future = future

    def release(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class RedisPubSubBackend(BroadcastBackend):
    """A broadcaster backend over one Redis pub/sub connection that survives restarts.

    * One pub/sub connection carries every channel; a supervisor task reads it, answers
      for its health (PING when idle) and reconnects with capped exponential backoff,
      re-subscribing the channels still in use.
    * ``subscribe`` waits (bounded by ``subscribe_timeout``) for Redis to acknowledge
      the SUBSCRIBE, so a message published after it returns is delivered. During an
      outage it returns at once: the channel is subscribed when the connection is back.
    * ``publish`` uses a separate, small connection pool (``max_publish_connections``)
      and retries connection errors for at most ``publish_timeout`` seconds, then
      raises :class:`BroadcastUnavailable`.
    * It pushes rather than queues: the reader awaits :attr:`on_message` for each
      message (``Broadcast`` sets it), so nothing piles up between Redis and the
      subscriptions. ``next_published`` is therefore not available.
    """

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
        health_check_interval: float = 5.0,
        reconnect_backoff_initial: float = 0.05,
        reconnect_backoff_max: float = 5.0,
        max_publish_connections: int = 1,
        client_name: str | None = "kianax-broadcast",
    ) -> None:
        # BroadcastBackend.__init__ only raises NotImplementedError: not called.
        if publish_timeout <= 0 or connect_timeout <= 0 or subscribe_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if health_check_interval <= 0:
            raise ValueError("health_check_interval must be positive")
        if not 0 < reconnect_backoff_initial <= reconnect_backoff_max:
            raise ValueError("need 0 < reconnect_backoff_initial <= reconnect_backoff_max")
        if max_publish_connections < 1:
            raise ValueError("max_publish_connections must be >= 1")
        self._url = url
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._subscribe_timeout = subscribe_timeout
        self._health_check_interval = health_check_interval
        self._backoff_initial = reconnect_backoff_initial
        self._backoff_max = reconnect_backoff_max
        self._max_publish_connections = max_publish_connections
        self._client_name = client_name

        # Our defaults first, then whatever the URL says (URL options win).
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": min(connect_timeout, 5.0),
            "socket_timeout": 5.0,  # connect handshake and writes; reads pass their own
        }
        kwargs.update(dict(parse_url(url)))
        connection_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        if issubclass(connection_class, Connection):  # TCP (and TLS), not unix sockets
            kwargs.setdefault("socket_keepalive", True)
        self._connection_class = connection_class
        self._connection_kwargs = kwargs

        self._channels: set[str] = set()  # channels that must be subscribed
        self._conn: AbstractConnection | None = None  # live pub/sub connection
        # SUBSCRIBE confirmation: per channel, commands sent / confirmations read on the
        # current connection, and the subscribe() calls waiting for theirs.
        self._sent: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        self._waiters: dict[str, list[_AckWaiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._publisher: Redis | None = None

        self.on_message: Callable[[Event], Awaitable[None]] | None = None
        """Awaited by the reader for each message, in order; must be set before connect."""
        self.on_reconnect: Callable[[], None] | None = None
        """Called by the reader after each reconnect, before the first message after it."""
        self.reconnects = 0
        self.connection_losses = 0
        self.publish_retries = 0

    # -- lifecycle -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.is_connected

    async def connect(self) -> None:
        """Open the publish pool and the pub/sub connection.

        Raises :class:`BroadcastUnavailable` if Redis cannot be reached within
        ``connect_timeout``.
        """
        if self._task is not None:
            raise RuntimeError("backend already connected")
        deliver = self.on_message
        if deliver is None:
            raise RuntimeError("set on_message before connecting")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        delay = self._backoff_initial
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._open()
                break
            except (TimeoutError, *_CONNECTION_ERRORS) as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise BroadcastUnavailable(
                        f"cannot connect to Redis for pub/sub after {attempts} attempt(s) "
                        f"in {self._connect_timeout:g}s: {exc!r}"
                    ) from exc
                await asyncio.sleep(min(self._jitter(delay), remaining))
                delay = min(delay * 2, self._backoff_max)
        pool = BlockingConnectionPool(
            connection_class=self._connection_class,
            max_connections=self._max_publish_connections,
            timeout=self._publish_timeout,  # type: ignore[arg-type]  # float is fine
            **self._named("publish"),
        )
        self._publisher = Redis(connection_pool=pool)
        self._task = asyncio.create_task(
            self._supervise(conn, deliver), name="kianax-broadcast-reader"
        )

    async def disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.aclose(close_connection_pool=True)
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.release()
        self._waiters = {}
        self._channels.clear()
        self._sent.clear()
        self._acked.clear()

    # -- broadcaster's backend interface -------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        conn = self._conn
        if conn is None or not conn.is_connected:
            return  # re-subscribed by the supervisor once the connection is back
        # The n-th SUBSCRIBE of a channel on this connection is confirmed by the n-th
        # "subscribe" reply for it (commands on one connection are answered in order).
        seq = self._sent[channel] = self._sent.get(channel, 0) + 1
        waiter = _AckWaiter(seq, asyncio.get_running_loop().create_future())
        waiters = self._waiters.setdefault(channel, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                try:
                    await conn.send_command("SUBSCRIBE", channel)
                except _CONNECTION_ERRORS:
                    # The reader notices; the reconnect re-subscribes and confirms.
                    logger.debug("SUBSCRIBE %s hit a connection error", channel)
                await waiter.future
        except TimeoutError:
            logger.warning(
                "broadcast: Redis did not confirm SUBSCRIBE %s within %gs",
                channel,
                self._subscribe_timeout,
                extra={"channel": channel},
            )
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters.get(channel) is waiters:
                del self._waiters[channel]

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._sent.pop(channel, None)
        self._acked.pop(channel, None)
        conn = self._conn
        if conn is None or not conn.is_connected:
            return  # not re-subscribed on reconnect since it left self._channels
        try:
            # Commands on one connection are processed in order, so a later SUBSCRIBE
            # of the same channel wins; no need to wait for the acknowledgement.
            await conn.send_command("UNSUBSCRIBE", channel)
        except _CONNECTION_ERRORS:
            logger.debug("UNSUBSCRIBE %s hit a connection error", channel)

    async def publish(self, channel: str, message: Any) -> None:
        """Publish an already-serialised message (``str`` or ``bytes``)."""
        publisher = self._publisher
        if publisher is None:
            raise RuntimeError("backend is not connected")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        delay = 0.02
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await publisher.publish(channel, message)
                return
            except TimeoutError as exc:
                raise self._unavailable(channel, attempts, exc) from exc
            except _CONNECTION_ERRORS as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._unavailable(channel, attempts, exc) from exc
                self.publish_retries += 1
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)

    async def next_published(self) -> Event:
        raise NotImplementedError("RedisPubSubBackend pushes messages to on_message")

    # -- internals -----------------------------------------------------------------

    def _unavailable(self, channel: str, attempts: int, exc: BaseException) -> BroadcastUnavailable:
        return BroadcastUnavailable(
            f"publish to {channel!r} failed after {attempts} attempt(s) "
            f"in {self._publish_timeout:g}s: {exc!r}"
        )

    def _named(self, role: str) -> dict[str, Any]:
        kwargs = dict(self._connection_kwargs)
        if self._client_name and "client_name" not in kwargs:
            kwargs["client_name"] = f"{self._client_name}:{role}"
        return kwargs

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + random.random() / 2)

    async def _open(self) -> AbstractConnection:
        """Connect and subscribe every wanted channel; sets ``self._conn``."""
        # RESP2: pub/sub messages arrive as plain arrays whatever the URL asks for.
        conn = self._connection_class(**{**self._named("pubsub"), "protocol": 2})
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            # From here on subscribe()/unsubscribe() write to this connection; the
            # snapshot below and those writes are ordered on the socket, so no
            # channel is missed or resurrected.
            self._conn = conn
            channels = list(self._channels)
            self._sent = dict.fromkeys(channels, 1)
            self._acked = {}
            # subscribe() calls still waiting (their connection broke) are confirmed by
            # this batch.
            for channel, waiters in self._waiters.items():
                for waiter in waiters:
                    if channel in self._sent:
                        waiter.seq = 1
                    else:
                        waiter.release()
            if channels:
                await conn.send_command("SUBSCRIBE", *channels)
        except BaseException:
            if self._conn is conn:
                self._conn = None
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def _supervise(
        self, conn: AbstractConnection, deliver: Callable[[Event], Awaitable[None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._read(conn, deliver)
            except _CONNECTION_ERRORS as exc:
                self.connection_losses += 1
                logger.warning(
                    "broadcast: lost the Redis pub/sub connection (%r); reconnecting",
                    exc,
                    extra={"channel_count": len(self._channels)},
                )
            except Exception:
                # Anything else (an error reply, a parser problem): the connection's state
                # is unknown, so start afresh rather than let the reader die silently.
                self.connection_losses += 1
                logger.exception("broadcast: pub/sub reader failed; reconnecting")
            finally:
                if self._conn is conn:
                    self._conn = None
                await conn.disconnect(nowait=True)

            lost_at = loop.time()
            delay = self._backoff_initial
            attempts = 0
            while True:
                await asyncio.sleep(self._jitter(delay))
                attempts += 1
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        conn = await self._open()
                    break
                except Exception as exc:  # refused, timed out, auth/ACL errors...
                    delay = min(delay * 2, self._backoff_max)
                    log = logger.warning if attempts == 1 or attempts % 10 == 0 else logger.debug
                    log(
                        "broadcast: reconnect attempt %d to Redis failed (%r); retrying",
                        attempts,
                        exc,
                    )
            self.reconnects += 1
            logger.warning(
                "broadcast: reconnected to Redis after %.2fs (%d attempt(s)); "
                "re-subscribed %d channel(s)",
                loop.time() - lost_at,
                attempts,
                len(self._channels),
                extra={"channel_count": len(self._channels), "reconnects": self.reconnects},
            )
            if self.on_reconnect is not None:
                self.on_reconnect()

    async def _read(
        self, conn: AbstractConnection, deliver: Callable[[Event], Awaitable[None]]
    ) -> None:
        """Read pub/sub replies until the connection fails (raises a connection error)."""
        ping_sent = False
        while True:
            response = await conn.read_response(timeout=self._health_check_interval)
            if response is None:  # nothing for a while: is the server still there?
                if ping_sent:
                    raise RedisTimeoutError(
                        f"no reply to PING within {self._health_check_interval:g}s"
                    )
                await conn.send_command("PING")
                ping_sent = True
                continue
            ping_sent = False
            if not isinstance(response, list) or len(response) < 2:
                continue  # b"PONG" when nothing is subscribed
            kind = response[0]
            if kind == b"message" and len(response) == 3:
                await deliver(Event(channel=_text(response[1]), message=_text(response[2])))
            elif kind == b"subscribe":
                channel = _text(response[1])
                acked = self._acked[channel] = self._acked.get(channel, 0) + 1
                for waiter in self._waiters.get(channel, ()):
                    if waiter.seq <= acked:
                        waiter.release()
            # b"unsubscribe" and [b"pong", b""] need no action.


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


# --------------------------------------------------------------------------- hub


class Subscription:
    """An async iterator of :class:`Message` for one ``Broadcast.subscribe`` call.

    Ends (``StopAsyncIteration``) when the ``subscribe`` context exits or the hub
    disconnects; raises :class:`SubscriberTooSlow` (strict, on overflow) or
    :class:`SubscriptionInterrupted` (strict, after a reconnect, when enabled).
    Only one task may iterate a subscription; any task may :meth:`add` or
    :meth:`remove` channels while it does.
    """

    def __init__(self, hub: Broadcast, *, coalesce: bool) -> None:
        self.coalesce: Final = coalesce
        self.queue_size: Final = hub.queue_size
        self._hub = hub
        self._counters = hub._counters
        self._channels: dict[str, None] = {}  # an ordered set
        self._fifo: deque[Message] = deque()  # strict
        self._latest: dict[str, Message] = {}  # coalesce: latest message per channel
        self._waiter: asyncio.Future[None] | None = None
        self._error: SubscriptionLost | None = None
        self._closed = False

    def __repr__(self) -> str:
        policy = "coalesce" if self.coalesce else "strict"
        return f"<Subscription {policy} {list(self.channels)} pending={self.pending}>"

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this subscription receives now."""
        return tuple(self._channels)

    @property
    def pending(self) -> int:
        """Messages queued and not yet read."""
        return len(self._latest) if self.coalesce else len(self._fifo)

    @property
    def closed(self) -> bool:
        """Whether no more messages will be queued (closed, failed or overflowed)."""
        return self._closed or self._error is not None

    async def add(self, *channels: str) -> None:
        """Receive ``channels`` too; like ``subscribe``, returns once Redis confirmed them.

        Raises ``RuntimeError`` once the subscription has ended.
        """
        await self._hub._add(self, _channel_names(channels))

    async def remove(self, *channels: str) -> None:
        """Stop receiving ``channels``; their messages already queued are still read."""
        await self._hub._remove(self, _channel_names(channels))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._latest:
                return self._latest.pop(next(iter(self._latest)))
            if self._fifo:
                return self._fifo.popleft()
            if self._error is not None:
                raise type(self._error)(*self._error.args)
            if self._closed:
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("a Subscription can only be read by one task at a time")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    # Called by the hub; never awaits.

    def _offer(self, message: Message) -> None:
        if self._closed or self._error is not None:
            return
        counters = self._counters
        if self.coalesce:
            if message.channel in self._latest:
                counters.coalesced += 1
            # Replacing keeps the channel's place in line: the freshest quote is
            # delivered at the earliest position.
            self._latest[message.channel] = message
            counters.delivered += 1
        elif len(self._fifo) >= self.queue_size:
            counters.dropped += len(self._fifo) + 1
            counters.too_slow += 1
            self._fifo.clear()
            self._error = SubscriberTooSlow(
                f"subscriber to {', '.join(self.channels)} fell more than "
                f"{self.queue_size} messages behind; re-subscribe and refetch"
            )
            logger.warning(
                "broadcast: strict subscriber too slow, terminated",
                extra={"channels": list(self.channels), "queue_size": self.queue_size},
            )
        else:
            self._fifo.append(message)
            counters.delivered += 1
        self._wake()

    def _fail(self, error: SubscriptionLost) -> None:
        """Terminate after the already-queued messages have been read."""
        if self._closed or self._error is not None:
            return
        self._error = error
        self._wake()

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Channel:
    """Local state of one channel: its subscribers and backend subscription."""

    __slots__ = ("backend_subscribed", "closed", "lock", "name", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscription] = set()
        self.lock = asyncio.Lock()  # serialises backend subscribe/unsubscribe
        self.backend_subscribed = False  # a backend SUBSCRIBE was issued and not undone
        self.closed = False  # the hub disconnected: no more backend calls


def _channel_names(channels: tuple[str, ...]) -> tuple[str, ...]:
    for channel in channels:
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"invalid channel name: {channel!r}")
    return tuple(dict.fromkeys(channels))


def _default_dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Broadcast:
    """The process-wide pub/sub hub (replaces :class:`broadcaster.Broadcast`).

    ``url``: ``redis://``, ``rediss://`` or ``unix://`` (Redis), or ``memory://``
    (in-process, for unit tests). Redis connections: one pub/sub connection for all
    channels plus ``max_publish_connections`` (default 1) for publishing.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        publish_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
        health_check_interval: float = 5.0,
        reconnect_backoff_initial: float = 0.05,
        reconnect_backoff_max: float = 5.0,
        max_publish_connections: int = 1,
        interrupt_strict_on_reconnect: bool = False,
        dumps: Callable[[Any], str | bytes] | None = None,
        loads: Callable[[str | bytes], Any] | None = None,
        backend: BroadcastBackend | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if backend is None:
            if url is None:
                raise ValueError("either url or backend is required")
            scheme = urlparse(url).scheme
            if scheme in ("redis", "rediss", "unix"):
                backend = RedisPubSubBackend(
                    url,
                    publish_timeout=publish_timeout,
                    connect_timeout=connect_timeout,
                    subscribe_timeout=subscribe_timeout,
                    health_check_interval=health_check_interval,
                    reconnect_backoff_initial=reconnect_backoff_initial,
                    reconnect_backoff_max=reconnect_backoff_max,
                    max_publish_connections=max_publish_connections,
                )
            elif scheme == "memory":
                backend = MemoryBackend(url)
            else:
                raise ValueError(f"unsupported broadcast URL scheme: {scheme!r}")
        self._backend: BroadcastBackend = backend
        if isinstance(backend, RedisPubSubBackend):
            backend.on_message = self._deliver
            backend.on_reconnect = self._on_backend_reconnect
        self.queue_size: Final = queue_size
        self._interrupt_strict_on_reconnect = interrupt_strict_on_reconnect
        self._dumps: Callable[[Any], str | bytes] = dumps or _default_dumps
        self._loads: Callable[[str | bytes], Any] = loads or json.loads
        self._channels: dict[str, _Channel] = {}
        self._subscriptions: set[Subscription] = set()
        self._counters = _Counters()
        self._running = False
        # Only for backends that must be polled (next_published); ours pushes.
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._burst = 0  # messages routed since the reader last let other tasks run
        self._burst_started = 0.0

    # -- lifecycle -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Started and (for Redis) the pub/sub connection is up: fit for a health check."""
        if not self._running:
            return False
        backend = self._backend
        return backend.connected if isinstance(backend, RedisPubSubBackend) else True

    async def connect(self) -> None:
        if self._running:
            raise RuntimeError("Broadcast is already connected")
        await self._backend.connect()
        self._running = True
        if not isinstance(self._backend, RedisPubSubBackend):
            self._listener = asyncio.create_task(self._listen(), name="kianax-broadcast-listener")

    async def disconnect(self) -> None:
        """Stop delivery: open subscriptions end (after their queued messages)."""
        if not self._running:
            return
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])
        for state in self._channels.values():
            state.closed = True
        self._channels.clear()
        for sub in self._subscriptions:
            sub._close()
        self._subscriptions.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=1.0)
        await self._backend.disconnect()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    # -- publish / subscribe -------------------------------------------------------

    async def publish(self, channel: str, message: Any) -> None:
        """Serialise ``message`` to JSON once and publish it on ``channel``.

        ``message`` must be JSON-able (convert ``Decimal``/``datetime`` to ``str``
        first). Raises :class:`BroadcastUnavailable` when Redis cannot be reached
        within ``publish_timeout``.
        """
        if not self._running:
            raise RuntimeError("Broadcast is not connected")
        payload = self._dumps(message)
        self._counters.encodes += 1
        try:
            await self._backend.publish(channel, payload)
        except BroadcastUnavailable:
            self._counters.publish_failures += 1
            raise
        self._counters.published += 1

    def subscribe(
        self, *channels: str, coalesce: bool = False
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``channels``; the context yields a :class:`Subscription`.

        ``coalesce=False`` (strict, for orders/portfolio): at most ``queue_size``
        queued messages, then the subscription fails with :class:`SubscriberTooSlow`.
        ``coalesce=True`` (quotes): only the latest message per channel is kept.
        When the context has been entered, every message published afterwards on
        these channels is delivered (barring a Redis outage). ``channels`` may be
        empty when they are to be added later (:meth:`Subscription.add`).
        """
        return self._subscription(_channel_names(channels), coalesce)

    @property
    def stats(self) -> BroadcastStats:
        c = self._counters
        backend = self._backend
        redis_backend = backend if isinstance(backend, RedisPubSubBackend) else None
        return BroadcastStats(
            subscribers={
                name: len(state.subscribers)
                for name, state in self._channels.items()
                if state.subscribers
            },
            subscriptions=len(self._subscriptions),
            published=c.published,
            encodes=c.encodes,
            publish_failures=c.publish_failures,
            publish_retries=redis_backend.publish_retries if redis_backend else 0,
            messages_received=c.messages_received,
            decodes=c.decodes,
            decode_errors=c.decode_errors,
            unrouted=c.unrouted,
            delivered=c.delivered,
            coalesced=c.coalesced,
            dropped=c.dropped,
            too_slow=c.too_slow,
            interrupted=c.interrupted,
            reconnects=c.reconnects,
            connected=self.connected,
        )

    # -- internals -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _subscription(
        self, channels: tuple[str, ...], coalesce: bool
    ) -> AsyncIterator[Subscription]:
        if not self._running:
            raise RuntimeError("Broadcast is not connected")
        sub = Subscription(self, coalesce=coalesce)
        states = self._register(sub, channels)
        self._subscriptions.add(sub)
        try:
            await asyncio.gather(*(self._ensure_subscribed(state) for state in states))
            yield sub
        finally:
            sub._close()
            self._subscriptions.discard(sub)
            await self._release_shielded(self._unregister(sub, sub.channels))

    async def _add(self, sub: Subscription, channels: tuple[str, ...]) -> None:
        if sub._closed:
            raise RuntimeError("the subscription has ended")
        states = self._register(sub, channels)
        await asyncio.gather(*(self._ensure_subscribed(state) for state in states))

    async def _remove(self, sub: Subscription, channels: tuple[str, ...]) -> None:
        await self._release_shielded(self._unregister(sub, channels))

    def _register(self, sub: Subscription, channels: Iterable[str]) -> list[_Channel]:
        """Route ``channels`` to ``sub``; returns the states of those it did not have.

        Synchronous, so it happens before any await: from then on the reader routes every
        message of these channels to ``sub``, and a concurrent subscribe/unsubscribe of
        the same channel sees it.
        """
        states: list[_Channel] = []
        for channel in channels:
            if channel in sub._channels:
                continue
            state = self._channels.get(channel)
            if state is None:
                state = self._channels[channel] = _Channel(channel)
            state.subscribers.add(sub)
            sub._channels[channel] = None
            states.append(state)
        return states

    def _unregister(self, sub: Subscription, channels: Iterable[str]) -> list[_Channel]:
        states: list[_Channel] = []
        for channel in channels:
            if channel not in sub._channels:
                continue
            del sub._channels[channel]
            # A state is only dropped once it has no subscribers, or by disconnect().
            state = self._channels.get(channel)
            if state is not None:
                state.subscribers.discard(sub)
                states.append(state)
        return states

    async def _release_shielded(self, states: list[_Channel]) -> None:
        # Shielded so that a cancelled subscriber (client went away) still
        # unsubscribes the backend from channels nobody else uses.
        release = asyncio.ensure_future(self._release(states))
        self._background.add(release)
        release.add_done_callback(self._background.discard)
        await asyncio.shield(release)

    async def _ensure_subscribed(self, state: _Channel) -> None:
        async with state.lock:
            if state.closed or state.backend_subscribed or not state.subscribers:
                return
            # Set before awaiting: if this call is cancelled or fails half-way, the
            # last subscriber out still undoes it.
            state.backend_subscribed = True
            await self._backend.subscribe(state.name)

    async def _release(self, states: Iterable[_Channel]) -> None:
        for state in states:
            async with state.lock:
                if state.subscribers or state.closed:
                    continue  # still in use, or the hub is gone
                if state.backend_subscribed:
                    state.backend_subscribed = False
                    try:
                        await self._backend.unsubscribe(state.name)
                    except Exception:
                        logger.exception("broadcast: unsubscribe %s failed", state.name)
                # A subscriber that joined during the await keeps the state (and
                # re-subscribes the backend when it gets the lock).
                if not state.subscribers and self._channels.get(state.name) is state:
                    del self._channels[state.name]

    async def _listen(self) -> None:
        while True:
            try:
                event = await self._backend.next_published()
            except Exception:
                logger.exception("broadcast: backend failed; terminating subscriptions")
                self._fail_all(SubscriptionLost("the broadcast backend failed"), strict_only=False)
                await asyncio.sleep(1.0)
                continue
            await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        """Route one message straight to its subscriptions' queues.

        A burst of messages already read (one large socket read) would otherwise be
        routed without the loop running anything else: after ``queue_size`` messages,
        or ``MAX_BURST_SECONDS``, the reader lets the woken subscribers (and every other
        task) run. So a strict subscriber that reads whenever it is woken never
        overflows, and no channel, however busy, holds the loop for long.
        """
        try:
            self._dispatch(event)
        except Exception:
            logger.exception("broadcast: dispatch failed")
        now = asyncio.get_running_loop().time()
        if self._burst == 0:
            self._burst_started = now
        self._burst += 1
        if self._burst >= self.queue_size or now - self._burst_started >= MAX_BURST_SECONDS:
            self._burst = 0
            await asyncio.sleep(0)

    def _dispatch(self, event: Event) -> None:
        counters = self._counters
        counters.messages_received += 1
        state = self._channels.get(event.channel)
        if state is None or not state.subscribers:
            counters.unrouted += 1
            return
        try:
            data = self._loads(event.message)
        except ValueError:
            counters.decode_errors += 1
            logger.warning(
                "broadcast: dropped a message that is not JSON",
                extra={"channel": event.channel},
            )
            return
        counters.decodes += 1
        message = Message(event.channel, data)
        for sub in state.subscribers:
            sub._offer(message)

    def _on_backend_reconnect(self) -> None:
        self._counters.reconnects += 1
        if self._interrupt_strict_on_reconnect:
            self._fail_all(
                SubscriptionInterrupted(
                    "the connection to Redis was lost and re-established; events may "
                    "have been missed: re-subscribe and refetch"
                ),
                strict_only=True,
            )

    def _fail_all(self, error: SubscriptionLost, *, strict_only: bool) -> None:
        for sub in self._subscriptions:
            if strict_only and sub.coalesce:
                continue
            if not sub.closed:
                if isinstance(error, SubscriptionInterrupted):
                    self._counters.interrupted += 1
                sub._fail(error)
