// Heartbeats and the end of a connection: server pings answered by the helper keep
// it open, silence closes it with a goodbye, client pings get pongs, and a server
// shutting down says goodbye.

import assert from "node:assert/strict";
import { test } from "node:test";
import { status } from "@grpc/grpc-js";

import { ChatServer, Client, closeAll, unique } from "./support";

const FAST = ["--heartbeat-interval", "1", "--heartbeat-timeout", "3"];
const T = { timeout: 120_000 };
const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

test("answered pings keep the connection open", T, async () => {
  const server = await ChatServer.start("memory", ...FAST);
  const c = await Client.connect(server, "patient");
  try {
    assert.deepEqual([c.hub.info.heartbeatIntervalMs, c.hub.info.heartbeatTimeoutMs], [1000, 3000]);
    await c.join(unique("room"));
    // Send nothing but pongs for well over the timeout.
    for (let i = 0; i < 200 && c.hub.pingsAnswered < 5; i++) {
      await sleep(100);
    }
    assert.ok(c.hub.pingsAnswered >= 5, `only ${c.hub.pingsAnswered} pings in 20 s`);
    // The server matched our pongs to its pings: it reports the round trip it measured.
    assert.ok(c.hub.lastServerPing!.lastRttUs > 0);
    assert.equal(c.hub.closeInfo, undefined);
    assert.deepEqual((await c.members()).members, ["patient"]);
  } finally {
    await closeAll(c);
  }
});

test("a silent client is closed after the heartbeat timeout", T, async () => {
  const server = await ChatServer.start("memory", ...FAST);
  const c = await Client.connect(server, "silent", { autoPong: false });
  try {
    const closed = await c.hub.closed;
    assert.equal(closed.code, status.UNAVAILABLE, JSON.stringify(closed));
    assert.match(closed.reason, /heartbeat timeout/);
    assert.match(c.hub.goodbye!.reason, /heartbeat timeout/);
    assert.ok(c.hub.lastServerPing !== undefined, "it was pinged, and did not answer");
    await assert.rejects(c.members(), { name: "HubClosedError", code: status.UNAVAILABLE });
  } finally {
    await closeAll(c);
  }
});

test("a client ping gets a pong", T, async () => {
  const server = await ChatServer.start("memory", "--heartbeat-interval", "0", "--heartbeat-timeout", "0");
  const c = await Client.connect(server, "pinger");
  try {
    assert.deepEqual([c.hub.info.heartbeatIntervalMs, c.hub.info.heartbeatTimeoutMs], [0, 0]);
    for (let i = 0; i < 3; i++) {
      assert.ok((await c.hub.ping()) >= 0);
    }
    assert.equal(c.hub.pingsAnswered, 0); // this server never pings
  } finally {
    await closeAll(c);
  }
});

test("a server shutting down says goodbye", T, async () => {
  const server = await ChatServer.start();
  const c = await Client.connect(server, "last");
  try {
    await c.join(unique("room"));
    const pending = c.hub.call("members", {}, { timeoutMs: 60_000 });
    server.signal("SIGTERM");
    const closed = await c.hub.closed;
    assert.deepEqual(closed, { code: status.UNAVAILABLE, reason: "server shutting down" });
    assert.equal(c.hub.goodbye!.reason, "server shutting down");
    // The call made just before either got its answer or was told the stream ended.
    await pending.catch((e: Error) => assert.equal(e.name, "HubClosedError"));
  } finally {
    await closeAll(c);
  }
  assert.equal(await server.exited, 0);
});
