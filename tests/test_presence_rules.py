"""Presence's pure parts: the ops and flags it adds, its input rules, its events at the hub."""

from __future__ import annotations

import orjson
import pytest

from aicq import protocol, validation
from aicq.client.models import Joined, Left, Member, Roster, StatusChanged
from aicq.client.resume import ResumeState
from aicq.errors import BadRequest, Unprocessable
from aicq.fanout import parse_publication, presence_event
from aicq.presence import Status
from aicq.settings import Settings, SettingsError

AGENT = "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10"
ROOM = "22222222-2222-4222-8222-222222222222"


def test_presence_settings_default_and_fail_at_boot_by_name() -> None:
    settings = Settings.from_env({})
    assert (settings.presence_ttl, settings.presence_grace) == (30.0, 5.0)
    assert Settings.from_env({"PRESENCE_TTL": "3", "PRESENCE_GRACE": "0"}).presence_ttl == 3.0
    for env in ({"PRESENCE_TTL": "2"}, {"PRESENCE_TTL": "soon"}, {"PRESENCE_GRACE": "61"}):
        with pytest.raises(SettingsError, match=next(iter(env))):
            Settings.from_env(env)


def test_subscribe_may_ask_for_presence() -> None:
    assert protocol.parse('{"op": "subscribe", "room": "r", "presence": true}').op == \
        protocol.Subscribe("r", presence=True)
    assert protocol.parse('{"op": "subscribe", "room": "r", "presence": null}').op.presence is False
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse('{"op": "subscribe", "room": "r", "presence": "yes", "ref": 3}')
    assert (caught.value.status, caught.value.message, caught.value.ref) == (400, "presence must be true or false", 3)


def test_status_op_carries_its_arguments_to_the_service() -> None:
    op = protocol.parse('{"op": "status", "status": "busy", "text": "t", "ttl": 60}').op
    assert op == protocol.SetStatus("busy", "t", 60)
    assert protocol.parse('{"op": "status"}').op == protocol.SetStatus(None)


@pytest.mark.parametrize("state", validation.STATUSES)
def test_every_status_is_accepted(state: str) -> None:
    assert validation.agent_status(state) == state


@pytest.mark.parametrize("value", [None, "", "BUSY", "sleeping", 1, ["busy"], {"busy": 1}])
def test_other_statuses_are_400(value: object) -> None:
    with pytest.raises(BadRequest):
        validation.agent_status(value)


def test_status_text_follows_the_body_rules_with_64_characters() -> None:
    assert validation.status_text(None) is None and validation.status_text("") is None
    assert validation.status_text("é" * 64) == "é" * 64  # characters, not bytes
    with pytest.raises(Unprocessable, match="text exceeds 64 characters"):
        validation.status_text("x" * 65)
    with pytest.raises(BadRequest, match="text must be valid UTF-8"):
        validation.status_text("\ud800")
    with pytest.raises(BadRequest, match="text is required and must be a non-empty string"):
        validation.status_text(5)
    # The body rules are unchanged by sharing their helper.
    with pytest.raises(BadRequest, match="body is required"):
        validation.message_body("")
    with pytest.raises(Unprocessable, match="body exceeds 4096 bytes"):
        validation.message_body("é" * 2049)


@pytest.mark.parametrize("value, ok", [(None, True), (1, True), (86400, True), (60.0, True), (0, False),
                                       (86401, False), (True, False), (1.5, False), ("60", False), (-5, False)])
def test_status_ttl_is_whole_seconds_up_to_a_day(value: object, ok: bool) -> None:
    if ok:
        assert validation.status_ttl(value) == value
        assert value is None or type(validation.status_ttl(value)) is int
    else:
        with pytest.raises(BadRequest, match="ttl must be"):
            validation.status_ttl(value)


def test_status_is_stored_compactly_and_answered_in_full() -> None:
    assert Status("online").stored() == b""  # the default needs no record
    assert orjson.loads(Status("busy", "logs", 60).stored()) == {"status": "busy", "text": "logs"}
    assert Status("away", None, 60).to_public() == {"status": "away", "ttl": 60}


@pytest.mark.parametrize("payload, kind", [
    ({"type": "join", "room": ROOM, "agent": {"id": AGENT, "since": 1, "status": "online"}}, "join"),
    ({"type": "leave", "room": ROOM, "agent": {"id": AGENT}}, "leave"),
    ({"type": "status", "room": ROOM, "agent": {"id": AGENT, "status": "busy"}}, "status"),
])
def test_presence_publications_become_presence_events_at_the_hub(payload: dict, kind: str) -> None:
    parsed = parse_publication(b"1700000000.000001|" + orjson.dumps(payload))
    assert parsed is not None
    published, event = parsed
    assert published == 1700000000.000001
    assert (event.kind, event.room, event.id, event.key, event.presence) == (kind, ROOM, AGENT, None, True)
    assert orjson.dumps(payload) in event.frame


def test_a_whole_roster_event_goes_to_presence_listeners_only() -> None:
    roster = b'{"agents":[{"id":"%s","since":5,"status":"online"}],"readers":1}' % AGENT.encode()
    made = presence_event(ROOM, roster)
    assert made.presence and made.key is None
    payload = orjson.loads(made.frame[made.frame.index(b"{"):])
    assert payload == {"type": "presence", "room": ROOM, "agents": [{"id": AGENT, "since": 5, "status": "online"}],
                       "readers": 1}
    state = ResumeState([ROOM], presence=True)
    assert state.accept(payload) == Roster(ROOM, [Member(AGENT, 5)], 1)
    assert state.accept({"type": "join", "room": ROOM, "agent": {"id": AGENT, "since": 5}}) is None


def test_the_client_reads_presence_frames_into_events() -> None:
    state = ResumeState([ROOM], presence=True)
    assert state.subscribe_op(ROOM, "1") == {"op": "subscribe", "room": ROOM, "ref": "1", "presence": True}
    ok = {"type": "ok", "room": {"id": ROOM, "name": "lobby"}, "replayed": 0, "recovered": True,
          "presence": {"agents": [{"id": AGENT, "name": "bob", "since": 5, "status": "busy", "text": "x"}],
                       "readers": 2}}
    state.subscribed(ROOM, ok, False)
    assert state.roster(ROOM, ok) == Roster(ROOM, [Member(AGENT, 5, "busy", "bob", "x")], 2)
    join = {"type": "join", "room": ROOM, "agent": {"id": AGENT, "since": 7}}
    leave = {"type": "leave", "room": ROOM, "agent": {"id": AGENT}}
    status = {"type": "status", "room": ROOM, "agent": {"id": AGENT, "status": "away"}}
    # What the roster already said is not news: a join of a listed agent is dropped.
    assert state.accept(join) is None
    assert state.accept(status) == StatusChanged(ROOM, AGENT, "away")
    assert state.accept(leave) == Left(ROOM, AGENT)
    assert state.accept(leave) is None and state.accept(status) is None  # no longer here
    assert state.accept(join) == Joined(ROOM, Member(AGENT, 7))
    assert state.accept({"type": "join", "room": ROOM, "agent": {"name": "no id"}}) is None
    assert ResumeState([ROOM]).subscribe_op(ROOM, "1") == {"op": "subscribe", "room": ROOM, "ref": "1"}
