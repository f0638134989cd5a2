"""Fixtures: Python code generated from the repo's protos at test time, chat-server
processes, and private redis-server / nats-server processes on free ports."""

import importlib
import signal
import subprocess
import sys

import pytest

import support
from support import ROOT, ChatServer, Chat


def _interrupt(signum, frame):
    # `timeout` or CI sends SIGTERM: unwind through the fixtures so they kill their servers.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _interrupt)


def pytest_sessionstart(session):
    for binary in (support.CHAT_SERVER, support.CHAT_CLIENT):
        if not binary.exists():
            pytest.exit(f"{binary} is missing: build it with `cargo build -p examples --bins`", returncode=2)


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """Runs stock `grpc_tools.protoc` on proto/ into a temp dir and imports the result."""
    out = tmp_path_factory.mktemp("generated")
    protos = ["chat/v1/chat.proto", "chat/v1/login.proto", "hub/v1/hub.proto"]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
           f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"protoc failed: {' '.join(cmd)}\n{result.stderr}"
    sys.path.insert(0, str(out))
    return Chat(importlib.import_module("chat.v1.chat_pb2"),
                importlib.import_module("chat.v1.chat_pb2_grpc"),
                importlib.import_module("chat.v1.login_pb2"),
                importlib.import_module("chat.v1.login_pb2_grpc"),
                importlib.import_module("hub.v1.hub_pb2"))


@pytest.fixture
def chat_servers(tmp_path):
    """`chat_servers(groups="memory", *flags)` starts a chat-server; all are stopped after the test."""
    started = []

    def start(groups="memory", *flags):
        server = ChatServer(tmp_path, groups, *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _need(binary):
    if support.find_binary(binary) is None:
        pytest.fail(f"{binary} is not installed: run scripts/install-deps.sh")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server (no persistence) on a free port, for the whole session."""
    _need("redis-server")
    proc, url = support.start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory):
    """A private nats-server on a free port, for the whole session."""
    _need("nats-server")
    proc, url = support.start_nats(tmp_path_factory.mktemp("nats"))
    yield url
    proc.stop()


@pytest.fixture(params=["memory", "redis", "nats"])
def groups(request):
    """Each group provider in turn: `memory`, or the URL of a private Redis / NATS."""
    if request.param == "memory":
        return "memory"
    return request.getfixturevalue(f"{request.param}_url")
