"""An MCP server for agentd's tests, on the Python MCP SDK: stdio, or
Streamable HTTP on 127.0.0.1 (--http PORT, path /mcp).

Tools: `add` (a + b), `slow` (answers after `seconds`), `exit_server` (the
process exits in the middle of the call, as a crashing server would).
--pid-file FILE: writes the process id there once serving.
--child-pid-file FILE: first starts a `sleep` child (as servers start helpers;
it shares the server's process group) and writes its pid there.
"""

import argparse
import asyncio
import os
import subprocess

from mcp.server.mcpserver import MCPServer

server = MCPServer("agentd-test-server")


@server.tool()
def add(a: int, b: int) -> str:
    """Adds two integers."""
    return f"{a} + {b} = {a + b}"


@server.tool()
async def slow(seconds: float) -> str:
    """Waits `seconds`, then answers."""
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def exit_server() -> str:
    """Ends the server process at once."""
    os._exit(3)


def write_pid(path: str, pid: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(pid))
    os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, help="serve Streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--pid-file")
    parser.add_argument("--child-pid-file")
    args = parser.parse_args()
    if args.child_pid_file:
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        write_pid(args.child_pid_file, child.pid)
    if args.pid_file:
        write_pid(args.pid_file, os.getpid())
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
