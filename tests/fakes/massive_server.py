"""A local stand-in for Massive (formerly Polygon.io): the REST endpoints and the stocks
WebSocket that `domain.market.massive` uses, in Massive's own JSON shapes, so tests can
drive the real `massive` SDK against it.

The server runs in its own thread and event loop, so it works from sync tests and from
any test event loop. Tests fill it with `add_*`/`set_snapshot`, push stream events with
`push(quote_event(...), trade_event(...))`, drop every stream connection with
`drop_connections()`, and read back what clients sent in `ws_actions` and `requests`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from tests.fakes.threaded import ThreadedServer

Json = dict[str, Any]
_T = TypeVar("_T")
_WAIT_SECONDS = 10.0
_Handler = Callable[[Request], Awaitable[JSONResponse]]


def agg(
    start: datetime,
    o: float,
    h: float,
    l: float,  # noqa: E741 - Massive's own field name
    c: float,
    v: float,
    vw: float | None = None,
    n: int = 1000,
) -> Json:
    """One aggregate bar as Massive sends it (`t` is the bar start in epoch ms)."""
    bar: Json = {"o": o, "h": h, "l": l, "c": c, "v": v, "t": _ms(start), "n": n}
    if vw is not None:
        bar["vw"] = vw
    return bar


def quote_event(
    symbol: str, bid: float, ask: float, at: datetime, bid_size: int = 100, ask_size: int = 100
) -> Json:
    """A stocks `Q` (NBBO quote) stream message."""
    return {
        "ev": "Q",
        "sym": symbol,
        "bx": 4,
        "bp": bid,
        "bs": bid_size,
        "ax": 7,
        "ap": ask,
        "as": ask_size,
        "c": 0,
        "i": [604],
        "t": _ms(at),
        "q": 50385480,
        "z": 3,
    }


def trade_event(symbol: str, price: float, size: int, at: datetime) -> Json:
    """A stocks `T` (trade) stream message."""
    return {
        "ev": "T",
        "sym": symbol,
        "x": 4,
        "i": uuid.uuid4().hex[:12],
        "z": 3,
        "p": price,
        "s": size,
        "c": [12, 41],
        "t": _ms(at),
        "q": 3681328,
    }


@dataclass(frozen=True)
class WsAction:
    """One client message on a stream connection (connections are numbered from 1)."""

    connection: int
    action: str
    params: str

    @property
    def topics(self) -> set[str]:
        return {t.strip() for t in self.params.split(",") if t.strip()}


@dataclass(eq=False)
class _Connection:
    id: int
    socket: WebSocket
    authenticated: bool = False
    topics: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, events: list[Json]) -> None:
        # Pushes from tests and replies to the client may interleave.
        async with self.lock:
            await self.socket.send_text(json.dumps(events))


class FakeMassive(ThreadedServer):
    name = "fake Massive"

    def __init__(self, api_key: str = "test-massive-key", *, page_size: int = 1000) -> None:
        super().__init__()
        self.api_key = api_key
        # Caps every requested page size, so a test can force clients to follow next_url.
        self.page_size = page_size
        self.details: dict[str, Json] = {}
        self.snapshots: dict[str, Json] = {}
        self.aggs: dict[tuple[str, int, str], list[Json]] = {}
        self.articles: list[Json] = []
        self.requests: list[str] = []
        self.ws_actions: list[WsAction] = []
        self._connections: dict[int, _Connection] = {}
        self._connection_count = 0

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # --- data -------------------------------------------------------------------------

    def add_ticker(
        self,
        symbol: str,
        name: str,
        *,
        primary_exchange: str = "XNAS",
        sic_description: str | None = None,
        description: str | None = None,
    ) -> None:
        self.details[symbol] = {
            "ticker": symbol,
            "name": name,
            "market": "stocks",
            "locale": "us",
            "primary_exchange": primary_exchange,
            "type": "CS",
            "active": True,
            "currency_name": "usd",
            "cik": "0000320193",
            "composite_figi": "BBG000B9XRY4",
            "share_class_figi": "BBG001S5N8V8",
            "market_cap": 3_000_000_000_000.0,
            "phone_number": "(408) 996-1010",
            "address": {
                "address1": "ONE APPLE PARK WAY",
                "city": "CUPERTINO",
                "state": "CA",
                "postal_code": "95014",
            },
            "description": description,
            "sic_code": "3571",
            "sic_description": sic_description,
            "ticker_root": symbol,
            "homepage_url": "https://www.example.com",
            "total_employees": 161000,
            "list_date": "1980-12-12",
            "branding": {
                "logo_url": f"https://api.massive.com/v1/reference/company-branding/{symbol}.svg",
                "icon_url": f"https://api.massive.com/v1/reference/company-branding/{symbol}.png",
            },
            "share_class_shares_outstanding": 15_115_823_000,
            "weighted_shares_outstanding": 15_115_823_000,
            "round_lot": 100,
        }

    def set_snapshot(
        self,
        symbol: str,
        *,
        last: float,
        bid: float,
        ask: float,
        volume: float,
        prev_close: float,
        updated: datetime,
    ) -> None:
        ns = _ms(updated) * 1_000_000
        self.snapshots[symbol] = {
            "ticker": symbol,
            "todaysChange": round(last - prev_close, 4),
            "todaysChangePerc": round((last - prev_close) / prev_close * 100, 4),
            "updated": ns,
            "day": {
                "o": prev_close,
                "h": max(last, prev_close),
                "l": min(last, prev_close),
                "c": last,
                "v": volume,
                "vw": (last + prev_close) / 2,
            },
            "lastQuote": {"P": ask, "S": 4, "p": bid, "s": 8, "t": ns},
            "lastTrade": {"c": [14, 41], "i": "4046", "p": last, "s": 236, "t": ns, "x": 10},
            "min": {
                "av": volume,
                "c": last,
                "h": last,
                "l": last,
                "n": 12,
                "o": last,
                "t": _ms(updated) // 60_000 * 60_000,
                "v": 2700,
                "vw": last,
            },
            "prevDay": {
                "c": prev_close,
                "h": prev_close,
                "l": prev_close,
                "o": prev_close,
                "v": volume * 2,
                "vw": prev_close,
            },
        }

    def add_aggs(self, symbol: str, multiplier: int, timespan: str, bars: Iterable[Json]) -> None:
        self.aggs.setdefault((symbol, multiplier, timespan), []).extend(bars)

    def add_article(
        self,
        *,
        id: str,
        title: str,
        publisher: str,
        tickers: list[str],
        published: datetime,
        description: str | None = None,
        url: str | None = None,
        sentiments: Mapping[str, str] | None = None,
    ) -> None:
        article: Json = {
            "id": id,
            "publisher": {
                "name": publisher,
                "homepage_url": "https://www.example.com/",
                "logo_url": "https://www.example.com/logo.png",
                "favicon_url": "https://www.example.com/favicon.ico",
            },
            "title": title,
            "author": "Staff",
            "published_utc": published.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "article_url": url,
            "tickers": tickers,
            "image_url": "https://www.example.com/image.jpg",
            "description": description,
            "keywords": ["markets"],
        }
        if sentiments:
            article["insights"] = [
                {"ticker": t, "sentiment": s, "sentiment_reasoning": f"{t} looks {s}."}
                for t, s in sentiments.items()
            ]
        self.articles.append(article)

    # --- stream control (call from any thread or event loop) --------------------------

    async def push(self, *events: Json) -> int:
        """Send events to the connections subscribed to them; returns how many got any."""
        return await self._on_server_loop(self._push(list(events)))

    async def drop_connections(self, code: int = 1011) -> None:
        """Close every stream connection: 1011 is an error close, 1001 a clean "going away"."""
        await self._on_server_loop(self._drop(code))

    def live_topics(self) -> set[str]:
        """Topics of the authenticated connections open now."""
        return {
            topic
            for conn in list(self._connections.values())
            if conn.authenticated
            for topic in conn.topics
        }

    def subscriptions(self, connection: int | None = None) -> list[WsAction]:
        return [
            a
            for a in self.ws_actions
            if a.action == "subscribe" and connection in (None, a.connection)
        ]

    @property
    def connection_count(self) -> int:
        return self._connection_count

    # --- the app ----------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/v2/aggs/ticker/{ticker}/range/{multiplier:int}/{timespan}/{start}/{end}",
                    self._guard(self._aggs),
                ),
                Route("/v2/snapshot/locale/us/markets/stocks/tickers", self._guard(self._snaps)),
                Route(
                    "/v2/snapshot/locale/us/markets/stocks/tickers/{ticker}",
                    self._guard(self._snapshot),
                ),
                Route("/v3/reference/tickers", self._guard(self._tickers)),
                Route("/v3/reference/tickers/{ticker}", self._guard(self._ticker_details)),
                Route("/v2/reference/news", self._guard(self._news)),
                WebSocketRoute("/stocks", self._stocks_socket),
            ]
        )

    def _guard(self, handler: _Handler) -> _Handler:
        async def guarded(request: Request) -> JSONResponse:
            self.requests.append(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            header = request.headers.get("authorization", "")
            key = header.removeprefix("Bearer ") if header else request.query_params.get("apiKey")
            if not key:
                return _error(401, "ERROR", error="API Key was not provided")
            if key != self.api_key:
                return _error(401, "ERROR", error="Unknown API Key")
            return await handler(request)

        return guarded

    async def _aggs(self, request: Request) -> JSONResponse:
        p = request.path_params
        query = _query(request)
        start, end = _ms_or_date(p["start"]), _ms_or_date(p["end"], end_of_day=True)
        width = p["multiplier"] * _SPAN_MS[p["timespan"]]
        # Like Massive, every window overlapping the range comes back, including the one
        # that began before `start` (say, the week bar of a mid-week start).
        bars = [
            b
            for b in self.aggs.get((p["ticker"], p["multiplier"], p["timespan"]), [])
            if b["t"] <= end and b["t"] + width > start
        ]
        bars.sort(key=lambda b: b["t"], reverse=query.get("sort") == "desc")
        page, next_url = self._page(request, query, bars, default_limit=5000)
        body: Json = {
            "ticker": p["ticker"],
            "queryCount": len(page),
            "resultsCount": len(page),
            "adjusted": query.get("adjusted", "true") == "true",
            "status": "OK",
            "request_id": _request_id(),
            "count": len(page),
        }
        if page:
            body["results"] = page
        if next_url:
            body["next_url"] = next_url
        return JSONResponse(body)

    async def _snapshot(self, request: Request) -> JSONResponse:
        snapshot = self.snapshots.get(request.path_params["ticker"])
        if snapshot is None:
            return _error(404, "NOT_FOUND", message="Ticker not found.")
        return JSONResponse({"status": "OK", "request_id": _request_id(), "ticker": snapshot})

    async def _snaps(self, request: Request) -> JSONResponse:
        wanted = [t for t in request.query_params.get("tickers", "").split(",") if t]
        found = [self.snapshots[t] for t in wanted or self.snapshots if t in self.snapshots]
        return JSONResponse(
            {"status": "OK", "request_id": _request_id(), "count": len(found), "tickers": found}
        )

    async def _tickers(self, request: Request) -> JSONResponse:
        query = _query(request)
        search = query.get("search", "").lower()
        rows = [
            {k: d[k] for k in _TICKER_FIELDS if k in d}
            for d in sorted(self.details.values(), key=lambda d: str(d["ticker"]))
            if search in d["ticker"].lower() or search in d["name"].lower()
        ]
        page, next_url = self._page(request, query, rows, default_limit=100)
        body: Json = {
            "results": page,
            "status": "OK",
            "request_id": _request_id(),
            "count": len(page),
        }
        if next_url:
            body["next_url"] = next_url
        return JSONResponse(body)

    async def _ticker_details(self, request: Request) -> JSONResponse:
        details = self.details.get(request.path_params["ticker"])
        if details is None:
            return _error(404, "NOT_FOUND", message="Ticker not found.")
        return JSONResponse({"request_id": _request_id(), "results": details, "status": "OK"})

    async def _news(self, request: Request) -> JSONResponse:
        query = _query(request)
        ticker = query.get("ticker")
        before = query.get("published_utc.lt")
        rows = [
            a
            for a in self.articles
            if (ticker is None or ticker in a["tickers"])
            and (before is None or _iso(a["published_utc"]) < _iso(before))
        ]
        rows.sort(key=lambda a: str(a["published_utc"]), reverse=query.get("order") != "asc")
        page, next_url = self._page(request, query, rows, default_limit=10)
        body: Json = {
            "results": page,
            "status": "OK",
            "request_id": _request_id(),
            "count": len(page),
        }
        if next_url:
            body["next_url"] = next_url
        return JSONResponse(body)

    def _page(
        self, request: Request, query: dict[str, str], rows: list[Json], default_limit: int
    ) -> tuple[list[Json], str | None]:
        limit = min(int(query.get("limit", default_limit)), self.page_size)
        offset = int(query.get("offset", 0))
        page = rows[offset : offset + limit]
        if offset + limit >= len(rows):
            return page, None
        # Like Massive, the cursor carries the whole query, so next_url needs nothing else.
        cursor = base64.urlsafe_b64encode(
            urlencode({**query, "offset": offset + limit}).encode()
        ).decode()
        return page, f"https://api.massive.com{request.url.path}?cursor={cursor}"

    async def _stocks_socket(self, ws: WebSocket) -> None:
        await ws.accept()
        self._connection_count += 1
        conn = _Connection(self._connection_count, ws)
        self._connections[conn.id] = conn
        try:
            await conn.send([_status("connected", "Connected Successfully")])
            while True:
                request = json.loads(await ws.receive_text())
                action, params = str(request.get("action")), str(request.get("params", ""))
                self.ws_actions.append(WsAction(conn.id, action, params))
                if action == "auth":
                    if params != self.api_key:
                        await conn.send([_status("auth_failed", "authentication failed")])
                        await ws.close(1008)
                        return
                    conn.authenticated = True
                    await conn.send([_status("auth_success", "authenticated")])
                elif not conn.authenticated:
                    await conn.send([_status("error", "not authorized")])
                elif action in ("subscribe", "unsubscribe"):
                    topics = WsAction(conn.id, action, params).topics
                    if action == "subscribe":
                        conn.topics |= topics
                    else:
                        conn.topics -= topics
                    verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
                    await conn.send([_status("success", f"{verb}: {t}") for t in sorted(topics)])
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass
        finally:
            self._connections.pop(conn.id, None)

    async def _push(self, events: list[Json]) -> int:
        delivered = 0
        for conn in list(self._connections.values()):
            mine = [
                e
                for e in events
                if conn.authenticated and ({f"{e['ev']}.{e['sym']}", f"{e['ev']}.*"} & conn.topics)
            ]
            if not mine:
                continue
            try:
                await conn.send(mine)
            except (OSError, RuntimeError):
                continue  # closing under us
            delivered += 1
        return delivered

    async def _drop(self, code: int) -> None:
        for conn in list(self._connections.values()):
            self._connections.pop(conn.id, None)
            try:
                await conn.socket.close(code)
            except (OSError, RuntimeError):
                continue


@contextmanager
def running_fake_massive(
    api_key: str = "test-massive-key", *, page_size: int = 1000
) -> Iterator[FakeMassive]:
    fake = FakeMassive(api_key, page_size=page_size)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


_SPAN_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}

_TICKER_FIELDS = (
    "ticker",
    "name",
    "market",
    "locale",
    "primary_exchange",
    "type",
    "active",
    "currency_name",
    "cik",
    "composite_figi",
    "share_class_figi",
)


def _error(status_code: int, status: str, **detail: str) -> JSONResponse:
    return JSONResponse(
        {"status": status, "request_id": _request_id(), **detail}, status_code=status_code
    )


def _status(status: str, message: str) -> Json:
    return {"ev": "status", "status": status, "message": message}


def _query(request: Request) -> dict[str, str]:
    cursor = request.query_params.get("cursor")
    if cursor:
        return dict(parse_qsl(base64.urlsafe_b64decode(cursor).decode()))
    return dict(request.query_params)


def _request_id() -> str:
    return uuid.uuid4().hex


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _ms_or_date(value: str, *, end_of_day: bool = False) -> int:
    if value.isdigit():
        return int(value)
    day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    return _ms(day + timedelta(days=1) - timedelta(milliseconds=1) if end_of_day else day)


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)
