from __future__ import annotations

import pytest

from kianax.settings import Environment, InsecureSettingsError, Settings

PRODUCTION_SAFE: dict[str, object] = {
    "env": Environment.PRODUCTION,
    "database_url": "postgresql+asyncpg://owner@db/kianax",
    "redis_url": "redis://cache:6379/0",
    "jwt_keys": "k2:" + "a" * 48,
    "app_db_password": "a-real-password",
    "master_keys": "m1:" + "b" * 44,
}


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(InsecureSettingsError, match="KIANAX_JWT_KEYS"):
        Settings.model_validate({**PRODUCTION_SAFE, "jwt_keys": Settings().jwt_keys})


def test_production_refuses_embedded_servers() -> None:
    with pytest.raises(InsecureSettingsError, match="embedded"):
        Settings.model_validate({**PRODUCTION_SAFE, "redis_url": None})


def test_production_with_real_secrets_starts() -> None:
    settings = Settings.model_validate(PRODUCTION_SAFE)
    assert settings.jwt_signing_kid == "k2"


def test_settings_come_from_kianax_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIANAX_PORT", "9123")
    monkeypatch.setenv("KIANAX_JWT_KEYS", "new:s1,old:s0")
    settings = Settings()
    assert settings.port == 9123
    assert settings.jwt_key_ring == {"new": "s1", "old": "s0"}
    assert settings.jwt_signing_kid == "new"


def test_runtime_url_swaps_in_the_app_role() -> None:
    settings = Settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/kianax")
    assert settings.runtime_database_url.startswith("postgresql+asyncpg://kianax_app:")
    assert settings.runtime_database_url.endswith("@127.0.0.1:5432/kianax")


def test_malformed_key_list_is_refused() -> None:
    with pytest.raises(ValueError, match="kid:secret"):
        _ = Settings(jwt_keys="no-separator").jwt_key_ring


def test_database_pool_defaults_fit_three_processes_in_max_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    assert (settings.db_pool_size, settings.db_max_overflow) == (20, 5)
    # API, worker and feed each have a pool; PostgreSQL allows 100 connections by default.
    assert 3 * (settings.db_pool_size + settings.db_max_overflow) <= 80
    monkeypatch.setenv("KIANAX_DB_POOL_SIZE", "8")
    monkeypatch.setenv("KIANAX_DB_MAX_OVERFLOW", "0")
    assert (Settings().db_pool_size, Settings().db_max_overflow) == (8, 0)


@pytest.mark.parametrize("field", [{"db_pool_size": 0}, {"db_max_overflow": -1}])
def test_impossible_pool_sizes_are_refused(field: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        Settings.model_validate(field)
