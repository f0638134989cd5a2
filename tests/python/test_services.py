"""The standard services chat-server serves beside the hub: grpc.health.v1 and both
server reflection APIs (v1, which current tools use, and v1alpha, which older ones
such as grpcurl 1.8.6 use; scripts/grpcurl-smoke.sh covers v1alpha end to end).

Their protos are not in this repo, so these few messages are written out in bytes."""

import grpc
import pytest

from support import run


def string_field(number: int, value: str) -> bytes:
    data = value.encode()
    return bytes([number << 3 | 2, len(data)]) + data  # short strings only: one-byte length


def test_health_check_says_serving(chat_servers):
    server = chat_servers()

    async def scenario():
        async with grpc.aio.insecure_channel(server.addr) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            # HealthCheckRequest{service} -> HealthCheckResponse{status = SERVING (1)}
            assert await check(string_field(1, "chat.v1.ChatHub"), timeout=15) == b"\x08\x01"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check(string_field(1, "no.such.Service"), timeout=15)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_server_reflection_lists_and_describes_the_hub(chat_servers, version):
    server = chat_servers()

    async def scenario():
        async with grpc.aio.insecure_channel(server.addr) as channel:
            info = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
            # ServerReflectionRequest{list_services = ""}, then {file_containing_symbol = "chat.v1.ChatHub"}
            requests = [string_field(7, ""), string_field(4, "chat.v1.ChatHub")]
            call = info(iter(requests), timeout=15)
            listed, described = [reply async for reply in call]
            assert b"chat.v1.ChatHub" in listed and b"grpc.health.v1.Health" in listed
            assert b"chat.v1.ChatLogin" in listed
            assert b"chat/v1/chat.proto" in described and b"ChatRequest" in described

    run(scenario())
