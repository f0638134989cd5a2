// The example that docs/clients.md shows, run as a user would run it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { ChatServer, RustClient, unique } from "./support";

test("the TypeScript example talks to a Rust client", { timeout: 120_000 }, async () => {
  const server = await ChatServer.start();
  const room = unique("room");
  // A Rust client that waits for two pushes: the example's onJoin, then its message.
  const rust = new RustClient(server.addr, "rusty", room, ["--wait-for", "2", "--listen", "60"]);
  await rust.waitFor((l) => l.reply === "joined");
  const example = join(__dirname, "..", "example.js");
  const { stdout } = await promisify(execFile)(process.execPath, [example, "--addr", server.addr, "--user", "ts",
    "--room", room, "--say", "hello from the example", "--listen", "0"], { timeout: 60_000 });
  assert.match(stdout, new RegExp(`joined ${room}: rusty, ts`));
  assert.match(stdout.trimEnd(), /closed: OK$/);
  const pushes = (await rust.done()).filter((l) => "push" in (l as object));
  // It may also see the example leave before it exits.
  assert.deepEqual(pushes.slice(0, 2), [
    { push: "on_join", room, user: "ts" },
    { push: "on_message", room, from: "ts", text: "hello from the example" },
  ]);
});
