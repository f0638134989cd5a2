"""Heartbeats and the end of a connection: server pings answered by the Python
helper keep it open, silence closes it with a goodbye, client pings get pongs,
and a server shutting down says goodbye."""

import asyncio
import signal

import grpc
import pytest

from hub_client import ConnectionClosed
from support import run, unique

FAST = ("--heartbeat-interval", "1", "--heartbeat-timeout", "3")


def test_answered_pings_keep_the_connection_open(generated, chat_servers):
    server = chat_servers("memory", *FAST)

    async def scenario():
        c = await generated.connect(server, "patient")
        try:
            assert (c.hub.info.heartbeat_interval_ms, c.hub.info.heartbeat_timeout_ms) == (1000, 3000)
            await c.join(unique("room"))
            # Send nothing but pongs for well over the timeout.
            for _ in range(200):
                if c.hub.pings_answered >= 5:
                    break
                await asyncio.sleep(0.1)
            assert c.hub.pings_answered >= 5, f"only {c.hub.pings_answered} pings in 20s"
            # The server matched our pongs to its pings: it reports the round trip it measured.
            assert c.hub.last_server_ping.last_rtt_us > 0
            assert c.hub.close_code is None
            reply = await c.hub.call("members")
            assert list(reply.members) == ["patient"]
        finally:
            await c.close()

    run(scenario())


def test_a_silent_client_is_closed_after_the_heartbeat_timeout(generated, chat_servers):
    server = chat_servers("memory", *FAST)

    async def scenario():
        c = await generated.connect(server, "silent", auto_pong=False)
        try:
            code, reason = await c.hub.closed(timeout=30)
            assert code == grpc.StatusCode.UNAVAILABLE, (code, reason)
            assert "heartbeat timeout" in reason
            assert c.hub.goodbye is not None and "heartbeat timeout" in c.hub.goodbye.reason
            assert c.hub.last_server_ping is not None  # it was pinged, and did not answer
            with pytest.raises(ConnectionClosed):
                await c.hub.call("members")
        finally:
            await c.close()

    run(scenario())


def test_client_ping_gets_a_pong(generated, chat_servers):
    server = chat_servers("memory", "--heartbeat-interval", "0", "--heartbeat-timeout", "0")

    async def scenario():
        c = await generated.connect(server, "pinger")
        try:
            assert (c.hub.info.heartbeat_interval_ms, c.hub.info.heartbeat_timeout_ms) == (0, 0)
            rtts = [await c.hub.ping() for _ in range(3)]
            assert all(rtt >= 0 for rtt in rtts)
            assert c.hub.pings_answered == 0  # this server never pings
        finally:
            await c.close()

    run(scenario())


def test_server_shutdown_says_goodbye(generated, chat_servers):
    server = chat_servers()

    async def scenario():
        c = await generated.connect(server, "last")
        try:
            await c.join(unique("room"))
            server.signal(signal.SIGTERM)
            code, reason = await c.hub.closed(timeout=30)
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "server shutting down")
            assert c.hub.goodbye.reason == "server shutting down"
        finally:
            await c.close()
        assert await asyncio.to_thread(server.proc.wait, 30) == 0

    run(scenario())
