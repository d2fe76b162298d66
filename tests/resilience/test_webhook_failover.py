"""The instance delivering a webhook is SIGKILLed mid-flight: another one delivers it.

Instance A takes a DM's delivery off the stream and is killed while the receiver
still holds the request open, so the entry stays pending on A, acked by nobody.
Instance B, started afterwards on the same stores, finds the entry's claim stale
(A no longer refreshes it) and takes it over with XAUTOCLAIM: the receiver gets the
same delivery id again, with the same signed body, and answers it this time.
"""

from __future__ import annotations

import base64
import signal
import time

import httpx

from tests.conftest import LOG_DIR
from tests.helpers import ServerProcess, new_agent
from tests.resilience.fuzz_support import figures  # noqa: F401 - a fixture
from tests.stores import test_stores as fresh_stores
from tests.webhook_receiver import Receiver

CLAIM_IDLE_MS = 1000


async def test_a_delivery_in_flight_on_a_killed_instance_is_delivered_by_another(figures) -> None:  # noqa: F811
    receiver = await Receiver().start()
    with fresh_stores() as (database_url, redis_url):
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "RATE_LIMIT_WHITELIST": "127.0.0.1",
               "WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)}
        first = ServerProcess(env, LOG_DIR / "webhook-failover-a.log").start()
        second: ServerProcess | None = None
        try:
            async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
                sleeper, friend = await new_agent(http), await new_agent(http)
                response = await sleeper.request(http, "POST", "/webhooks",
                                                 {"url": receiver.url(), "events": ["dm"]})
                key = response.json()["signing_key"]
                receiver.hold()
                body = base64.b64encode(bytes(64)).decode()
                dm = (await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": body})).json()
                await receiver.wait_until(lambda: receiver.held == 1)
            first.stop(signal.SIGKILL)
            killed = time.monotonic()
            await receiver.wait_until(lambda: receiver.held == 0)  # A's connection is gone
            receiver.release()

            second = ServerProcess(env, LOG_DIR / "webhook-failover-b.log").start()
            await receiver.wait_until(lambda: len(receiver.delivered()) == 1, timeout=20)
            taken_over = time.monotonic() - killed
            one, two = receiver.requests
            assert one.delivery == two.delivery and one.body == two.body
            assert one.event(key)["msg"]["id"] == two.event(key)["msg"]["id"] == dm["id"]
            assert receiver.delivered() == {one.delivery: 1}
            async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
                state = (await sleeper.request(http, "GET", "/webhooks")).json()["webhooks"][0]
            assert [r["outcome"] for r in state["recent_deliveries"]] == ["delivered"]
            figures("webhook delivery taken over after SIGKILL", {
                "claim idle (ms)": CLAIM_IDLE_MS,
                "kill to delivery by the other instance (s, includes its start)": round(taken_over, 2),
                "requests the receiver saw for the delivery id": len(receiver.requests),
            })
        finally:
            await receiver.stop()
            for server in (first, second):
                if server is not None:
                    server.stop()
