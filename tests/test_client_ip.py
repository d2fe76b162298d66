"""Who the client is: trusted header parsed and normalised, IPv6 by /64, sessions capped (issue 12.7)."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aicq.edge.request import last_hop, limit_key, parse_address
from aicq.settings import Settings, SettingsError
from tests.helpers import Agent, random_ip, recv_json


def ipv6_net() -> str:
    """A random 2001:db8:x:y::/64 prefix, without the length."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}"


# The pure parts


@pytest.mark.parametrize("text, address", [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("203.0.113.7:5123", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
])
def test_addresses_are_parsed_and_normalised(text: str, address: str) -> None:
    assert str(parse_address(text)) == address


@pytest.mark.parametrize("text", ["", "unknown", "not-an-ip", "999.1.1.1", "1.2.3", "1.2.3.4.5",
                                  "2001:db8::1::2", "[2001:db8::1", "x" * 200, "1.2.3.4/24", "_hidden"])
def test_garbage_is_no_address(text: str) -> None:
    assert parse_address(text) is None


def test_the_last_hop_is_the_one_the_proxy_appended() -> None:
    assert last_hop("198.51.100.9") == "198.51.100.9"
    assert last_hop("6.6.6.6, 10.0.0.1 ,198.51.100.9") == "198.51.100.9"
    assert last_hop("6.6.6.6,") == ""  # an empty last hop is no address: the peer is used


def test_ipv6_clients_are_counted_per_prefix() -> None:
    one, two = parse_address("2001:db8:1:2::a"), parse_address("2001:db8:1:2:ffff::b")
    assert one is not None and two is not None
    assert limit_key(one, 64) == limit_key(two, 64) == "2001:db8:1:2::/64"
    assert limit_key(one, 128) == "2001:db8:1:2::a"
    assert limit_key(one, 48) == "2001:db8:1::/48"
    v4 = parse_address("203.0.113.7")
    assert v4 is not None and limit_key(v4, 64) == "203.0.113.7"


@pytest.mark.parametrize("name, value", [
    ("IPV6_PREFIX", "129"), ("IPV6_PREFIX", "16"), ("IPV6_PREFIX", "/64"),
    ("MAX_SESSIONS_PER_IP", "0"), ("MAX_SESSIONS_PER_IP", "many"),
])
def test_bad_settings_fail_at_boot_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_settings_defaults_and_whitelisted_networks() -> None:
    defaults = Settings.from_env({})
    assert defaults.ipv6_prefix == 64 and defaults.max_sessions_per_ip == 50
    settings = Settings.from_env({"RATE_LIMIT_WHITELIST": "10.0.0.0/8, 2001:db8:5:5::7", "IPV6_PREFIX": "56"})
    assert settings.ipv6_prefix == 56
    assert settings.is_whitelisted("10.1.2.3") and not settings.is_whitelisted("11.1.2.3")
    # Clients are counted per network: whitelisting an address of it whitelists the client.
    assert settings.is_whitelisted("2001:db8:5:5::/64")
    assert not settings.is_whitelisted("2001:db8:5:6::/64")
    assert not settings.is_whitelisted("unknown")


# Against a server


async def find_statuses(server, addresses: list[str], header: str = "X-Test-Client-IP") -> list[int]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        return [(await http.get("/find", params={"q": "x"}, headers={header: address})).status_code
                for address in addresses]


async def test_rotating_ipv6_addresses_inside_a_64_buys_no_budget(limited_server) -> None:
    net = ipv6_net()
    statuses = await find_statuses(limited_server, [f"{net}::{i:x}" for i in range(1, 32)])
    assert statuses.count(429) == 1 and statuses[-1] == 429  # /find: 30 a minute per client
    assert await find_statuses(limited_server, [f"{ipv6_net()}::1"]) == [200]  # another /64 is another client


async def test_registration_from_one_ipv6_64_is_one_client(limited_server) -> None:
    net = ipv6_net()
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10) as http:
        statuses = [
            (await http.post("/register", json={"public_key": Agent().public_key},
                             headers={"X-Test-Client-IP": f"[{net}:{i:x}::1]:4000"})).status_code
            for i in range(11)
        ]
    assert statuses == [201] * 10 + [429]


@pytest.fixture(scope="module")
def proxied_server(start_module_server):
    """Behind a proxy that appends the peer to X-Forwarded-For; three sessions per client."""
    server = start_module_server(CLIENT_IP_HEADER="X-Forwarded-For", RATE_LIMIT_WHITELIST="", MAX_SESSIONS_PER_IP="3")
    yield server
    server.stop()


async def test_forwarding_chain_counts_the_hop_the_proxy_appended(proxied_server) -> None:
    real = random_ip()
    chains = [f"{random_ip()}, {random_ip()}, {real}" for _ in range(31)]  # the left is the client's say-so
    statuses = await find_statuses(proxied_server, chains, header="X-Forwarded-For")
    assert statuses.count(429) == 1 and statuses[-1] == 429


async def test_garbage_in_the_trusted_header_falls_back_to_the_peer(proxied_server) -> None:
    garbage = [f"garbage-{i}" for i in range(15)] + [f"1.2.3.{300 + i}" for i in range(15)] + ["", "unknown"]
    statuses = await find_statuses(proxied_server, garbage, header="X-Forwarded-For")
    # All are the TCP peer (127.0.0.1 here, not whitelisted on this server): one budget.
    assert statuses.count(429) == 2 and statuses[-2:] == [429, 429]


async def test_live_sessions_are_capped_per_client(proxied_server) -> None:
    net = ipv6_net()

    def headers(i: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"{net}::{i:x}"}  # one client, three addresses

    sockets = [await connect(proxied_server.ws_url, additional_headers=headers(i)) for i in range(3)]
    try:
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "hello"
        with pytest.raises(InvalidStatus) as refused:
            await connect(proxied_server.ws_url, additional_headers=headers(9))
        response = refused.value.response
        assert response.status_code == 429 and response.headers["Retry-After"] == "10"
        assert "too many open sessions" in orjson.loads(response.body)["error"]
        async with connect(proxied_server.ws_url, additional_headers={"X-Forwarded-For": random_ip()}) as other:
            assert (await recv_json(other))["type"] == "hello"  # other clients are not affected
        await sockets.pop().close()

        async def reconnect() -> dict:
            while True:  # the server frees the slot when the session's loop ends
                try:
                    async with connect(proxied_server.ws_url, additional_headers=headers(7)) as ws:
                        return await recv_json(ws)
                except InvalidStatus:
                    await asyncio.sleep(0.05)

        assert (await asyncio.wait_for(reconnect(), 5))["type"] == "hello"
    finally:
        await asyncio.gather(*[ws.close() for ws in sockets])
