"""Environment → one frozen Settings, resolved once at start.

A bad value fails at boot with the variable's name, never mid-request.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    env: str = "development"
    log_level: str = "info"
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("./data")
    fly_region: str | None = None
    rate_limit_whitelist: tuple[IPNetwork, ...] = ()
    auto_block_enabled: bool = True
    admin_agent_id: str | None = None
    client_ip_header: str | None = None
    ipv6_prefix: int = 64  # IPv6 clients are counted per network of this prefix
    max_sessions_per_ip: int = 50  # live WebSocket (and streaming) sessions per client, per instance
    ws_queue_bytes: int = 1 << 20
    ws_heartbeat: float = 20.0
    sse_heartbeat: float = 15.0  # a comment line this often keeps proxies from closing an idle stream
    shutdown_timeout: float = 25.0
    workers: int = 1  # server processes on the port (WEB_CONCURRENCY; aicq/workers.py)
    presence_ttl: float = 30.0  # an instance's presence entries outlive it by at most this
    presence_grace: float = 5.0  # a leave waits this long for the agent to come back
    # Webhooks (aicq/webhooks/): destinations on private networks are refused unless
    # allowed; the retry schedule and the claim delay are tunable for tests.
    webhook_allow_private: bool = False
    webhook_retry_base_ms: int = 10_000
    webhook_retry_window_s: int = 24 * 3600
    webhook_claim_idle_ms: int = 30_000
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def region(self) -> str:
        return self.fly_region or "local"

    def is_whitelisted(self, ip: str) -> bool:
        """Whether the client ``ip`` (an address, or the IPv6 network clients are counted
        by) is exempt from limits: a network is when any whitelisted address lies in it."""
        if not self.rate_limit_whitelist:
            return False
        try:
            client = ipaddress.ip_network(ip, strict=False)
        except ValueError:
            return False
        return any(client.overlaps(network) for network in self.rate_limit_whitelist
                   if client.version == network.version)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        mode = (get("ENV") or "development").lower()
        if mode not in ("development", "production", "test"):
            raise SettingsError(f"ENV must be development, production or test, not {mode!r}")
        database_url, redis_url = get("DATABASE_URL"), get("REDIS_URL")
        if mode == "production":
            missing = [n for n, v in (("DATABASE_URL", database_url), ("REDIS_URL", redis_url)) if not v]
            if missing:
                raise SettingsError(f"ENV=production requires {' and '.join(missing)} to be set")
        if database_url and not database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("DATABASE_URL must be a postgres:// or postgresql:// URL")
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL must be a redis://, rediss:// or unix:// URL")

        log_level = (get("LOG_LEVEL") or "info").lower()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

        admin = get("ADMIN_AGENT_ID")
        if admin:
            try:
                admin = str(uuid.UUID(admin))
            except ValueError:
                raise SettingsError("ADMIN_AGENT_ID must be an agent UUID") from None

        header = get("CLIENT_IP_HEADER")
        # ASCII: Starlette looks header names up in latin-1, so "X-客户" would fail every request.
        if header and not all(c.isascii() and (c.isalnum() or c == "-") for c in header):
            raise SettingsError("CLIENT_IP_HEADER must be an HTTP header name")

        return cls(
            host=get("HOST") or "0.0.0.0",
            port=_int(get("PORT"), "PORT", 8080, 1, 65535),
            env=mode,
            log_level=log_level,
            database_url=database_url,
            redis_url=redis_url,
            data_dir=Path(get("DATA_DIR") or "./data"),
            fly_region=get("FLY_REGION"),
            rate_limit_whitelist=_networks(get("RATE_LIMIT_WHITELIST")),
            auto_block_enabled=_bool(get("AUTO_BLOCK_ENABLED"), "AUTO_BLOCK_ENABLED", True),
            admin_agent_id=admin,
            client_ip_header=header.lower() if header else None,
            ipv6_prefix=_int(get("IPV6_PREFIX"), "IPV6_PREFIX", 64, 32, 128),
            max_sessions_per_ip=_int(get("MAX_SESSIONS_PER_IP"), "MAX_SESSIONS_PER_IP", 50, 1, 1_000_000),
            ws_queue_bytes=_int(get("WS_QUEUE_BYTES"), "WS_QUEUE_BYTES", 1 << 20, 16 << 10, 1 << 30),
            ws_heartbeat=float(_int(get("WS_HEARTBEAT"), "WS_HEARTBEAT", 20, 1, 3600)),
            presence_ttl=float(_int(get("PRESENCE_TTL"), "PRESENCE_TTL", 30, 3, 3600)),
            presence_grace=float(_int(get("PRESENCE_GRACE"), "PRESENCE_GRACE", 5, 0, 60)),
            sse_heartbeat=float(_int(get("SSE_HEARTBEAT"), "SSE_HEARTBEAT", 15, 1, 3600)),
            workers=_int(get("WEB_CONCURRENCY"), "WEB_CONCURRENCY", 1, 1, 64),
            instance=get("FLY_ALLOC_ID") or uuid.uuid4().hex[:12],
            webhook_allow_private=_bool(get("WEBHOOK_ALLOW_PRIVATE"), "WEBHOOK_ALLOW_PRIVATE", False),
            webhook_retry_base_ms=_int(get("WEBHOOK_RETRY_BASE_MS"), "WEBHOOK_RETRY_BASE_MS", 10_000, 10,
                                       3_600_000),
            webhook_retry_window_s=_int(get("WEBHOOK_RETRY_WINDOW_S"), "WEBHOOK_RETRY_WINDOW_S", 24 * 3600,
                                        1, 7 * 24 * 3600),
            webhook_claim_idle_ms=_int(get("WEBHOOK_CLAIM_IDLE_MS"), "WEBHOOK_CLAIM_IDLE_MS", 30_000, 200,
                                       600_000),
        )


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}")
    return value


def _bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _networks(raw: str | None) -> tuple[IPNetwork, ...]:
    if raw is None:
        return ()
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"RATE_LIMIT_WHITELIST has an invalid IP or CIDR: {item!r}") from None
    return tuple(networks)
