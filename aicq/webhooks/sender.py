"""One delivery attempt: a signed POST, bounded in time and in what it reads back.

The whole attempt (resolving and checking the destination, connecting, sending,
reading the answer) has ``TIMEOUT_S``. Redirects are not followed (a 3xx is a
failure: the registered URL is the destination), at most ``MAX_RESPONSE_BYTES`` of
the answer are read, and connections are not reused: each delivery connects to the
address it just checked, never to one pooled for another name.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from aicq import __version__
from aicq.errors import AICQError
from aicq.server_key import ServerKey
from aicq.webhooks import destination
from aicq.webhooks.queue import Entry

TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 4096
MAX_CONNECTIONS = 512  # the worker attempts at most this many deliveries at once


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    status: int | None  # the HTTP status, when there was an answer
    error: str | None  # why it failed, for the agent (GET /webhooks)
    seconds: float


class Sender:
    def __init__(self, key: ServerKey, *, allow_private: bool, production: bool):
        self.key = key
        self.allow_private = allow_private
        self.production = production
        self._http = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=TIMEOUT_S,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=0))

    async def aclose(self) -> None:
        await self._http.aclose()

    def headers(self, entry: Entry, attempt: int, timestamp: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": f"AICQ-Webhook/{__version__}",
            "X-AICQ-Webhook": entry.webhook_id,
            "X-AICQ-Event": entry.kind,
            "X-AICQ-Delivery": entry.delivery_id,
            "X-AICQ-Attempt": str(attempt),
            "X-AICQ-Timestamp": timestamp,
            "X-AICQ-Signature": self.key.sign(entry.event, entry.delivery_id, timestamp),
        }

    async def send(self, url: str, entry: Entry, attempt: int) -> Attempt:
        started = time.perf_counter()
        status: int | None = None
        answer = ""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                target = await destination.resolve(
                    destination.parse_url(url, production=self.production), allow_private=self.allow_private)
                headers = self.headers(entry, attempt, str(int(time.time() * 1000)))
                headers["Host"] = target.url.netloc.decode("ascii")
                extensions = {"sni_hostname": target.hostname} if target.url.scheme == "https" else {}
                async with self._http.stream("POST", target.pinned(), content=entry.event, headers=headers,
                                             extensions=extensions) as response:
                    status = response.status_code
                    if 200 <= status < 300:  # accepted: what it says does not matter
                        return Attempt(True, status, None, time.perf_counter() - started)
                    answer = await _head_of(response)
        except destination.Refused as exc:
            return Attempt(False, None, str(exc), time.perf_counter() - started)
        except AICQError as exc:  # the stored URL no longer passes (ENV=production now)
            return Attempt(False, None, exc.message, time.perf_counter() - started)
        except TimeoutError:
            return Attempt(False, status, f"no answer within {TIMEOUT_S:.0f} s", time.perf_counter() - started)
        except httpx.HTTPError as exc:
            return Attempt(False, status, _describe(exc), time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        if 300 <= status < 400:
            return Attempt(False, status, f"HTTP {status}: redirects are not followed", elapsed)
        return Attempt(False, status, f"HTTP {status}" + (f": {answer}" if answer else ""), elapsed)


async def _head_of(response: httpx.Response) -> str:
    """The start of a refusal's text, for the agent; never more than MAX_RESPONSE_BYTES read,
    and nothing decompressed (a small compressed answer can unpack to a huge one)."""
    head = b""
    async for chunk in response.aiter_raw():
        head += chunk
        if len(head) >= MAX_RESPONSE_BYTES:
            break
    if response.headers.get("content-encoding", "identity") != "identity":
        return ""
    return " ".join(head[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").split())[:200]


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {detail}"[:200]
    return f"{type(exc).__name__}: {detail}"[:200]
