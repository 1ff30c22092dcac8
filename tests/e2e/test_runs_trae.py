"""Trae runs (issue 4): `POST /api/run` runs the agent in the background in
`working_dir`; the document's Python client example, run as written, watches
it over SSE; `/status` returns every message; patch and trajectory files are
written; provider failures fail the task with the provider's status."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import run_in_thread  # noqa: E402
from runs_support import RUN_WAIT, RUNS_API_KEY, assert_well_formed_log, key  # noqa: E402
from scripted_llm import error, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

# The document's "Python 客户端示例" (shared/spec/trae-agent-flask-api.md),
# verbatim. The test changes only what must point at this machine: base_url
# (the test's Envoy) and task_data (a temporary git repo as working_dir, plus
# the document's patch_path / trajectory_file fields).
DOC_EXAMPLE = textwrap.dedent(
    '''\
    import requests
    import json

    # 基础 URL
    base_url = "http://localhost:5000/api"

    # 1. 健康检查
    response = requests.get(f"{base_url}/health")
    print(response.json())

    # 2. 执行任务
    task_data = {
        "task": "创建一个 Hello World Python 脚本",
        "working_dir": "/tmp/test_project",
        "provider": "openai",
        "model": "gpt-4"
    }

    response = requests.post(f"{base_url}/run", json=task_data)
    task_info = response.json()
    task_id = task_info["task_id"]
    print(f"任务已启动，ID: {task_id}")

    # 3. 流式获取任务消息
    import sseclient  # pip install sseclient-py

    stream_url = f"{base_url}/tasks/{task_id}/stream"
    response = requests.get(stream_url, stream=True)
    client = sseclient.SSEClient(response)

    for event in client.events():
        message = json.loads(event.data)
        print(f"[{message['type']}] {message.get('message', '')}")
        if message['type'] == 'end':
            break

    # 3. 获取任务状态
    response = requests.get(f"{base_url}/tasks/{task_id}/status")
    status_info = response.json()
    print(f"任务状态: {status_info['task_status']}")
    print(f"消息数量: {len(status_info['messages'])}")

    # 4. 停止任务（如果需要）
    if status_info['task_status'] == 'running':
        response = requests.post(f"{base_url}/tasks/{task_id}/stop")
        print(response.json())
    '''
)


def adapt(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the document example no longer contains {old!r}"
    return code.replace(old, new)


def run_example(code: str, timeout: float = RUN_WAIT) -> tuple[dict, str]:
    """Executes the example in a thread; returns its globals and what it printed."""
    return run_in_thread(code, "trae_doc_example", timeout)


def test_document_python_example_runs_a_task_in_a_git_repo(runs, git_repo):
    route = runs.default_route  # the default config (TRAE_CONFIG_FILE): the example names no config_file
    hello = git_repo / "hello.py"
    greeting = git_repo / "greeting.txt"
    route.script(
        openai_tool_call("str_replace_based_edit_tool", {"command": "view", "path": str(hello)},
                         text="Let me look at the script."),
        openai_tool_call("str_replace_based_edit_tool", {
            "command": "str_replace", "path": str(hello),
            "old_str": 'print("hello")', "new_str": 'print("Hello, World!")'}),
        openai_tool_call("str_replace_based_edit_tool", {
            "command": "create", "path": str(greeting), "file_text": "Hello, World!\n"}),
        openai_tool_call("bash", {"command": "python3 hello.py && pwd"}),
        openai_tool_call("task_done", {}, text="Hello World script is ready."),
    )
    code = adapt(DOC_EXAMPLE, 'base_url = "http://localhost:5000/api"', f'base_url = "{runs.stack.trae_url}/api"')
    code = adapt(
        code, '"working_dir": "/tmp/test_project",',
        f'"working_dir": {str(git_repo)!r}, "patch_path": "out/task.patch", "trajectory_file": "out/trajectory.json",',
    )

    ns, printed = run_example(code)

    task_id = ns["task_id"]
    assert "{'status': 'healthy', 'message': 'Trae Agent API is running'}" in printed
    assert f"任务已启动，ID: {task_id}" in printed
    assert "[start] " in printed and "[end] " in printed

    # The stream the example read ended with `end`: its last event.
    assert ns["message"]["type"] == "end"

    # The agent really worked in working_dir.
    assert hello.read_text() == 'def greet():\n    print("Hello, World!")\n\n\ngreet()\n'
    assert greeting.read_text() == "Hello, World!\n"

    # /status: completed, and every message of the log (the full log, in order).
    st = ns["status_info"]
    assert st["status"] == "success" and st["task_id"] == task_id, st
    assert isinstance(st["start_time"], (int, float)) and isinstance(st["duration"], (int, float)), st
    assert st["duration"] >= 0
    messages = st["messages"]
    assert_well_formed_log(messages, task_id)
    assert key(runs.sse(task_id)) == key(messages), "the status messages differ from the replayed stream"
    # agentd prints this JSON itself (Envoy's transcoder is off for it): it
    # must be the proto3 JSON of the gRPC answer, field for field.
    assert st == grpc_status_json(runs.stack.grpc_target, task_id)
    types = [m["type"] for m in messages]
    for t in ("step", "llm_response", "usage", "tool_call", "tool_result", "patch", "trajectory", "complete"):
        assert t in types, (t, types)
    assert types.index("complete") == len(types) - 2, types
    assert "error" not in types, types
    complete = messages[-2]
    assert complete["result"] == "Hello World script is ready.", complete
    # Tool calls in the order the model made them, each answered.
    calls = [m["data"]["name"] for m in messages if m["type"] == "tool_call"]
    assert calls == ["str_replace_based_edit_tool"] * 3 + ["bash", "task_done"], calls
    results = [m for m in messages if m["type"] == "tool_result"]
    assert len(results) >= 4, results
    bash_result = next(m for m in messages if m["type"] == "tool_result" and m["data"].get("name") == "bash")
    assert "Hello, World!" in bash_result["message"], bash_result
    assert str(git_repo) in bash_result["message"], "bash did not run in working_dir"

    # The model saw the file it viewed: the second LLM request carries its content.
    # (Other tests' tasks use the default route too: keep this task's requests.)
    mine = [r for r in route.requests if str(git_repo) in json.dumps(r["body"], ensure_ascii=False)]
    second = json.dumps(mine[1]["body"], ensure_ascii=False)
    assert "print(\\\"hello\\\")" in second or 'print("hello")' in second, second[:2000]
    headers = {k.lower(): v for k, v in mine[0]["headers"].items()}
    assert headers.get("authorization") == f"Bearer {RUNS_API_KEY}", "OPENAI_API_KEY was not used"
    assert mine[0]["body"]["model"] == "gpt-4", "the request's model was not used"

    # patch_path: relative to working_dir; includes the edit and the new untracked file.
    patch = (git_repo / "out" / "task.patch").read_text()
    assert '-    print("hello")' in patch and '+    print("Hello, World!")' in patch, patch
    assert "greeting.txt" in patch and "+Hello, World!" in patch, patch
    assert "out/trajectory.json" not in patch and "task.patch" not in patch, "the task's own outputs leaked into the patch"
    applied = subprocess.run(["git", "apply", "--check", "-R", "out/task.patch"], cwd=git_repo,
                             capture_output=True, text=True, timeout=30)
    assert applied.returncode == 0, f"the patch does not describe the working tree: {applied.stderr}"
    # The user's index is left alone: greeting.txt is still untracked.
    porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=git_repo, capture_output=True,
                               text=True, timeout=30).stdout
    assert "?? greeting.txt" in porcelain, porcelain

    traj = json.loads((git_repo / "out" / "trajectory.json").read_text())
    assert traj["task"] == "创建一个 Hello World Python 脚本"
    assert traj["success"] is True and traj["final_result"] == "Hello World script is ready."
    assert traj["model"] == "gpt-4" and traj["provider"] == "openai"
    assert len(traj["llm_interactions"]) == 5, len(traj["llm_interactions"])

    # The list shows the task as completed, with a duration.
    listed = requests.get(f"{runs.stack.trae_url}/api/tasks", timeout=30).json()
    mine = [t for t in listed["active_tasks"] if t["task_id"] == task_id]
    assert len(mine) == 1 and mine[0]["status"] == "completed", mine
    assert mine[0]["duration"] >= 0 and mine[0]["start_time"] == st["start_time"]

    # Nothing is running now; a stop says so.
    assert runs.stop(task_id) == {"status": "success", "message": "Task is not running (status: completed)"}

    # Checked last, so that everything above is verified either way: the
    # example read `end` and then asked for the status; the task had ended, so
    # it must not be reported running (nor the example's stop branch taken).
    assert st["task_status"] == "completed", f"/status after `end` said {st['task_status']!r}; printed:\n{printed}"
    assert "任务状态: completed" in printed, printed


def test_relative_trajectory_and_stream_on_the_agent_protocol_listener(runs, tmp_path):
    """working_dir is created when missing; a run started on one listener is
    streamed on the other (both dialects, one log)."""
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo made-by-agent > made.txt"}),
        openai_tool_call("task_done", {}, text="made it"),
    )
    wd = tmp_path / "new" / "dir"
    task_id = runs.run("make a file", wd, route=route, base=runs.stack.ap_url, trajectory_file="traj.json")
    events = runs.sse(task_id, base=runs.stack.ap_url)
    assert_well_formed_log(events, task_id)
    assert events[-2]["type"] == "complete" and events[-2]["result"] == "made it", events[-2]
    assert (wd / "made.txt").read_text() == "made-by-agent\n"
    assert json.loads((wd / "traj.json").read_text())["success"] is True
    ap_events = runs.sse(task_id, path=f"/ap/v1/agent/tasks/{task_id}/events")
    assert key(ap_events) == key(events)
    task = requests.get(f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task_id}", timeout=30).json()
    assert task["status"] == "completed", task


def test_provider_errors_until_retries_run_out_fail_the_task(runs, tmp_path):
    route = runs.llm.route().script(error(500, "scripted outage"), error(500, "scripted outage"),
                                    error(500, "scripted outage"))
    cfg = runs.config(route, max_retries=1)
    task_id = runs.run("fail please", tmp_path / "wd", config_file=cfg)
    events = runs.sse(task_id)
    assert_well_formed_log(events, task_id)
    st = runs.wait_status(task_id, {"completed", "failed", "stopped"})
    assert st["task_status"] == "failed", st
    err = [e for e in events if e["type"] == "error"]
    assert len(err) == 1 and events[-2] is err[0], [e["type"] for e in events]
    assert "500" in err[0]["error"], err[0]
    assert "complete" not in [e["type"] for e in events]
    # max_retries: 1 -> the first attempt and one retry, no more.
    assert len(route.requests) == 2, [r["path"] for r in route.requests]
    assert route.remaining() == 1


def test_stop_ends_the_task_and_every_process_it_started(runs, tmp_path):
    from runs_support import TaskProcesses, long_bash, wait_file

    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    task_id = runs.run("run something long", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        assert runs.status(task_id)["task_status"] == "running"
        assert runs.stop(task_id) == {"status": "success", "message": "Task stopped successfully"}
        left = procs.wait_gone(timeout=15)
        assert not left, f"processes of the stopped task still alive: {left}"
        st = runs.wait_status(task_id, {"stopped", "failed", "completed"}, timeout=15)
        assert st["task_status"] == "stopped", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "stopped", [e["type"] for e in events]
        assert "complete" not in [e["type"] for e in events]
        # Stopping again is harmless and says why.
        assert runs.stop(task_id) == {"status": "success", "message": "Task is not running (status: stopped)"}
        listed = requests.get(f"{runs.stack.trae_url}/api/tasks", timeout=30).json()["active_tasks"]
        assert [t["status"] for t in listed if t["task_id"] == task_id] == ["stopped"]
    finally:
        procs.kill_leftovers()


def test_tools_run_in_working_dir_and_state_persists(runs, tmp_path):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "export E2E_MARK=kept; mkdir -p sub && cd sub && pwd"}),
        openai_tool_call("bash", {"command": "echo $E2E_MARK; pwd"}),
        openai_tool_call("task_done", {}, text="ok"),
    )
    wd = tmp_path / "work dir"
    task_id = runs.run("check the shell", wd, route=route)
    events = runs.sse(task_id)
    results = [e["message"] for e in events if e["type"] == "tool_result" and e["data"].get("name") == "bash"]
    assert len(results) == 2, results
    assert str(wd / "sub") in results[0]
    assert "kept" in results[1] and str(wd / "sub") in results[1], results[1]


def test_list_reports_a_running_task_as_running(runs, tmp_path):
    from runs_support import TaskProcesses, long_bash, wait_file

    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    task_id = runs.run("long", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        time.sleep(0.2)
        listed = requests.get(f"{runs.stack.trae_url}/api/tasks", timeout=30).json()
        mine = [t for t in listed["active_tasks"] if t["task_id"] == task_id]
        assert len(mine) == 1 and mine[0]["status"] == "running", mine
        assert mine[0]["duration"] > 0, mine
        running = requests.get(f"{runs.stack.trae_url}/api/tasks", params={"status": "running"}, timeout=30).json()
        assert task_id in [t["task_id"] for t in running["active_tasks"]]
        assert all(t["status"] == "running" for t in running["active_tasks"]), running
    finally:
        runs.stop(task_id)
        procs.kill_leftovers()


def grpc_status_json(target: str, task_id: str) -> dict:
    """GetTaskStatus over gRPC, printed as the transcoder's print_options do
    (proto field names, primitives always printed)."""
    import grpc
    from google.protobuf import json_format

    with grpc.insecure_channel(target) as ch:
        call, req, _ = helpers.Reflection(ch).unary(ch, "agentd.trae.v1.TraeService/GetTaskStatus")
        resp = call(req(task_id=task_id), timeout=10)
    return json.loads(
        json_format.MessageToJson(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )
