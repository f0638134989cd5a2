"""A small asyncio client for hub streams (chat.v1.ChatHub or any other hub).

A hub is one bidirectional gRPC stream, `Connect`. This module turns it into
awaitable calls and push callbacks, using only the code `grpc_tools.protoc`
generates from the hub's proto (see docs/clients.md):

- `HubClient.connect(..., metadata=[("authorization", "Bearer " + token)])` opens
  the stream with that metadata (a hub that requires it refuses the stream with
  UNAUTHENTICATED otherwise: `connect` raises `ConnectionClosed` with that code);
- the first frame from the server is `control.hello`: `HubClient.connect` waits
  for it and keeps it as `client.info` (a `hub.v1.ConnectionInfo`);
- `await client.call("join", JoinRequest(...))` sends a request frame with a fresh
  call id and resolves with the reply case of the frame carrying that id, or
  raises `HubError` if that frame carries an `error` instead;
- frames with id 0 and an `on_*` case are pushes: they go to the callbacks
  registered with `client.on(name, callback)` (`"*"` for every push);
- frames with id 0 and an `error` (a failed fire-and-forget call, a malformed
  frame) go to the `"error"` callbacks and `client.errors`;
- a frame with `control.ask` is an ask: the server waits for an answer. The
  handler registered with `client.answer(name, handler)` (`handler(message)`, a
  function or a coroutine function) returns the answer message, or raises
  `HubError` to fail the ask; it runs on a task of its own, so it may make calls.
  Its result goes back as a request frame with `control.answer.id` and the
  request's `answer` case of the same name (or `control.answer.error`). An ask
  without a handler is failed with UNIMPLEMENTED;
- a push of a group whose backplane keeps history also carries
  `control.position` (group, offset, epoch) in the same frame: the last one of each
  group is kept in `client.positions`, and `client.resume_metadata()` is what a new
  stream presents to resume the session (on any server) with exactly the pushes it
  missed; `control.pushes_lost` (pushes of a group that could not be recovered) goes
  to the `"pushes_lost"` callbacks. `HubClient.resume(...)` opens that stream and
  retries it with backoff, with the same credential, while the server answers
  UNAVAILABLE (one restoring too many sessions at once says so);
- `control.ping` is answered with `control.pong` (same nonce) at once, so the
  server does not close the connection after its heartbeat timeout;
- when the stream ends, `client.close_code` / `client.close_reason` say why
  (from the `control.goodbye` frame if one came, else from the gRPC status),
  and every call still waiting raises `ConnectionClosed`.
"""

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
from typing import Any, Callable, NamedTuple, Optional

import grpc

log = logging.getLogger("hub_client")
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_code(code: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a numeric code from an error or goodbye frame."""
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


class HubError(Exception):
    """An error frame: a call failed (`call_id` set) or a frame was refused (0)."""

    def __init__(self, code: int, message: str, call_id: int = 0):
        super().__init__(f"{status_code(code).name}: {message}")
        self.code, self.message, self.call_id = status_code(code), message, call_id


class ConnectionClosed(Exception):
    """The stream ended before the answer came."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(f"connection closed ({code.name}): {reason}")
        self.code, self.reason = code, reason


class Push(NamedTuple):
    name: str  # the push case, e.g. "on_message"
    seq: int  # the connection's push sequence number (1, 2, 3...)
    message: Any  # the push case's message


class HubClient:
    """One connection to a hub. Make it with `await HubClient.connect(...)`, in a running loop."""

    def __init__(self, connect: Callable, request_type: type, auto_pong: bool = True, metadata=(),
                 on: Optional[dict] = None):
        self._request_type = request_type
        self._auto_pong = auto_pong
        loop = asyncio.get_running_loop()
        self._outgoing: asyncio.Queue = asyncio.Queue()  # frames to send; None half-closes
        self._pending: dict = {}  # call id -> future of the reply
        self._pings: dict = {}  # nonce -> (future, time sent) of our own pings
        self._ids, self._nonces = itertools.count(1), itertools.count(1)
        self._callbacks: dict = {}  # push name, "*" or "error" -> callbacks
        for name, callback in (on or {}).items():
            self._callbacks.setdefault(name, []).append(callback)
        self._answerers: dict = {}  # ask name -> handler
        self._answering: set = set()  # tasks answering asks
        self.asks_answered = 0  # answers (and failures) sent
        self._hello, self._done = loop.create_future(), loop.create_future()
        self.info = None  # hub.v1.ConnectionInfo from the hello frame
        self.goodbye = None  # hub.v1.Goodbye, if the server sent one
        self.close_code: Optional[grpc.StatusCode] = None
        self.close_reason = ""
        self.errors: list = []  # HubError of every error frame with id 0
        self.pings_answered = 0  # server pings answered with a pong
        self.last_server_ping = None  # the last hub.v1.Ping from the server
        self.last_seq = 0  # the seq of the last push received
        self.positions: dict = {}  # group -> the last hub.v1.Position of its pushes
        self._call = connect(self._frames(), metadata=tuple(metadata))
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, connect: Callable, request_type: type, *, auto_pong: bool = True,
                      metadata=(), timeout: float = 10.0, on: Optional[dict] = None) -> "HubClient":
        """Opens the stream (`connect` is e.g. `ChatHubStub(channel).Connect`) and waits for hello.

        `request_type` is the hub's request message (`ChatRequest`); `metadata` is sent
        with the stream (`[("authorization", "Bearer <token>")]`); `auto_pong=False`
        leaves server pings unanswered (to see the heartbeat timeout at work). `on` maps
        push names ("*": all) to callbacks registered before the stream opens: pushes
        that come right after the hello (a resumed session's replay) reach them; a
        callback registered later with `on()` misses what came before.
        """
        client = cls(connect, request_type, auto_pong, metadata, on)
        try:
            await asyncio.wait_for(asyncio.shield(client._hello), timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close(timeout=1.0)
            raise
        return client

    def answer(self, name: str, handler: Callable) -> None:
        """Answers the asks `name` with `handler(message)` (returns the answer, or raises HubError)."""
        self._answerers[name] = handler

    async def _answer(self, case: str, ask: Any, message: Any) -> None:
        frame = self._request_type()
        frame.control.answer.id = ask.id
        handler = self._answerers.get(case)
        try:
            if handler is None:
                raise HubError(12, f"this client does not answer `{case}`")
            result = handler(message)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, ask.timeout_ms / 1000) if ask.timeout_ms else await result
            getattr(frame, case).CopyFrom(result)
        except asyncio.TimeoutError:
            return  # the server stopped waiting: nothing to send
        except HubError as e:
            frame.control.answer.error.code = e.code.value[0]
            frame.control.answer.error.message = str(e.message)
        except Exception as e:  # a handler's bug fails the ask, it does not kill the client
            log.exception("hub_client answer to %s failed", case)
            frame.control.answer.error.code = 13
            frame.control.answer.error.message = f"the client's answer failed: {e}"
        self.send_frame(frame)
        self.asks_answered += 1

    def resume_metadata(self, positions_type: type) -> list:
        """The metadata that resumes this connection's session on a new stream (add the
        same authorization): `hub-resume`, `hub-resume-seq` and, if any push carried a
        position, `hub-resume-positions-bin` (`positions_type` is the generated
        `hub_pb2.ResumePositions`)."""
        md = [("hub-resume", self.info.resume_credential), ("hub-resume-seq", str(self.last_seq))]
        if self.positions:
            positions = positions_type(positions=list(self.positions.values()))
            md.append(("hub-resume-positions-bin", positions.SerializeToString()))
        return md

    @classmethod
    async def resume(cls, connect: Callable, request_type: type, metadata, *, attempts: int = 6,
                     backoff: float = 0.2, max_backoff: float = 5.0, **kwargs) -> "HubClient":
        """Opens a stream that resumes a session: `metadata` is the authorization plus
        `resume_metadata()` of the connection that dropped, sent unchanged at every
        attempt. A stream refused with UNAVAILABLE before its hello (a server shutting
        down or not up yet, or one that bounds how many sessions it restores at once
        and is past that bound: "too many sessions are being restored ...; retry") is
        tried again after a backoff (doubling from `backoff` up to `max_backoff`,
        with jitter), at most `attempts` times in all: the session is left as it was,
        so a retry with the same credential can still resume it. Other codes are
        raised at once (`ConnectionClosed`). Read `client.info.resumption` of the
        result for the outcome."""
        delay = backoff
        for attempt in itertools.count(1):
            try:
                return await cls.connect(connect, request_type, metadata=metadata, **kwargs)
            except ConnectionClosed as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or attempt >= attempts:
                    raise
                log.debug("hub_client resume attempt %d: %s; retrying", attempt, e)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, max_backoff)

    def on(self, name: str, callback: Callable) -> None:
        """Calls `callback(Push)` for each push `name` ("*": all), or `callback(HubError)` for "error"."""
        self._callbacks.setdefault(name, []).append(callback)

    async def call(self, name: str, message: Any = None, *, timeout: float = 10.0) -> Any:
        """Runs call `name`, returns its reply message; raises HubError, ConnectionClosed or TimeoutError."""
        return await self.call_frame(self._request(name, message), timeout=timeout)

    async def call_frame(self, frame: Any, *, timeout: float = 10.0) -> Any:
        """Like `call`, for a request frame built by hand: sets its id and waits for the answer."""
        if self._done.done():
            raise ConnectionClosed(self.close_code, self.close_reason)
        frame.id = call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.send_frame(frame)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(call_id, None)

    def send(self, name: str, message: Any = None) -> None:
        """Fire-and-forget (id 0): no reply; a failure still comes back as an "error" callback."""
        self.send_frame(self._request(name, message))

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Sends a client ping and returns the round trip to the server's pong, in seconds."""
        nonce = next(self._nonces)
        future = asyncio.get_running_loop().create_future()
        self._pings[nonce] = (future, time.monotonic())
        frame = self._request_type()
        frame.control.ping.nonce = nonce
        self.send_frame(frame)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pings.pop(nonce, None)

    def send_frame(self, frame: Any) -> None:
        """Queues one raw request frame (what `call`, `send` and `ping` build)."""
        self._outgoing.put_nowait(frame)

    async def closed(self, timeout: Optional[float] = None) -> tuple:
        """Waits for the stream to end; returns (close_code, close_reason)."""
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Ends our side of the stream and waits (bounded) for the server to end its side."""
        self._outgoing.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except asyncio.TimeoutError:
            self._call.cancel()
            await asyncio.wait_for(asyncio.shield(self._done), timeout)

    def _request(self, name: str, message: Any) -> Any:
        frame = self._request_type()
        case = getattr(frame, name)  # AttributeError names an unknown call
        if message is None:
            case.SetInParent()  # a call without arguments (google.protobuf.Empty)
        else:
            case.CopyFrom(message)
        return frame

    async def _frames(self):
        while (frame := await self._outgoing.get()) is not None:
            yield frame

    async def _read(self) -> None:
        code, reason = grpc.StatusCode.OK, ""
        try:
            async for frame in self._call:
                self._on_frame(frame)
        except grpc.aio.AioRpcError as e:
            code, reason = e.code(), e.details() or ""
        except asyncio.CancelledError:
            code, reason = grpc.StatusCode.CANCELLED, "cancelled by the client"
        except Exception as e:  # e.g. a frame that does not decode: end like a broken stream
            log.exception("hub_client reader failed")
            code, reason = grpc.StatusCode.INTERNAL, f"client error: {e!r}"
            self._call.cancel()
        if self.goodbye is not None:
            code, reason = status_code(self.goodbye.code), self.goodbye.reason
        self.close_code, self.close_reason = code, reason
        for future in [*self._pending.values(), *(f for f, _ in self._pings.values()), self._hello]:
            if not future.done():
                future.set_exception(ConnectionClosed(code, reason))
                future.exception()  # marks it retrieved: its waiter may have timed out
        self._done.set_result((code, reason))

    def _on_frame(self, frame: Any) -> None:
        if frame.HasField("control"):
            kind = frame.control.WhichOneof("kind")
            body = getattr(frame.control, kind) if kind else None
            if kind == "hello" and not self._hello.done():
                self.info = body
                self._hello.set_result(body)
            elif kind == "ping":
                self.last_server_ping = body
                if self._auto_pong:
                    pong = self._request_type()
                    pong.control.pong.nonce = body.nonce
                    self.send_frame(pong)
                    self.pings_answered += 1
            elif kind == "pong" and body.nonce in self._pings:
                future, sent = self._pings[body.nonce]
                if not future.done():
                    future.set_result(time.monotonic() - sent)
            elif kind == "goodbye":
                self.goodbye = body
            elif kind == "pushes_lost":
                self._dispatch("pushes_lost", body)
            elif kind == "ask":
                case = frame.WhichOneof("event")
                task = asyncio.ensure_future(self._answer(case, body, getattr(frame, case) if case else None))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            if kind != "position":
                return
            # A push with its group position: kept (the 128 most recently updated, so
            # the resume metadata stays small), and the push handled below.
            self.positions.pop(body.group, None)
            self.positions[body.group] = body
            if len(self.positions) > 128:
                del self.positions[next(iter(self.positions))]
        case = frame.WhichOneof("event")
        if frame.id:
            future = self._pending.get(frame.id)
            if future is None or future.done():
                log.warning("frame for unknown or expired call id %d", frame.id)
            elif frame.HasField("error"):
                future.set_exception(HubError(frame.error.code, frame.error.message, frame.id))
            else:
                future.set_result(getattr(frame, case) if case else None)
        elif frame.HasField("error"):
            error = HubError(frame.error.code, frame.error.message)
            self.errors.append(error)
            self._dispatch("error", error)
        elif case:
            self.last_seq = max(self.last_seq, frame.seq)
            push = Push(case, frame.seq, getattr(frame, case))
            self._dispatch(case, push)
            self._dispatch("*", push)

    def _dispatch(self, name: str, arg: Any) -> None:
        for callback in self._callbacks.get(name, ()):
            try:
                callback(arg)
            except Exception:  # a callback's bug must not kill the reader
                log.exception("hub_client callback for %s failed", name)
