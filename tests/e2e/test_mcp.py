"""MCP servers as tools (issue 16), against real servers driven by the
scripted model: `mcp-server-time` from PyPI (stdio) and the tests' own
server on the Python MCP SDK (`tests/mcp/agentd_test_server.py`, stdio and
Streamable HTTP on 127.0.0.1), both from `.tools/mcp-venv`
(`scripts/setup --test`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from runs_support import RUN_WAIT, alive, assert_well_formed_log, trae_config_yaml, wait_file  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("AGENTD_MCP_VENV", ROOT / ".tools" / "mcp-venv"))
TEST_SERVER = ROOT / "tests" / "mcp" / "agentd_test_server.py"


def venv_bin(name: str) -> str:
    path = VENV / "bin" / name
    assert path.exists(), f"{path} is missing: run scripts/setup --test"
    return str(path)


def time_server() -> dict:
    return {"command": venv_bin("mcp-server-time"), "args": ["--local-timezone", "UTC"]}


def sdk_server(*args: str) -> dict:
    return {"command": venv_bin("python"), "args": [str(TEST_SERVER), *args]}


def mcp_config(runs, route, servers: dict, allow: list[str]) -> str:
    """A Trae YAML config for `route` with these MCP servers."""
    path = runs.configs_dir / f"{route.name}-mcp.yaml"
    text = trae_config_yaml(route.base_url) + "mcp_servers:\n"
    for name, server in servers.items():
        text += f"  {name}: {json.dumps(server)}\n"
    text += f"allow_mcp_servers: {json.dumps(allow)}\n"
    path.write_text(text)
    return str(path)


def events_of(runs, task_id, kind):
    return [m for m in runs.status(task_id)["messages"] if m["type"] == kind]


def offered(request: dict) -> dict:
    return {t["function"]["name"]: t["function"] for t in request["body"].get("tools", [])}


def test_a_stdio_server_tool_answers_the_model_and_the_log(runs, tmp_path):
    route = runs.llm.route().script(openai_tool_call("get_current_time", {"timezone": "UTC"}))
    cfg = mcp_config(runs, route, {"time": time_server()}, ["time"])
    task_id = runs.run("What time is it?", tmp_path, config_file=cfg)
    status = runs.wait_status(task_id, "completed")
    assert_well_formed_log(status["messages"], task_id)
    call = events_of(runs, task_id, "tool_call")[0]
    assert call["data"]["name"] == "get_current_time" and call["data"]["arguments"] == {"timezone": "UTC"}
    result = events_of(runs, task_id, "tool_result")[0]
    assert result["data"]["success"] is True, result
    assert '"timezone": "UTC"' in result["message"], result
    # Offered in OpenAI's dialect with the server's schema; the answer came back.
    first, second = route.requests[0], route.requests[1]
    tool = offered(first)["get_current_time"]
    assert tool["parameters"]["properties"]["timezone"]["type"] == "string"
    assert "timezone" in tool["parameters"]["required"]
    answer = [m for m in second["body"]["messages"] if m["role"] == "tool"][0]
    assert answer["content"] == result["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    port = free_port()
    proc = subprocess.Popen([venv_bin("python"), str(TEST_SERVER), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_WAIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.kill()
    proc.wait()


def test_a_streamable_http_server_serves_its_tools(runs, tmp_path, http_server):
    route = runs.llm.route().script(openai_tool_call("add", {"a": 20, "b": 22}))
    cfg = mcp_config(runs, route, {"remote": {"http_url": http_server, "headers": {"X-Trace": "e2e"}}}, ["remote"])
    task_id = runs.run("Add numbers", tmp_path, config_file=cfg)
    runs.wait_status(task_id, "completed")
    result = events_of(runs, task_id, "tool_result")[0]
    assert (result["data"]["name"], result["data"]["success"], result["message"]) == ("add", True, "20 + 22 = 42")
    assert set(offered(route.requests[0])) >= {"add", "slow", "exit_server", "task_done"}

    # GET /api/tools?include_mcp=true lists them with their server; without it, the shape is the document's.
    r = requests.get(f"{runs.stack.trae_url}/api/tools", params={"include_mcp": "true", "config_file": cfg}, timeout=60)
    assert r.status_code == 200, r.text
    mcp_tools = {t["name"]: t for t in r.json()["tools"] if "mcp_server" in t}
    assert set(mcp_tools) == {"add", "slow", "exit_server"}
    assert mcp_tools["add"]["mcp_server"] == "remote"
    assert mcp_tools["add"]["parameters"]["required"] == ["a", "b"]
    assert r.json()["total_tools"] == len(r.json()["tools"])
    plain = requests.get(f"{runs.stack.trae_url}/api/tools", timeout=30).json()
    assert all(set(t) == {"name", "description", "parameters"} for t in plain["tools"]), plain


def slow_call_with_server(runs, tmp_path):
    """A run whose model calls the slow tool of a server that also started a
    child; returns (task_id, server pid, child pid) once the call is under way."""
    pid_file, child_file = tmp_path / "server.pid", tmp_path / "child.pid"
    route = runs.llm.route().script(openai_tool_call("slow", {"seconds": 300}))
    server = sdk_server("--pid-file", str(pid_file), "--child-pid-file", str(child_file))
    cfg = mcp_config(runs, route, {"calc": server}, ["calc"])
    task_id = runs.run("Wait", tmp_path, config_file=cfg)
    pids = int(wait_file(pid_file)), int(wait_file(child_file))
    runs.wait_event(task_id, lambda m: m["type"] == "tool_call", "the slow call")
    assert all(alive(p) for p in pids)
    return task_id, *pids


def wait_gone(pids, timeout=15):
    deadline = time.monotonic() + timeout
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill(pids):
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)


def test_a_stop_during_a_slow_mcp_call_ends_the_server(runs, tmp_path):
    task_id, *pids = slow_call_with_server(runs, tmp_path)
    try:
        runs.stop(task_id)
        runs.wait_status(task_id, "stopped")
        assert not wait_gone(pids), f"MCP server processes {pids} outlived their stopped task"
    finally:
        kill(pids)


def test_a_crash_of_agentd_leaves_no_mcp_server_behind(fresh_runs, tmp_path):
    # Under `fail`: the point is the processes (resuming: test_durable.py).
    runs = fresh_runs({"AGENTD_ON_INTERRUPT": "fail"})
    task_id, *pids = slow_call_with_server(runs, tmp_path)
    try:
        assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        # The server's child ignores the closed pipes; only the recorded group tells of it.
        assert alive(pids[1])
        runs.stack.start_agentd()
        assert not wait_gone(pids), f"MCP server processes {pids} survived agentd's crash and restart"
        runs.wait_status(task_id, "failed")
    finally:
        kill(pids)


def test_a_server_that_exits_mid_run_is_a_tool_error_and_the_run_goes_on(runs, tmp_path):
    route = runs.llm.route().script(
        openai_tool_call("exit_server", {}), openai_tool_call("add", {"a": 1, "b": 2}))
    cfg = mcp_config(runs, route, {"calc": sdk_server()}, ["calc"])
    task_id = runs.run("Crash the server", tmp_path, config_file=cfg)
    runs.wait_status(task_id, "completed")
    results = events_of(runs, task_id, "tool_result")
    assert [(r["data"]["name"], r["data"]["success"]) for r in results] == [
        ("exit_server", False), ("add", False), ("task_done", True)]
    assert "no longer running" in results[1]["data"]["error"], results[1]
    assert len(route.requests) == 3


def test_servers_not_allowed_never_start_and_a_broken_one_fails_the_run(runs, tmp_path):
    marker = tmp_path / "spy-started"
    spy = {"command": "sh", "args": ["-c", f"touch {marker}; sleep 300"]}
    route = runs.llm.route()
    cfg = mcp_config(runs, route, {"time": time_server(), "spy": spy}, ["time"])
    task_id = runs.run("Nothing to do", tmp_path, config_file=cfg)
    runs.wait_status(task_id, "completed")
    assert not marker.exists()
    assert "get_current_time" in offered(route.requests[0])

    broken_route = runs.llm.route()
    cfg = mcp_config(runs, broken_route, {"broken": {"command": "/nonexistent/mcp-server"}}, ["broken"])
    task_id = runs.run("Never starts", tmp_path, config_file=cfg)
    status = runs.wait_status(task_id, "failed")
    assert_well_formed_log(status["messages"], task_id)
    error = events_of(runs, task_id, "error")[0]
    assert error["error"].startswith("MCP server 'broken' could not start"), error
    assert not events_of(runs, task_id, "step")
    assert broken_route.requests == []
