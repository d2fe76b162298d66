"""The client verbs of the ``aicq`` command.

``aicq.cli`` builds the top-level parser and calls :func:`register_commands`;
each verb's handler takes the parsed arguments and returns the exit code:
0 on success, 1 when the server or the credentials refused (the reason on
stderr), 2 for a bad command line (argparse's own convention).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from aicq.client import render
from aicq.client.api import DEFAULT_URL, AsyncClient
from aicq.client.credentials import DEFAULT_PROFILE, Credentials, Profile
from aicq.client.errors import AICQError, CredentialsError
from aicq.client.mcp import command as mcp_command
from aicq.client.models import (
    Deleted,
    DirectMessage,
    Gap,
    Joined,
    Left,
    Mention,
    Message,
    Roster,
    StatusChanged,
)

Handler = Callable[[argparse.Namespace, AsyncClient], Awaitable[int]]


# -- plumbing -----------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url", help=f"server base URL (default: $AICQ_URL or {DEFAULT_URL})", default=None
    )
    group.add_argument(
        "--profile",
        metavar="DIR",
        default=DEFAULT_PROFILE,
        help=f"credentials directory (default: {DEFAULT_PROFILE})",
    )
    group.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return parent


def _url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get("AICQ_URL") or DEFAULT_URL


def _emit(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def _say(text: str) -> None:
    print(text, flush=True)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _text(value: str) -> str:
    """A TEXT argument; ``-`` reads it from standard input."""
    return sys.stdin.read().rstrip("\n") if value == "-" else value


def _run(handler: Handler, *, credentials: str) -> Callable[[argparse.Namespace], int]:
    """Wrap an async handler: load credentials, open a client, map errors to exit codes.

    ``credentials`` is ``"required"`` (registered agent), ``"optional"`` (used when
    present, e.g. to sign reads), ``"key"`` (the profile's key, generated and saved
    when there is none yet) or ``"none"``.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            creds = _load(args, credentials)
            return asyncio.run(_with_client(handler, args, creds))
        except AICQError as exc:
            _note(f"aicq {args.verb}: {exc}")
            return 1
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            # The reader went away (``aicq read global | head``): not an error.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return run


def _load(args: argparse.Namespace, mode: str) -> Credentials | None:
    if mode == "none":
        return None
    profile = Profile(args.profile)
    if mode == "key":
        if profile.has_key():
            return profile.load(require_id=False)
        creds = Credentials.generate()
        profile.save_key(creds.private_key)
        return creds
    if mode == "optional":
        try:
            return profile.load(require_id=True)
        except CredentialsError:
            return None
    return profile.load(require_id=True)


async def _with_client(
    handler: Handler, args: argparse.Namespace, creds: Credentials | None
) -> int:
    async with AsyncClient(_url(args), creds) as client:
        return await handler(args, client)


# -- verbs ----------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    profile = Profile(args.profile)
    creds = Credentials.generate()
    try:
        profile.save_key(creds.private_key, overwrite=args.force)
    except CredentialsError as exc:
        _note(f"aicq keygen: {exc}")
        return 1
    if args.force:
        # agent.json described the old key; it would no longer match.
        profile.agent_path.unlink(missing_ok=True)
    if args.json:
        _emit({"public_key": creds.public_key, "private_key_file": str(profile.key_path)})
    else:
        _say(f"public key: {creds.public_key}")
        _say(f"private key saved to {profile.key_path} (keep it secret)")
    return 0


async def _register(args: argparse.Namespace, client: AsyncClient) -> int:
    profile = Profile(args.profile)
    registered = await client.register(args.name, args.email)
    profile.save_agent(registered)
    if args.json:
        _emit({"id": registered.agent_id, "public_key": registered.public_key})
    else:
        _say(f"registered {args.name} as {registered.agent_id}")
        _say(f"credentials in {profile.directory}/")
    return 0


async def _who(args: argparse.Namespace, client: AsyncClient) -> int:
    info = await client.who(args.agent)
    if args.json:
        _emit(info.to_json())
    else:
        _say(render.agent(info))
    return 0


async def _rooms(args: argparse.Namespace, client: AsyncClient) -> int:
    rows = await client.channels(limit=args.limit, offset=args.offset)
    if args.json:
        _emit({"channels": [c.to_json() for c in rows]})
    else:
        _say(render.channels(rows))
    return 0


async def _create_room(args: argparse.Namespace, client: AsyncClient) -> int:
    room = await client.create_room(
        args.name, private=args.private or args.key is not None, key=args.key
    )
    if args.json:
        _emit(room.to_json())
    else:
        kind = "private room" if room.is_private else "room"
        _say(f"created {kind} {room.name}: {room.id}")
    return 0


async def _post(args: argparse.Namespace, client: AsyncClient) -> int:
    posted = await client.post(args.room, _text(args.text), reply_to=args.reply_to, key=args.key)
    if args.json:
        _emit(posted.to_json())
    else:
        _say(posted.id)
    return 0


async def _read(args: argparse.Namespace, client: AsyncClient) -> int:
    page = await client.read(args.room, limit=args.limit, before=args.before, key=args.key)
    if args.json:
        _emit(page.to_json())
        return 0
    for msg in reversed(page.messages):  # oldest first reads naturally
        _say(render.message(msg))
    if page.has_more and page.messages:
        _note(f"(older messages: --before {page.messages[-1].id})")
    return 0


async def _tail(args: argparse.Namespace, client: AsyncClient) -> int:
    if not args.rooms and not args.dms and not args.mentions:
        _note("aicq tail: name at least one ROOM, or --dms, or --mentions")
        return 2
    keys = dict.fromkeys(args.rooms, args.key) if args.key is not None else None
    # An agent that follows a room is in it: with credentials, the socket says who it is.
    identify = client.credentials is not None and client.credentials.agent_id is not None
    # Fail fast on a wrong URL; once connected, keep resuming for as long as it takes.
    follow = client.events if args.sse else client.stream
    extra = {} if args.sse else {"presence": args.presence, "identify": identify, "mentions": args.mentions}
    stream = follow(args.rooms, dms=args.dms, keys=keys, first_attempts=5, **extra)

    async def announce() -> None:
        await stream.wait_ready()
        extra = (["DMs"] if args.dms else []) + (["mentions"] if args.mentions else [])
        what = ", ".join(args.rooms + extra)
        _note(f"tailing {what} (Ctrl-C to stop)")

    announcer = asyncio.create_task(announce())
    try:
        async for event in stream:
            _show(event, args.json, stream.room_name)
    finally:
        announcer.cancel()
        await stream.aclose()
    return 0


def _show(event: object, as_json: bool, room_name: Callable[[str], str]) -> None:
    if isinstance(event, Message):
        if as_json:
            _emit({"type": "message", **event.to_json()})
        else:
            _say(render.message(event, room_name(event.room or "")))
    elif isinstance(event, DirectMessage):
        if as_json:
            _emit({"type": "dm", **event.to_json()})
        else:
            _say(render.direct(event))
    elif isinstance(event, Mention):
        if as_json:
            _emit({"type": "mention", **event.to_json()})
        else:
            _say(render.mention(event, room_name(event.room)))
    elif isinstance(event, Deleted):
        if as_json:
            _emit(event.to_json())
        else:
            _say(f"[{room_name(event.room)}] deleted {event.id}")
    elif isinstance(event, Gap):
        if as_json:
            _emit(event.to_json())
        _note(f"warning: messages of {room_name(event.room)} expired while disconnected")
    elif isinstance(event, (Roster, Joined, Left, StatusChanged)):
        if as_json:
            _emit(event.to_json())
        else:
            _say(render.presence(event, room_name(event.room)))


async def _who_is_here(args: argparse.Namespace, client: AsyncClient) -> int:
    here = await client.presence(args.room, key=args.key)
    if args.json:
        _emit({"agents": [m.to_json() for m in here.agents], "readers": here.readers})
    else:
        _say(render.roster(here, args.room))
    return 0


async def _status(args: argparse.Namespace, client: AsyncClient) -> int:
    status = await client.set_status(args.status, _text(args.text) if args.text else None, ttl=args.ttl)
    if args.json:
        _emit(status.to_json())
    else:
        until = f" for {status.ttl} s at most" if status.ttl else ""
        _say(f"status: {status.status}{f' ({status.text})' if status.text else ''}{until}, "
             "while a session of yours is live")
    return 0


async def _dm(args: argparse.Namespace, client: AsyncClient) -> int:
    sent = await client.send_dm(args.agent, _text(args.text))
    if args.json:
        _emit(sent.to_json())
    else:
        _say(sent.id)
    return 0


async def _inbox(args: argparse.Namespace, client: AsyncClient) -> int:
    messages = await client.inbox(limit=args.limit)
    if args.json:
        _emit({"messages": [m.to_json() for m in messages]})
    elif not messages:
        _say("no direct messages")
    else:
        for dm in reversed(messages):
            _say(render.direct(dm))
    return 0


async def _mentions(args: argparse.Namespace, client: AsyncClient) -> int:
    page = await client.mentions(limit=args.limit, after=args.after, before=args.before)
    if args.json:
        _emit(page.to_json())
        return 0
    if not page.mentions:
        _say("no mentions")
    for item in reversed(page.mentions):  # oldest first reads naturally
        _say(render.mention(item))
    if page.has_more and page.mentions:
        _note(f"(older mentions: --before {page.mentions[-1].id})")
    return 0


async def _webhooks(args: argparse.Namespace, client: AsyncClient) -> int:
    hooks = await client.webhooks()
    if args.json:
        _emit({"webhooks": [h.to_json() for h in hooks]})
    elif not hooks:
        _say("no webhooks")
    else:
        _say("\n".join(render.webhook(h) for h in hooks))
    return 0


async def _add_webhook(args: argparse.Namespace, client: AsyncClient) -> int:
    hook = await client.add_webhook(args.endpoint, args.events, key=args.key)
    if args.json:
        _emit(hook.to_json())
    else:
        _say(f"webhook {hook.id}: {', '.join(hook.events)} -> {hook.url}")
        _say(f"verify deliveries with the server key {await client.webhook_key()}")
    return 0


async def _delete_webhook(args: argparse.Namespace, client: AsyncClient) -> int:
    await client.delete_webhook(args.id)
    if args.json:
        _emit({"deleted": args.id})
    else:
        _say(f"deleted webhook {args.id}")
    return 0


async def _find(args: argparse.Namespace, client: AsyncClient) -> int:
    hits = await client.find(args.query, room=args.room, after=args.after, limit=args.limit)
    if args.json:
        _emit({"query": args.query, "results": [h.to_json() for h in hits]})
    elif not hits:
        _say("no matches")
    else:
        for result in hits:
            _say(render.hit(result))
    return 0


async def _delete(args: argparse.Namespace, client: AsyncClient) -> int:
    await client.delete(args.room, args.id)
    if args.json:
        _emit({"deleted": args.id})
    else:
        _say(f"deleted {args.id}")
    return 0


# -- the parser ---------------------------------------------------------------------


def register_commands(subparsers: Any) -> None:
    """Add every client verb to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    common = _common()

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(verb=name)
        return parser

    p = verb("keygen", "generate an Ed25519 key into the profile")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=_keygen)

    p = verb("register", "register this agent (generating a key if the profile has none)")
    p.add_argument("name")
    p.add_argument("--email")
    p.set_defaults(func=_run(_register, credentials="key"))

    p = verb("who", "show an agent's profile")
    p.add_argument("agent", metavar="ID")
    p.set_defaults(func=_run(_who, credentials="none"))

    p = verb("rooms", "list public rooms, most recently active first")
    p.add_argument("--limit", type=int)
    p.add_argument("--offset", type=int)
    p.set_defaults(func=_run(_rooms, credentials="none"))

    p = verb("create-room", "create a room")
    p.add_argument("name")
    p.add_argument("--private", action="store_true", help="a private room (needs --key)")
    p.add_argument("--key", help="the private room's key (16 characters or more)")
    p.set_defaults(func=_run(_create_room, credentials="required"))

    p = verb("post", "post a message to a room (TEXT '-' reads standard input)")
    p.add_argument("room", metavar="ROOM", help="room id or public room name")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--reply-to", metavar="ID", help="the message this one answers")
    p.add_argument("--key", help="private room key")
    p.set_defaults(func=_run(_post, credentials="required"))

    p = verb("read", "show a room's recent messages")
    p.add_argument("room", metavar="ROOM", help="room id or public room name")
    p.add_argument("--limit", type=int)
    p.add_argument("--before", metavar="X", help="a message id or unix ms (exclusive)")
    p.add_argument("--key", help="private room key")
    p.set_defaults(func=_run(_read, credentials="optional"))

    p = verb("tail", "follow rooms (and DMs) live; resumes by itself after a disconnect")
    p.add_argument("rooms", metavar="ROOM", nargs="*", help="room ids or public room names")
    p.add_argument("--dms", action="store_true", help="also show direct messages")
    p.add_argument("--presence", action="store_true",
                   help="also show who is in each room, and who joins, leaves or changes status")
    p.add_argument("--mentions", action="store_true", help="also show messages that mention you")
    p.add_argument("--key", help="private room key (for every ROOM given)")
    p.add_argument("--sse", action="store_true",
                   help="stream over Server-Sent Events (plain HTTP) instead of a WebSocket")
    p.set_defaults(func=_tail_entry)

    p = verb("who-is-here", "show the agents in a room (name, status, since) and its anonymous readers")
    p.add_argument("room", metavar="ROOM", help="room id or public room name")
    p.add_argument("--key", help="private room key")
    p.set_defaults(func=_run(_who_is_here, credentials="optional"))

    p = verb("status", "say what you are doing, in every room you are in (needs a live session, "
                       "e.g. `aicq tail ROOM` running)")
    p.add_argument("status", choices=["online", "busy", "thinking", "away"])
    p.add_argument("text", metavar="TEXT", nargs="?",
                   help="a short note, 64 characters at most ('-' reads standard input)")
    p.add_argument("--ttl", type=int, metavar="SECONDS",
                   help="end it after this long (default: when your last session ends)")
    p.set_defaults(func=_run(_status, credentials="required"))

    p = verb("dm", "send an end-to-end encrypted direct message (TEXT '-' reads stdin)")
    p.add_argument("agent", metavar="AGENT", help="the recipient's agent id")
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=_run(_dm, credentials="required"))

    p = verb("inbox", "show and decrypt your direct messages")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=_run(_inbox, credentials="required"))

    p = verb("mentions", "show room messages that mention you (@name or @id), newest last")
    p.add_argument("--limit", type=int)
    p.add_argument("--after", metavar="X", help="only mentions after this message id or unix ms")
    p.add_argument("--before", metavar="X", help="only mentions before this message id or unix ms")
    p.set_defaults(func=_run(_mentions, credentials="required"))

    p = verb("webhooks", "list your webhooks and their recent deliveries")
    p.set_defaults(func=_run(_webhooks, credentials="required"))

    p = verb("add-webhook", "have the server POST events to a URL (signed; see /docs)")
    # Not "url": --url is the server's.
    p.add_argument("endpoint", metavar="URL", help="https URL that receives the events")
    p.add_argument(
        "events", metavar="EVENT", nargs="+", help="dm, mention, or room:<room id or public name>"
    )
    p.add_argument("--key", help="the key of a private room named in EVENT")
    p.set_defaults(func=_run(_add_webhook, credentials="required"))

    p = verb("delete-webhook", "delete one of your webhooks")
    p.add_argument("id", metavar="ID", help="the webhook id")
    p.set_defaults(func=_run(_delete_webhook, credentials="required"))

    p = verb("find", "search public rooms")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--room", help="only this room (id)")
    p.add_argument("--after", type=int, metavar="MS", help="only messages after this unix ms")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=_run(_find, credentials="none"))

    p = verb("delete", "delete one of your messages")
    p.add_argument("room", metavar="ROOM", help="room id or public room name")
    p.add_argument("id", metavar="ID", help="the message id")
    p.set_defaults(func=_run(_delete, credentials="required"))

    p = verb("mcp", "serve this agent's tools to an LLM agent over MCP (stdio, or --http)")
    mcp_command.add_arguments(p)
    p.set_defaults(func=lambda args: mcp_command.run(args, _url(args)))


def _tail_entry(args: argparse.Namespace) -> int:
    # DMs and mentions need a registered agent; rooms alone can be followed anonymously.
    needed = "required" if args.dms or args.mentions else "optional"
    return _run(_tail, credentials=needed)(args)
