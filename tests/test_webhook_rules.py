"""Webhook rules, pure: destinations, events, the retry schedule, the signature."""

from __future__ import annotations

import ipaddress
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq.client import WebhookSignatureError, verify_webhook
from aicq.errors import BadRequest
from aicq.server_key import ServerKey
from aicq.settings import Settings, SettingsError
from aicq.webhooks import destination
from aicq.webhooks.model import Webhook, event_kind, parse_events, target_key
from aicq.webhooks.queue import Entry


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.9", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("fd00:ec2::254", "metadata"), ("fc00::5", "private"),
    ("100.64.0.1", "not a public"), ("0.0.0.0", "private"), ("224.0.0.1", "not a public"),
    ("::ffff:127.0.0.1", "loopback"), ("2002:7f00:1::", "loopback"),  # IPv4 inside IPv6 (mapped, 6to4)
])
def test_private_and_special_addresses_are_refused(address: str, why: str) -> None:
    reason = destination.refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason, (address, reason)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    assert destination.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url, production, message", [
    ("ftp://example.com/x", False, "http(s)"),
    ("http://example.com/x", True, "https"),
    ("https://user:pw@example.com/x", False, "credentials"),
    ("https://", False, "host"),
    ("not a url", False, "http(s)"),
    ("https://example.com/" + "a" * 3000, False, "at most"),
    (17, False, "required"),
])
def test_bad_urls_are_refused_with_a_reason(url: object, production: bool, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        destination.parse_url(url, production=production)
    assert message in refused.value.message


def test_https_passes_in_production() -> None:
    assert destination.parse_url(" https://hooks.example.com/aicq ", production=True).host == "hooks.example.com"


async def test_a_loopback_name_is_refused_unless_allowed() -> None:
    url = destination.parse_url("http://localhost:9/x", production=False)
    with pytest.raises(destination.Refused, match="loopback"):
        await destination.resolve(url, allow_private=False)
    allowed = await destination.resolve(url, allow_private=True)
    assert allowed.address.is_loopback and str(allowed.pinned()).endswith(":9/x")


def test_events_are_checked_and_deduplicated() -> None:
    room = "00000000-0000-0000-0000-000000000001"
    assert parse_events(["dm", "mention", "dm", f"room:{room.upper()}", "room:global"]) == [
        "dm", "mention", f"room:{room}", "room:global"]
    for bad in ([], "dm", ["dms"], [3], ["room:"], ["room:not a room"], ["dm"] * 11):
        with pytest.raises(BadRequest):
            parse_events(bad)


def test_targets_name_the_sets_the_scripts_read() -> None:
    hook = Webhook("w1", "agent", "https://x", ("dm", "mention", "room:r1"), None)  # type: ignore[arg-type]
    assert hook.targets() == ["webhooks:to:dm:agent", "webhooks:to:mention:agent", "webhooks:to:room:r1"]
    assert [event_kind(t) for t in hook.targets()] == ["dm", "mention", "message"]
    assert target_key("room:r1", "anyone") == "webhooks:to:room:r1"


def test_a_retry_keeps_the_delivery_id_and_the_event() -> None:
    fields = {b"s": b"webhooks:to:dm:a", b"m": b"w1|a", b"e": '{"type":"dm","x":"é"}'.encode(), b"t": b"1700"}
    fresh = Entry.from_stream(b"1700-0", fields)
    assert fresh is not None and fresh.delivery_id == "1700-0" and fresh.attempts == 0
    import orjson

    again = orjson.loads(fresh.retry_member(3))
    moved = Entry.from_stream("1800-0", {k.encode(): v.encode() for k, v in again.items()})
    assert moved == Entry("1800-0", "1700-0", "webhooks:to:dm:a", "w1|a", fields[b"e"], 1700, 3)
    assert Entry.from_stream(b"1-0", {b"x": b"y"}) is None


def test_a_delivery_signed_by_the_server_verifies_and_a_forgery_does_not() -> None:
    key = ServerKey(Ed25519PrivateKey.generate())
    body = b'{"type":"dm","msg":{"id":"01J","from":"a","body":"x","ts":1}}'
    now_ms = str(int(time.time() * 1000))
    headers = {"X-AICQ-Delivery": "1700-0", "X-AICQ-Timestamp": now_ms,
               "X-AICQ-Signature": key.sign(body, "1700-0", now_ms)}
    assert verify_webhook(key.public_key, body, headers)["type"] == "dm"
    assert verify_webhook(key.private_key.public_key().public_bytes_raw(), body,
                          {k.lower(): v for k, v in headers.items()})["type"] == "dm"
    with pytest.raises(WebhookSignatureError, match="signature"):
        verify_webhook(key.public_key, body + b" ", headers)
    with pytest.raises(WebhookSignatureError, match="signature"):
        verify_webhook(key.public_key, body, {**headers, "X-AICQ-Delivery": "1700-1"})
    with pytest.raises(WebhookSignatureError, match="signature"):
        verify_webhook(ServerKey(Ed25519PrivateKey.generate()).public_key, body, headers)
    with pytest.raises(WebhookSignatureError, match="too old"):
        verify_webhook(key.public_key, body, headers, now=time.time() + 3600)
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify_webhook(key.public_key, body, {"X-AICQ-Delivery": "1700-0"})


@pytest.mark.parametrize("name, value", [
    ("WEBHOOK_ALLOW_PRIVATE", "maybe"), ("WEBHOOK_RETRY_BASE_MS", "5"), ("WEBHOOK_RETRY_WINDOW_S", "0"),
    ("WEBHOOK_CLAIM_IDLE_MS", "soon"),
])
def test_webhook_settings_fail_at_boot_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_webhook_settings_defaults_and_values() -> None:
    assert Settings.from_env({}).webhook_allow_private is False
    tuned = Settings.from_env({"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_RETRY_BASE_MS": "200",
                               "WEBHOOK_RETRY_WINDOW_S": "60", "WEBHOOK_CLAIM_IDLE_MS": "1000"})
    assert (tuned.webhook_allow_private, tuned.webhook_retry_base_ms, tuned.webhook_retry_window_s,
            tuned.webhook_claim_idle_ms) == (True, 200, 60, 1000)
