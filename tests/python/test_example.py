"""The example that docs/clients.md shows, run as a user would run it."""

import asyncio
import json
import sys

from support import CHAT_CLIENT, ROOT, guarded, run, unique


def test_the_python_example_talks_to_a_rust_client(chat_servers):
    server = chat_servers()
    room = unique("room")

    async def scenario():
        # A Rust client that waits for two pushes: python's on_join, then its message.
        rust = await asyncio.create_subprocess_exec(*guarded([
            str(CHAT_CLIENT), "--addr", server.addr, "--user", "rusty", "--room", room, "--json",
            "--wait-for", "2", "--listen", "60"]), stdout=asyncio.subprocess.PIPE)
        try:
            assert json.loads(await asyncio.wait_for(rust.stdout.readline(), 30))["logged_in"] == "rusty"
            assert "connected" in json.loads(await asyncio.wait_for(rust.stdout.readline(), 30))
            assert json.loads(await asyncio.wait_for(rust.stdout.readline(), 30))["reply"] == "joined"
            example = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "examples" / "python" / "chat_example.py"), "--addr", server.addr,
                "--user", "py", "--room", room, "--say", "hello from the example", "--listen", "0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(example.communicate(), 60)
            out = out.decode()
            assert example.returncode == 0, out
            assert f"joined {room}: py, rusty" in out
            assert out.rstrip().endswith("closed: OK"), out
            rest, _ = await asyncio.wait_for(rust.communicate(), 60)
            pushes = [json.loads(line) for line in rest.decode().splitlines()]
            # It may also see the example leave before it exits.
            assert pushes[:2] == [{"push": "on_join", "room": room, "user": "py"},
                              {"push": "on_message", "room": room, "from": "py", "text": "hello from the example"}]
            assert pushes[2:] in ([], [{"push": "on_leave", "room": room, "user": "py"}])
            assert rust.returncode == 0
        finally:
            if rust.returncode is None:
                rust.kill()
                await rust.wait()

    run(scenario())
