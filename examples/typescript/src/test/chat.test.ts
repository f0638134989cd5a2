// The chat hub from TypeScript, on one chat-server, with each group provider
// (memory, and a private Redis and NATS): join, say, whisper, leave, and a Rust
// typed client (`chat-client --json`) in the same room as TypeScript clients.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isDeepStrictEqual } from "node:util";
import { status } from "@grpc/grpc-js";

import { HubCallError } from "../hub";
import { Backplanes, ChatServer, Client, closeAll, rustClient, unique } from "./support";

const backplanes = new Backplanes();
const T = { timeout: 120_000 };

test("hello is the first frame and describes the connection", T, async () => {
  const server = await ChatServer.start("memory", "--heartbeat-interval", "7", "--heartbeat-timeout", "21");
  const a = await Client.connect(server, "a");
  const b = await Client.connect(server, "b");
  try {
    for (const c of [a, b]) {
      assert.equal(c.hub.info.hub, "chat.v1.ChatHub");
      assert.ok(c.hub.info.connectionId.startsWith(c.hub.info.serverId));
      assert.deepEqual([c.hub.info.heartbeatIntervalMs, c.hub.info.heartbeatTimeoutMs], [7000, 21000]);
      assert.equal(c.hub.info.maxMessageBytes, 1024 * 1024);
    }
    assert.notEqual(a.hub.info.connectionId, b.hub.info.connectionId);
    assert.equal(a.hub.info.serverId, b.hub.info.serverId);
  } finally {
    await closeAll(a, b);
  }
});

for (const provider of Backplanes.names) {
  describe(`on ${provider} groups`, () => {
    test("join replies with the members and tells the others", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const room = unique("room");
      const alice = await Client.connect(server, "alice");
      const bob = await Client.connect(server, "bob");
      try {
        let reply = await alice.join(room);
        assert.deepEqual([reply.room, reply.members, reply.count], [room, ["alice"], 1]);
        reply = await bob.join(room);
        assert.deepEqual([reply.room, reply.members, reply.count], [room, ["alice", "bob"], 2]);
        const push = await alice.expect("onJoin", { room, user: "bob" });
        assert.equal(push.seq, 1);
        // Joining the same room again under the same name changes nothing.
        reply = await bob.join(room);
        assert.deepEqual(reply.members, ["alice", "bob"]);
        reply = await alice.members();
        assert.deepEqual([reply.members, reply.count], [["alice", "bob"], 2]);
        // bob was told nothing about himself: his first push is alice's message.
        await alice.say("hi bob");
        await bob.expect("onMessage", { room, from: "alice", text: "hi bob" });
      } finally {
        await closeAll(alice, bob);
      }
    });

    test("say reaches every other member, with push sequence numbers", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const room = unique("room");
      const [alice, bob, carol] = await Promise.all(["alice", "bob", "carol"].map((user) => Client.connect(server, user)));
      try {
        await alice.join(room);
        await bob.join(room);
        await carol.join(room);
        await alice.expect("onJoin", { user: "bob" });
        await alice.expect("onJoin", { user: "carol" });
        await bob.expect("onJoin", { user: "carol" });
        assert.deepEqual(await alice.say("one"), {}); // the reply: google.protobuf.Empty
        await alice.say("two");
        for (const c of [bob, carol]) {
          await c.expect("onMessage", { room, from: "alice", text: "one" });
          await c.expect("onMessage", { room, from: "alice", text: "two" });
        }
        // The sender does not hear itself: alice's next push is bob's line.
        await bob.say("three");
        const last = await alice.expect("onMessage", { from: "bob", text: "three" });
        // Pushes are numbered per connection 1, 2, 3...: alice had two onJoin first.
        assert.equal(last.seq, 3);
      } finally {
        await closeAll(alice, bob, carol);
      }
    });

    test("whisper reaches only that user's connections", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const [room, otherRoom, bobName] = [unique("room"), unique("elsewhere"), unique("bob")];
      const [alice, bob1, bob2, carol] = await Promise.all(["alice", bobName, bobName, "carol"].map((user) => Client.connect(server, user)));
      try {
        await alice.join(room);
        await bob1.join(room);
        await bob2.join(otherRoom); // the same user on a second connection, elsewhere
        await carol.join(room);
        await alice.expect("onJoin", { user: bobName });
        await alice.expect("onJoin", { user: "carol" });
        await bob1.expect("onJoin", { user: "carol" });
        await alice.whisper(bobName, "psst");
        for (const c of [bob1, bob2]) {
          await c.expect("onWhisper", { room, from: "alice", text: "psst" });
        }
        // carol and alice got no whisper: their next push is the line said after it.
        await bob1.say("who whispered?");
        await carol.expect("onMessage", { from: bobName, text: "who whispered?" });
        await alice.expect("onMessage", { from: bobName, text: "who whispered?" });
        await assert.rejects(alice.whisper(unique("nobody"), "hello?"), (e: unknown) => {
          assert.ok(e instanceof HubCallError);
          assert.equal(e.code, status.NOT_FOUND);
          assert.match(e.details, /no user named/);
          return true;
        });
      } finally {
        await closeAll(alice, bob1, bob2, carol);
      }
    });

    test("leave tells the room and ends membership", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const [room, elsewhere, bobName] = [unique("room"), unique("elsewhere"), unique("bob")];
      const alice = await Client.connect(server, "alice");
      const bob = await Client.connect(server, bobName);
      try {
        await alice.join(room);
        await bob.join(room);
        await alice.expect("onJoin", { user: bobName });
        await bob.hub.call("leave", {});
        await alice.expect("onLeave", { room, user: bobName });
        const reply = await alice.members();
        assert.deepEqual([reply.members, reply.count], [["alice"], 1]);
        for (const call of ["members", "leave"] as const) {
          await assert.rejects(bob.hub.call(call, {}), { name: "HubCallError", code: status.FAILED_PRECONDITION });
        }
        await alice.say("bob is gone");
        // bob hears nothing from the room any more: his next push is his own whisper.
        await bob.join(elsewhere);
        await bob.whisper(bobName, "note to self");
        await bob.expect("onWhisper", { room: elsewhere, from: bobName, text: "note to self" });
      } finally {
        await closeAll(alice, bob);
      }
    });

    test("a disconnect tells the room", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const room = unique("room");
      const alice = await Client.connect(server, "alice");
      const bob = await Client.connect(server, "bob");
      try {
        await alice.join(room);
        await bob.join(room);
        await alice.expect("onJoin", { user: "bob" });
        await bob.close();
        await alice.expect("onLeave", { room, user: "bob" });
        assert.deepEqual((await alice.members()).members, ["alice"]);
      } finally {
        await closeAll(alice, bob);
      }
    });

    test("Rust and TypeScript clients talk both ways", T, async () => {
      const server = await ChatServer.start(await backplanes.groups(provider));
      const room = unique("room");
      const ts = await Client.connect(server, "ts");
      try {
        await ts.join(room);
        // TypeScript -> Rust: a Rust client listens until it gets one push.
        const listener = rustClient(server.addr, "rusty", room, "--wait-for", "1", "--listen", "60");
        await ts.expect("onJoin", { room, user: "rusty" });
        await ts.say("hello from typescript");
        const lines = await listener;
        // chat-client logs in first (a line for it), then connects.
        const first = lines[0] as { expires_at?: unknown };
        assert.deepEqual(first, { logged_in: "rusty", expires_at: first.expires_at });
        assert.deepEqual(Object.keys(lines[1] as object), ["connected"]);
        const joined = { reply: "joined", room, members: ["rusty", "ts"], count: 2 };
        const heard = { push: "on_message", room, from: "ts", text: "hello from typescript" };
        // The push may beat the reply to join: the server lists the members after joining.
        const rest = lines.slice(2);
        assert.ok(isDeepStrictEqual(rest, [joined, heard]) || isDeepStrictEqual(rest, [heard, joined]), JSON.stringify(lines));
        await ts.expect("onLeave", { room, user: "rusty" });
        // Rust -> TypeScript: say, whisper, leave (by exiting).
        const out = await rustClient(server.addr, "ferris", room, "--say", "hello from rust",
          "--whisper", "ts:psst, typescript", "--members", "--listen", "0");
        assert.deepEqual(out.filter((l) => "said" in (l as object)), [{ said: "hello from rust" }]);
        assert.deepEqual(out.filter((l) => "whispered" in (l as object)), [{ whispered: "ts", text: "psst, typescript" }]);
        assert.deepEqual(
          out.filter((l) => (l as { reply?: string }).reply === "members"),
          [{ reply: "members", room, members: ["ferris", "ts"], count: 2 }],
        );
        await ts.expect("onJoin", { room, user: "ferris" });
        await ts.expect("onMessage", { room, from: "ferris", text: "hello from rust" });
        await ts.expect("onWhisper", { room, from: "ferris", text: "psst, typescript" });
        await ts.expect("onLeave", { room, user: "ferris" });
      } finally {
        await closeAll(ts);
      }
    });
  });
}
