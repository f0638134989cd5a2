"""Asks from Python (stock grpc_tools.protoc classes): a Python client answers the
server's ready check (with `control.answer` and the request's `answer` case), fails
one, and asks the room itself while a Rust `chat-client` answers; across two
servers on each backplane."""

import asyncio

import pytest

from hub_client import HubError
from support import rust_client, run, unique

READY, NOT_READY, FAILED, TIMED_OUT = 1, 2, 3, 4


def states(report):
    return sorted((m.user, m.state) for m in report.members)


def test_a_python_client_answers_a_ready_check_with_ordinary_frames(generated, chat_servers, groups):
    a = chat_servers(groups)
    b = chat_servers(groups) if groups != "memory" else a  # memory groups live in one server
    room = unique("room")
    pb = generated.pb

    async def scenario():
        ann, bob, cat = [await generated.connect(s, n) for s, n in ((a, "ann"), (b, "bob"), (b, "cat"))]
        try:
            asked = []

            async def ready(check):
                asked.append((check.room, getattr(check, "from")))
                # Answering may call the hub meanwhile.
                members = await bob.hub.call("members")
                return pb.ReadyAnswer(ready=members.count == 3)

            def refuse(check):
                raise HubError(9, "not now")

            ann.hub.answer("ready_check", lambda check: pb.ReadyAnswer(ready=False))
            bob.hub.answer("ready_check", ready)
            cat.hub.answer("ready_check", refuse)
            for c in (ann, bob, cat):
                await c.join(room)
            report = await ann.hub.call("check_ready", pb.CheckReadyRequest(timeout_ms=5000))
            assert states(report) == [("ann", NOT_READY), ("bob", READY), ("cat", FAILED)], report
            assert asked == [(room, "ann")]
            cat_detail = [m.detail for m in report.members if m.user == "cat"][0]
            assert "not now" in cat_detail
        finally:
            for c in (ann, bob, cat):
                await c.close()

    run(scenario())


def test_a_rust_chat_client_answers_a_python_ready_check(generated, chat_servers):
    server = chat_servers("memory")
    room = unique("room")
    pb = generated.pb

    async def scenario():
        py = await generated.connect(server, "py")
        try:
            py.hub.answer("ready_check", lambda check: pb.ReadyAnswer(ready=True))
            await py.join(room)
            yes = asyncio.ensure_future(rust_client(server.addr, "rusty", room, "--answer", "no", "--listen", "10",
                                                    "--wait-for", "1"))
            await py.expect("on_join", room=room, user="rusty")
            report = await py.hub.call("check_ready", pb.CheckReadyRequest(timeout_ms=5000))
            assert states(report) == [("py", READY), ("rusty", NOT_READY)], report
            # The Rust client printed the ask and leaves after one more push.
            await py.say("bye")
            lines = await yes
            assert any(line.get("ask") == "ready_check" and line.get("from") == "py" for line in lines), lines
        finally:
            await py.close()

    run(scenario())


def test_a_client_that_never_answers_times_out(generated, chat_servers):
    server = chat_servers("memory")
    room = unique("room")
    pb = generated.pb

    async def scenario():
        ann, bob = await generated.connect(server, "ann"), await generated.connect(server, "bob")
        try:
            ann.hub.answer("ready_check", lambda check: pb.ReadyAnswer(ready=True))
            never = asyncio.get_running_loop().create_future()
            bob.hub.answer("ready_check", lambda check: never)
            await ann.join(room)
            await bob.join(room)
            report = await ann.hub.call("check_ready", pb.CheckReadyRequest(timeout_ms=300))
            assert states(report) == [("ann", READY), ("bob", TIMED_OUT)], report
        finally:
            await ann.close()
            await bob.close()

    run(scenario())


def test_rust_chat_clients_answer_late_or_never_and_run_a_ready_check(generated, chat_servers, groups):
    a = chat_servers(groups)
    b = chat_servers(groups) if groups != "memory" else a
    room = unique("room")
    pb = generated.pb

    async def scenario():
        py = await generated.connect(a, "py")
        try:
            py.hub.answer("ready_check", lambda check: pb.ReadyAnswer(ready=True))
            await py.join(room)
            late = asyncio.ensure_future(rust_client(b.addr, "late", room, "--answer", "late", "--late-ms", "300",
                                                     "--listen", "20", "--wait-for", "4"))
            await py.expect("on_join", room=room, user="late")
            never = asyncio.ensure_future(rust_client(b.addr, "never", room, "--answer", "never",
                                                      "--listen", "20", "--wait-for", "3"))
            await py.expect("on_join", room=room, user="never")
            report = await py.hub.call("check_ready", pb.CheckReadyRequest(timeout_ms=2000))
            assert states(report) == [("late", READY), ("never", TIMED_OUT), ("py", READY)], report
            # A Rust client running the ready check itself prints each member's state.
            lines = await rust_client(a.addr, "asker", room, "--answer", "no", "--ready-check", "2000")
            got = sorted((line["ready"], line["state"]) for line in lines if "ready" in line)
            assert got == [("asker", "not_ready"), ("late", "ready"), ("never", "timed_out"), ("py", "ready")], lines
            # Each leaves after the pushes it expects (joins and leaves after its own,
            # and this message).
            await py.say("bye")
            await late
            await never
        finally:
            await py.close()

    run(scenario())
