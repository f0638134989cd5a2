"""Error frames for bad calls and bad frames: each names the failed call's id and a
status code a client can act on, and the connection goes on working after it."""

import asyncio

import grpc
import pytest

from hub_client import ConnectionClosed, HubClient, HubError
from support import free_port, run, unique

# A request field no version of chat.v1.ChatRequest has: field 50, length-delimited (key
# 50 << 3 | 2 = 402, varint 0x92 0x03), empty (length 0).
UNKNOWN_CALL_FIELD = b"\x92\x03\x00"


async def expect_error(call, code: grpc.StatusCode, *words: str) -> HubError:
    with pytest.raises(HubError) as err:
        await call
    assert err.value.code == code, err.value
    for word in words:
        assert word in err.value.message, err.value
    return err.value


def test_calls_before_join_fail_with_failed_precondition(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        c = await generated.connect(server, "late")
        try:
            pb = generated.pb
            calls = [("say", pb.SayRequest(text="hi")), ("whisper", pb.WhisperRequest(user="x", text="y")),
                     ("members", None), ("leave", None)]
            for name, message in calls:
                err = await expect_error(c.hub.call(name, message), grpc.StatusCode.FAILED_PRECONDITION,
                                         "join first")
                assert err.call_id > 0
            # A fire-and-forget call (id 0) that fails is not silent: an error frame with id 0.
            c.hub.send("say", pb.SayRequest(text="anyone?"))
            reply = await c.join(unique("room"))  # calls run in order: the error came first
            assert list(reply.members) == ["late"]
            assert [(e.code, e.call_id) for e in c.hub.errors] == [(grpc.StatusCode.FAILED_PRECONDITION, 0)]
        finally:
            await c.close()

    run(scenario())


@pytest.mark.parametrize("room", ["", "has space", "x" * 129, "tab\there"])
def test_bad_room_names_fail_with_invalid_argument(generated, chat_servers, room):
    server = chat_servers()

    async def scenario():
        c = await generated.connect(server, "alice")
        try:
            await expect_error(c.join(room), grpc.StatusCode.INVALID_ARGUMENT)
            # Nothing changed, and the connection still works.
            await expect_error(c.hub.call("members"), grpc.StatusCode.FAILED_PRECONDITION)
            reply = await c.join("lobby")
            assert list(reply.members) == ["alice"]
        finally:
            await c.close()

    run(scenario())


def test_frames_without_a_known_call_get_error_frames(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        c = await generated.connect(server, "still-here")
        errors = asyncio.Queue()
        c.hub.on("error", errors.put_nowait)
        try:
            pb = generated.pb
            # A frame with an id and no call: the answer to that id is an error.
            err = await expect_error(c.hub.call_frame(pb.ChatRequest()), grpc.StatusCode.INVALID_ARGUMENT,
                                     "no call")
            assert err.call_id > 0
            # A call case this proto does not have (as from a newer client): UNIMPLEMENTED.
            newer = pb.ChatRequest.FromString(UNKNOWN_CALL_FIELD)
            assert newer.SerializeToString().endswith(UNKNOWN_CALL_FIELD)  # kept as an unknown field
            await expect_error(c.hub.call_frame(newer), grpc.StatusCode.UNIMPLEMENTED, "unknown call (field 50)", "chat.v1.ChatHub")
            # An empty frame (no id, no call, no control): an error frame with id 0.
            c.hub.send_frame(pb.ChatRequest())
            err = await asyncio.wait_for(errors.get(), 15)
            assert (err.code, err.call_id) == (grpc.StatusCode.INVALID_ARGUMENT, 0)
            assert "no call" in err.message
            reply = await c.join(unique("room"))
            assert reply.count == 1
        finally:
            await c.close()

    run(scenario())


def test_malformed_bytes_get_an_error_frame_and_the_connection_survives(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        channel = grpc.aio.insecure_channel(server.addr)
        # The generated stub would refuse to send garbage: a raw method with a pass-through serializer.
        connect = channel.stream_stream(
            "/chat.v1.ChatHub/Connect",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=generated.pb.ChatResponse.FromString)
        token = (await generated.login(server, "ok")).token
        hub = await HubClient.connect(connect, generated.pb.ChatRequest,
                                      metadata=[("authorization", f"Bearer {token}")])
        errors = asyncio.Queue()
        hub.on("error", errors.put_nowait)
        try:
            hub.send_frame(b"\x0a\xff\xff")  # field 1 as length-delimited, with a truncated length
            err = await asyncio.wait_for(errors.get(), 15)
            assert (err.code, err.call_id) == (grpc.StatusCode.INVALID_ARGUMENT, 0)
            assert "malformed frame" in err.message
            reply = await hub.call("join", generated.pb.JoinRequest(room=unique("room")))
            assert list(reply.members) == ["ok"]
        finally:
            await hub.close()
            await channel.close()

    run(scenario())


def test_a_frame_over_the_size_limit_closes_the_connection_with_a_goodbye(generated, chat_servers):
    server = chat_servers("memory", "--max-message-bytes", "1024")

    async def scenario():
        c = await generated.connect(server, "big")
        try:
            assert c.hub.info.max_message_bytes == 1024
            await c.join(unique("room"))
            c.hub.send("say", generated.pb.SayRequest(text="x" * 4096))
            code, reason = await c.hub.closed(timeout=15)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, reason)
            assert "too large" in reason
            assert c.hub.goodbye is not None and c.hub.goodbye.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        finally:
            await c.close()

    run(scenario())


def test_an_unknown_method_is_unimplemented(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        async with grpc.aio.insecure_channel(server.addr) as channel:
            method = channel.unary_unary("/chat.v1.ChatHub/Join", request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(b"", timeout=15)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "one method, Connect" in err.value.details()

    run(scenario())


def test_connecting_to_no_server_raises_connection_closed(generated):
    async def scenario():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
            with pytest.raises(ConnectionClosed) as err:
                await HubClient.connect(generated.grpc.ChatHubStub(channel).Connect, generated.pb.ChatRequest,
                                        timeout=30)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE

    run(scenario())
