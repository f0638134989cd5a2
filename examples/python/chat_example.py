"""Run with: .venv/bin/python examples/python/chat_example.py --user py --room lobby --say "hello"

The chat hub from Python: generates the code from proto/ with grpc_tools.protoc
(stock output, into a temp dir), logs in (chat.v1.ChatLogin/Login, or --token from
an identity provider), connects with `authorization: Bearer <token>`, joins a room,
says something, and prints the pushes it gets for --listen seconds. See docs/clients.md.
"""

import argparse
import asyncio
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

from hub_client import HubClient, HubError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate(out: str) -> None:
    """`python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT ...`."""
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")  # google/protobuf/empty.proto
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", "chat/v1/chat.proto", "chat/v1/login.proto", "hub/v1/hub.proto"]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)


async def chat(args) -> None:
    from chat.v1 import chat_pb2, chat_pb2_grpc, login_pb2, login_pb2_grpc

    async with grpc.aio.insecure_channel(args.addr) as channel:
        token = args.token
        if token is None:
            reply = await login_pb2_grpc.ChatLoginStub(channel).Login(login_pb2.LoginRequest(user=args.user))
            print(f"logged in as {reply.user}")
            token = reply.token
        hub = await HubClient.connect(chat_pb2_grpc.ChatHubStub(channel).Connect, chat_pb2.ChatRequest,
                                      metadata=[("authorization", f"Bearer {token}")])
        print(f"connected as {hub.info.connection_id} (server {hub.info.server_id})")
        hub.on("on_join", lambda p: print(f"* {p.message.user} joined"))
        hub.on("on_leave", lambda p: print(f"* {p.message.user} left"))
        hub.on("on_message", lambda p: print(f"[{p.seq}] {getattr(p.message, 'from')}: {p.message.text}"))
        hub.on("on_whisper", lambda p: print(f"(whisper) {getattr(p.message, 'from')}: {p.message.text}"))
        try:
            joined = await hub.call("join", chat_pb2.JoinRequest(room=args.room))
            print(f"joined {joined.room}: {', '.join(joined.members)}")
            for text in args.say:
                await hub.call("say", chat_pb2.SayRequest(text=text))
            await asyncio.sleep(args.listen)
        except HubError as e:
            print(f"call failed: {e.code.name}: {e.message}")
        finally:
            await hub.close()
        print(f"closed: {hub.close_code.name} {hub.close_reason}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="log in under this name (the server's development login)")
    who.add_argument("--token", help="a bearer token from your identity provider")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--say", action="append", default=[])
    parser.add_argument("--listen", type=float, default=1.0, help="seconds to print pushes for")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        asyncio.run(chat(args))


if __name__ == "__main__":
    main()
