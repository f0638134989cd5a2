"""Who a connection is: the development login, Connect refused with UNAUTHENTICATED
without a valid bearer token (before any frame), the user name taken from the token
alone, and `--login off` trusting tokens that an outside identity provider signs in
the documented format (made here with nothing but Python's hmac, base64 and json)."""

import base64
import hashlib
import hmac
import json
import time

import grpc
import pytest

from hub_client import ConnectionClosed
from support import run, unique

SECRET = "a secret shared with the identity provider, 32+ bytes"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, user: str, expires_at: int) -> str:
    """A token as docs/clients.md and examples/src/auth.rs describe it."""
    signed = "v1." + b64(json.dumps({"sub": user, "exp": expires_at}).encode())
    return signed + "." + b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


async def refused(generated, server, **kw) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as err:
        await generated.connect(server, **kw)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED, err.value
    return err.value


def test_login_issues_a_token_and_refuses_bad_names(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        reply = await generated.login(server, "alice")
        assert reply.user == "alice" and reply.token.startswith("v1.")
        assert time.time() < reply.expires_at <= time.time() + 3600 + 5
        for bad in ["", "two words", "x" * 65, "tab\there"]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await generated.login(server, bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad

    run(scenario())


def test_connect_without_a_valid_token_is_unauthenticated(generated, chat_servers):
    server, other = chat_servers(), chat_servers()

    async def scenario():
        good = (await generated.login(server, "alice")).token
        assert "credentials" in (await refused(generated, server)).reason
        await refused(generated, server, token="not-a-token")
        # alice's signature on a payload that names someone else.
        payload, signature = good[3:].split(".")
        forged_payload = b64(json.dumps({"sub": "mallory", "exp": int(time.time()) + 60}).encode())
        await refused(generated, server, token=f"v1.{forged_payload}.{signature}")
        await refused(generated, server, token=mint("a guess at the secret, thirty-two+", "alice",
                                                     int(time.time()) + 60))
        # A token from another chat-server (its own random secret) is no good here.
        await refused(generated, server, token=(await generated.login(other, "alice")).token)
        # The real one works.
        c = await generated.connect(server, token=good)
        try:
            reply = await c.join(unique("room"))
            assert list(reply.members) == ["alice"]
        finally:
            await c.close()

    run(scenario())


def test_the_user_comes_from_the_token_not_the_join_call(generated, chat_servers):
    server = chat_servers()
    room = unique("room")

    async def scenario():
        alice = await generated.connect(server, "alice")
        mallory = await generated.connect(server, "mallory")
        try:
            await alice.join(room)
            # An old client's JoinRequest with `user = 2` ("alice"): the field is reserved
            # and ignored; mallory is still mallory.
            old_join = generated.pb.JoinRequest.FromString(
                generated.pb.JoinRequest(room=room).SerializeToString() + b"\x12\x05alice")
            reply = await mallory.hub.call("join", old_join)
            assert list(reply.members) == ["alice", "mallory"]
            await alice.expect("on_join", room=room, user="mallory")
            await mallory.say("it is me, alice")
            await alice.expect("on_message", room=room, from_="mallory", text="it is me, alice")
        finally:
            await alice.close()
            await mallory.close()

    run(scenario())


def test_login_off_trusts_tokens_signed_with_the_configured_secret(generated, chat_servers):
    server = chat_servers("memory", "--login", "off", "--token-secret", SECRET)

    async def scenario():
        # No development login on this server.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await generated.login(server, "alice")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # A token the identity provider signed.
        c = await generated.connect(server, token=mint(SECRET, "idp-user", int(time.time()) + 60))
        try:
            reply = await c.join(unique("room"))
            assert list(reply.members) == ["idp-user"]
        finally:
            await c.close()
        await refused(generated, server, token=mint(SECRET, "idp-user", int(time.time()) - 1))
        await refused(generated, server, token=mint(SECRET[::-1], "idp-user", int(time.time()) + 60))

    run(scenario())
