"""Sessions with a stock grpcio client: the hello carries a resume credential; after
the stream drops, a new `Connect` with `hub-resume` and `hub-resume-seq` metadata
resumes the same connection, and the pushes missed while it was down arrive once, in
order, with their original seq."""

import asyncio
from types import SimpleNamespace

from support import WAIT, run, unique

SESSIONS = ("--session-grace", "60")


class Relay:
    """A TCP relay to `target` whose connections `cut()` drops, as a network that fails
    does: the server sees its TCP connection end, with no clean end of the stream."""

    def __init__(self, target: str):
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.writers = []

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.addr = "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, down_r, down_w):
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        self.writers += [down_w, up_w]

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))

    def cut(self):
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    def close(self):
        self.cut()
        self.server.close()


def test_a_stock_client_resumes_with_the_metadata(generated, chat_servers):
    server = chat_servers("memory", *SESSIONS)
    room = unique("room")

    async def scenario():
        token = (await generated.login(server, "alice")).token
        relay = await Relay(server.addr).start()
        alice = await generated.connect(SimpleNamespace(addr=relay.addr), token=token)
        bob = await generated.connect(server, "bob")
        try:
            info = alice.hub.info
            assert info.resume_credential and info.session_grace_ms == 60000, info
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", room=room, user="bob")
            await bob.say("before")
            seen = await alice.expect("on_message", text="before")
            # The network fails under alice's stream.
            relay.cut()
            await bob.say("while away 1")
            await bob.say("while away 2")
            again = await generated.connect(server, token=token, metadata_extra=[
                ("hub-resume", info.resume_credential),
                ("hub-resume-seq", str(seen.seq)),
            ])
            try:
                r = again.hub.info
                assert r.resumption.outcome == generated.hub.RESUME_OUTCOME_RESUMED, r
                assert r.connection_id == info.connection_id
                await bob.say("live")
                got = [await again.expect("on_message", text=t)
                       for t in ("while away 1", "while away 2", "live")]
                assert [p.seq for p in got] == [seen.seq + 1, seen.seq + 2, seen.seq + 3]
                # Still in the room: bob hears alice.
                await again.say("back")
                while True:
                    p = await bob.next_push()
                    assert p.name != "on_leave", p
                    if p.name == "on_message" and p.message.text == "back":
                        break
                # A forged credential for the live session is refused, with the reason, on a
                # new connection.
                forged = await generated.connect(server, token=token, metadata_extra=[
                    ("hub-resume", info.connection_id + "." + "0" * 32),
                    ("hub-resume-seq", "0"),
                ])
                try:
                    f = forged.hub.info
                    assert f.resumption.outcome == generated.hub.RESUME_OUTCOME_UNKNOWN, f
                    assert f.connection_id != info.connection_id
                finally:
                    await forged.close()
            finally:
                await again.close()
        finally:
            await bob.close()
            relay.close()
            await alice.channel.close(grace=None)

    run(asyncio.wait_for(scenario(), 4 * WAIT))


def test_a_stock_client_resumes_on_another_server(generated, chat_servers, redis_url):
    """Two chat-servers over Redis: the same metadata, sent to the other server,
    restores the session there (RESTORED: the same connection id and room, seq going
    on after the last one seen); a push sent while no stream was attached is not
    recovered, and the hello says so."""
    flags = (*SESSIONS, "--token-secret", "the python tests' shared token secret, 32+ bytes")
    a, b = chat_servers(redis_url, *flags), chat_servers(redis_url, *flags)
    room = unique("room")

    async def scenario():
        token = (await generated.login(a, "alice")).token
        relay = await Relay(a.addr).start()
        alice = await generated.connect(SimpleNamespace(addr=relay.addr), token=token)
        bob = await generated.connect(b, "bob", login_at=a)
        try:
            info = alice.hub.info
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", room=room, user="bob")
            await bob.say("before")
            seen = await alice.expect("on_message", text="before")
            relay.cut()
            await bob.say("while away")
            again = await generated.connect(b, token=token, metadata_extra=[
                ("hub-resume", info.resume_credential),
                ("hub-resume-seq", str(seen.seq)),
            ])
            try:
                r = again.hub.info
                assert r.resumption.outcome == generated.hub.RESUME_OUTCOME_RESTORED, r
                assert "not recovered" in r.resumption.reason, r
                assert r.connection_id == info.connection_id
                assert r.server_id == bob.hub.info.server_id != info.server_id
                await bob.say("live")
                got = await again.expect("on_message")
                assert (got.message.text, got.seq) == ("live", seen.seq + 1)
                await again.say("back")
                while True:
                    p = await bob.next_push()
                    assert p.name != "on_leave", p
                    if p.name == "on_message" and p.message.text == "back":
                        break
                members = await bob.hub.call("members")
                assert (sorted(members.members), members.count) == (["alice", "bob"], 2)
            finally:
                await again.close()
        finally:
            await bob.close()
            relay.close()
            await alice.channel.close(grace=None)

    run(asyncio.wait_for(scenario(), 4 * WAIT))


def test_a_stock_client_gets_the_pushes_it_missed_on_another_server_with_history(
        generated, chat_servers, redis_url):
    """The same with group history (`--history`): each push of the room carries its
    position (`control.position`); presenting the last one (`hub-resume-positions-bin`,
    what `resume_metadata` builds) to the other server replays there what was said
    while no stream was attached, once each and in order, then the live pushes."""
    missed_on_another_server(
        generated, chat_servers, redis_url,
        push=lambda bob, text: bob.say(text), event="on_message",
        group=lambda room: room, min_offset=2)


def test_a_stock_client_gets_the_whispers_it_missed_on_another_server_with_history(
        generated, chat_servers, redis_url):
    """Pushes to a user go through its group `$user/<id>`: with `--history` each one
    carries that group's position too, and a resume on another server that presents it
    replays the whispers sent while no stream was attached, once each and in order."""
    missed_on_another_server(
        generated, chat_servers, redis_url,
        push=lambda bob, text: bob.whisper("alice", text), event="on_whisper",
        group=lambda room: "$user/alice", min_offset=1)


def missed_on_another_server(generated, chat_servers, redis_url, *, push, event, group,
                             min_offset):
    """Alice (through a relay to server A) and Bob (on B) in a room, with group history;
    Bob pushes `before` with `push(bob, text)`, alice reads it (`event`) with a position
    of `group(room)` at least `min_offset`; her relay is cut, Bob pushes two more, she
    resumes on B with her positions: `RESTORED`, the two replayed and a live one, with
    consecutive `seq`, and a later position of that group."""
    flags = (*SESSIONS, "--history", "100",
             "--token-secret", "the python tests' shared token secret, 32+ bytes")
    a, b = chat_servers(redis_url, *flags), chat_servers(redis_url, *flags)
    room = unique("room")
    own = group(room)

    async def scenario():
        token = (await generated.login(a, "alice")).token
        relay = await Relay(a.addr).start()
        alice = await generated.connect(SimpleNamespace(addr=relay.addr), token=token)
        bob = await generated.connect(b, "bob", login_at=a)
        try:
            info = alice.hub.info
            await alice.join(room)
            await bob.join(room)
            await alice.expect("on_join", room=room, user="bob")
            await push(bob, "before")
            seen = await alice.expect(event, text="before")
            position = alice.hub.positions[own]
            assert position.epoch and position.offset >= min_offset, position
            relay.cut()
            await push(bob, "while away 1")
            await push(bob, "while away 2")
            again = await generated.connect(
                b, token=token, metadata_extra=alice.hub.resume_metadata(generated.hub.ResumePositions))
            try:
                r = again.hub.info
                assert r.resumption.outcome == generated.hub.RESUME_OUTCOME_RESTORED, r
                assert "replayed" in r.resumption.reason, r
                assert r.connection_id == info.connection_id
                await push(bob, "live")
                got = [await again.expect(event, text=t)
                       for t in ("while away 1", "while away 2", "live")]
                assert [p.seq for p in got] == [seen.seq + 1, seen.seq + 2, seen.seq + 3]
                assert again.hub.positions[own].offset > position.offset
            finally:
                await again.close()
        finally:
            await bob.close()
            relay.close()
            await alice.channel.close(grace=None)

    run(asyncio.wait_for(scenario(), 4 * WAIT))
