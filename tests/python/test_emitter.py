"""A process in another language pushes to chat members from outside the hub: stock
redis-py and nats-py clients publish `hub.v1.Envelope`s, built with the protobuf
classes stock `grpc_tools.protoc` generates, on the channels and subjects the README
names ("Pushing from outside the hub"), to members of a real chat-server process on
a private Redis or NATS; Python gRPC clients receive the pushes, and a disconnect
command ends a stream with its reason."""

import uuid

import grpc
import nats
import pytest
import redis.asyncio as aioredis
from hub_client import HubError

from support import WAIT, run, unique

HUB = "chat.v1.ChatHub"
PREFIX = "hub"  # chat-server's (the providers' default)


def group_token(group: str) -> str:
    """A group name as one NATS subject token: ASCII letters, digits, '-' and '_' stay,
    every other byte is %XX (uppercase hex)."""
    keep = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in group.encode())


class RedisPublisher:
    """PUBLISH on `{prefix}:{hub}:g:{group}` and `{prefix}:{hub}:node:{server id}`."""

    def __init__(self, url: str):
        self.client = aioredis.from_url(url)

    async def to_group(self, group: str, data: bytes) -> None:
        receivers = await self.client.publish(f"{PREFIX}:{HUB}:g:{group}", data)
        assert receivers >= 1, f"no server subscribed to {group}"

    async def to_server(self, server_id: str, data: bytes) -> None:
        receivers = await self.client.publish(f"{PREFIX}:{HUB}:node:{server_id}", data)
        assert receivers == 1

    async def close(self) -> None:
        await self.client.aclose()


class NatsPublisher:
    """Publish on `{prefix}.{hub}.g.{group token}` and `{prefix}.{hub}.n.{server id}`."""

    @classmethod
    async def connect(cls, url: str) -> "NatsPublisher":
        self = cls()
        self.client = await nats.connect(url, connect_timeout=WAIT, allow_reconnect=False)
        return self

    async def to_group(self, group: str, data: bytes) -> None:
        await self.client.publish(f"{PREFIX}.{HUB}.g.{group_token(group)}", data)
        await self.client.flush(timeout=WAIT)

    async def to_server(self, server_id: str, data: bytes) -> None:
        await self.client.publish(f"{PREFIX}.{HUB}.n.{server_id}", data)
        await self.client.flush(timeout=WAIT)

    async def close(self) -> None:
        await self.client.close()


class Emitter:
    """Envelopes as any process writes them: version 1, an origin of its own."""

    def __init__(self, generated, publisher):
        self.pb, self.hub, self.publisher = generated.pb, generated.hub, publisher
        self.origin = f"emitter/python-test/{uuid.uuid4().hex[:16]}"

    def envelope(self, group="", target=None, frame=b"", command=None) -> bytes:
        env = self.hub.Envelope(version=1, origin=self.origin, group=group, frame=frame)
        if target is not None:
            env.target.CopyFrom(target)
        if command is not None:
            env.command.CopyFrom(command)
        return env.SerializeToString()

    def all(self):
        return self.hub.TargetSpec(all=self.hub.All())

    def except_(self, *ids):
        return self.hub.TargetSpec(**{"except": self.hub.Connections(ids=list(ids))})

    def only(self, *ids):
        return self.hub.TargetSpec(only=self.hub.Connections(ids=list(ids)))

    def push(self, case: str, message) -> bytes:
        """One push frame of the hub: a `ChatResponse` with id 0 and one `on_*` case (no seq:
        each server adds its connection's)."""
        frame = self.pb.ChatResponse()
        getattr(frame, case).CopyFrom(message)
        return frame.SerializeToString()

    def message(self, room: str, text: str):
        return self.pb.ChatMessage(room=room, text=text, **{"from": "python"})


async def publisher(backplane: str, url: str):
    return RedisPublisher(url) if backplane == "redis" else await NatsPublisher.connect(url)


@pytest.mark.parametrize("backplane", ["redis", "nats"])
def test_a_python_process_pushes_to_chat_members(generated, chat_servers, request, backplane):
    url = request.getfixturevalue(f"{backplane}_url")
    server = chat_servers(url)
    room, alice_name, bob_name = unique("room"), unique("alice"), unique("bob")

    async def scenario():
        pub = await publisher(backplane, url)
        em = Emitter(generated, pub)
        alice = await generated.connect(server, alice_name)
        bob = await generated.connect(server, bob_name)
        try:
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", room=room, user=bob_name)
            alice_id, bob_id = alice.hub.info.connection_id, bob.hub.info.connection_id

            # Every member of the room.
            frame = em.push("on_message", em.message(room, "hello from python"))
            await pub.to_group(room, em.envelope(room, em.all(), frame))
            for c in (alice, bob):
                await c.expect("on_message", room=room, from_="python", text="hello from python")

            # All but alice; then to all: alice's next push is the second (one sender,
            # one channel: in order), so she did not get the first.
            frame = em.push("on_message", em.message(room, "not for alice"))
            await pub.to_group(room, em.envelope(room, em.except_(alice_id), frame))
            frame = em.push("on_message", em.message(room, "for all"))
            await pub.to_group(room, em.envelope(room, em.all(), frame))
            await bob.expect("on_message", room=room, from_="python", text="not for alice")
            await bob.expect("on_message", room=room, from_="python", text="for all")
            await alice.expect("on_message", room=room, from_="python", text="for all")

            # A user: the group `$user/<id>`.
            frame = em.push("on_whisper", em.message("", "to alice the user"))
            await pub.to_group(f"$user/{alice_name}", em.envelope(f"$user/{alice_name}", em.all(), frame))
            await alice.expect("on_whisper", from_="python", text="to alice the user")

            # A connection: its server's own channel, no group, `only` its id.
            frame = em.push("on_whisper", em.message("", "to bob's connection"))
            await pub.to_server(bob.hub.info.server_id, em.envelope("", em.only(bob_id), frame))
            await bob.expect("on_whisper", from_="python", text="to bob's connection")

            # A command: disconnect the user bob with a reason.
            disconnect = generated.hub.Command(
                disconnect=generated.hub.Disconnect(code=grpc.StatusCode.PERMISSION_DENIED.value[0],
                                                    reason="kicked by python"))
            await pub.to_group(f"$user/{bob_name}", em.envelope(f"$user/{bob_name}", em.all(), command=disconnect))
            code, reason = await bob.hub.closed(WAIT)
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "kicked by python")
            # The room is told, as after any disconnect; alice stays.
            await alice.expect("on_leave", room=room, user=bob_name)
            reply = await alice.hub.call("members")
            assert list(reply.members) == [alice_name]
        finally:
            await alice.close()
            await bob.close()
            await pub.close()

    run(scenario())


@pytest.mark.parametrize("backplane", ["redis", "nats"])
def test_a_python_process_removes_a_user_from_a_room(generated, chat_servers, request, backplane):
    url = request.getfixturevalue(f"{backplane}_url")
    server = chat_servers(url)
    room, alice_name, bob_name = unique("room"), unique("alice"), unique("bob")

    async def scenario():
        pub = await publisher(backplane, url)
        em = Emitter(generated, pub)
        alice = await generated.connect(server, alice_name)
        bob = await generated.connect(server, bob_name)
        try:
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", room=room, user=bob_name)
            leave = generated.hub.Command(leave=generated.hub.Leave(user=bob_name))
            await pub.to_group(room, em.envelope(room, em.all(), command=leave))
            # The server runs the leave path and the hub's hook: the room hears on_leave.
            await alice.expect("on_leave", room=room, user=bob_name)
            reply = await alice.hub.call("members")
            assert list(reply.members) == [alice_name]
            # Still connected, in no room.
            with pytest.raises(HubError) as err:
                await bob.say("still here?")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            frame = em.push("on_message", em.message(room, "after"))
            await pub.to_group(room, em.envelope(room, em.all(), frame))
            await alice.expect("on_message", room=room, from_="python", text="after")
            # The server handled that envelope (alice got it) before alice's whisper,
            # a local push: bob's next push is the whisper, so the room push missed him.
            await alice.whisper(bob_name, "psst")
            await bob.expect("on_whisper", from_=alice_name, text="psst")
        finally:
            await alice.close()
            await bob.close()
            await pub.close()

    run(scenario())
