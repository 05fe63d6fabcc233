"""The vocabulary of broker connections, shared by the service, the models and the schema."""

from __future__ import annotations

import enum


class BrokerEnvironment(enum.StrEnum):
    """Which of a provider's two worlds the keys belong to: simulated money or real money."""

    PAPER = "PAPER"
    LIVE = "LIVE"


class ConnectionStatus(enum.StrEnum):
    # The keys work: orders are submitted, the trade stream runs, reconciliation syncs.
    CONNECTED = "connected"
    # The keys cannot be used (the broker refused them, or they no longer decrypt). The
    # account stays visible; the worker leaves it alone, and a sync the user asks for
    # heals the status once the keys work again.
    ERROR = "error"
    # The user disconnected: the keys are erased, the account is kept as history.
    DISCONNECTED = "disconnected"
