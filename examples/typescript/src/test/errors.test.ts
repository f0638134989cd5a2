// Error frames for bad calls and bad frames: each names the failed call's id and a
// status code a client can act on, and the connection goes on working after it.
// And the helper's own promise: no way a stream ends takes the Node process down.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { Client as GrpcClient, credentials, status } from "@grpc/grpc-js";

import { HubCallError, HubClosedError } from "../hub";
import { ChatServer, Client, closeAll, connectHub, connectRaw, freePort, login, unique, WAIT } from "./support";

const T = { timeout: 120_000 };
// A request field no version of chat.v1.ChatRequest has: field 50, length-delimited
// (key 50 << 3 | 2 = 402, varint 0x92 0x03), empty (length 0).
const UNKNOWN_CALL_FIELD = Buffer.from([0x92, 0x03, 0x00]);

/** Resolves with the next id-0 error frame of `hub` (fails after WAIT). */
function nextError(hub: { onError(cb: (e: HubCallError) => void): unknown; errors: HubCallError[] }, seen: number) {
  return new Promise<HubCallError>((ok, fail) => {
    if (hub.errors.length > seen) {
      return ok(hub.errors[seen]);
    }
    const timer = setTimeout(() => fail(new Error(`no error frame within ${WAIT} ms`)), WAIT);
    hub.onError((e) => {
      clearTimeout(timer);
      ok(e);
    });
  });
}

async function expectCallError(call: Promise<unknown>, code: number, ...words: string[]): Promise<HubCallError> {
  try {
    await call;
  } catch (e) {
    assert.ok(e instanceof HubCallError, `${e}`);
    assert.equal(e.code, code, e.message);
    for (const word of words) {
      assert.ok(e.details.includes(word), e.message);
    }
    return e;
  }
  assert.fail(`expected a ${code} error`);
}

test("calls before join fail with FAILED_PRECONDITION", T, async () => {
  const server = await ChatServer.start();
  const c = await Client.connect(server, "late");
  try {
    const calls = [
      c.say("hi"),
      c.whisper("x", "y"),
      c.members(),
      c.hub.call("leave", {}),
    ];
    for (const call of calls) {
      const e = await expectCallError(call, status.FAILED_PRECONDITION, "join first");
      assert.ok(e.callId > 0);
    }
    // A fire-and-forget call (id 0) that fails is not silent: an error frame with id 0.
    c.hub.send("say", { text: "anyone?" });
    const reply = await c.join(unique("room")); // calls run in order: the error came first
    assert.deepEqual(reply.members, ["late"]);
    assert.deepEqual(c.hub.errors.map((e) => [e.code, e.callId]), [[status.FAILED_PRECONDITION, 0]]);
  } finally {
    await closeAll(c);
  }
});

test("bad room or user names fail with INVALID_ARGUMENT", T, async () => {
  const server = await ChatServer.start();
  for (const room of ["", "has space", "x".repeat(129), "tab\there"]) {
    const c = await Client.connect(server, "alice");
    try {
      await expectCallError(c.join(room), status.INVALID_ARGUMENT);
      // Nothing changed, and the connection still works.
      await expectCallError(c.members(), status.FAILED_PRECONDITION);
      assert.deepEqual((await c.join(unique("lobby"))).members, ["alice"]);
    } finally {
      await closeAll(c);
    }
  }
  // The user name comes from the login, which refuses a bad one.
  for (const user of ["", "two words", "x".repeat(65), "tab\there"]) {
    await assert.rejects(login(server, user), (e: unknown) => {
      assert.equal((e as { code?: number }).code, status.INVALID_ARGUMENT, JSON.stringify(user));
      return true;
    });
  }
});

test("frames without a known call get error frames", T, async () => {
  const server = await ChatServer.start();
  const hub = await connectRaw(server, "still-here");
  try {
    // A frame with an id and no call: the answer to that id is an error.
    const e = await expectCallError(hub.callFrame({ id: 0 }), status.INVALID_ARGUMENT, "no call");
    assert.ok(e.callId > 0);
    // A call case this proto does not have (as from a newer client): UNIMPLEMENTED.
    await expectCallError(hub.callFrame({ id: 0, extra: UNKNOWN_CALL_FIELD }), status.UNIMPLEMENTED,
      "unknown call (field 50)", "chat.v1.ChatHub");
    // An empty frame (no id, no call, no control): an error frame with id 0.
    const seen = hub.errors.length;
    hub.write({ id: 0 });
    const err = await nextError(hub, seen);
    assert.deepEqual([err.code, err.callId], [status.INVALID_ARGUMENT, 0]);
    assert.match(err.details, /no call/);
    const reply = await hub.call("join", { room: unique("room") });
    assert.equal(reply.count, 1);
  } finally {
    await hub.close();
  }
});

test("a call id above 2^53-1 is refused with an id-0 error, and the call is not run", T, async () => {
  const server = await ChatServer.start();
  const hub = await connectRaw(server, "max");
  try {
    // ts-proto would refuse to encode 2^53 + 2 as a JavaScript number: bytes by hand.
    // Field 1 varint 2^53 + 2, then `members` (field 20, empty): key 0xa2 0x01, length 0.
    const tooBig = 2n ** 53n + 2n;
    const bytes = [0x08];
    for (let v = tooBig; ; v >>= 7n) {
      if (v < 0x80n) {
        bytes.push(Number(v));
        break;
      }
      bytes.push(Number(v & 0x7fn) | 0x80);
    }
    bytes.push(0xa2, 0x01, 0x00);
    hub.write({ id: 0, bytes: Buffer.from(bytes) });
    const err = await nextError(hub, 0);
    assert.deepEqual([err.code, err.callId], [status.INVALID_ARGUMENT, 0]);
    assert.ok(err.details.includes(`${tooBig}`) && err.details.includes("2^53"), err.message);
    // The largest id that fits runs: its reply (which this client drops, as it
    // waits for no such id) decodes, and no error frame comes before the next call's
    // reply (calls run in order).
    hub.write({ id: Number.MAX_SAFE_INTEGER, call: { $case: "join", value: { room: unique("room") } } });
    const reply = await hub.call("members", {});
    assert.deepEqual(reply.members, ["max"]);
    assert.equal(hub.errors.length, 1);
    assert.equal(hub.closeInfo, undefined);
  } finally {
    await hub.close();
  }
});

test("malformed bytes get an error frame and the connection survives", T, async () => {
  const server = await ChatServer.start();
  const hub = await connectRaw(server, "ok");
  try {
    hub.write({ id: 0, bytes: Buffer.from([0x0a, 0xff, 0xff]) }); // field 1 as length-delimited, truncated
    const err = await nextError(hub, 0);
    assert.deepEqual([err.code, err.callId], [status.INVALID_ARGUMENT, 0]);
    assert.match(err.details, /malformed frame/);
    const reply = await hub.call("join", { room: unique("room") });
    assert.deepEqual(reply.members, ["ok"]);
  } finally {
    await hub.close();
  }
});

test("a frame over the size limit closes the connection with a goodbye", T, async () => {
  const server = await ChatServer.start("memory", "--max-message-bytes", "1024");
  const c = await Client.connect(server, "big");
  try {
    assert.equal(c.hub.info.maxMessageBytes, 1024);
    await c.join(unique("room"));
    c.hub.send("say", { text: "x".repeat(4096) });
    const closed = await c.hub.closed;
    assert.equal(closed.code, status.RESOURCE_EXHAUSTED, JSON.stringify(closed));
    assert.match(closed.reason, /too large/);
    assert.equal(c.hub.goodbye?.code, status.RESOURCE_EXHAUSTED);
  } finally {
    await closeAll(c);
  }
});

test("an unknown method is UNIMPLEMENTED", T, async () => {
  const server = await ChatServer.start();
  const grpc = new GrpcClient(server.addr, credentials.createInsecure());
  try {
    const err = await new Promise<{ code: number; details: string }>((ok) =>
      grpc.makeUnaryRequest("/chat.v1.ChatHub/Join", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0),
        { deadline: Date.now() + WAIT }, (e) => ok(e as { code: number; details: string })));
    assert.equal(err.code, status.UNIMPLEMENTED);
    assert.match(err.details, /one method, Connect/);
  } finally {
    grpc.close();
  }
});

test("connecting to no server rejects with HubClosedError (UNAVAILABLE)", T, async () => {
  const addr = `127.0.0.1:${await freePort()}`;
  await assert.rejects(connectHub({ addr }, { timeoutMs: 30_000 }), (e: unknown) => {
    assert.ok(e instanceof HubClosedError, `${e}`);
    assert.equal(e.code, status.UNAVAILABLE);
    return true;
  });
});

test("a stream that ends with an error status does not crash a Node process that ignores it", T, async () => {
  // A separate Node process with no error handling of its own: it connects, then the
  // server goes away under it (UNAVAILABLE), and it must live to print how it ended.
  const server = await ChatServer.start();
  const script = join(__dirname, "fixtures", "careless.js");
  const child = spawnSync(process.execPath, [script, server.addr, `${process.pid}`], {
    encoding: "utf8",
    timeout: 60_000,
    input: "",
    env: { ...process.env, STOP_SERVER_PID: `${server.proc.pid}` },
  });
  assert.equal(child.status, 0, `${child.stdout}\n${child.stderr}`);
  assert.match(child.stdout, /closed: 14 server shutting down/);
  assert.match(child.stdout, /late call: HubClosedError/);
});
