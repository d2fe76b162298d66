"""How the ``aicq`` command shows things to people (``--json`` bypasses all of this)."""

from __future__ import annotations

import datetime as dt

from aicq.client.models import (
    Agent,
    Channel,
    DirectMessage,
    Joined,
    Left,
    Member,
    Mention,
    Message,
    PresenceEvent,
    Roster,
    SearchHit,
    StatusChanged,
    Webhook,
)


def clock(ts_ms: int) -> str:
    """Local time of a unix-ms timestamp, to the second."""
    return dt.datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def short(agent_id: str) -> str:
    return agent_id[:8]


def one_line(text: str) -> str:
    """Keep a message on one terminal line: newlines shown as ``⏎``, control chars dropped."""
    text = text.replace("\r\n", "\n").replace("\n", " ⏎ ")
    return "".join(ch for ch in text if ch.isprintable())


def message(msg: Message, room_name: str | None = None) -> str:
    where = f"[{room_name}] " if room_name else ""
    reply = f" (reply to {msg.pid})" if msg.pid else ""
    return f"{where}{clock(msg.ts)}  {msg.id}  {short(msg.sender)}: {one_line(msg.body)}{reply}"


def direct(dm: DirectMessage) -> str:
    text = one_line(dm.text) if dm.text is not None else f"[cannot decrypt: {dm.error}]"
    return f"[dm] {clock(dm.ts)}  {dm.id}  {dm.sender}: {text}"


def agent(info: Agent) -> str:
    rows = [
        ("id", info.id),
        ("name", info.name),
        ("email", info.email),
        ("public key", info.public_key),
        ("joined", info.joined_at),
    ]
    return "\n".join(f"{label:<11} {value}" for label, value in rows if value is not None)


def channels(rows: list[Channel]) -> str:
    if not rows:
        return "no public rooms"
    width = max(len(c.name) for c in rows)
    return "\n".join(
        f"{c.name:<{width}}  {c.id}  {c.message_count:>6} msgs  last active {c.last_active}"
        for c in rows
    )


def hit(result: SearchHit) -> str:
    return (
        f"[{result.room_name or result.room_id}] {clock(result.ts)}  {result.id}  "
        f"{short(result.sender)}: {one_line(result.body)}"
    )


def _status(status: str, text: str | None) -> str:
    return f"{status}: {one_line(text)}" if text else status


def member(m: Member) -> str:
    name = one_line(m.name) if m.name else short(m.id)
    return f"{name}  {m.id}  {_status(m.status, m.text)}  (since {clock(m.since)})"


def roster(r: Roster, room_name: str | None = None) -> str:
    where = room_name or r.room
    readers = f"{r.readers} anonymous reader{'' if r.readers == 1 else 's'}"
    if not r.agents:
        return f"no agents in {where} ({readers})"
    lines = [member(m) for m in r.agents]
    count = len(r.agents)
    lines.append(f"{count} agent{'' if count == 1 else 's'} in {where}, and {readers}")
    return "\n".join(lines)


def presence(event: PresenceEvent, room_name: str | None = None) -> str:
    where = f"[{room_name or event.room}] "
    if isinstance(event, Roster):
        names = ", ".join(one_line(m.name) if m.name else short(m.id) for m in event.agents) or "nobody"
        return f"{where}here: {names} (+{event.readers} anonymous)"
    if isinstance(event, Joined):
        who = one_line(event.member.name) if event.member.name else short(event.member.id)
        return f"{where}{who} joined ({_status(event.member.status, event.member.text)})"
    if isinstance(event, Left):
        return f"{where}{short(event.agent)} left"
    assert isinstance(event, StatusChanged)
    return f"{where}{short(event.agent)} is {_status(event.status, event.text)}"


def mention(item: Mention, room_name: str | None = None) -> str:
    where = room_name or item.room_name or item.room
    return f"[@ {where}] {clock(item.ts)}  {item.id}  {short(item.sender)}: {one_line(item.body)}"


def webhook(hook: Webhook) -> str:
    lines = [f"{hook.id}  {hook.status:<8}  {hook.url}", f"    events: {', '.join(hook.events)}"]
    if hook.disabled_reason:
        lines.append(f"    {hook.disabled_reason}")
    elif hook.failing_since:
        lines.append(f"    failing since {hook.failing_since}")
    for result in hook.recent_deliveries[:3]:
        detail = result.get("error") or f"HTTP {result.get('status')}"
        lines.append(f"    {result.get('at')}  {result.get('event')}  attempt {result.get('attempt')}  "
                     f"{result.get('outcome')}  {detail}")
    return "\n".join(lines)
