"""Processes and clients for the Python tests: chat-server, redis-server and
nats-server on free loopback ports, the Rust chat-client, and a push recorder.

Every wait here is bounded; every process started here is killed by its owner
(a fixture) and, should pytest itself die, by the kernel (see `guarded`).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "debug"
CHAT_SERVER = BIN / "chat-server"
CHAT_CLIENT = BIN / "chat-client"
sys.path.insert(0, str(ROOT / "examples" / "python"))

import grpc  # noqa: E402
from hub_client import HubClient  # noqa: E402

# Ports that belong to servers this suite must never touch.
RESERVED_PORTS = {6379, 4222, 50051}
# Generous, because the machine is shared: these bound waits, they assert no speed.
START_TIMEOUT = 30.0
WAIT = 15.0


def guarded(argv: list) -> list:
    """`argv` run so that the kernel kills it should the test process die (PR_SET_PDEATHSIG).

    Done with util-linux `setpriv` rather than a `preexec_fn`: running Python in a
    child forked from a process with gRPC threads crashes now and then.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it), never a reserved one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def unique(prefix: str) -> str:
    """A room or user name no other test uses (backplane servers are shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Process:
    """A child process whose stdout and stderr go to files in `workdir`, killed by `stop()`."""

    def __init__(self, name: str, argv: list, workdir: Path):
        self.name, self.argv = name, [str(a) for a in argv]
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(guarded(self.argv), cwd=workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """Waits for `pattern` in stdout; fails with the process's output if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stdout_path.read_text(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before printing "
                                   f"{pattern!r}:\n$ {' '.join(self.argv)}\n{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout}s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)


def wait_for_port(port: int, proc: Process, greeting: bytes, send: bytes = b"",
                  timeout: float = START_TIMEOUT) -> None:
    """Waits until 127.0.0.1:`port` answers with `greeting` (after sending `send`)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(send)
                if s.recv(64).startswith(greeting):
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} on port {port} did not answer within {timeout}s ({last}):\n{proc.output()}")


def find_binary(name: str):
    """`name` on PATH or in /usr/sbin (where Debian puts nats-server), or None."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def _start_on_free_port(name: str, argv, greeting: bytes, send: bytes, workdir: Path) -> tuple:
    """Starts `argv(port)` on a free port, trying again should another process take the port first."""
    for attempt in range(3):
        port = free_port()
        proc = Process(f"{name}-{attempt}", argv(port), workdir)
        try:
            wait_for_port(port, proc, greeting, send)
            return proc, port
        except RuntimeError:
            proc.stop()
            if attempt == 2:
                raise


def start_redis(workdir: Path) -> tuple:
    """A redis-server without persistence on a free loopback port: (process, URL)."""
    argv = lambda port: [find_binary("redis-server"), "--port", port, "--bind", "127.0.0.1",  # noqa: E731
                         "--save", "", "--appendonly", "no", "--dir", workdir]
    proc, port = _start_on_free_port("redis-server", argv, b"+PONG", b"PING\r\n", workdir)
    return proc, f"redis://127.0.0.1:{port}"


def start_nats(workdir: Path) -> tuple:
    """A nats-server on a free loopback port: (process, URL)."""
    argv = lambda port: [find_binary("nats-server"), "-a", "127.0.0.1", "-p", port]  # noqa: E731
    proc, port = _start_on_free_port("nats-server", argv, b"INFO ", b"", workdir)
    return proc, f"nats://127.0.0.1:{port}"


class ChatServer(Process):
    """A real `chat-server` on a free port (`--addr 127.0.0.1:0`; it prints the one it got)."""

    def __init__(self, workdir: Path, groups: str = "memory", *extra):
        name = f"chat-server-{uuid.uuid4().hex[:6]}"
        super().__init__(name, [CHAT_SERVER, "--addr", "127.0.0.1:0", "--groups", groups, *extra], workdir)
        self.groups = groups
        m = self.wait_for_output(r"chat-server listening on (\S+)")
        self.addr = m.group(1)


class Chat:
    """The generated chat.v1 and hub.v1 modules, and the HubClient factory built on them."""

    def __init__(self, chat_pb2, chat_pb2_grpc, login_pb2, login_pb2_grpc, hub_pb2):
        self.pb, self.grpc, self.hub = chat_pb2, chat_pb2_grpc, hub_pb2
        self.login_pb, self.login_grpc = login_pb2, login_pb2_grpc

    async def login(self, server: ChatServer, user: str):
        """`chat.v1.ChatLogin/Login` on `server`: the LoginReply (token, user, expires_at)."""
        async with grpc.aio.insecure_channel(server.addr) as channel:
            stub = self.login_grpc.ChatLoginStub(channel)
            return await stub.Login(self.login_pb.LoginRequest(user=user), timeout=WAIT)

    async def connect(self, server: ChatServer, user: str = None, *, token: str = None,
                      login_at: ChatServer = None, **kw) -> "Client":
        """Logs in as `user` (at `login_at`, default `server`) and connects with the token,
        or connects with `token` as it is; with neither, connects with no authorization."""
        if token is None and user is not None:
            token = (await self.login(login_at or server, user)).token
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        metadata += kw.pop("metadata_extra", [])
        channel = grpc.aio.insecure_channel(server.addr)
        # Pushes are recorded from the first frame on: a resumed session replays right
        # after the hello.
        pushes: asyncio.Queue = asyncio.Queue()
        try:
            hub = await HubClient.connect(self.grpc.ChatHubStub(channel).Connect, self.pb.ChatRequest,
                                          metadata=metadata, on={"*": pushes.put_nowait}, **kw)
        except BaseException:
            await channel.close()
            raise
        return Client(hub, channel, self.pb, pushes)


class Client:
    """A HubClient with its channel, the chat calls spelled out, and a record of its pushes."""

    def __init__(self, hub: HubClient, channel, pb, pushes: asyncio.Queue):
        self.hub, self.channel, self.pb = hub, channel, pb
        self.pushes = pushes

    async def join(self, room: str):
        return await self.hub.call("join", self.pb.JoinRequest(room=room))

    async def say(self, text: str):
        return await self.hub.call("say", self.pb.SayRequest(text=text))

    async def whisper(self, user: str, text: str):
        return await self.hub.call("whisper", self.pb.WhisperRequest(user=user, text=text))

    async def next_push(self, timeout: float = WAIT):
        """The next push this connection received, whatever it is (fails after `timeout`)."""
        try:
            return await asyncio.wait_for(self.pushes.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no push within {timeout}s") from None

    async def expect(self, name: str, timeout: float = WAIT, **fields):
        """The next push, which must be `name` with these fields (`from_` for `from`)."""
        push = await self.next_push(timeout)
        got = {k: getattr(push.message, k.rstrip("_")) for k in fields}
        assert (push.name, got) == (name, fields), f"expected {name} {fields}, got {push.name} {push.message}"
        return push

    async def close(self):
        try:
            await self.hub.close()
        finally:
            await self.channel.close()


async def rust_client(addr: str, user: str, room: str, *args: str, timeout: float = 60.0) -> list:
    """Runs `chat-client --json` to completion; returns its JSON lines (fails on a non-zero exit)."""
    argv = [str(CHAT_CLIENT), "--addr", addr, "--user", user, "--room", room, "--json", *args]
    proc = await asyncio.create_subprocess_exec(
        *guarded(argv), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert proc.returncode == 0, f"chat-client {user} exited with {proc.returncode}: {lines}\n{err.decode()}"
    return lines


def run(coro, timeout: float = 120.0):
    """Runs one test's coroutine on a fresh event loop, bounded by `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
