"""Runs across restarts (issue 4): under `--on-interrupt fail`, agentd killed
with SIGKILL mid-task and started again on the same data directory reports
the task failed (interrupted) and its stream replays and ends with `end`
(the default, `resume`, continues such runs: test_durable.py); SIGTERM ends
running tasks and their processes; `POST /ap/v1/agent/restart` ends running
tasks as failed and keeps every stored thing."""

from __future__ import annotations

import signal

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from helpers import AP  # noqa: E402
from runs_support import (  # noqa: E402
    TaskProcesses,
    alive,
    assert_well_formed_log,
    key,
    long_bash,
    wait_file,
)
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

INTERRUPTED = "interrupted: agentd stopped while the task was running"
# The behaviour these tests pin down is the `fail` policy's.
FAIL_ON_INTERRUPT = {"AGENTD_ON_INTERRUPT": "fail"}


def start_long_run(runs, wd):
    route = runs.llm.route().script(openai_tool_call("bash", {"command": "echo before > before.txt"}), long_bash())
    task_id = runs.run("long run", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    runs.wait_event(task_id, lambda m: m["type"] == "tool_call" and "sleep" in str(m.get("data")), "the long tool call")
    return task_id, procs


def test_sigkill_mid_task_then_restart_reports_failed_and_stream_ends(fresh_runs, tmp_path):
    runs = fresh_runs(FAIL_ON_INTERRUPT)
    wd = tmp_path / "wd"
    task_id, procs = start_long_run(runs, wd)
    try:
        before = runs.status(task_id)["messages"]
        assert before[-1]["type"] == "tool_call", [m["type"] for m in before]

        assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        runs.stack.start_agentd()  # same data dir, same port; Envoy keeps running

        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        # The history from before the crash is intact, then the interruption.
        assert key(events[: len(before)]) == key(before)
        assert [e["type"] for e in events[len(before):]] == ["error", "end"], [e["type"] for e in events]
        assert events[-2]["error"] == INTERRUPTED, events[-2]
        assert key(st["messages"]) == key(events)
        # Both dialects and gRPC agree.
        ap = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task_id}", timeout=30).json()
        assert ap["status"] == "failed", ap
        assert key(runs.sse(task_id, path=f"{AP}/tasks/{task_id}/events")) == key(events)
        g = runs.grpc_events("agentd.trae.v1.TraeService/StreamTask", task_id)
        assert [(int(e["seq"]), e["type"]) for e in g] == [(e["seq"], e["type"]) for e in events]
        # A stop now finds nothing running.
        assert runs.stop(task_id)["message"] == "Task is not running (status: failed)"
        # A second restart does not add to the log (recovery is idempotent).
        runs.stack.restart_agentd()
        assert key(runs.sse(task_id)) == key(events)
        # The restarted agentd runs new tasks.
        quick = runs.llm.route().script(openai_tool_call("task_done", {}, text="after the crash"))
        tid = runs.run("after", tmp_path / "wd2", route=quick)
        assert runs.wait_status(tid, {"completed", "failed", "stopped"})["task_status"] == "completed"
    finally:
        procs.kill_leftovers()


def test_sigkill_then_restart_leaves_no_process_of_the_task(fresh_runs, tmp_path):
    """What happens to the bash of a task whose agentd was SIGKILLed: the
    task is failed after the restart, so nothing of it should keep running.
    (The orphan is killed by the test, by its recorded pid and group.)"""
    runs = fresh_runs(FAIL_ON_INTERRUPT)
    wd = tmp_path / "wd"
    task_id, procs = start_long_run(runs, wd)
    try:
        runs.stack.stop_agentd(signal.SIGKILL)
        runs.stack.start_agentd()
        assert runs.status(task_id)["task_status"] == "failed"
        left = procs.wait_gone(timeout=10)
        assert not left, (
            f"after SIGKILL and restart, the failed task's processes still run: {left} "
            "(agentd neither ties them to its own life nor cleans them up on recovery)"
        )
    finally:
        procs.kill_leftovers()


def test_sigterm_ends_running_tasks_and_their_processes(fresh_runs, tmp_path):
    runs = fresh_runs(FAIL_ON_INTERRUPT)
    wd = tmp_path / "wd"
    task_id, procs = start_long_run(runs, wd)
    try:
        rc = runs.stack.stop_agentd(signal.SIGTERM)
        assert rc == 0, f"agentd exited with {rc} on SIGTERM"
        left = procs.wait_gone(timeout=10)
        assert not left, f"processes left after SIGTERM: {left}"
        runs.stack.start_agentd()
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "error" and events[-2]["error"] == "interrupted: agentd shut down", events[-2]
    finally:
        procs.kill_leftovers()


def test_restart_endpoint_fails_running_tasks_and_keeps_data(runs, tmp_path):
    wd = tmp_path / "wd"
    task_id, procs = start_long_run(runs, wd)
    try:
        # Something stored besides the run: an Agent Protocol task with an upload.
        other = runs.stack.create_task("kept across restart")
        up = runs.stack.upload(other["task_id"], "kept.txt", b"kept bytes")
        assert up.status_code == 200, up.text
        before_tasks = {t["task_id"] for t in runs.stack.all_tasks()}

        r = requests.post(f"{runs.stack.ap_url}{AP}/restart", timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True and isinstance(body["message"], str) and body["message"], body
        assert body["estimated_downtime"] == "0s", body

        st = runs.wait_status(task_id, {"completed", "failed", "stopped"}, timeout=30)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "error" and "the agent runtime was restarted" in events[-2]["error"], events[-2]
        assert not procs.wait_gone(timeout=15), procs.survivors()

        # Data kept: every task, the upload, the task's files and its log.
        assert before_tasks <= {t["task_id"] for t in runs.stack.all_tasks()}
        assert (wd / "before.txt").read_text() == "before\n"
        arts = runs.stack.artifacts(other["task_id"])
        assert [a["file_name"] for a in arts] == ["kept.txt"]
        dl = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{other['task_id']}/artifacts/{arts[0]['artifact_id']}", timeout=30)
        assert dl.content == b"kept bytes"
        assert requests.get(f"{runs.stack.ap_url}{AP}/tasks/{other['task_id']}", timeout=30).json()["status"] == "created"
        # The runtime works afterwards.
        quick = runs.llm.route().script(openai_tool_call("task_done", {}, text="after restart"))
        tid = runs.run("after restart", tmp_path / "wd2", route=quick)
        assert runs.wait_status(tid, {"completed", "failed", "stopped"})["task_status"] == "completed"
    finally:
        procs.kill_leftovers()


def test_restart_with_nothing_running_is_harmless(runs):
    r = requests.post(f"{runs.stack.trae_url}{AP}/restart", json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    assert requests.get(f"{runs.stack.trae_url}/api/health", timeout=30).status_code == 200
    assert alive(runs.stack.agentd_pid)
