"""The event contract (issue 13): every event of a run, on every transport
that carries it (Trae SSE, Agent Protocol SSE, both gRPC streams, the task
and logs WebSockets), has a type `proto/agentd/v1/events.proto` lists and
only the `data` keys it lists there for that type.

The runs between them produce every stored type: a Trae run that is nudged,
gets malformed tool arguments, edits a git repo and writes a patch and a
trajectory; a stopped run; a run whose provider fails; an Agent Protocol task
whose first step's model call gives up (`step_failed`) and whose next step
completes it; a streamed run that reaches its token budget; a run with a
lakeview model (`lakeview`, and `usage` with `lakeview`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

pytest.register_assert_rewrite("runs_support")

from helpers import AP  # noqa: E402
from runs_support import (  # noqa: E402
    Reader,
    TaskProcesses,
    assert_well_formed_log,
    key,
    long_bash,
    read_ws,
    wait_file,
    ws_url,
)
from scripted_llm import delayed, error, openai_stream, openai_text, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

EVENTS_PROTO = Path(__file__).resolve().parents[2] / "proto" / "agentd" / "v1" / "events.proto"
TOP_LEVEL = {"type", "task_id", "message", "result", "error", "timestamp", "seq", "data"}
STATUS_UPDATE_KEYS = {"type", "task_id", "status", "progress", "current_step", "timestamp", "seq", "event"}
LOG_KEYS = {"type", "level", "message", "timestamp", "task_id", "component", "seq", "event"}


def contract() -> dict[str, dict[str, bool]]:
    """events.proto's list: type -> {data key: optional}."""
    out: dict[str, dict[str, bool]] = {}
    for line in EVENTS_PROTO.read_text().splitlines():
        m = re.match(r"^//   - (\w+): (.*)$", line)
        if not m:
            continue
        kind, keys = m.groups()
        out[kind] = {} if keys.strip() == "-" else {
            k.strip().rstrip("?"): k.strip().endswith("?") for k in keys.split(",")}
    assert {"start", "end", "heartbeat", "tool_result"} <= set(out), out
    return out


CONTRACT = contract()


def check_event(e: dict, where: str) -> None:
    assert e["type"] in CONTRACT and e["type"] != "heartbeat", f"{where}: undocumented type {e['type']!r}"
    assert set(e) <= TOP_LEVEL, f"{where}: undocumented fields {set(e) - TOP_LEVEL} in {e}"
    keys = CONTRACT[e["type"]]
    data = e.get("data")
    if not keys:
        assert not data, f"{where}: {e['type']} carries data {data}"
        return
    assert isinstance(data, dict), f"{where}: {e['type']} without data: {e}"
    extra = set(data) - set(keys)
    assert not extra, f"{where}: {e['type']} has undocumented data keys {extra}: {data}"
    missing = {k for k, optional in keys.items() if not optional} - set(data)
    assert not missing, f"{where}: {e['type']} lacks data keys {missing}: {data}"
    if e["type"] == "complete":
        assert isinstance(e.get("result"), str), e
    if e["type"] == "error":
        assert isinstance(e.get("error"), str), e


def read_everywhere(runs, task_id: str) -> dict[str, list[dict]]:
    """The task's whole log from each stream that replays it."""
    out = {
        "trae sse": runs.sse(task_id),
        "ap sse": runs.sse(task_id, base=runs.stack.ap_url, path=f"{AP}/tasks/{task_id}/events"),
        "trae grpc": runs.grpc_events("agentd.trae.v1.TraeService/StreamTask", task_id),
        "ap grpc": runs.grpc_events("agentd.agent.v1.AgentService/StreamTaskEvents", task_id),
    }
    assert_well_formed_log(out["trae sse"], task_id)
    for where, events in out.items():
        assert key(events) == key(out["trae sse"]), f"{where} differs from the Trae SSE stream"
    return out


def test_every_event_on_every_transport_is_as_events_proto_documents(runs, git_repo, tmp_path):
    tasks: list[str] = []
    with connect(ws_url(runs.stack.trae_url, f"{AP}/logs/ws"), open_timeout=10, close_timeout=5, proxy=None) as logs:
        # The logs socket carries live events only: wait until it is subscribed.
        warm = runs.run("warm up", tmp_path / "warm",
                        route=runs.llm.route().script(delayed(openai_tool_call("task_done", {}, text="w"), 0.3)))
        read_ws(logs, until=lambda m: m.get("task_id") == warm and m.get("event") == "end")
        log_msgs: list[dict] = []
        done = {"ends": 0}

        def until_all_ended(m: dict) -> bool:
            if m.get("task_id") in tasks and m.get("event") == "end":
                done["ends"] += 1
            return done["ends"] == 4

        reader = Reader(lambda: read_ws(logs, until=until_all_ended, timeout=180))
        reader.start()

        # 1. A Trae run that touches most types; its task socket watches it live.
        edited = git_repo / "hello.py"
        full = runs.llm.route().script(
            delayed(openai_text("Let me think first."), 0.5),
            openai_tool_call("bash", None, raw_arguments='{"command": "ls'),
            openai_tool_call("str_replace_based_edit_tool", {
                "command": "str_replace", "path": str(edited),
                "old_str": 'print("hello")', "new_str": 'print("contract")'}),
            openai_tool_call("task_done", {}, text="Edited."),
        )
        trae = runs.run("edit hello.py", git_repo, route=full, patch_path="out/task.patch",
                        trajectory_file="out/trajectory.json")
        tasks.append(trae)
        updates, closed = read_ws(ws_url(runs.stack.ap_url, f"{AP}/tasks/{trae}/ws"), until=lambda m: False)
        assert closed, "the task socket did not close after the task ended"

        # 2. A stopped run.
        wd = tmp_path / "stopped"
        stopped = runs.run("run something long", wd, route=runs.llm.route().script(long_bash()))
        tasks.append(stopped)
        procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
        try:
            runs.stop(stopped)
            assert not procs.wait_gone(timeout=15)
        finally:
            procs.kill_leftovers()
        runs.wait_status(stopped, "stopped")

        # 3. A run whose provider fails.
        down = runs.llm.route().script(error(500, "model overloaded"))
        failed = runs.run("fail", tmp_path / "failed", route=down, config_file=runs.config(down, max_retries=0))
        tasks.append(failed)
        runs.wait_status(failed, "failed")

        # 4. An Agent Protocol task: a step whose model call gives up, then one that ends it.
        outage = runs.llm.route().script(error(503, "still down"),
                                         openai_tool_call("task_done", {}, text="back"))
        ap = runs.stack.create_task("survive an outage", config_file=runs.config(outage, max_retries=0))["task_id"]
        tasks.append(ap)
        steps = f"{runs.stack.ap_url}{AP}/tasks/{ap}/steps"
        assert requests.post(steps, json={"input": "go"}, timeout=120).status_code == 502
        assert requests.post(steps, json={"input": "go"}, timeout=120).status_code == 200

        # 5. A streamed run that reaches its budget (`llm_delta`, `budget_exceeded`, `start` with its `budget`).
        thinking = runs.llm.route().script(openai_stream("thinking, streamed"), openai_text("still thinking"))
        budgeted = runs.run("over budget", tmp_path / "budget", route=thinking, max_tokens_total=15)
        tasks.append(budgeted)
        runs.wait_status(budgeted, "failed")

        # 6. A run whose steps lakeview summarises (a second route is its model).
        agent = runs.llm.route().script(openai_tool_call("task_done", {}, text="Done."))
        lakeview = runs.llm.route().script(openai_text(" is finishing.</task><details>It calls task_done.</details>"),
                                           openai_text("REPORT</tags>"))
        summarised = runs.run("summarise me", tmp_path / "lakeview", route=agent,
                              config_file=runs.config(agent, lakeview=lakeview))
        tasks.append(summarised)
        runs.wait_status(summarised, "completed")

        log_msgs, _ = reader.result()

    seen: set[str] = set()
    for task_id in tasks:
        for where, events in read_everywhere(runs, task_id).items():
            for e in events:
                check_event(e, f"{where} of {task_id}")
                seen.add(e["type"])
        # The logs socket: one `log` per event, naming a documented type.
        mine = [m for m in log_msgs if m.get("task_id") == task_id]
        assert [m["seq"] for m in mine] == list(range(1, len(mine) + 1)), mine
        for m in mine:
            assert set(m) == LOG_KEYS and m["type"] == "log", m
            assert m["event"] in CONTRACT and m["event"] != "heartbeat", m
    assert not [m for m in updates if set(m) != STATUS_UPDATE_KEYS], updates
    assert [u["event"] for u in updates[1:]], "the task socket saw no event"
    for u in updates[1:]:
        assert u["type"] == "status_update" and u["event"] in CONTRACT, u

    # Between them the runs produced every stored type the contract lists
    # (but those only a restart produces: test_durable.py checks them).
    produced = set(CONTRACT) - {"heartbeat", "interrupted", "resumed"}
    assert seen == produced, sorted(produced - seen)
    # What the contract says of some payloads, checked on the full run.
    events = runs.sse(trae)
    bad_args = next(e for e in events if e["type"] == "tool_call" and "raw_arguments" in e["data"])
    assert bad_args["data"]["raw_arguments"] == '{"command": "ls' and bad_args["data"]["arguments"] is None, bad_args
    result = next(e for e in events if e["type"] == "tool_result" and e["data"]["call_id"] == bad_args["data"]["call_id"])
    assert result["data"]["success"] is False and "error" in result["data"], result
    for u in (e for e in events if e["type"] == "usage"):
        assert set(u["data"]["usage"]) == set(u["data"]["total"]) == {
            "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
            "reasoning_tokens"}, u
    assert events[-1]["data"] == {"status": "completed"}, events[-1]


@pytest.mark.parametrize("name", ["trae-agent.yaml", "agent-protocol.yaml"])
def test_the_openapi_documents_list_the_types_events_proto_lists(name):
    import yaml

    doc = yaml.safe_load((EVENTS_PROTO.parents[3] / "openapi" / name).read_text())
    assert doc["components"]["schemas"]["TaskEvent"]["properties"]["type"]["enum"] == list(CONTRACT)
