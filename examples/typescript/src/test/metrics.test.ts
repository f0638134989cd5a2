// chat-server --metrics-addr serves the hub's figures as Prometheus text: a scrape
// before and after real traffic (over a private Redis, so the backplane publishes
// too) shows the counters, gauges and histograms move.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ChatServer, Client, closeAll, startRedis, unique, WAIT } from "./support";

const HUB = 'hub="chat.v1.ChatHub"';

/** Every sample of a Prometheus text page, by `name{labels}`. */
async function scrape(url: string): Promise<Map<string, number>> {
  const response = await fetch(url, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^text\/plain/);
  const samples = new Map<string, number>();
  for (const line of (await response.text()).split("\n")) {
    const m = line.match(/^([a-z_]+(?:\{[^}]*\})?) (\S+)$/);
    if (m) {
      samples.set(m[1], Number(m[2]));
    }
  }
  return samples;
}

/** The sample `name` of the chat hub (0 if absent). */
function of(samples: Map<string, number>, name: string, extra = ""): number {
  return samples.get(`${name}{${HUB}${extra}}`) ?? 0;
}

test("the metrics endpoint shows the hub's figures move", { timeout: 120_000 }, async () => {
  const server = await ChatServer.start(await startRedis(), "--metrics-addr", "127.0.0.1:0");
  const url = (server.output().match(/metrics on (http:\/\/\S+\/metrics)/) ?? [])[1];
  assert.ok(url, server.output());
  const before = await scrape(url);
  assert.equal(of(before, "hub_connections"), 0);
  assert.equal(of(before, "hub_calls_total"), 0);

  const room = unique("room");
  const alice = await Client.connect(server, "alice");
  const bob = await Client.connect(server, "bob");
  let during: Map<string, number>;
  try {
    await alice.join(room);
    await bob.join(room);
    await alice.expect("onJoin", { user: "bob" });
    await bob.say("hello");
    await alice.expect("onMessage", { text: "hello" });
    await assert.rejects(alice.whisper(unique("nobody"), "?"), { name: "HubCallError" });
    during = await scrape(url);
  } finally {
    await closeAll(alice, bob);
  }
  // Counters: 2 connections, 4 calls (2 joins, say, whisper), 1 failed.
  assert.equal(of(during, "hub_connections_opened_total"), 2);
  assert.equal(of(during, "hub_calls_total"), 4);
  assert.equal(of(during, "hub_calls_failed_total"), 1);
  assert.ok(of(during, "hub_frames_queued_total") >= 4 + 2, "4 replies and 2 pushes at least");
  assert.ok(of(during, "hub_backplane_published_total") >= 2, "the on_join and the message");
  // Gauges, while both were connected and in one room.
  assert.equal(of(during, "hub_connections"), 2);
  // The room, and each user's reserved `$user/..` group (what whispers go to).
  assert.equal(of(during, "hub_groups"), 3);
  assert.ok(of(during, "hub_queued_bytes") >= 0);
  // Histograms: one latency sample per call, one fan-out and one publish per push.
  assert.equal(of(during, "hub_call_duration_seconds_count"), 4);
  assert.ok(of(during, "hub_call_duration_seconds_sum") > 0);
  assert.ok(of(during, "hub_call_duration_seconds_bucket", ',le="+Inf"') === 4);
  assert.ok(of(during, "hub_push_fanout_count") >= 2);
  assert.ok(of(during, "hub_push_fanout_sum") >= 2, "the on_join and the message each reached alice");
  assert.ok(of(during, "hub_backplane_publish_duration_seconds_count") >= 2);

  // After both left: the gauges come back down (the close is seen by the server a
  // moment after the client's; bounded poll).
  let after = await scrape(url);
  for (let i = 0; i < 100 && (of(after, "hub_connections") !== 0 || of(after, "hub_groups") !== 0); i++) {
    await new Promise((ok) => setTimeout(ok, 100));
    after = await scrape(url);
  }
  assert.equal(of(after, "hub_connections"), 0);
  assert.equal(of(after, "hub_groups"), 0);
  assert.equal(of(after, "hub_queued_bytes"), 0);
  assert.equal(of(after, "hub_connections_closed_total"), 2);
});
