"""aicq/settings.py, pure: every variable with its default, edge values and refusals.

Settings.from_env takes the environment as a mapping, so nothing here touches
os.environ; the boot-time behaviour (exit 2, the variable named on stderr) is
tested through `aicq serve` in test_embedded.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicq.settings import LOG_LEVELS, Settings, SettingsError

PG = "postgresql://aicq@db:5432/aicq"
REDIS = "redis://cache:6379/0"


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def refused(match: str, **env: str) -> str:
    """from_env must fail with a message naming the variable (``match`` is a regex)."""
    with pytest.raises(SettingsError, match=match) as raised:
        Settings.from_env(env)
    return str(raised.value)


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    got = settings()
    assert (got.host, got.port, got.env, got.log_level) == ("0.0.0.0", 8080, "development", "info")
    assert got.database_url is None and got.redis_url is None
    assert got.data_dir == Path("./data")
    assert got.fly_region is None and got.region == "local"
    assert got.rate_limit_whitelist == () and not got.is_whitelisted("127.0.0.1")
    assert got.auto_block_enabled is True and got.admin_agent_id is None and got.client_ip_header is None
    assert got.ws_queue_bytes == 1 << 20 and got.ws_heartbeat == 20.0 and got.shutdown_timeout == 25.0
    assert re.fullmatch(r"[0-9a-f]{12}", got.instance) and got.instance != settings().instance
    assert not got.production


def test_blank_values_count_as_unset_and_values_are_trimmed() -> None:
    blank = {name: "  " for name in ("HOST", "PORT", "ENV", "LOG_LEVEL", "DATABASE_URL", "REDIS_URL",
                                     "DATA_DIR", "FLY_REGION", "AUTO_BLOCK_ENABLED", "WS_QUEUE_BYTES")}
    assert settings(**blank).port == 8080 and settings(**blank).host == "0.0.0.0"
    assert settings(HOST=" 127.0.0.1 ", PORT=" 9000\n", DATA_DIR=" /srv/aicq ").host == "127.0.0.1"
    assert settings(PORT=" 9000\n").port == 9000 and settings(DATA_DIR=" /srv/aicq ").data_dir == Path("/srv/aicq")


# -- ENV and the store URLs -----------------------------------------------------------


@pytest.mark.parametrize("value, mode", [("development", "development"), ("TEST", "test"), (" Production ", "production")])
def test_env_modes(value: str, mode: str) -> None:
    got = settings(ENV=value, DATABASE_URL=PG, REDIS_URL=REDIS)
    assert got.env == mode and got.production is (mode == "production")


@pytest.mark.parametrize("value", ["staging", "prod", "dev"])
def test_env_refuses_other_modes(value: str) -> None:
    refused(rf"ENV must be development, production or test, not '{value}'", ENV=value)


def test_production_requires_both_store_urls() -> None:
    assert "DATABASE_URL and REDIS_URL" in refused("ENV=production requires", ENV="production")
    assert refused("requires REDIS_URL to be set", ENV="production", DATABASE_URL=PG)
    assert refused("requires DATABASE_URL to be set", ENV="production", REDIS_URL=REDIS)
    got = settings(ENV="production", DATABASE_URL=PG, REDIS_URL=REDIS)
    assert (got.database_url, got.redis_url) == (PG, REDIS)


@pytest.mark.parametrize("url", ["postgres://u@h/d", "postgresql://u:p@h:5432/d?sslmode=require"])
def test_database_url_accepted(url: str) -> None:
    assert settings(DATABASE_URL=url).database_url == url


@pytest.mark.parametrize("url", ["mysql://u@h/d", "POSTGRES://u@h/d", "h:5432", "postgresql:/u@h/d"])
def test_database_url_refused(url: str) -> None:
    refused("DATABASE_URL must be a postgres:// or postgresql:// URL", DATABASE_URL=url)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"])
def test_redis_url_accepted(url: str) -> None:
    assert settings(REDIS_URL=url).redis_url == url


@pytest.mark.parametrize("url", ["http://h:6379", "h:6379", "REDIS://h", "valkey://h"])
def test_redis_url_refused(url: str) -> None:
    refused("REDIS_URL must be a redis://, rediss:// or unix:// URL", REDIS_URL=url)


# -- numbers --------------------------------------------------------------------------

INTEGERS = [
    # variable, attribute, low, high
    ("PORT", "port", 1, 65535),
    ("WS_QUEUE_BYTES", "ws_queue_bytes", 16 << 10, 1 << 30),
    ("WS_HEARTBEAT", "ws_heartbeat", 1, 3600),
]


@pytest.mark.parametrize("name, attribute, low, high", INTEGERS)
def test_integer_bounds_are_inclusive(name: str, attribute: str, low: int, high: int) -> None:
    assert getattr(settings(**{name: str(low)}), attribute) == low
    assert getattr(settings(**{name: str(high)}), attribute) == high
    for outside in (low - 1, high + 1, -high):
        assert name in refused(rf"^{name} must be between {low} and {high}$", **{name: str(outside)})


@pytest.mark.parametrize("name, attribute, low, high", INTEGERS)
@pytest.mark.parametrize("value", ["eighty", "80.0", "0x50", "1e3", "80 80"])
def test_integers_refuse_what_is_not_one(name: str, attribute: str, low: int, high: int, value: str) -> None:
    refused(rf"^{name} must be an integer, not '{re.escape(value)}'$", **{name: value})


@given(st.integers(-(1 << 20), 1 << 20))
def test_port_accepts_exactly_1_to_65535(port: int) -> None:
    if 1 <= port <= 65535:
        assert settings(PORT=str(port)).port == port
    else:
        refused("PORT must be between 1 and 65535", PORT=str(port))


def test_heartbeat_is_seconds_as_a_float() -> None:
    got = settings(WS_HEARTBEAT="5")
    assert got.ws_heartbeat == 5.0 and isinstance(got.ws_heartbeat, float)


# -- words ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [*LOG_LEVELS, "DEBUG", " Warning "])
def test_log_level(level: str) -> None:
    assert settings(LOG_LEVEL=level).log_level == level.strip().lower()


@pytest.mark.parametrize("level", ["loud", "warn", "trace", "notset", "10"])
def test_log_level_refused(level: str) -> None:
    assert "critical, error, warning, info, debug" in refused("^LOG_LEVEL must be one of", LOG_LEVEL=level)


@given(st.sampled_from(["1", "true", "yes", "on", "0", "false", "no", "off"]), st.randoms())
def test_auto_block_words_in_any_case(word: str, random: Any) -> None:
    mixed = "".join(c.upper() if random.random() < 0.5 else c for c in word)
    assert settings(AUTO_BLOCK_ENABLED=mixed).auto_block_enabled is (word in ("1", "true", "yes", "on"))


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "t", "y"])
def test_auto_block_refused(value: str) -> None:
    refused(rf"^AUTO_BLOCK_ENABLED must be true or false, not '{value}'$", AUTO_BLOCK_ENABLED=value)


# -- identities and headers -----------------------------------------------------------


@pytest.mark.parametrize("value", ["6F1C2A7E-3D4B-4C8E-9A51-2B7D8E9F0A13", "{6f1c2a7e-3d4b-4c8e-9a51-2b7d8e9f0a13}",
                                   "6f1c2a7e3d4b4c8e9a512b7d8e9f0a13"])
def test_admin_agent_id_is_kept_canonical(value: str) -> None:
    assert settings(ADMIN_AGENT_ID=value).admin_agent_id == "6f1c2a7e-3d4b-4c8e-9a51-2b7d8e9f0a13"


@pytest.mark.parametrize("value", ["root", "6f1c2a7e-3d4b-4c8e-9a51", "6f1c2a7e-3d4b-4c8e-9a51-2b7d8e9f0a1g"])
def test_admin_agent_id_refused(value: str) -> None:
    refused("^ADMIN_AGENT_ID must be an agent UUID$", ADMIN_AGENT_ID=value)


@pytest.mark.parametrize("value, stored", [("Fly-Client-IP", "fly-client-ip"), ("X-Real-IP", "x-real-ip"), ("CF9", "cf9")])
def test_client_ip_header_is_stored_lowercase(value: str, stored: str) -> None:
    assert settings(CLIENT_IP_HEADER=value).client_ip_header == stored


@pytest.mark.parametrize("value", ["X_Real_IP", "X-Real-IP:", "X Real IP", "X-客户", "X-Förwarded"])
def test_client_ip_header_must_be_an_ascii_header_name(value: str) -> None:
    refused("^CLIENT_IP_HEADER must be an HTTP header name$", CLIENT_IP_HEADER=value)


def test_fly_variables_name_the_region_and_the_instance() -> None:
    got = settings(FLY_REGION="ams", FLY_ALLOC_ID="0e286039f42e86")
    assert (got.fly_region, got.region) == ("ams", "ams")
    assert got.instance == "0e286039f42e86"


# -- the rate-limit whitelist ---------------------------------------------------------


def test_whitelist_parses_addresses_and_networks() -> None:
    got = settings(RATE_LIMIT_WHITELIST=" 127.0.0.1, 10.1.2.3/8 ,, ::1 , 2001:db8::/32,")
    assert [str(n) for n in got.rate_limit_whitelist] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "2001:db8::/32"]
    for ip in ("127.0.0.1", "10.200.0.1", "::1", "2001:db8::42"):
        assert got.is_whitelisted(ip), ip
    for ip in ("127.0.0.2", "11.0.0.1", "::2", "2001:db9::1", "not an ip", ""):
        assert not got.is_whitelisted(ip), ip


@pytest.mark.parametrize("item", ["10.0.0.0/33", "300.1.1.1", "localhost", "::1/129", "10.0.0.0/8/8"])
def test_whitelist_refuses_a_bad_item_naming_it(item: str) -> None:
    message = refused("^RATE_LIMIT_WHITELIST has an invalid IP or CIDR", RATE_LIMIT_WHITELIST=f"127.0.0.1,{item}")
    assert repr(item) in message


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 32))
def test_whitelisted_means_inside_a_listed_network(ip: ipaddress.IPv4Address, base: ipaddress.IPv4Address, prefix: int) -> None:
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    got = settings(RATE_LIMIT_WHITELIST=f"{base}/{prefix}")
    assert got.rate_limit_whitelist == (network,)
    assert got.is_whitelisted(str(ip)) is (ip in network)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        settings().port = 1  # type: ignore[misc]
