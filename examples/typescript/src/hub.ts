/**
 * A small client for hub streams (chat.v1.ChatHub or any other hub), on
 * @grpc/grpc-js and the types ts-proto generates from the hub's proto
 * (`oneof=unions-value`, `useOptionals=messages`, `forceLong=number`: see
 * buf.gen.yaml).
 *
 * A hub is one bidirectional gRPC stream, `Connect`. `HubClient` turns it into
 * awaitable calls and typed push callbacks:
 *
 * - the server's first frame is `control.hello`: `HubClient.connect` waits for it
 *   and keeps it as `client.info`;
 * - `await client.call("join", { room })` sends a frame with a fresh call id and
 *   resolves with the reply case of the frame that carries that id, or rejects
 *   with `HubCallError` (the frame carried an `error`), `HubClosedError` (the
 *   stream ended first) or `HubTimeoutError`;
 * - frames with id 0 and an `on*` case are pushes, given to the callbacks of
 *   `client.on("onMessage", (message, seq) => ...)` (`onAny` for every push);
 * - frames with id 0 and an `error` (a failed fire-and-forget call, a refused
 *   frame) go to `client.onError` callbacks and `client.errors`;
 * - a push of a group whose backplane keeps history also carries
 *   `control.position` in the same frame: the push is handled as any other, and
 *   the last position of each group is kept in `client.positions` (what a resume
 *   presents as `hub-resume-positions-bin`);
 * - `control.ping` is answered with `control.pong` at once, so the server keeps
 *   the connection open;
 * - the end of the stream, whatever its status, never throws: it settles
 *   `client.closed` (a promise that only resolves) with the code and reason
 *   (from `control.goodbye` if one came, else from the gRPC status) and rejects
 *   the calls still waiting. The Node process does not crash on a non-OK status.
 *
 * Call ids and ping nonces count up from 1, far below 2^53-1, the largest number
 * the hub accepts (see hub/v1/hub.proto).
 */

import { Metadata, status as Status, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import type { CallError, ClientControl, ConnectionInfo, Goodbye, Ping, ServerControl } from "./gen/hub/v1/hub";

/** A case of a ts-proto oneof (`oneof=unions-value`). */
export interface Case {
  $case: string;
  value: unknown;
}

/** What every hub's request frame has (`FooRequest`), as ts-proto generates it. */
export interface HubRequest {
  id: number;
  control?: ClientControl | undefined;
  call?: Case | undefined;
}

/** What every hub's response frame has (`FooResponse`), as ts-proto generates it. */
export interface HubResponse {
  id: number;
  seq: number;
  error?: CallError | undefined;
  control?: ServerControl | undefined;
  event?: Case | undefined;
}

type CallCase<Req extends HubRequest> = NonNullable<Req["call"]>;
type EventCase<Resp extends HubResponse> = NonNullable<Resp["event"]>;
/** The call names of a hub: `"join" | "say" | ...`. */
export type CallName<Req extends HubRequest> = CallCase<Req>["$case"];
/** The argument of call `N`. */
export type CallArg<Req extends HubRequest, N> = Extract<CallCase<Req>, { $case: N }>["value"];
/** The reply of call `N`: the response case of the same name. */
export type ReplyOf<Resp extends HubResponse, N> = Extract<EventCase<Resp>, { $case: N }>["value"];
/** The push names of a hub: `"onJoin" | "onMessage" | ...`. */
export type PushName<Resp extends HubResponse> = Extract<EventCase<Resp>["$case"], `on${string}`>;
/** The message of push `N`. */
export type PushOf<Resp extends HubResponse, N> = Extract<EventCase<Resp>, { $case: N }>["value"];

/** One push: its case name, the connection's sequence number and its message. */
export interface Push<Resp extends HubResponse = HubResponse> {
  name: PushName<Resp>;
  seq: number;
  message: PushOf<Resp, PushName<Resp>>;
}

/** The name of a gRPC status code (`5` -> `"NOT_FOUND"`). */
export function codeName(code: number): string {
  return (Status as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
}

/** An error frame: a call failed (`callId` set) or a frame was refused (`callId` 0). */
export class HubCallError extends Error {
  override name = "HubCallError";
  /** The gRPC status code (a `status` value of @grpc/grpc-js). */
  readonly code: number;
  /** The server's description. */
  readonly details: string;
  /** The call that failed; 0 for a connection-level error. */
  readonly callId: number;

  constructor(code: number, details: string, callId: number) {
    super(`${codeName(code)}: ${details}${callId ? ` (call ${callId})` : ""}`);
    this.code = code;
    this.details = details;
    this.callId = callId;
  }
}

/** The stream ended before the answer came (or before it was opened). */
export class HubClosedError extends Error {
  override name = "HubClosedError";
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`connection closed (${codeName(code)}): ${reason}`);
  }
}

/** No answer within the call's timeout. */
export class HubTimeoutError extends Error {
  override name = "HubTimeoutError";
  constructor(
    readonly what: string,
    readonly ms: number,
  ) {
    super(`${what}: no answer within ${ms} ms`);
  }
}

/** How the stream ended. */
export interface Closed {
  /** The gRPC status code (OK for a clean end). */
  code: number;
  /** Why, as the goodbye or the status said. */
  reason: string;
}

/** Opens the stream: e.g. `(md) => new ChatHubClient(addr, credentials).connect(md)`. */
export type OpenStream<Req extends HubRequest, Resp extends HubResponse> = (
  metadata: Metadata,
) => ClientDuplexStream<Req, Resp>;

/** Options of `HubClient.connect`. */
export interface ConnectOptions {
  /** Request metadata, e.g. `{ authorization: "Bearer <token>" }`. */
  metadata?: Record<string, string>;
  /** How long to wait for the hello frame, in ms (default 10 000). */
  timeoutMs?: number;
  /** Default timeout of each call, in ms (default 10 000). */
  callTimeoutMs?: number;
  /** Answer server pings (default true; false lets a test see the heartbeat timeout). */
  autoPong?: boolean;
}

interface Waiter {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** One connection to a hub. Make it with `await HubClient.connect(...)`. */
export class HubClient<Req extends HubRequest, Resp extends HubResponse> {
  /** The hello frame: connection id, server id, heartbeat settings, largest frame. */
  info!: ConnectionInfo;
  /** The goodbye frame, if the server sent one. */
  goodbye: Goodbye | undefined;
  /** Every error frame with id 0, in order. */
  readonly errors: HubCallError[] = [];
  /** The last `control.position` of each group's pushes, by group. */
  readonly positions = new Map<string, { group: string; offset: number; epoch: number }>();
  /** Server pings answered with a pong. */
  pingsAnswered = 0;
  /** The last ping from the server (its `lastRttUs` is the round trip it measured). */
  lastServerPing: Ping | undefined;
  /** Settles once when the stream ends, however it ends; never rejects. */
  readonly closed: Promise<Closed>;
  /** How the stream ended, once it has. */
  closeInfo: Closed | undefined;

  private readonly stream: ClientDuplexStream<Req, Resp>;
  private readonly autoPong: boolean;
  private readonly callTimeoutMs: number;
  private readonly pending = new Map<number, Waiter>();
  private readonly pings = new Map<number, { waiter: Waiter; sent: number }>();
  private readonly pushCallbacks = new Map<string, Array<(message: never, seq: number) => void>>();
  private readonly anyCallbacks: Array<(push: Push<Resp>) => void> = [];
  private readonly errorCallbacks: Array<(error: HubCallError) => void> = [];
  private nextId = 1;
  private ending = false;
  private nextNonce = 1;
  private hello: Waiter | undefined;
  private markClosed!: (closed: Closed) => void;

  private constructor(open: OpenStream<Req, Resp>, options: ConnectOptions) {
    this.autoPong = options.autoPong ?? true;
    this.callTimeoutMs = options.callTimeoutMs ?? 10_000;
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
    const metadata = new Metadata();
    for (const [key, value] of Object.entries(options.metadata ?? {})) {
      metadata.set(key, value);
    }
    this.stream = open(metadata);
    this.stream.on("data", (frame: Resp) => this.onFrame(frame));
    // grpc-js reports a non-OK end as an "error" event, and the end itself as a
    // "status" event; a listener on "error" is what keeps Node from throwing.
    this.stream.on("error", (e: ServiceError) => this.finish(e.code ?? Status.UNKNOWN, e.details ?? e.message));
    this.stream.on("status", (s: { code: number; details: string }) => this.finish(s.code, s.details));
  }

  /**
   * Opens the stream and waits for the server's hello.
   *
   * `open` opens the hub's `Connect` stream with the given metadata. Rejects with
   * `HubClosedError` if the stream ends first (no server, refused by the hub's
   * connect hook, ...) or `HubTimeoutError`.
   */
  static async connect<Req extends HubRequest, Resp extends HubResponse>(
    open: OpenStream<Req, Resp>,
    options: ConnectOptions = {},
  ): Promise<HubClient<Req, Resp>> {
    const client = new HubClient(open, options);
    const timeoutMs = options.timeoutMs ?? 10_000;
    try {
      await client.wait<ConnectionInfo>("hello", timeoutMs, (waiter) => {
        client.hello = waiter;
        return () => (client.hello = undefined);
      });
    } catch (e) {
      client.stream.cancel();
      throw e;
    }
    return client;
  }

  /** Calls `callback(message, seq)` for each push `name` (e.g. `"onMessage"`). */
  on<N extends PushName<Resp>>(name: N, callback: (message: PushOf<Resp, N>, seq: number) => void): this {
    const list = this.pushCallbacks.get(name) ?? [];
    list.push(callback as (message: never, seq: number) => void);
    this.pushCallbacks.set(name, list);
    return this;
  }

  /** Calls `callback(push)` for every push. */
  onAny(callback: (push: Push<Resp>) => void): this {
    this.anyCallbacks.push(callback);
    return this;
  }

  /** Calls `callback(error)` for each error frame with id 0. */
  onError(callback: (error: HubCallError) => void): this {
    this.errorCallbacks.push(callback);
    return this;
  }

  /**
   * Runs call `name` and resolves with its reply message.
   * Rejects with `HubCallError`, `HubClosedError` or `HubTimeoutError`.
   */
  call<N extends CallName<Req>>(
    name: N,
    arg: CallArg<Req, N>,
    options: { timeoutMs?: number } = {},
  ): Promise<ReplyOf<Resp, N>> {
    return this.callFrame(this.frame({ call: { $case: name, value: arg } }), options) as Promise<ReplyOf<Resp, N>>;
  }

  /** Like `call`, for a request frame built by hand: sets its id and waits for the reply's message. */
  callFrame(frame: Req, options: { timeoutMs?: number } = {}): Promise<unknown> {
    const id = this.nextId++;
    frame.id = id;
    const what = `call ${frame.call?.$case ?? "(none)"} (id ${id})`;
    return this.wait(what, options.timeoutMs ?? this.callTimeoutMs, (waiter) => {
      this.pending.set(id, waiter);
      this.write(frame);
      return () => this.pending.delete(id);
    });
  }

  /** Fire-and-forget (id 0): no reply; a failure still comes back as an `onError` callback. */
  send<N extends CallName<Req>>(name: N, arg: CallArg<Req, N>): void {
    this.write(this.frame({ call: { $case: name, value: arg } }));
  }

  /** Sends a client ping; resolves with the round trip to the server's pong, in ms. */
  ping(options: { timeoutMs?: number } = {}): Promise<number> {
    const nonce = this.nextNonce++;
    return this.wait(`ping ${nonce}`, options.timeoutMs ?? this.callTimeoutMs, (waiter) => {
      this.pings.set(nonce, { waiter, sent: performance.now() });
      this.write(this.frame({ control: { kind: { $case: "ping", value: { nonce, lastRttUs: 0 } } } }));
      return () => this.pings.delete(nonce);
    });
  }

  /** Writes one request frame as it is (what `call`, `send` and `ping` build). */
  write(frame: Req): void {
    // After `close` ended our side, a write would be an error on the stream.
    if (this.closeInfo === undefined && !this.ending) {
      this.stream.write(frame);
    }
  }

  /** Ends our side of the stream and waits (bounded) for the server to end its side. */
  async close(timeoutMs = 5_000): Promise<Closed> {
    if (this.closeInfo === undefined) {
      if (!this.ending) {
        this.ending = true;
        this.stream.end();
      }
      const timer = setTimeout(() => this.stream.cancel(), timeoutMs);
      try {
        await this.closed;
      } finally {
        clearTimeout(timer);
      }
    }
    return this.closed;
  }

  /** A request frame: the framework fields, with `id` 0 unless set. */
  private frame(fields: Omit<HubRequest, "id">): Req {
    return { id: 0, ...fields } as Req;
  }

  /** A promise settled by `register`'s waiter, or rejected at the deadline or the end. */
  private wait<T>(what: string, timeoutMs: number, register: (waiter: Waiter) => () => void): Promise<T> {
    if (this.closeInfo !== undefined) {
      return Promise.reject(new HubClosedError(this.closeInfo.code, this.closeInfo.reason));
    }
    return new Promise<T>((resolve, reject) => {
      let unregister = (): void => {};
      const timer = setTimeout(() => {
        unregister();
        reject(new HubTimeoutError(what, timeoutMs));
      }, timeoutMs);
      unregister = register({
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as T);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
    });
  }

  private onFrame(frame: Resp): void {
    const control = frame.control?.kind;
    if (control?.$case === "position") {
      // A push with its group position: kept, and the push handled below.
      this.positions.set(control.value.group, control.value);
    } else if (control !== undefined) {
      this.onControl(control);
      return;
    }
    if (frame.id !== 0) {
      const waiter = this.pending.get(frame.id);
      if (waiter === undefined) {
        return; // a reply to a call that timed out
      }
      this.pending.delete(frame.id);
      if (frame.error !== undefined) {
        waiter.reject(new HubCallError(frame.error.code, frame.error.message, frame.id));
      } else {
        waiter.resolve(frame.event?.value);
      }
    } else if (frame.error !== undefined) {
      const error = new HubCallError(frame.error.code, frame.error.message, 0);
      this.errors.push(error);
      this.dispatch(this.errorCallbacks, error);
    } else if (frame.event !== undefined) {
      const push = { name: frame.event.$case, seq: frame.seq, message: frame.event.value } as Push<Resp>;
      this.dispatch(this.pushCallbacks.get(push.name) ?? [], push.message as never, push.seq);
      this.dispatch(this.anyCallbacks, push);
    }
    // Anything else (a push case newer than this client's proto) is skipped.
  }

  private onControl(kind: NonNullable<ServerControl["kind"]>): void {
    switch (kind.$case) {
      case "hello":
        this.info = kind.value;
        this.hello?.resolve(kind.value);
        this.hello = undefined;
        break;
      case "ping":
        this.lastServerPing = kind.value;
        if (this.autoPong) {
          this.write(this.frame({ control: { kind: { $case: "pong", value: { nonce: kind.value.nonce } } } }));
          this.pingsAnswered++;
        }
        break;
      case "pong": {
        const ping = this.pings.get(kind.value.nonce);
        if (ping !== undefined) {
          this.pings.delete(kind.value.nonce);
          ping.waiter.resolve(performance.now() - ping.sent);
        }
        break;
      }
      case "goodbye":
        this.goodbye = kind.value;
        break;
    }
  }

  private finish(code: number, reason: string): void {
    if (this.closeInfo !== undefined) {
      return;
    }
    const closed =
      this.goodbye !== undefined ? { code: this.goodbye.code, reason: this.goodbye.reason } : { code, reason };
    this.closeInfo = closed;
    const error = new HubClosedError(closed.code, closed.reason);
    const waiters = [...this.pending.values(), ...[...this.pings.values()].map((p) => p.waiter)];
    this.pending.clear();
    this.pings.clear();
    this.hello?.reject(error);
    this.hello = undefined;
    for (const waiter of waiters) {
      waiter.reject(error);
    }
    this.markClosed(closed);
  }

  private dispatch<A extends unknown[]>(callbacks: Array<(...args: A) => void>, ...args: A): void {
    for (const callback of callbacks) {
      try {
        callback(...args);
      } catch (e) {
        // A callback's bug must not kill the reader (nor the process).
        console.error("hub client: a callback threw", e);
      }
    }
  }
}
