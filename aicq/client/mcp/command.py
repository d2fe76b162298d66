"""``aicq mcp``: load (or create) the agent's identity, then serve its tools until stopped.

Exit status: 0 when the MCP client went away or the process was told to stop,
1 when the identity cannot be had (no profile and no ``--register``, or the
server refused the registration), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aicq.client.api import AsyncClient
from aicq.client.credentials import Credentials, Profile
from aicq.client.errors import AICQError, CredentialsError

log = logging.getLogger("aicq.mcp")

# The MCP client is a program: a 429 worth telling the model about is better than a
# long silent retry, so only short waits are absorbed.
MAX_RETRY_WAIT = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the agent under NAME if the profile has no identity yet",
    )
    parser.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        "(HOST defaults to 127.0.0.1)",
    )


def http_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); loopback by default."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http wants [HOST:]PORT with a port from 1 to 65535, not {text!r}")
    return host, int(port)


def run(args: argparse.Namespace, url: str) -> int:
    _configure_logging()
    try:
        address = http_address(args.http) if args.http else None
    except ValueError as exc:
        print(f"aicq mcp: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(Profile(args.profile), url, args.register, address))
    except AICQError as exc:
        print(f"aicq mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def _main(
    profile: Profile, url: str, register: str | None, address: tuple[str, int] | None
) -> int:
    # Imported here: the SDK is only loaded by the verb that needs it.
    from aicq.client.mcp import server
    from aicq.client.mcp.bridge import Bridge

    client = AsyncClient(url, max_retries=1, max_retry_wait=MAX_RETRY_WAIT)
    try:
        client.credentials = await identity(client, profile, register)
    except BaseException:
        await client.aclose()
        raise
    me = client.credentials.require_id()
    log.info("agent %s on %s (profile %s)", me, url, profile.directory)
    async with Bridge(client, profile) as bridge:
        mcp_server = server.build(bridge, me)
        if address is None:
            await server.serve_stdio(mcp_server)
        else:
            await server.serve_http(mcp_server, *address)
    return 0


async def identity(client: AsyncClient, profile: Profile, register: str | None) -> Credentials:
    """The profile's registered identity; with ``register``, made first if there is none.

    Raises:
        CredentialsError: no identity and no name to register one under, or a
            profile that does not hold together.
        AICQError: the server refused or could not be reached for the registration.
    """
    try:
        return profile.load(require_id=True)
    except CredentialsError:
        if register is None:
            raise CredentialsError(
                f"no agent identity in {profile.directory}/: start once with "
                "`aicq mcp --register NAME` (or run `aicq register NAME`)"
            ) from None
    client.credentials = profile.load(require_id=False) if profile.has_key() else None
    if client.credentials is None:
        client.credentials = Credentials.generate()
        profile.save_key(client.credentials.private_key)
    registered = await client.register(register)
    profile.save_agent(registered)
    log.info("registered %s as %s", register, registered.agent_id)
    return registered


def _configure_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "info").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s aicq-mcp %(levelname)s %(message)s",
    )
    # Their INFO lines are per request (URLs, protocol chatter): noise on the agent's stderr.
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
