"""Each user's own broker account: connecting it, moving orders to it, and keeping Kianax's
mirror of it (orders, fills, positions, cash) true.

No transaction is ever open while a broker is called. Every flow here reads what it needs
in one short transaction scoped to the user, talks to the broker with none open, and
writes the outcome in another -- which is why this service opens its own units of work
rather than taking a caller's. Trading rules (statuses, fills, reservations) stay in
`TradingService`; this module decides when the broker's word is applied.

The API key id and secret are sealed together as one JSON string (envelope AES-GCM bound
to the user and connection ids, see `crypto`), opened only to build a `Broker`, and never
logged, audited or put into an error message: users and logs see `key_hint` only.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from db.engine import Database, UnitOfWork
from db.models import Account, BrokerConnection, Order, Position
from db.repositories import brokers as repo
from db.repositories import trading as trading_repo
from domain import audit
from domain.auth.actor import Actor
from domain.auth.ratelimit import Limit, RateLimiter
from domain.auth.service import TwoFactorRequired
from domain.brokers.alpaca import AlpacaBroker
from domain.brokers.base import (
    Broker,
    BrokerAuthError,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerRejected,
    TradeEvent,
    TradeEventKind,
)
from domain.brokers.crypto import (
    DecryptionFailed,
    KeyRing,
    SealedSecret,
    key_hint,
    open_sealed,
    seal,
)
from domain.brokers.types import BrokerEnvironment, ConnectionStatus
from domain.trading.service import TradingService, request_of
from domain.trading.types import BrokerKind, FillEvent, OrderStatus

log = logging.getLogger(__name__)

ZERO = Decimal(0)
_PRICE = Decimal("0.0001")
# Each attempt asks Alpaca whether the keys work: enough for typos, too few to probe keys.
CONNECT_ATTEMPTS = Limit("broker-connect", 10, 900)
# A NEW order the broker has never heard of, this long after it was placed, never reached
# it: longer than the submitting job's retries take, so a submission still under way is
# not mistaken for a lost one.
LOST_SUBMISSION_AFTER = timedelta(minutes=15)
_KEY_ID = re.compile(r"[A-Za-z0-9]{8,64}")
_SECRET = re.compile(r"[\x21-\x7e]{8,128}")  # printable ASCII, no spaces
_NAMES = {BrokerKind.ALPACA: "Alpaca"}
# What a broker's view of an order settles by status alone; fills need their quantities.
_STATUS_REPORTS = frozenset(
    {OrderStatus.ACCEPTED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)

REFUSED_KEYS = "Alpaca refused the stored API keys; reconnect the account"
UNREADABLE_KEYS = "the stored API keys cannot be decrypted; reconnect the account"


@dataclass(frozen=True)
class Credentials:
    key_id: str = field(repr=False)
    secret: str = field(repr=False)


BrokerFactory = Callable[[BrokerEnvironment, Credentials], Broker]


def alpaca_factory(base_url: str | None = None, stream_url: str | None = None) -> BrokerFactory:
    """Builds an `AlpacaBroker` for a connection; the URLs replace Alpaca's own."""

    def build(environment: BrokerEnvironment, credentials: Credentials) -> Broker:
        return AlpacaBroker(
            credentials.key_id,
            credentials.secret,
            paper=environment is BrokerEnvironment.PAPER,
            base_url=base_url,
            stream_url=stream_url,
        )

    return build


class SecondFactor(Protocol):
    async def require_fresh_code(self, uow: UnitOfWork, actor: Actor, code: str | None) -> None: ...


# ------------------------------------------------------------------ expected failures


class BrokerServiceError(Exception):
    code = "BROKER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectInvalid(BrokerServiceError):
    code = "VALIDATION_ERROR"

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class CredentialsRejected(BrokerServiceError):
    code = "BROKER_REJECTED_CREDENTIALS"


class BrokerUnreachable(BrokerServiceError):
    code = "BROKER_UNAVAILABLE"


class TooManyAttempts(BrokerServiceError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many connection attempts; try again in {retry_after} seconds")
        self.retry_after = retry_after


class ConnectionNotFound(BrokerServiceError):
    code = "NOT_FOUND"


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class ConnectRequest:
    provider: BrokerKind
    environment: BrokerEnvironment
    api_key_id: str = field(repr=False)
    api_secret: str = field(repr=False)
    totp_code: str | None = field(default=None, repr=False)


class JobOutcome(enum.StrEnum):
    DONE = "done"  # nothing (more) to do: sent, refused, or already settled
    RETRY = "retry"  # the broker could not be reached; try again later


@dataclass(frozen=True)
class Reconciliation:
    connection: BrokerConnection
    corrections: list[dict[str, Any]]
    unreachable: str | None = None  # why the broker could not be asked, when it could not


# ------------------------------------------------------------------ the service


@dataclass
class BrokerService:
    db: Database
    trading: TradingService
    auth: SecondFactor
    keys: KeyRing
    limiter: RateLimiter
    factory: BrokerFactory = field(default_factory=alpaca_factory)
    # Waits between a submitting job's tries while the broker cannot be reached.
    retry_delays: tuple[float, ...] = (2.0, 5.0, 15.0, 30.0, 60.0)

    @property
    def submit_tries(self) -> int:
        return len(self.retry_delays) + 1

    def retry_delay(self, job_try: int) -> float:
        return self.retry_delays[min(job_try, len(self.retry_delays)) - 1]

    def _now(self) -> datetime:
        return self.trading.clock()

    # --- connections

    async def connections(self, uow: UnitOfWork) -> Sequence[BrokerConnection]:
        return await repo.connections(uow.session, _user(uow))

    async def connect(self, actor: Actor, request: ConnectRequest) -> BrokerConnection:
        """Verify the keys with the broker, then store them sealed with a new account.

        Nothing is stored unless the broker accepted the keys. A LIVE connection trades
        real money, so it needs a current two-factor code when 2FA is on.
        """
        key_id, secret = request.api_key_id.strip(), request.api_secret.strip()
        _check_connect(request.provider, key_id, secret)
        user_id = actor.user_id
        wait = await self.limiter.hit(CONNECT_ATTEMPTS, str(user_id))
        if wait is not None:
            raise TooManyAttempts(wait)
        refused: TwoFactorRequired | None = None
        async with self.db.transaction(user_id) as uow:
            await self._no_active_connection(uow, request.provider)
            if request.environment is BrokerEnvironment.LIVE:
                try:
                    await self.auth.require_fresh_code(uow, actor, request.totp_code)
                except TwoFactorRequired as exc:
                    refused = exc  # raised after the commit, which keeps a failed code's audit
        if refused is not None:
            raise refused

        broker = self.factory(request.environment, Credentials(key_id, secret))
        name = _NAMES[request.provider]
        try:
            account = await broker.account()
            held = await broker.positions()
        except BrokerAuthError:
            raise CredentialsRejected(f"{name} refused these API keys") from None
        except BrokerError as exc:
            raise BrokerUnreachable(f"{name} could not be reached: {exc}") from None

        connection_id = uuid.uuid4()
        sealed = seal(
            self.keys,
            json.dumps({"keyId": key_id, "secret": secret}),
            user_id=user_id,
            connection_id=connection_id,
        )
        now = self._now()
        row = BrokerConnection(
            id=connection_id,
            user_id=user_id,
            provider=request.provider,
            environment=request.environment,
            status=ConnectionStatus.CONNECTED,
            account_number=account.account_number,
            key_hint=key_hint(key_id),
            key_id=sealed.key_id,
            wrapped_key=sealed.wrapped_key,
            ciphertext=sealed.ciphertext,
            last_synced_at=now,
            created_at=now,
        )
        async with self.db.transaction(user_id) as uow:
            mirror = Account(
                id=uuid.uuid4(),
                user_id=user_id,
                broker=request.provider,
                broker_connection_id=connection_id,
                starting_cash=account.equity,
                cash=account.cash,
                reserved=ZERO,
            )
            try:
                async with uow.session.begin_nested():
                    uow.session.add(row)
                    await uow.session.flush()
                    uow.session.add(mirror)
                    await uow.session.flush()
            except IntegrityError:
                # Another request connected the same provider in the meantime.
                await self._no_active_connection(uow, request.provider)
                raise
            await self._correct_positions(uow, mirror, held, now)
            await audit.record(
                uow.session,
                "broker.connected",
                user_id=user_id,
                entity="broker_connection",
                entity_id=connection_id,
                payload={
                    "provider": request.provider.value,
                    "environment": request.environment.value,
                    "account_number": account.account_number,
                    "key_hint": row.key_hint,
                },
            )
        return row

    async def _no_active_connection(self, uow: UnitOfWork, provider: BrokerKind) -> None:
        if await repo.active_connection(uow.session, _user(uow), provider) is not None:
            raise ConnectInvalid(
                "provider",
                f"an {_NAMES[provider]} account is already connected; disconnect it first",
            )

    async def disconnect(self, actor: Actor, connection_id: uuid.UUID) -> bool:
        """Forget the keys and stop trading through them; the account stays as history.
        The worker's stream for it stops at its next refresh."""
        async with self.db.transaction(actor.user_id) as uow:
            row = await repo.connection(uow.session, actor.user_id, connection_id, lock=True)
            if row is None or row.status is ConnectionStatus.DISCONNECTED:
                return False
            row.status = ConnectionStatus.DISCONNECTED
            row.key_id = row.wrapped_key = row.ciphertext = None
            row.disconnected_at = self._now()
            await audit.record(
                uow.session,
                "broker.disconnected",
                user_id=actor.user_id,
                entity="broker_connection",
                entity_id=connection_id,
                payload={"provider": row.provider.value, "key_hint": row.key_hint},
            )
        return True

    async def sync(self, actor: Actor, connection_id: uuid.UUID) -> Reconciliation:
        """Reconcile one connection now (what the cron does every few minutes)."""
        async with self.db.transaction(actor.user_id) as uow:
            row = await repo.connection(uow.session, actor.user_id, connection_id)
            if row is None:
                raise ConnectionNotFound("no such broker connection")
            if row.status is ConnectionStatus.DISCONNECTED:
                raise ConnectInvalid(None, "this connection is disconnected")
        result = await self.reconcile(actor.user_id, connection_id)
        if result is None:  # disconnected in the meantime
            raise ConnectInvalid(None, "this connection is disconnected")
        async with self.db.transaction(actor.user_id) as uow:
            await audit.record(
                uow.session,
                "broker.synced",
                user_id=actor.user_id,
                entity="broker_connection",
                entity_id=connection_id,
                payload={
                    "corrections": len(result.corrections),
                    "error": result.connection.last_error,
                },
            )
        return result

    async def active_connections(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        async with self.db.transaction(None) as uow:
            return await repo.active_broker_connections(uow.session)

    async def open_broker(self, user_id: uuid.UUID, connection_id: uuid.UUID) -> Broker | None:
        """A broker for a working connection; None for one that is not (until the user
        reconnects, or a sync finds the keys working again)."""
        async with self.db.transaction(user_id) as uow:
            row = await repo.connection(uow.session, user_id, connection_id, lock=True)
            if row is None or row.status is not ConnectionStatus.CONNECTED:
                return None
            return await self._broker(uow, row)

    async def connection_failed(
        self, user_id: uuid.UUID, connection_id: uuid.UUID, reason: str
    ) -> None:
        async with self.db.transaction(user_id) as uow:
            row = await repo.connection(uow.session, user_id, connection_id, lock=True)
            if row is not None:
                await self._mark_error(uow, row, reason)

    async def _broker(self, uow: UnitOfWork, row: BrokerConnection) -> Broker | None:
        """Open the sealed keys; a row whose keys do not decrypt is put in error."""
        if row.key_id is None or row.wrapped_key is None or row.ciphertext is None:
            return None
        try:
            plaintext = open_sealed(
                self.keys,
                SealedSecret(row.key_id, row.wrapped_key, row.ciphertext),
                user_id=row.user_id,
                connection_id=row.id,
            )
            keys = json.loads(plaintext)
            credentials = Credentials(str(keys["keyId"]), str(keys["secret"]))
        except (DecryptionFailed, ValueError, KeyError, TypeError):
            log.error("broker connection %s: the stored keys do not decrypt", row.id)
            await self._mark_error(uow, row, UNREADABLE_KEYS)
            return None
        return self.factory(row.environment, credentials)

    async def _mark_error(self, uow: UnitOfWork, row: BrokerConnection, reason: str) -> None:
        if row.status is ConnectionStatus.DISCONNECTED:
            return
        if row.status is not ConnectionStatus.ERROR or row.last_error != reason:
            await audit.record(
                uow.session,
                "broker.connection_error",
                user_id=row.user_id,
                entity="broker_connection",
                entity_id=row.id,
                payload={"reason": reason},
            )
        row.status = ConnectionStatus.ERROR
        row.last_error = reason

    async def _order_broker(
        self, uow: UnitOfWork, order: Order
    ) -> tuple[Broker | None, str | None]:
        """The broker an order goes through, or why there is none."""
        account = await uow.session.get(Account, order.account_id)
        assert account is not None and account.broker_connection_id is not None
        row = await repo.connection(
            uow.session, order.user_id, account.broker_connection_id, lock=True
        )
        if row is None or row.status is ConnectionStatus.DISCONNECTED:
            return None, f"the {_NAMES[order.broker]} connection was disconnected"
        broker = await self._broker(uow, row)
        return broker, None if broker is not None else UNREADABLE_KEYS

    # --- orders (the worker's jobs)

    async def submit_order(
        self, user_id: uuid.UUID, order_id: uuid.UUID, *, final_attempt: bool
    ) -> JobOutcome:
        """Send one NEW order to its broker: ACCEPTED with the broker's id, or REJECTED
        with the broker's reason (its reservation released). While the broker cannot be
        reached the order stays NEW for another try; after the last one it is looked up
        once more and, if the broker never got it, REJECTED."""
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id, lock=True)
            if order is None or order.status is not OrderStatus.NEW or order.broker_order_id:
                return JobOutcome.DONE
            broker, problem = await self._order_broker(uow, order)
            if broker is None:
                await self.trading.broker_reported(uow, order, OrderStatus.REJECTED, problem)
                return JobOutcome.DONE
            # Kianax places a bracket's exit legs itself once the entry fills (as it does
            # on paper), so the broker gets the entry alone.
            request = replace(request_of(order), take_profit_price=None, stop_loss_price=None)
            client_order_id = order.client_order_id

        name = _NAMES[order.broker]
        try:
            placed = await broker.submit(request, client_order_id)
        except BrokerAuthError:
            return await self._refused(user_id, order_id, REFUSED_KEYS, keys_refused=True)
        except BrokerRejected as exc:
            return await self._refused(user_id, order_id, f"{name} rejected the order: {exc}")
        except BrokerError as exc:
            # Unreachable, rate limited, or an answer nobody could read: its fate unknown.
            if not final_attempt:
                log.warning("order %s: %s; trying again later", order_id, exc)
                return JobOutcome.RETRY
            try:
                found = await broker.order_by_client_id(client_order_id)
            except BrokerError:
                found = None
            if found is None:
                reason = f"{name} could not be reached to place the order: {exc}"
                return await self._refused(user_id, order_id, reason)
            placed = found
        await self._placed(user_id, order_id, placed, broker)
        return JobOutcome.DONE

    async def _refused(
        self, user_id: uuid.UUID, order_id: uuid.UUID, reason: str, *, keys_refused: bool = False
    ) -> JobOutcome:
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id, lock=True)
            if order is None:
                return JobOutcome.DONE
            if keys_refused:
                row = await self._connection_of(uow, order)
                if row is not None:
                    await self._mark_error(uow, row, REFUSED_KEYS)
            # Still NEW unless a trade event already settled it, which then stands.
            await self.trading.broker_reported(uow, order, OrderStatus.REJECTED, reason)
        return JobOutcome.DONE

    async def _placed(
        self, user_id: uuid.UUID, order_id: uuid.UUID, placed: BrokerOrder, broker: Broker
    ) -> None:
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id, lock=True)
            assert order is not None, "orders are never deleted"
            if order.broker_order_id is None:
                order.broker_order_id = placed.broker_order_id
            # The trade stream may have moved it on already; then this report is stale.
            if placed.status.is_open or placed.status is OrderStatus.FILLED:
                # Filled on the spot or not, fills arrive as trade events with their prices.
                await self.trading.broker_reported(uow, order, OrderStatus.ACCEPTED)
            else:
                name = _NAMES[order.broker]
                reason = placed.reject_reason or f"{placed.status.value.lower()} at {name}"
                await self.trading.broker_reported(uow, order, placed.status, reason)
            canceled_meanwhile = not order.status.is_open and placed.status.is_open
        if canceled_meanwhile:
            # The order was canceled while it was on its way: cancel what arrived.
            try:
                await broker.cancel(placed.broker_order_id)
            except BrokerError as exc:
                log.warning("order %s: could not cancel it at the broker: %s", order_id, exc)

    async def cancel_order(self, user_id: uuid.UUID, order_id: uuid.UUID) -> JobOutcome:
        """Ask the broker to cancel an open order. Its status changes when the broker
        reports the cancel (or the fill that beat it), through the stream or a sync."""
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id, lock=True)
            if order is None or not order.status.is_open:
                return JobOutcome.DONE
            broker, _ = await self._order_broker(uow, order)
            if broker is None:
                return JobOutcome.DONE  # the connection's error says why
            broker_order_id, client_order_id = order.broker_order_id, order.client_order_id
        try:
            if broker_order_id is None:
                found = await broker.order_by_client_id(client_order_id)
                if found is None:
                    return await self._cancel_unsent(user_id, order_id)
                broker_order_id = found.broker_order_id
            await broker.cancel(broker_order_id)
        except BrokerAuthError:
            await self._refused_keys(user_id, order_id)
        except BrokerRejected as exc:
            # No longer cancelable: it filled, or is already done; the broker's report of
            # that is what settles the order.
            log.info("order %s: the broker would not cancel it: %s", order_id, exc)
        except BrokerError as exc:
            log.warning("order %s: cancel not delivered: %s; trying again later", order_id, exc)
            return JobOutcome.RETRY
        return JobOutcome.DONE

    async def _cancel_unsent(self, user_id: uuid.UUID, order_id: uuid.UUID) -> JobOutcome:
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id, lock=True)
            if order is None or not order.status.is_open:
                return JobOutcome.DONE
            if order.status is not OrderStatus.NEW:
                # The broker announced it, but cannot find it yet: ask again shortly.
                return JobOutcome.RETRY
            # Not at the broker: the submitting job finds it closed and sends nothing.
            await self.trading.broker_reported(
                uow, order, OrderStatus.CANCELED, "canceled by request"
            )
        return JobOutcome.DONE

    async def _refused_keys(self, user_id: uuid.UUID, order_id: uuid.UUID) -> None:
        async with self.db.transaction(user_id) as uow:
            order = await trading_repo.order_by_id(uow.session, user_id, order_id)
            row = None if order is None else await self._connection_of(uow, order)
            if row is not None:
                await self._mark_error(uow, row, REFUSED_KEYS)

    async def _connection_of(self, uow: UnitOfWork, order: Order) -> BrokerConnection | None:
        account = await uow.session.get(Account, order.account_id)
        if account is None or account.broker_connection_id is None:
            return None
        return await repo.connection(
            uow.session, order.user_id, account.broker_connection_id, lock=True
        )

    # --- the trade stream

    async def apply_event(
        self, user_id: uuid.UUID, connection_id: uuid.UUID, event: TradeEvent
    ) -> None:
        """Turn one trade event from this connection's stream into Kianax's order status
        and fills. Only the connection's own account is searched, so a stream can never
        touch another account's (or user's) orders."""
        async with self.db.transaction(user_id) as uow:
            account = await repo.account_for_connection(uow.session, user_id, connection_id)
            if account is None:
                return
            order = await repo.order_for_event(
                uow.session,
                user_id,
                account.id,
                broker_order_id=event.order.broker_order_id,
                client_order_id=event.order.client_order_id,
            )
            if order is None:
                # Placed outside Kianax (the broker's own app): reconciliation brings its
                # effect on positions and cash into the mirror.
                log.info("ignored a %s event for an order Kianax did not place", event.kind)
                return
            if order.broker_order_id is None:
                order.broker_order_id = event.order.broker_order_id
            name = _NAMES[order.broker]
            match event.kind:
                case TradeEventKind.NEW:
                    await self.trading.broker_reported(uow, order, OrderStatus.ACCEPTED)
                case TradeEventKind.FILL | TradeEventKind.PARTIAL_FILL:
                    await self._apply_fill(uow, order, event)
                case TradeEventKind.CANCELED:
                    await self.trading.broker_reported(
                        uow, order, OrderStatus.CANCELED, f"canceled at {name}"
                    )
                case TradeEventKind.EXPIRED:
                    await self.trading.broker_reported(
                        uow, order, OrderStatus.EXPIRED, f"expired at {name}"
                    )
                case TradeEventKind.REJECTED:
                    reason = event.order.reject_reason or f"{name} rejected the order"
                    await self.trading.broker_reported(uow, order, OrderStatus.REJECTED, reason)
                case TradeEventKind.REPLACED:
                    # Replaced outside Kianax: this order will never fill again, and its
                    # successor is an order Kianax did not place.
                    await self.trading.broker_reported(
                        uow, order, OrderStatus.CANCELED, f"replaced at {name} by another order"
                    )

    async def _apply_fill(self, uow: UnitOfWork, order: Order, event: TradeEvent) -> None:
        if event.fill_quantity is None or event.fill_price is None or event.execution_id is None:
            log.warning("order %s: a fill event without its execution", order.id)
            return
        if await repo.fill_recorded(uow.session, event.execution_id):
            return  # a replayed event
        # The broker's cumulative filled quantity, against what Kianax has recorded: a
        # fill that reconciliation already recorded is not recorded twice.
        quantity = min(event.fill_quantity, event.order.filled_quantity - order.filled_quantity)
        if quantity <= 0:
            return
        if not order.status.is_open:
            # Canceled here while the broker filled it: the broker is right, and the next
            # reconciliation brings its position and cash into the mirror.
            log.warning("order %s: filled at the broker after it was closed here", order.id)
            return
        fill = FillEvent(quantity, event.fill_price, ZERO, event.at)
        try:
            async with uow.session.begin_nested():
                await self.trading.record_fill(uow, order, fill, execution_id=event.execution_id)
        except IntegrityError:
            # The same execution raced in through another path (a duplicate connection).
            log.info("order %s: execution %s was already recorded", order.id, event.execution_id)

    # --- reconciliation

    async def reconcile(
        self, user_id: uuid.UUID, connection_id: uuid.UUID
    ) -> Reconciliation | None:
        """Compare the mirror with the broker and correct it: open orders (status and
        fills), positions, cash. What was corrected goes to the audit log. None when the
        connection is gone."""
        async with self.db.transaction(user_id) as uow:
            row = await repo.connection(uow.session, user_id, connection_id, lock=True)
            if row is None or row.status is ConnectionStatus.DISCONNECTED:
                return None
            broker = await self._broker(uow, row)
            account = await repo.account_for_connection(uow.session, user_id, connection_id)
            assert account is not None, "a connection is stored with its account"
            local = [
                (o.broker_order_id, o.client_order_id)
                for o in await repo.open_orders(uow.session, user_id, account.id)
            ]
        if broker is None:
            return Reconciliation(row, [])  # in error, and its last_error says why
        name = _NAMES[row.provider]
        try:
            # Not one snapshot: a fill landing between these calls shows in one answer and
            # not another, and leaves the mirror off by that fill until the next pass.
            seen = {o.broker_order_id: o for o in await broker.orders(open_only=True)}
            by_client = {o.client_order_id: o for o in seen.values()}
            for broker_order_id, client_order_id in local:
                if broker_order_id not in seen and client_order_id not in by_client:
                    found = await broker.order_by_client_id(client_order_id)
                    if found is not None:
                        seen[found.broker_order_id] = found
                        by_client[client_order_id] = found
            held = await broker.positions()
            balance = await broker.account()
        except BrokerAuthError:
            await self.connection_failed(user_id, connection_id, REFUSED_KEYS)
            return await self._reconciled(user_id, connection_id, None)
        except BrokerError as exc:
            reason = f"{name} could not be reached: {exc}"
            async with self.db.transaction(user_id) as uow:
                stored = await repo.connection(uow.session, user_id, connection_id, lock=True)
                if stored is not None:
                    stored.last_error = reason
            return await self._reconciled(user_id, connection_id, reason)

        now = self._now()
        async with self.db.transaction(user_id) as uow:
            row = await repo.connection(uow.session, user_id, connection_id, lock=True)
            if row is None or row.status is ConnectionStatus.DISCONNECTED:
                return None
            mirror = await repo.account_for_connection(
                uow.session, user_id, connection_id, lock=True
            )
            assert mirror is not None
            corrections: list[dict[str, Any]] = []
            for order in await repo.open_orders(uow.session, user_id, mirror.id):
                report = seen.get(order.broker_order_id or "") or by_client.get(
                    order.client_order_id
                )
                corrections += await self._correct_order(uow, order, report, now)
            corrections += await self._correct_positions(uow, mirror, held, now)
            if mirror.cash != balance.cash:
                corrections.append({"cash": {"from": str(mirror.cash), "to": str(balance.cash)}})
                mirror.cash = balance.cash
            row.status = ConnectionStatus.CONNECTED
            row.last_error = None
            row.last_synced_at = now
            row.account_number = balance.account_number
            if corrections:
                await audit.record(
                    uow.session,
                    "broker.reconciled",
                    user_id=user_id,
                    entity="broker_connection",
                    entity_id=connection_id,
                    payload={"account_id": str(mirror.id), "corrections": corrections},
                )
        return Reconciliation(row, corrections)

    async def _reconciled(
        self, user_id: uuid.UUID, connection_id: uuid.UUID, unreachable: str | None
    ) -> Reconciliation | None:
        """A reconciliation that could not ask the broker: the connection as it now is."""
        async with self.db.transaction(user_id) as uow:
            row = await repo.connection(uow.session, user_id, connection_id)
        return None if row is None else Reconciliation(row, [], unreachable)

    async def _correct_order(
        self, uow: UnitOfWork, order: Order, report: BrokerOrder | None, now: datetime
    ) -> list[dict[str, Any]]:
        if report is None:
            if order.broker_order_id is None and now - order.submitted_at > LOST_SUBMISSION_AFTER:
                reason = f"{_NAMES[order.broker]} never received this order"
                await self.trading.broker_reported(uow, order, OrderStatus.REJECTED, reason)
                return [{"order": str(order.id), "status": {"from": "NEW", "to": "REJECTED"}}]
            return []
        corrections: list[dict[str, Any]] = []
        before = order.status
        if order.broker_order_id is None:
            order.broker_order_id = report.broker_order_id
        filled_before = order.filled_quantity
        missing = report.filled_quantity - filled_before
        if missing > 0 and report.average_fill_price is not None:
            # Fills the stream did not deliver (it was down): one fill for all of them, at
            # the price that makes the order's average the broker's.
            fill = FillEvent(missing, _missing_price(order, report, missing), ZERO, now)
            execution_id = f"reconcile:{report.broker_order_id}:{report.filled_quantity}"
            await self.trading.record_fill(uow, order, fill, execution_id=execution_id[:64])
            corrections.append(
                {
                    "order": str(order.id),
                    "filled": {"from": str(filled_before), "to": str(report.filled_quantity)},
                }
            )
        if report.status in _STATUS_REPORTS:
            name = _NAMES[order.broker]
            reason = report.reject_reason or f"{report.status.value.lower()} at {name}"
            await self.trading.broker_reported(uow, order, report.status, reason)
        if order.status is not before:
            corrections.append(
                {"order": str(order.id), "status": {"from": before.value, "to": order.status.value}}
            )
        return corrections

    async def _correct_positions(
        self, uow: UnitOfWork, account: Account, held: list[BrokerPosition], at: datetime
    ) -> list[dict[str, Any]]:
        """Make the account's positions the broker's, symbol by symbol. A difference goes
        to the position no agent owns: the broker cannot say which agent it belongs to."""
        rows = await repo.positions(uow.session, account.id)
        local: dict[str, Decimal] = defaultdict(Decimal)
        for position in rows:
            local[position.symbol] += position.quantity
        broker = {p.symbol: p for p in held}
        corrections: list[dict[str, Any]] = []
        for symbol in sorted(set(local) | set(broker)):
            want = broker[symbol].quantity if symbol in broker else ZERO
            have = local.get(symbol, ZERO)
            if want == have:
                continue
            mine = [p for p in rows if p.symbol == symbol]
            agents = sum((p.quantity for p in mine if p.agent_id is not None), ZERO)
            if want == 0:
                for position in mine:
                    _set_position(position, ZERO, ZERO, at)
            else:
                loose = next((p for p in mine if p.agent_id is None), None)
                if loose is None:
                    loose = Position(
                        id=uuid.uuid4(),
                        user_id=account.user_id,
                        account_id=account.id,
                        symbol=symbol,
                        agent_id=None,
                        quantity=ZERO,
                        cost_basis=ZERO,
                        realized_pnl=ZERO,
                        lots=[],
                    )
                    uow.session.add(loose)
                _set_position(loose, want - agents, broker[symbol].average_cost, at)
            corrections.append({"symbol": symbol, "quantity": {"from": str(have), "to": str(want)}})
        await uow.session.flush()
        return corrections


def _set_position(
    position: Position, quantity: Decimal, average_cost: Decimal, at: datetime
) -> None:
    if position.quantity == 0 and quantity != 0:
        position.opened_at = at
    position.quantity = quantity
    position.cost_basis = quantity * average_cost
    position.lots = [[str(quantity), str(average_cost)]] if quantity else []
    position.updated_at = at


def _missing_price(order: Order, report: BrokerOrder, missing: Decimal) -> Decimal:
    """The price of the fills the mirror lacks: what makes its average the broker's."""
    assert report.average_fill_price is not None
    recorded = order.filled_quantity * (order.average_fill_price or ZERO)
    price = (report.filled_quantity * report.average_fill_price - recorded) / missing
    price = price.quantize(_PRICE)
    return price if price > 0 else report.average_fill_price


def _check_connect(provider: BrokerKind, key_id: str, secret: str) -> None:
    # The messages never repeat the values: they are credentials.
    if provider not in _NAMES:
        raise ConnectInvalid("provider", "the paper broker is built in; connect ALPACA")
    if not _KEY_ID.fullmatch(key_id):
        raise ConnectInvalid("apiKeyId", "an API key id is 8 to 64 letters and digits")
    if not _SECRET.fullmatch(secret):
        raise ConnectInvalid(
            "apiSecret", "an API secret is 8 to 128 printable characters without spaces"
        )


def _user(uow: UnitOfWork) -> uuid.UUID:
    assert uow.user_id is not None, "broker connections always belong to a user"
    return uow.user_id


__all__ = [
    "BrokerFactory",
    "BrokerService",
    "BrokerServiceError",
    "BrokerUnreachable",
    "ConnectInvalid",
    "ConnectRequest",
    "ConnectionNotFound",
    "Credentials",
    "CredentialsRejected",
    "JobOutcome",
    "Reconciliation",
    "TooManyAttempts",
    "alpaca_factory",
]
