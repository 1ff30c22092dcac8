"""Run limits (issue 4): at most N tasks run at once (default 5), the next
is refused with 429 INSUFFICIENT_RESOURCES and Retry-After; a task past its
wall-clock timeout fails with the reason and leaves no process behind."""

from __future__ import annotations

import time

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from helpers import AP, assert_ap_error, assert_trae_error  # noqa: E402
from runs_support import TaskProcesses, assert_well_formed_log, long_bash, wait_file  # noqa: E402
from scripted_llm import delayed, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

DEFAULT_LIMIT = 5


def test_sixth_concurrent_run_gets_429_until_a_slot_frees(fresh_runs, tmp_path):
    runs = fresh_runs()  # the default --max-running-tasks (5)
    route = runs.llm.route().script(
        *[delayed(openai_tool_call("task_done", {}, text="slow"), 20) for _ in range(DEFAULT_LIMIT)]
    )
    cfg = runs.config(route)
    ids = []
    try:
        for i in range(DEFAULT_LIMIT):
            ids.append(runs.run(f"slow {i}", tmp_path / f"wd{i}", config_file=cfg))
        for tid in ids:
            assert runs.status(tid)["task_status"] == "running"

        # The 6th Trae run, on either listener: the Trae envelope, 429, Retry-After.
        for base in runs.stack.urls():
            r = requests.post(f"{base}/api/run", json={"task": "one too many", "working_dir": str(tmp_path / "wd6"),
                                                        "config_file": cfg}, timeout=30)
            body = assert_trae_error(r, 429)
            assert "INSUFFICIENT_RESOURCES" in body["error"] or "running" in body["error"], body
            retry = r.headers.get("retry-after")
            assert retry is not None and retry.isdigit() and int(retry) > 0, dict(r.headers)
        # An Agent Protocol step is refused the same way, in its envelope.
        task = runs.stack.create_task("a step too many", config_file=cfg)
        r = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps", timeout=30)
        assert_ap_error(r, 429, "INSUFFICIENT_RESOURCES")
        assert r.headers.get("retry-after", "").isdigit(), dict(r.headers)
        # Refusals create no task and leave the running ones alone.
        listed = runs.stack.all_tasks()
        assert sorted(t["task_id"] for t in listed if t["status"] == "running") == sorted(ids), listed
        assert len(listed) == DEFAULT_LIMIT + 1, listed  # the five runs and the Agent Protocol task
        assert requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}", timeout=30).json()["status"] == "created"

        # Stop them all: each ends as stopped, and the slots are free again.
        for tid in ids:
            assert runs.stop(tid) == {"status": "success", "message": "Task stopped successfully"}
        for tid in ids:
            st = runs.wait_status(tid, {"stopped", "failed", "completed"}, timeout=30)
            assert st["task_status"] == "stopped", st
            assert_well_formed_log(st["messages"], tid)
        quick = runs.llm.route().script(openai_tool_call("task_done", {}, text="fits now"))
        tid = runs.run("fits now", tmp_path / "wd7", route=quick)
        assert runs.wait_status(tid, {"completed", "failed", "stopped"})["task_status"] == "completed"
    finally:
        for tid in ids:
            requests.post(f"{runs.stack.trae_url}/api/tasks/{tid}/stop", timeout=60)


def test_a_task_past_its_timeout_fails_and_its_processes_end(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_TIMEOUT_SECS": "2"})
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    task_id = runs.run("never ends", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        st = runs.wait_status(task_id, {"completed", "failed", "stopped"}, timeout=60)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "error", [e["type"] for e in events]
        assert "timed out after 2s" in events[-2]["error"], events[-2]
        left = procs.wait_gone(timeout=15)
        assert not left, f"processes of the timed-out task still alive: {left}"
        assert st["duration"] >= 2, st
        ap = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task_id}", timeout=30).json()
        assert ap["status"] == "failed", ap
    finally:
        procs.kill_leftovers()


def test_a_step_past_the_timeout_fails_the_task(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_TIMEOUT_SECS": "2"})
    route = runs.llm.route().script(long_bash())
    task = runs.stack.create_task("step never ends", config_file=runs.config(route))
    t0 = time.monotonic()
    r = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps", timeout=120)
    assert r.status_code == 200, r.text
    step = r.json()
    assert step["status"] == "completed" and step["is_last"] is True, step
    state = step["additional_output"]["state"]
    assert time.monotonic() - t0 < 100  # (bounded: the bash command alone would take 300 s)
    ws = runs.stack.data_dir / "workspaces" / task["task_id"]
    pid = int(wait_file(ws / "bash.pid", timeout=5))
    from runs_support import alive

    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the step's bash {pid} survived the timeout"
    got = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}", timeout=30).json()
    assert got["status"] == "failed", got
    events = runs.sse(task["task_id"])
    assert events[-2]["type"] == "error" and "timed out after 2s" in events[-2]["error"], events[-2]
    # The step's own state agrees with the task's: it failed (timed out), it was not stopped on request.
    assert state == "failed", step
    assert "timed out" in step["output"], step
