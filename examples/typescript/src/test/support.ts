/**
 * Processes and clients for the Node tests: chat-server, redis-server and
 * nats-server on free loopback ports, the Rust chat-client, and a push recorder.
 *
 * Every wait here is bounded; every process started here is stopped by the test
 * file that started it and, should that process die, by the kernel (`guarded`).
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after } from "node:test";
import { Client as GrpcClient, credentials, Metadata } from "@grpc/grpc-js";

import { ChatHubClient, type ChatRequest as ChatRequestT, ChatRequest, ChatResponse } from "../gen/chat/v1/chat";
import { ChatLoginClient, type LoginReply } from "../gen/chat/v1/login";
import { HubClient, type ConnectOptions, type Push, type PushName, type PushOf } from "../hub";

/** The repository root (this file runs from examples/typescript/dist/test). */
export const ROOT = resolve(__dirname, "../../../..");
const BIN = join(ROOT, "target", "debug");
export const CHAT_SERVER = join(BIN, "chat-server");
export const CHAT_CLIENT = join(BIN, "chat-client");
/** Ports that belong to servers this suite must never touch. */
const RESERVED_PORTS = new Set([6379, 4222, 50051]);
/** Generous, because the machine is shared: these bound waits, they assert no speed. */
export const START_TIMEOUT = 30_000;
export const WAIT = 15_000;

/** A temp dir for this test file's process logs, removed at the end. */
const WORKDIR = mkdtempSync(join(tmpdir(), "hub-ts-"));
const started: Process[] = [];
after(async () => {
  await Promise.all(started.map((p) => p.stop()));
  rmSync(WORKDIR, { recursive: true, force: true });
});

/** `argv` run so that the kernel kills it should this process die (util-linux `setpriv`). */
function guarded(argv: string[]): string[] {
  try {
    const setpriv = execFileSync("sh", ["-c", "command -v setpriv"], { encoding: "utf8" }).trim();
    return [setpriv, "--pdeathsig", "KILL", "--", ...argv];
  } catch {
    return argv;
  }
}

/** A port nothing listens on right now (the OS picks it), never a reserved one. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((ok, fail) => {
      const server = createServer();
      server.once("error", fail);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        server.close(() => ok(typeof address === "object" && address ? address.port : 0));
      });
    });
    if (!RESERVED_PORTS.has(port)) {
      return port;
    }
  }
}

/** A room or user name no other test uses (backplane servers are shared by a file's tests). */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** `name` on PATH or in /usr/sbin (where Debian puts nats-server). */
export function findBinary(name: string): string {
  for (const dir of [...(process.env.PATH ?? "").split(":"), "/usr/sbin"]) {
    const path = join(dir, name);
    if (dir && existsSync(path)) {
      return path;
    }
  }
  throw new Error(`${name} is not installed: run scripts/install-deps.sh`);
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** A child process whose stdout and stderr go to files, stopped at the end of the file. */
export class Process {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  private readonly out: string;
  private readonly err: string;

  constructor(
    readonly name: string,
    readonly argv: string[],
  ) {
    this.out = join(WORKDIR, `${name}.out`);
    this.err = join(WORKDIR, `${name}.err`);
    const [cmd, ...args] = guarded(argv);
    this.proc = spawn(cmd, args, { cwd: WORKDIR, stdio: ["ignore", openSync(this.out, "w"), openSync(this.err, "w")] });
    this.exited = new Promise((ok) => this.proc.once("exit", (code, signal) => ok(signal ? null : code)));
    started.push(this);
  }

  output(): string {
    const read = (p: string) => (existsSync(p) ? readFileSync(p, "utf8") : "");
    return read(this.out) + read(this.err);
  }

  running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Waits for `pattern` in stdout; fails with the output if the process exits or time runs out. */
  async waitForOutput(pattern: RegExp, timeoutMs = START_TIMEOUT): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const m = readFileSync(this.out, "utf8").match(pattern);
      if (m) {
        return m;
      }
      if (!this.running()) {
        throw new Error(`${this.name} exited before printing ${pattern}:\n$ ${this.argv.join(" ")}\n${this.output()}`);
      }
      await sleep(50);
    }
    throw new Error(`${this.name} did not print ${pattern} within ${timeoutMs} ms:\n${this.output()}`);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.running()) {
      this.proc.kill(sig);
    }
  }

  /** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code (null if killed by a signal). */
  async stop(timeoutMs = 10_000): Promise<number | null> {
    this.signal("SIGTERM");
    const timer = setTimeout(() => this.signal("SIGKILL"), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Waits until 127.0.0.1:`port` answers with `greeting` (after sending `send`). */
async function waitForPort(port: number, proc: Process, greeting: string, send: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT;
  let last = "";
  while (Date.now() < deadline) {
    if (!proc.running()) {
      throw new Error(`${proc.name} exited:\n${proc.output()}`);
    }
    const answer = await new Promise<string>((ok) => {
      const socket = createConnection({ host: "127.0.0.1", port }, () => socket.write(send));
      socket.setTimeout(2_000, () => socket.destroy());
      socket.once("data", (data) => {
        ok(data.toString());
        socket.destroy();
      });
      socket.once("error", (e) => ok(`error: ${e.message}`));
      socket.once("close", () => ok(""));
    });
    if (answer.startsWith(greeting)) {
      return;
    }
    last = answer;
    await sleep(100);
  }
  throw new Error(`${proc.name} on port ${port} did not answer within ${START_TIMEOUT} ms (${last}):\n${proc.output()}`);
}

async function startOnFreePort(name: string, argv: (port: number) => string[], greeting: string, send: string) {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const proc = new Process(`${name}-${attempt}`, argv(port));
    try {
      await waitForPort(port, proc, greeting, send);
      return { proc, port };
    } catch (e) {
      await proc.stop();
      if (attempt === 2) {
        throw e;
      }
    }
  }
}

/** A redis-server without persistence on a free loopback port; resolves with its URL. */
export async function startRedis(): Promise<string> {
  const bin = findBinary("redis-server");
  const argv = (port: number) =>
    [bin, "--port", `${port}`, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", WORKDIR];
  const { port } = await startOnFreePort("redis-server", argv, "+PONG", "PING\r\n");
  return `redis://127.0.0.1:${port}`;
}

/** A nats-server on a free loopback port; resolves with its URL. */
export async function startNats(): Promise<string> {
  const bin = findBinary("nats-server");
  const { port } = await startOnFreePort("nats-server", (port) => [bin, "-a", "127.0.0.1", "-p", `${port}`], "INFO ", "");
  return `nats://127.0.0.1:${port}`;
}

/** A real `chat-server` on a free port (`--addr 127.0.0.1:0`; it prints the one it got). */
export class ChatServer extends Process {
  addr = "";

  private constructor(groups: string, extra: string[]) {
    super(`chat-server-${randomBytes(3).toString("hex")}`, [CHAT_SERVER, "--addr", "127.0.0.1:0", "--groups", groups, ...extra]);
  }

  static async start(groups = "memory", ...extra: string[]): Promise<ChatServer> {
    if (!existsSync(CHAT_SERVER)) {
      throw new Error(`${CHAT_SERVER} is missing: build it with 'cargo build -p examples --bins'`);
    }
    const server = new ChatServer(groups, extra);
    server.addr = (await server.waitForOutput(/chat-server listening on (\S+)/))[1];
    return server;
  }
}

/** The group providers each parametrised test runs on: `memory`, a private Redis, a private NATS. */
export class Backplanes {
  private redis: Promise<string> | undefined;
  private nats: Promise<string> | undefined;
  static readonly names = ["memory", "redis", "nats"] as const;

  /** The `--groups` value of provider `name`, starting its server on first use. */
  async groups(name: (typeof Backplanes.names)[number]): Promise<string> {
    if (name === "redis") {
      return (this.redis ??= startRedis());
    }
    if (name === "nats") {
      return (this.nats ??= startNats());
    }
    return "memory";
  }
}

export type Chat = HubClient<ChatRequestT, ChatResponse>;

/** A token secret for servers that must accept each other's tokens (32+ bytes). */
export const TOKEN_SECRET = "the typescript tests' shared token secret, 32+ bytes";

/** `chat.v1.ChatLogin/Login` on `server`: the LoginReply (token, user, expiresAt). */
export function login(server: { addr: string }, user: string): Promise<LoginReply> {
  const stub = new ChatLoginClient(server.addr, credentials.createInsecure());
  return new Promise<LoginReply>((ok, fail) => {
    stub.login({ user }, new Metadata(), { deadline: Date.now() + WAIT }, (e, reply) => {
      stub.close();
      if (e) {
        fail(e);
      } else {
        ok(reply);
      }
    });
  });
}

/**
 * How to connect: `user` logs in (at `loginAt`, default the server connected to) and
 * connects with the token; `token` connects with that token as it is; with neither,
 * the connection carries no authorization.
 */
export type LoginOptions = ConnectOptions & { user?: string; token?: string; loginAt?: { addr: string } };

/** `options` with `authorization: Bearer <token>` in its metadata, logging in first if asked. */
async function withLogin(server: { addr: string }, options: LoginOptions): Promise<ConnectOptions> {
  const { user, loginAt, token: given, ...rest } = options;
  let token = given;
  if (token === undefined && user !== undefined) {
    token = (await login(loginAt ?? server, user)).token;
  }
  return token === undefined ? rest : { ...rest, metadata: { ...rest.metadata, authorization: `Bearer ${token}` } };
}

/** Connects to the chat hub on `server` with the helper (see `LoginOptions`). */
export async function connectHub(server: { addr: string }, options: LoginOptions = {}): Promise<Chat> {
  const connect = await withLogin(server, options);
  const stub = new ChatHubClient(server.addr, credentials.createInsecure());
  return HubClient.connect((md) => stub.connect(md), connect);
}

/** A request frame for `connectRaw`: `bytes` replaces the encoding, `extra` is appended to it. */
export type RawRequest = ChatRequestT & { bytes?: Buffer; extra?: Buffer };

/**
 * Connects with a pass-through serializer, to send what the generated code would
 * refuse to: bytes that do not decode, or fields this proto does not have.
 */
export async function connectRaw(server: { addr: string }, user: string): Promise<HubClient<RawRequest, ChatResponse>> {
  const connect = await withLogin(server, { user });
  const grpc = new GrpcClient(server.addr, credentials.createInsecure());
  const serialize = (m: RawRequest): Buffer =>
    m.bytes ?? Buffer.concat([Buffer.from(ChatRequest.encode(m).finish()), m.extra ?? Buffer.alloc(0)]);
  const deserialize = (b: Buffer): ChatResponse => ChatResponse.decode(b);
  return HubClient.connect(
    (md) => grpc.makeBidiStreamRequest("/chat.v1.ChatHub/Connect", serialize, deserialize, md),
    connect,
  );
}

/** A chat connection with its pushes recorded, and the chat calls spelled out. */
export class Client {
  private readonly queue: Push<ChatResponse>[] = [];
  private wake: (() => void) | undefined;

  private constructor(readonly hub: Chat) {
    hub.onAny((push) => {
      this.queue.push(push);
      this.wake?.();
    });
  }

  /** Logs in as `user` (unless `options` says otherwise, see `LoginOptions`) and connects. */
  static async connect(server: { addr: string }, user?: string, options: LoginOptions = {}): Promise<Client> {
    return new Client(await connectHub(server, { user, ...options }));
  }

  /** Joins `room` as the user the connection logged in as. */
  join(room: string) {
    return this.hub.call("join", { room });
  }

  say(text: string) {
    return this.hub.call("say", { text });
  }

  whisper(user: string, text: string) {
    return this.hub.call("whisper", { user, text });
  }

  members() {
    return this.hub.call("members", {});
  }

  /** The next push this connection received, whatever it is (fails after `timeoutMs`). */
  async nextPush(timeoutMs = WAIT): Promise<Push<ChatResponse>> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no push within ${timeoutMs} ms`);
      }
      await new Promise<void>((ok) => {
        const timer = setTimeout(ok, left);
        this.wake = () => {
          clearTimeout(timer);
          ok();
        };
      });
      this.wake = undefined;
    }
    return this.queue.shift()!;
  }

  /** The next push, which must be `name` with these fields. */
  async expect<N extends PushName<ChatResponse>>(
    name: N,
    fields: Partial<PushOf<ChatResponse, N>>,
    timeoutMs = WAIT,
  ): Promise<Push<ChatResponse>> {
    const push = await this.nextPush(timeoutMs);
    const message = push.message as unknown as Record<string, unknown>;
    const got = Object.fromEntries(Object.keys(fields).map((k) => [k, message[k]]));
    if (push.name !== name || JSON.stringify(got) !== JSON.stringify(fields)) {
      throw new Error(`expected ${name} ${JSON.stringify(fields)}, got ${push.name} ${JSON.stringify(push.message)}`);
    }
    return push;
  }

  close() {
    return this.hub.close();
  }
}

/** Closes every client, whatever state each is in. */
export async function closeAll(...clients: Array<Client | undefined>): Promise<void> {
  await Promise.all(clients.map((c) => c?.close()));
}

/** A running `chat-client --json`: its JSON lines as they come. */
export class RustClient {
  readonly lines: unknown[] = [];
  private out = "";
  private err = "";
  private readonly exit: Promise<number | null>;

  constructor(addr: string, readonly user: string, room: string, args: string[]) {
    const argv = guarded([CHAT_CLIENT, "--addr", addr, "--user", user, "--room", room, "--json", ...args]);
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", (d: Buffer) => {
      this.out += d;
      const complete = this.out.split("\n");
      this.out = complete.pop()!;
      this.lines.push(...complete.filter((l) => l.trim()).map((l) => JSON.parse(l) as unknown));
    });
    child.stderr.on("data", (d) => (this.err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    this.exit = new Promise((ok) => child.once("close", (code) => (clearTimeout(timer), ok(code))));
  }

  /** Waits (bounded) until a line for which `pred` holds has come. */
  async waitFor(pred: (line: Record<string, unknown>) => boolean, timeoutMs = WAIT): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.lines.some((l) => pred(l as Record<string, unknown>))) {
      if (Date.now() > deadline) {
        throw new Error(`chat-client ${this.user}: no such line within ${timeoutMs} ms: ${JSON.stringify(this.lines)}\n${this.err}`);
      }
      await sleep(20);
    }
  }

  /** Waits for the exit; resolves with every line (fails on a non-zero exit). */
  async done(): Promise<unknown[]> {
    const code = await this.exit;
    if (code !== 0) {
      throw new Error(`chat-client ${this.user} exited with ${code}: ${JSON.stringify(this.lines)}\n${this.err}`);
    }
    return this.lines;
  }
}

/** Runs `chat-client --json` to completion; resolves with its JSON lines (fails on a non-zero exit). */
export function rustClient(addr: string, user: string, room: string, ...args: string[]): Promise<unknown[]> {
  return new RustClient(addr, user, room, args).done();
}
