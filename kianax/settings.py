"""Every setting Kianax reads, in one typed place (environment variables prefixed KIANAX_)."""

from __future__ import annotations

import enum
from datetime import datetime
from functools import cached_property
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# Development defaults. They are public (they are in this file), so production refuses them.
DEV_JWT_KEYS = "dev:kianax-development-jwt-secret-not-for-production"
DEV_APP_DB_PASSWORD = "kianax-dev-app"  # noqa: S105 - documented development default
DEV_MASTER_KEYS = "dev:a2lhbmF4LWRldi1tYXN0ZXIta2V5LW5vdC1zZWNyZXQ="


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class InsecureSettingsError(RuntimeError):
    """Raised at start-up when production would run with development secrets."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KIANAX_", env_file=None, extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    home: Path = Path(".kianax")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None  # how users reach the API; defaults to http://host:port

    # The migration (owner) connection. Unset -> `kianax run` starts an embedded PostgreSQL.
    database_url: str | None = None
    # The runtime connection: a role that owns nothing and is subject to row-level security.
    # Unset -> derived from database_url with the user replaced by app_db_role.
    app_database_url: str | None = None
    app_db_role: str = "kianax_app"
    app_db_password: str = DEV_APP_DB_PASSWORD
    # Connections each process (API, worker, feed) keeps open, and how many more it may open
    # for a burst and close again. Several processes share PostgreSQL's max_connections
    # (100 by default): 3 x (20 + 5) leaves room for migrations and administration.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)

    # Unset -> `kianax run` starts an embedded Redis-compatible server.
    redis_url: str | None = None
    # The arq queue the API enqueues to and workers take jobs from: deployments (or test
    # runs) sharing one Redis keep their jobs apart with their own queue name.
    job_queue: str = "arq:queue"

    # "kid:secret,kid:secret"; the first signs, all verify (rotation).
    jwt_keys: str = DEV_JWT_KEYS
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600

    # "kid:base64(32 bytes),..."; the first wraps new data keys, all unwrap.
    master_keys: str = DEV_MASTER_KEYS

    graphql_max_depth: int = 12
    graphql_max_aliases: int = 30
    graphql_max_tokens: int = 4000
    log_level: str = "INFO"
    log_json: bool = True

    market_seed: int = 42
    # Run the simulated market (and trading's clock) from this instant onwards, moving with
    # real time: a weekend demo or benchmark can trade a Wednesday session.
    simulated_time_start: datetime | None = None
    # The wall-clock instant at which the simulated clock read simulated_time_start; `kianax
    # run` sets it for its children so API, worker and feed share one clock.
    simulated_time_anchor: datetime | None = None
    # Replace Alpaca's REST root and trade-stream URL, for every connection (a proxy, or
    # the local fake Alpaca in tests). Unset -> Alpaca's own, per paper or live keys.
    alpaca_base_url: str | None = None
    alpaca_stream_url: str | None = None
    massive_api_key: str | None = None
    massive_rest_url: str | None = None
    massive_ws_url: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None

    paper_starting_cash: str = Field(default="100000.00")

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> Settings:
        if self.env is not Environment.PRODUCTION:
            return self
        insecure = [
            name
            for name, value, default in (
                ("KIANAX_JWT_KEYS", self.jwt_keys, DEV_JWT_KEYS),
                ("KIANAX_APP_DB_PASSWORD", self.app_db_password, DEV_APP_DB_PASSWORD),
                ("KIANAX_MASTER_KEYS", self.master_keys, DEV_MASTER_KEYS),
            )
            if value == default or "dev:" in value
        ]
        if self.database_url is None or self.redis_url is None:
            insecure.append("KIANAX_DATABASE_URL/KIANAX_REDIS_URL (embedded servers)")
        if insecure:
            raise InsecureSettingsError(
                "refusing to start in production with development settings: " + ", ".join(insecure)
            )
        return self

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @cached_property
    def runtime_database_url(self) -> str:
        if self.app_database_url:
            return self.app_database_url
        if not self.database_url:
            raise RuntimeError("KIANAX_DATABASE_URL is not set")
        url = make_url(self.database_url).set(
            username=self.app_db_role, password=self.app_db_password
        )
        return url.render_as_string(hide_password=False)

    @cached_property
    def jwt_key_ring(self) -> dict[str, str]:
        return _parse_key_list(self.jwt_keys, "KIANAX_JWT_KEYS")

    @property
    def jwt_signing_kid(self) -> str:
        return next(iter(self.jwt_key_ring))

    @cached_property
    def master_key_ring(self) -> dict[str, str]:
        return _parse_key_list(self.master_keys, "KIANAX_MASTER_KEYS")


def _parse_key_list(raw: str, name: str) -> dict[str, str]:
    ring: dict[str, str] = {}
    for item in raw.split(","):
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or not secret:
            raise ValueError(f"{name} must look like 'kid:secret,kid:secret'")
        ring[kid] = secret
    return ring


def load_settings() -> Settings:
    return Settings()
