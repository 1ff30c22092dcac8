"""Control groups per task (issue 18, item 1): a process that leaves the
task's process group (`setsid`) is still ended by a stop, on each layout this
machine can arrange (v2's cgroup.kill beside the v1 controllers, and the v1
hierarchies alone, killed by signals); a command past `--task-memory-max` is
killed, the model is told, and the run goes on; a run may ask for lower limits
than the server's (never higher), and a fork refused by the pids limit is told to
the model; nothing is left behind.

Where agentd may not make control groups (no permission), it says so in
/api/config and these tests are skipped; as root (here and in CI) they run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from runs_support import alive, wait_file  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

ESCAPE = (
    "echo $$ > bash.pid; setsid sleep 301 > /dev/null 2>&1 < /dev/null & echo $! > escaped.pid; "
    "sleep 300"
)


def cgroup_report(runs) -> dict:
    r = requests.get(f"{runs.stack.trae_url}/api/config", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["config"]["sandbox"]


def task_cgroup_dirs(pid: int) -> list[Path]:
    """The directories of the cgroups `pid` is in, below agentd's groups."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(" "), right.split(" ")
        if rfields[0] == "cgroup2":
            mounts[""] = (fields[3], fields[4])
        elif rfields[0] == "cgroup":
            for c in rfields[2].split(","):
                mounts[c] = (fields[3], fields[4])
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if "/agentd-" not in path:
            continue
        for name in names.split(",") if names else [""]:
            if name in mounts:
                root, point = mounts[name]
                rel = path[len(root):] if path.startswith(root) and root != "/" else path
                dirs.append(Path(point + rel))
                break
    return dirs


def wait_until(pred, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.parametrize("mode", ["auto", "v1"])
def test_a_stop_ends_what_left_the_process_group(fresh_runs, tmp_path, mode):
    runs = fresh_runs({"AGENTD_TASK_CGROUPS": mode})
    report = cgroup_report(runs)
    if report["cgroups"].startswith("off"):
        pytest.skip(f"no control groups here: {report['cgroups']}")
    if mode == "v1":
        assert report["cgroups"] == "cgroup v1" and report["kill"] == "signal", report
    else:
        assert report["cgroups"].startswith("cgroup"), report
    assert "pids=4096" in report["task_limits"], report

    wd = tmp_path / "wd"
    route = runs.llm.route().script(openai_tool_call("bash", {"command": ESCAPE}, text="escaping"))
    task_id = runs.run("escape", wd, route=route)
    bash = int(wait_file(wd / "bash.pid"))
    escaped = int(wait_file(wd / "escaped.pid"))
    escaped_cgroups = []
    try:
        wait_until(lambda: alive(escaped) and os.getpgid(escaped) == escaped, 10, "setsid ran")
        assert os.getpgid(escaped) != os.getpgid(bash), "the setsid'd process stayed in bash's group"
        escaped_cgroups = task_cgroup_dirs(escaped)
        assert escaped_cgroups, f"the escaped process is in none of agentd's groups: {Path(f'/proc/{escaped}/cgroup').read_text()}"
        assert all(task_id in str(d) for d in escaped_cgroups), escaped_cgroups

        assert runs.stop(task_id)["message"] == "Task stopped successfully"
        wait_until(lambda: not alive(escaped) and not alive(bash), 10, "the task's processes ended")
        assert runs.wait_status(task_id, "stopped")["task_status"] == "stopped"
        # The task's groups go once its tools are gone.
        wait_until(lambda: not any(d.exists() for d in escaped_cgroups), 10, "the task's cgroups removed")
    finally:
        for pid in (escaped, bash):
            if alive(pid):
                os.kill(pid, 9)


def test_a_command_past_the_memory_limit_is_killed_and_the_run_goes_on(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_MEMORY_MAX": "64M"})
    report = cgroup_report(runs)
    if not any(limit.startswith("memory=") for limit in report["task_limits"]):
        pytest.skip(f"no memory controller here: {report}")
    assert f"memory={64 << 20}" in report["task_limits"], report

    wd = tmp_path / "wd"
    hog = "python3 -c 'b = bytearray(512 * 1024 * 1024); print(len(b))'"
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": hog}, text="allocating"),
        openai_tool_call("bash", {"command": "echo still here"}, text="again"),
        openai_tool_call("task_done", {}, text="done"),
    )
    task_id = runs.run("allocate", wd, route=route)
    status = runs.wait_status(task_id, {"completed", "failed", "stopped"})
    assert status["task_status"] == "completed", status
    results = [m for m in status["messages"] if m["type"] == "tool_result"]
    assert len(results) >= 2, status["messages"]
    first = results[0]["data"]
    assert first["success"] is False, first
    assert "memory limit" in first.get("error", ""), first
    assert "64 MiB" in first["error"], first
    assert "still here" in results[1]["message"], results[1]
    # The model saw the notice with the tool's result.
    second_request = route.requests[1]["body"]
    assert "memory limit" in str(second_request["messages"]), second_request["messages"][-1]


FORK_BOMB = r"""
import os, sys, time
children = []
try:
    while len(children) < 10000:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        children.append(pid)
except OSError as e:
    print("refused after", len(children), e.errno)
open("children.pids", "w").write(" ".join(map(str, children)))
"""


def test_a_fork_bomb_is_bounded_by_the_pids_limit_and_ended_by_a_stop(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_PIDS_MAX": "40"})
    report = cgroup_report(runs)
    if "pids=40" not in report["task_limits"]:
        pytest.skip(f"no pids controller here: {report}")
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "bomb.py").write_text(FORK_BOMB)
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "python3 bomb.py; echo $$ > bash.pid; sleep 300"}, text="forking")
    )
    task_id = runs.run("fork", wd, route=route)
    children = [int(p) for p in wait_file(wd / "children.pids").split()]
    bash = int(wait_file(wd / "bash.pid"))
    try:
        # bash, python and its children share the 40.
        assert 0 < len(children) < 40, len(children)
        assert all(alive(p) for p in children[:5])
        assert runs.stop(task_id)["message"] == "Task stopped successfully"
        wait_until(lambda: not any(alive(p) for p in children + [bash]), 10, "the forks ended")
    finally:
        for pid in children + [bash]:
            if alive(pid):
                os.kill(pid, 9)


def test_a_run_may_lower_the_memory_limit_but_not_raise_it(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_MEMORY_MAX": "256M"})
    report = cgroup_report(runs)
    if not any(limit.startswith("memory=") for limit in report["task_limits"]):
        pytest.skip(f"no memory controller here: {report}")
    wd = tmp_path / "wd"
    r = requests.post(f"{runs.stack.trae_url}/api/run", json={
        "task": "t", "working_dir": str(wd), "task_memory_max": "2G"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "task_memory_max 2048 MiB is above this server's maximum 256 MiB" in r.json()["error"], r.text
    r = requests.post(f"{runs.stack.trae_url}/api/run", json={
        "task": "t", "working_dir": str(wd), "task_memory_max": "lots"}, timeout=30)
    assert r.status_code == 400 and "task_memory_max" in r.json()["error"], r.text

    # 128 MiB fits the server's 256 but not the run's own 48.
    hog = "python3 -c 'b = bytearray(128 * 1024 * 1024); print(len(b))'"
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": hog}, text="allocating"),
        openai_tool_call("task_done", {}, text="done"),
    )
    task_id = runs.run("allocate", wd, route=route, task_memory_max="48M")
    status = runs.wait_status(task_id, {"completed", "failed", "stopped"})
    assert status["task_status"] == "completed", status
    (first, *_) = [m for m in status["messages"] if m["type"] == "tool_result"]
    assert first["data"]["success"] is False, first
    assert "48 MiB memory limit" in first["data"].get("error", ""), first


BOUNDED_BOMB = r"""
import os, signal, sys
children = []
try:
    while len(children) < 10000:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        children.append(pid)
except OSError as e:
    print("refused after", len(children), e.errno)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
open(sys.argv[1], "w").write(str(len(children)))
sys.exit(1)
"""


def test_an_agent_protocol_task_asks_for_a_pids_limit_and_the_model_hears_of_a_refused_fork(fresh_runs, tmp_path):
    runs = fresh_runs()
    report = cgroup_report(runs)
    if not any(limit.startswith("pids=") for limit in report["task_limits"]):
        pytest.skip(f"no pids controller here: {report}")
    bomb, count = tmp_path / "bomb.py", tmp_path / "forked"
    bomb.write_text(BOUNDED_BOMB)
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": f"python3 {bomb} {count}"}, text="forking"),
        openai_tool_call("task_done", {}, text="done"),
    )
    ap = f"{runs.stack.ap_url}/ap/v1/agent/tasks"
    # More than the server's 4096 is refused when the agent would start.
    over = runs.stack.create_task("too many", config_file=runs.config(route), task_pids_max=100000)
    r = requests.post(f"{ap}/{over['task_id']}/steps", json={}, timeout=120)
    assert r.status_code == 400, r.text
    assert "task_pids_max 100000 is above this server's maximum 4096" in r.text, r.text
    assert route.requests == []

    task = runs.stack.create_task("fork", config_file=runs.config(route), task_pids_max=30)
    step = requests.post(f"{ap}/{task['task_id']}/steps", json={}, timeout=120)
    assert step.status_code == 200, step.text
    assert 0 < int(wait_file(count)) < 30
    status = runs.status(task["task_id"])
    (result, *_) = [m for m in status["messages"] if m["type"] == "tool_result"]
    assert result["data"]["success"] is False, result
    assert "reached its 30 process limit" in result["data"].get("error", ""), result
    requests.post(f"{ap}/{task['task_id']}/steps", json={}, timeout=120)
    assert "process limit" in str(route.requests[1]["body"]["messages"]), route.requests[1]["body"]["messages"][-1]
