"""The chat hub from Python, on one chat-server, with each group provider
(memory, and a private Redis and NATS): join, say, whisper, leave, and a Rust
typed client (`chat-client --json`) in the same room as Python clients."""

import asyncio

import grpc
import pytest

from hub_client import HubError
from support import rust_client, run, unique


def test_hello_is_the_first_frame_and_describes_the_connection(generated, chat_servers):
    server = chat_servers("memory", "--heartbeat-interval", "7", "--heartbeat-timeout", "21")

    async def scenario():
        a = await generated.connect(server, "a")
        b = await generated.connect(server, "b")
        try:
            for c in (a, b):
                assert c.hub.info.hub == "chat.v1.ChatHub"
                assert c.hub.info.connection_id.startswith(c.hub.info.server_id)
                assert (c.hub.info.heartbeat_interval_ms, c.hub.info.heartbeat_timeout_ms) == (7000, 21000)
                assert c.hub.info.max_message_bytes == 1024 * 1024
            assert a.hub.info.connection_id != b.hub.info.connection_id
            assert a.hub.info.server_id == b.hub.info.server_id
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_join_replies_with_the_members_and_tells_the_others(generated, chat_servers, groups):
    server = chat_servers(groups)
    room = unique("room")

    async def scenario():
        alice, bob = await generated.connect(server, "alice"), await generated.connect(server, "bob")
        try:
            reply = await alice.join(room)
            assert (reply.room, list(reply.members), reply.count) == (room, ["alice"], 1)
            reply = await bob.join(room)
            assert (reply.room, list(reply.members), reply.count) == (room, ["alice", "bob"], 2)
            push = await alice.expect("on_join", room=room, user="bob")
            assert push.seq == 1
            # Joining the same room again changes nothing.
            reply = await bob.join(room)
            assert list(reply.members) == ["alice", "bob"]
            reply = await alice.hub.call("members")
            assert (list(reply.members), reply.count) == (["alice", "bob"], 2)
            # bob was told nothing about himself: his first push is alice's message.
            await alice.say("hi bob")
            await bob.expect("on_message", room=room, from_="alice", text="hi bob")
        finally:
            await alice.close()
            await bob.close()

    run(scenario())


def test_say_reaches_every_other_member_with_push_sequence_numbers(generated, chat_servers, groups):
    server = chat_servers(groups)
    room = unique("room")

    async def scenario():
        alice, bob, carol = [await generated.connect(server, name) for name in ("alice", "bob", "carol")]
        try:
            await alice.join(room)
            await bob.join(room)
            await carol.join(room)
            await alice.expect("on_join", user="bob")
            await alice.expect("on_join", user="carol")
            await bob.expect("on_join", user="carol")
            assert await alice.say("one") is not None  # the reply: google.protobuf.Empty
            await alice.say("two")
            for c in (bob, carol):
                await c.expect("on_message", room=room, from_="alice", text="one")
                await c.expect("on_message", room=room, from_="alice", text="two")
            # The sender does not hear itself: alice's next push is bob's line.
            await bob.say("three")
            last = await alice.expect("on_message", from_="bob", text="three")
            # Pushes are numbered per connection 1, 2, 3...: alice had two on_join first.
            assert last.seq == 3
        finally:
            for c in (alice, bob, carol):
                await c.close()

    run(scenario())


def test_whisper_reaches_only_that_users_connections(generated, chat_servers, groups):
    server = chat_servers(groups)
    room, other_room = unique("room"), unique("elsewhere")
    bob = unique("bob")

    async def scenario():
        alice, bob1, bob2, carol = [await generated.connect(server, name) for name in ("alice", bob, bob, "carol")]
        try:
            await alice.join(room)
            await bob1.join(room)
            await bob2.join(other_room)  # the same user on a second connection, elsewhere
            await carol.join(room)
            await alice.expect("on_join", user=bob)
            await alice.expect("on_join", user="carol")
            await bob1.expect("on_join", user="carol")
            await alice.whisper(bob, "psst")
            for c in (bob1, bob2):
                await c.expect("on_whisper", room=room, from_="alice", text="psst")
            # carol and alice got no whisper: their next push is the line said after it.
            await bob1.say("who whispered?")
            await carol.expect("on_message", from_=bob, text="who whispered?")
            await alice.expect("on_message", from_=bob, text="who whispered?")
            with pytest.raises(HubError) as err:
                await alice.whisper(unique("nobody"), "hello?")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert "no user named" in err.value.message
        finally:
            for c in (alice, bob1, bob2, carol):
                await c.close()

    run(scenario())


def test_leave_tells_the_room_and_ends_membership(generated, chat_servers, groups):
    server = chat_servers(groups)
    room, elsewhere = unique("room"), unique("elsewhere")
    bob_name = unique("bob")  # whispered to below: no other test's "bob" may answer

    async def scenario():
        alice, bob = await generated.connect(server, "alice"), await generated.connect(server, bob_name)
        try:
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", user=bob_name)
            await bob.hub.call("leave")
            await alice.expect("on_leave", room=room, user=bob_name)
            reply = await alice.hub.call("members")
            assert (list(reply.members), reply.count) == (["alice"], 1)
            for call in ("members", "leave"):
                with pytest.raises(HubError) as err:
                    await bob.hub.call(call)
                assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            await alice.say("bob is gone")
            # bob hears nothing from the room any more: his next push is his own whisper.
            await bob.join(elsewhere)
            await bob.whisper(bob_name, "note to self")
            await bob.expect("on_whisper", room=elsewhere, from_=bob_name, text="note to self")
        finally:
            await alice.close()
            await bob.close()

    run(scenario())


def test_disconnect_tells_the_room(generated, chat_servers, groups):
    server = chat_servers(groups)
    room = unique("room")

    async def scenario():
        alice, bob = await generated.connect(server, "alice"), await generated.connect(server, "bob")
        try:
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", user="bob")
            await bob.close()
            await alice.expect("on_leave", room=room, user="bob")
            reply = await alice.hub.call("members")
            assert list(reply.members) == ["alice"]
        finally:
            await alice.close()

    run(scenario())


def test_rust_and_python_clients_talk_both_ways(generated, chat_servers, groups):
    server = chat_servers(groups)
    room = unique("room")

    async def scenario():
        py = await generated.connect(server, "py")
        try:
            await py.join(room)
            # Python -> Rust: a Rust client listens until it gets one push.
            listener = asyncio.create_task(rust_client(server.addr, "rusty", room, "--wait-for", "1",
                                                       "--listen", "60"))
            await py.expect("on_join", room=room, user="rusty")
            await py.say("hello from python")
            lines = await listener
            assert lines[0] == {"logged_in": "rusty", "expires_at": lines[0]["expires_at"]}
            assert lines[1].keys() == {"connected"}
            joined = {"reply": "joined", "room": room, "members": ["py", "rusty"], "count": 2}
            heard = {"push": "on_message", "room": room, "from": "py", "text": "hello from python"}
            # The push may beat the reply to join: the server lists the members after joining.
            assert lines[2:] in ([joined, heard], [heard, joined]), lines
            await py.expect("on_leave", room=room, user="rusty")
            # Rust -> Python: say, whisper, leave (by exiting).
            lines = await rust_client(server.addr, "ferris", room, "--say", "hello from rust",
                                      "--whisper", "py:psst, python", "--members", "--listen", "0")
            assert {"said": "hello from rust"} in lines
            assert {"whispered": "py", "text": "psst, python"} in lines
            assert {"reply": "members", "room": room, "members": ["ferris", "py"], "count": 2} in lines
            await py.expect("on_join", room=room, user="ferris")
            await py.expect("on_message", room=room, from_="ferris", text="hello from rust")
            await py.expect("on_whisper", room=room, from_="ferris", text="psst, python")
            await py.expect("on_leave", room=room, user="ferris")
        finally:
            await py.close()

    run(scenario())
