// A room spread over two chat-server processes that share a backplane (a private
// Redis or NATS): members, say, whisper and leave cross from one server to the
// other, for TypeScript and Rust clients. With in-memory groups they must not.

import assert from "node:assert/strict";
import { test } from "node:test";
import { isDeepStrictEqual } from "node:util";
import { status } from "@grpc/grpc-js";

import { Backplanes, ChatServer, Client, closeAll, rustClient, TOKEN_SECRET, unique } from "./support";

const backplanes = new Backplanes();
const T = { timeout: 120_000 };

for (const provider of ["redis", "nats"] as const) {
  test(`a room spans two servers on ${provider}`, T, async () => {
    const url = await backplanes.groups(provider);
    // Servers behind one load balancer share the token secret: a token from either
    // server's login is good on both.
    const [a, b] = await Promise.all([
      ChatServer.start(url, "--token-secret", TOKEN_SECRET),
      ChatServer.start(url, "--token-secret", TOKEN_SECRET),
    ]);
    const [room, bobName] = [unique("room"), unique("bob")];
    const alice = await Client.connect(a, "alice");
    const bob = await Client.connect(b, bobName, { loginAt: a });
    try {
      assert.notEqual(alice.hub.info.serverId, bob.hub.info.serverId);
      await alice.join(room);
      let reply = await bob.join(room);
      assert.deepEqual([reply.members, reply.count], [["alice", bobName], 2]);
      await alice.expect("onJoin", { room, user: bobName });
      await alice.say("from server a");
      await bob.expect("onMessage", { room, from: "alice", text: "from server a" });
      await bob.say("from server b");
      await alice.expect("onMessage", { room, from: bobName, text: "from server b" });
      await alice.whisper(bobName, "psst across");
      await bob.expect("onWhisper", { room, from: "alice", text: "psst across" });
      // A Rust typed client on server b reaches alice on server a.
      const lines = await rustClient(b.addr, "ferris", room, "--say", "rust on b", "--listen", "0");
      assert.ok(
        lines.some((l) => isDeepStrictEqual(l, { reply: "joined", room, members: ["alice", bobName, "ferris"], count: 3 })),
        JSON.stringify(lines),
      );
      await alice.expect("onJoin", { room, user: "ferris" });
      await alice.expect("onMessage", { room, from: "ferris", text: "rust on b" });
      await alice.expect("onLeave", { room, user: "ferris" });
      await bob.hub.call("leave", {});
      await alice.expect("onLeave", { room, user: bobName });
      reply = await alice.members();
      assert.deepEqual([reply.members, reply.count], [["alice"], 1]);
    } finally {
      await closeAll(alice, bob);
    }
  });
}

test("memory groups do not cross servers", T, async () => {
  // The control for the tests above: without a backplane, the same steps stay on one server.
  const [a, b] = await Promise.all([ChatServer.start("memory"), ChatServer.start("memory")]);
  const room = unique("room");
  const alice = await Client.connect(a, "alice");
  const bob = await Client.connect(b, "bob");
  try {
    await alice.join(room);
    assert.deepEqual((await bob.join(room)).members, ["bob"]);
    await alice.say("anyone on b?");
    await assert.rejects(alice.whisper("bob", "psst"), { name: "HubCallError", code: status.NOT_FOUND });
    // bob heard nothing from server a: his first push is his own whisper.
    await bob.whisper("bob", "only me");
    await bob.expect("onWhisper", { from: "bob", text: "only me" });
  } finally {
    await closeAll(alice, bob);
  }
});
