// Run with: node dist/example.js --user ts --room lobby --say "hello" --listen 10
// (after `npm ci && npm run build` in examples/typescript; a chat-server on --addr)
//
// The chat hub from TypeScript: logs in as --user, joins a room, says something, and prints the pushes
// it gets for --listen seconds. See docs/clients.md.

import { parseArgs } from "node:util";
import { credentials, Metadata, status } from "@grpc/grpc-js";

import { ChatHubClient, type ChatRequest, type ChatResponse } from "./gen/chat/v1/chat";
import { ChatLoginClient, type LoginReply } from "./gen/chat/v1/login";
import { codeName, HubCallError, HubClient } from "./hub";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      addr: { type: "string", default: "127.0.0.1:50051" },
      user: { type: "string" },
      room: { type: "string", default: "lobby" },
      say: { type: "string", multiple: true, default: [] },
      listen: { type: "string", default: "1" },
    },
  });
  if (!values.user) {
    throw new Error("--user is required");
  }
  // Log in (chat.v1.ChatLogin/Login on the same address), then connect with the token.
  const loginStub = new ChatLoginClient(values.addr!, credentials.createInsecure());
  const { token } = await new Promise<LoginReply>((ok, fail) =>
    loginStub.login({ user: values.user! }, new Metadata(), { deadline: Date.now() + 10_000 }, (e, reply) =>
      e ? fail(e) : ok(reply)),
  );
  loginStub.close();
  const stub = new ChatHubClient(values.addr!, credentials.createInsecure());
  const hub = await HubClient.connect<ChatRequest, ChatResponse>((md) => stub.connect(md), {
    metadata: { authorization: `Bearer ${token}` },
  });
  console.log(`connected as ${hub.info.connectionId} (server ${hub.info.serverId})`);
  hub.on("onJoin", (e) => console.log(`* ${e.user} joined`));
  hub.on("onLeave", (e) => console.log(`* ${e.user} left`));
  hub.on("onMessage", (m, seq) => console.log(`[${seq}] ${m.from}: ${m.text}`));
  hub.on("onWhisper", (m) => console.log(`(whisper) ${m.from}: ${m.text}`));
  hub.onError((e) => console.log(`error frame: ${e.message}`));
  try {
    const joined = await hub.call("join", { room: values.room! });
    console.log(`joined ${joined.room}: ${joined.members.join(", ")}`);
    for (const text of values.say!) {
      await hub.call("say", { text });
    }
    await new Promise((ok) => setTimeout(ok, Number(values.listen) * 1000));
  } catch (e) {
    if (!(e instanceof HubCallError)) {
      throw e;
    }
    console.log(`call failed: ${e.message}`);
  } finally {
    const closed = await hub.close();
    console.log(`closed: ${codeName(closed.code)} ${closed.reason}`.trimEnd());
    stub.close();
  }
  process.exitCode = hub.closeInfo?.code === status.OK ? 0 : 1;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 2;
});
