"""A room spread over two chat-server processes that share a backplane (a private
Redis or NATS): members, say, whisper and leave cross from one server to the
other, for Python and Rust clients. With in-memory groups they must not."""

import grpc
import pytest

from hub_client import HubError

from support import rust_client, run, unique

SECRET = "the python tests' shared token secret, 32+ bytes"


@pytest.mark.parametrize("backplane", ["redis", "nats"])
def test_a_room_spans_two_servers(generated, chat_servers, request, backplane):
    url = request.getfixturevalue(f"{backplane}_url")
    # Servers behind one load balancer share the token secret: a token from either
    # server's login is good on both.
    a, b = chat_servers(url, "--token-secret", SECRET), chat_servers(url, "--token-secret", SECRET)
    room, bob_name = unique("room"), unique("bob")

    async def scenario():
        alice = await generated.connect(a, "alice")
        bob = await generated.connect(b, bob_name, login_at=a)
        try:
            assert alice.hub.info.server_id != bob.hub.info.server_id
            await alice.join(room)
            reply = await bob.join(room)
            assert (list(reply.members), reply.count) == (["alice", bob_name], 2)
            await alice.expect("on_join", room=room, user=bob_name)
            await alice.say("from server a")
            await bob.expect("on_message", room=room, from_="alice", text="from server a")
            await bob.say("from server b")
            await alice.expect("on_message", room=room, from_=bob_name, text="from server b")
            await alice.whisper(bob_name, "psst across")
            await bob.expect("on_whisper", room=room, from_="alice", text="psst across")
            # A Rust typed client on server b reaches alice on server a.
            lines = await rust_client(b.addr, "ferris", room, "--say", "rust on b", "--listen", "0")
            assert {"reply": "joined", "room": room, "members": ["alice", bob_name, "ferris"], "count": 3} in lines
            await alice.expect("on_join", room=room, user="ferris")
            await alice.expect("on_message", room=room, from_="ferris", text="rust on b")
            await alice.expect("on_leave", room=room, user="ferris")
            await bob.hub.call("leave")
            await alice.expect("on_leave", room=room, user=bob_name)
            reply = await alice.hub.call("members")
            assert (list(reply.members), reply.count) == (["alice"], 1)
        finally:
            await alice.close()
            await bob.close()

    run(scenario())


def test_memory_groups_do_not_cross_servers(generated, chat_servers):
    """The control for the test above: without a backplane, the same steps stay on one server."""
    a, b = chat_servers("memory"), chat_servers("memory")
    room = unique("room")

    async def scenario():
        alice = await generated.connect(a, "alice")
        bob = await generated.connect(b, "bob")
        try:
            await alice.join(room)
            reply = await bob.join(room)
            assert list(reply.members) == ["bob"]
            await alice.say("anyone on b?")
            with pytest.raises(HubError) as err:
                await alice.whisper("bob", "psst")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            # bob heard nothing from server a: his first push is his own whisper.
            await bob.whisper("bob", "only me")
            await bob.expect("on_whisper", from_="bob", text="only me")
        finally:
            await alice.close()
            await bob.close()

    run(scenario())
