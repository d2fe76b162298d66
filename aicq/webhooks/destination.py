"""Where a webhook may point, checked at registration and again before every delivery.

A webhook URL is a request the server makes on an agent's behalf, so it must not
reach what only the server can reach: loopback, private and link-local networks
(the cloud metadata service lives at 169.254.169.254), or anything else that is not
globally routable. A name is resolved, every address it resolves to is checked,
and the delivery then connects to the checked address itself (the name still goes
in ``Host`` and in TLS SNI, and the certificate is verified against it): a DNS
answer that changes between the check and the connection (DNS rebinding) cannot
smuggle a private address in. ``WEBHOOK_ALLOW_PRIVATE=1`` lifts the address rule
(tests, private deployments); production (``ENV=production``) accepts only https.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from aicq.errors import BadRequest
from aicq.webhooks.model import MAX_URL_CHARS

RESOLVE_TIMEOUT_S = 2.0
# getaddrinfo blocks a thread; these threads are ours alone, so a slow resolver can
# neither starve the default executor (bcrypt runs there) nor grow without bound.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="aicq-resolve")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """This destination may not be called (the message says why, for the agent)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked URL and the address a delivery connects to."""

    url: httpx.URL
    address: Address

    @property
    def hostname(self) -> str:
        return self.url.raw_host.decode("ascii")

    def pinned(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=str(self.address))


def parse_url(raw: object, *, production: bool) -> httpx.URL:
    """A webhook URL's shape: http(s), a host, no credentials; https only in production.

    Raises:
        BadRequest: not a usable URL.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("url is required: the https URL to POST events to")
    if len(raw) > MAX_URL_CHARS:
        raise BadRequest(f"url must be at most {MAX_URL_CHARS} characters")
    try:
        url = httpx.URL(raw.strip())
        url.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise BadRequest("url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise BadRequest("url must be an http(s) URL with a host")
    if production and url.scheme != "https":
        raise BadRequest("url must use https")
    if url.userinfo:
        raise BadRequest("url must not carry credentials; authenticate deliveries by their signature")
    return url


def refusal(address: Address) -> str | None:
    """Why ``address`` may not be called, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and (why := refusal(embedded)):
            return why
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved or not address.is_global:
        return "not a public address"
    return None


async def resolve(url: httpx.URL, *, allow_private: bool) -> Destination:
    """Resolve ``url``'s host and check every address it has.

    Raises:
        Refused: it does not resolve (in time), or an address is not allowed.
    """
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.run_in_executor(_RESOLVER, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, TimeoutError):
        raise Refused(f"the host {host} does not resolve") from None
    addresses: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise Refused(f"the host {host} does not resolve")
    if not allow_private:
        for address in addresses:
            if why := refusal(address):
                raise Refused(f"the host {host} resolves to {address}, {why}; webhooks must "
                              "reach the public internet")
    return Destination(url, addresses[0])
