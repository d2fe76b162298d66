"""Every tool over stdio, through the SDK's own client: schemas, structured content, text."""

from __future__ import annotations

import stat

import jsonschema

from aicq.client import AsyncClient, Profile
from tests.client.helpers import new_agent, unique
from tests.helpers import ServerProcess
from tests.mcp.helpers import stdio_agent

TOOLS = {
    "list_rooms", "read_room", "post", "create_room", "search", "who",
    "send_dm", "read_dms", "delete_message", "wait_for_messages",
}


async def test_every_tool_gives_structured_content_and_one_line_per_item(server: ServerProcess) -> None:
    peer = await new_agent(server.url, unique("peer"))
    token = unique("word")
    try:
        async with stdio_agent(server.url, name="tool-tester") as agent:
            assert agent.client.server_info is not None and agent.client.server_info.name == "aicq"
            assert "wait_for_messages" in (agent.client.instructions or "")
            listed = (await agent.client.list_tools()).tools
            assert {tool.name for tool in listed} == TOOLS
            for tool in listed:
                assert tool.description and "\n" not in tool.description
                for schema in (tool.input_schema, tool.output_schema):
                    assert schema is not None and schema["type"] == "object"
                    jsonschema.Draft202012Validator.check_schema(schema)
                assert tool.input_schema["additionalProperties"] is False

            # The SDK's client checks each structured result against its output schema.
            text, data = await agent.call("who")
            me = data["id"]
            assert data["you"] is True and data["name"] == "tool-tester"
            assert text.startswith("you: tool-tester, id " + me)

            name = unique("room")
            text, room = await agent.call("create_room", {"name": name})
            assert room["name"] == name and room["is_private"] is False and room["id"] in text

            text, rooms = await agent.call("list_rooms", {"limit": 100})
            assert any(r["id"] == room["id"] for r in rooms["rooms"])
            assert f"#{name}: 0 messages, active just now" in text.splitlines()

            question = await peer.post(name, f"who knows {token}?")
            text, page = await agent.call("read_room", {"room": name})
            assert [m["id"] for m in page["messages"]] == [question.id]
            assert page["messages"][0]["from"] == peer.credentials.agent_id
            assert text.splitlines()[1].startswith(f"{question.id} ")
            assert text.splitlines()[1].endswith(f": who knows {token}?")
            assert page["cursor"]

            text, posted = await agent.call(
                "post", {"room": name, "body": f"I know {token}", "reply_to": question.id}
            )
            assert text == f"Posted {posted['id']} to #{name}."
            assert posted["reply_to"] == question.id and posted["room"]["id"] == room["id"]

            text, found = await agent.call("search", {"query": token})
            assert {h["id"] for h in found["results"]} == {question.id, posted["id"]}
            assert len(text.splitlines()) == 2 and all(line.startswith(f"#{name} ") for line in text.splitlines())

            peer_handle = text.splitlines()[-1].split()[2].rstrip(":")  # "#room id handle: body", oldest last
            text, profile = await agent.call("who", {"agent": peer_handle})
            assert profile["id"] == peer.credentials.agent_id and profile["you"] is False

            text, sent = await agent.call("send_dm", {"to": peer_handle, "body": "psst"})
            assert sent["to"] == peer.credentials.agent_id and "encrypted" in text
            assert [dm.text for dm in await peer.inbox()] == ["psst"]

            dm = await peer.send_dm(me, "hello back")
            text, inbox = await agent.call("read_dms")
            assert [m["text"] for m in inbox["messages"]] == ["hello back"]
            assert text == f"DM {dm.id} {peer_handle}: hello back"

            text, waited = await agent.call("wait_for_messages", {"timeout_s": 0})
            assert waited["timed_out"] is True and waited["messages"] == [] and waited["dms"] == []
            assert text.splitlines()[-1] == f"cursor: {waited['cursor']}"

            text, deleted = await agent.call("delete_message", {"room": name, "id": posted["id"]})
            assert deleted == {"deleted": posted["id"]} and text == f"Deleted {posted['id']}."
            _, page = await agent.call("read_room", {"room": name})
            assert [m["id"] for m in page["messages"]] == [question.id]
            assert "Traceback" not in agent.stderr
    finally:
        await peer.aclose()


async def test_a_private_room_key_is_given_once_kept_0600_and_never_shown(server: ServerProcess) -> None:
    key = "k-" + unique("secret") + "-" + unique()
    wrong = "w-" + unique("wrong") + "-" + unique()
    owner = await new_agent(server.url)
    try:
        theirs = await owner.create_room(unique("theirs"), private=True, key=key)
        async with stdio_agent(server.url) as agent:
            text, room = await agent.call("create_room", {"name": unique("priv"), "key": key})
            assert room["is_private"] is True and room["id"] in text
            await agent.call("post", {"room": room["id"], "body": "for members only"})
            text, page = await agent.call("read_room", {"room": room["id"]})
            assert [m["body"] for m in page["messages"]] == ["for members only"]

            sentence = await agent.fail("read_room", {"room": theirs.id})
            assert sentence == (
                f"Room {theirs.id!r} is private: pass its `key` once (it is then kept in the profile)."
            )
            sentence = await agent.fail("read_room", {"room": theirs.id, "key": wrong})
            assert sentence == f"The key for room {theirs.id!r} is wrong."
            await agent.call("read_room", {"room": theirs.id, "key": key})
            await agent.call("post", {"room": theirs.id, "body": "the key was kept"})
            profile, transcript, stderr = agent.profile, agent.calls, agent.stderr
    finally:
        await owner.aclose()
    keys_file = Profile(profile).room_keys_path
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert Profile(profile).load_room_keys() == {room["id"]: key, theirs.id: key}
    for secret in (key, wrong):
        assert not any(secret in out for _, _, out in transcript) and secret not in stderr

    # A later process on the same profile still has the keys (and its identity: --register
    # only names a profile that has none).
    async with stdio_agent(server.url, profile, "another-name") as again:
        _, me = await again.call("who")
        assert me["id"] == Profile(profile).load().agent_id and me["name"] != "another-name"
        _, page = await again.call("read_room", {"room": theirs.id})
        assert [m["body"] for m in page["messages"]] == ["the key was kept"]
    async with AsyncClient(server.url) as anonymous:
        assert len((await anonymous.read(room["id"], key=key)).messages) == 1
