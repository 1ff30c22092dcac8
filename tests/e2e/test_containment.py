"""Containment of agents (issue 5, item 4): stop, timeout and graceful
shutdown each end every process of the task (checked by pid and by process
group) and its stream ends with `end`; `--allowed-root` confines the
`working_dir` of `POST /api/run`; `--sandbox` runs bash under bubblewrap.

Each task's bash records `$$` (its pid, which leads its process group) and
the pid of a background `sleep`, so the checks do not depend on agentd's
own bookkeeping."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from helpers import AP, assert_trae_error  # noqa: E402
from runs_support import TaskProcesses, alive, assert_well_formed_log, wait_file  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

# The shell records its pid, starts a background child (which must die too)
# and then blocks in a foreground one.
LONG = "echo $$ > bash.pid; sleep 300 & echo $! > bg.pid; sleep 301"


def start_long(runs, wd: Path, route=None) -> tuple[str, TaskProcesses, int]:
    route = route or runs.llm.route()
    route.script(openai_tool_call("bash", {"command": LONG}, text="Running a long command"))
    task_id = runs.run("long run", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    bg = int(wait_file(wd / "bg.pid"))
    assert alive(bg), "the background sleep is not running"
    procs.descendants = sorted(set(procs.descendants) | {bg})
    assert procs.pgid == procs.pid, "bash must lead its own process group"
    assert procs.pgid != os.getpgid(runs.stack.agentd_pid), "bash shares agentd's process group"
    return task_id, procs, bg


def record_of(runs, task_id: str) -> Path:
    return runs.stack.data_dir / "run" / f"{task_id}.pids"


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


# ---- stop, timeout, shutdown -------------------------------------------------


def test_stop_ends_every_process_and_the_stream(runs, tmp_path):
    wd = tmp_path / "wd"
    task_id, procs, _ = start_long(runs, wd)
    try:
        # While the task runs, its group is on record (for crash recovery).
        record = record_of(runs, task_id)
        assert record.is_file(), "no process record while the task runs"
        assert f"group {procs.pgid} " in record.read_text(), record.read_text()

        t0 = time.monotonic()
        assert runs.stop(task_id)["message"] == "Task stopped successfully"
        left = procs.wait_gone(timeout=10)
        assert not left, f"processes left after stop: {left}"
        stopped_after = time.monotonic() - t0
        assert stopped_after < 10, stopped_after

        st = runs.status(task_id)
        assert st["task_status"] == "stopped", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert [e["type"] for e in events[-2:]] == ["stopped", "end"], [e["type"] for e in events]
        wait_until(lambda: not record.exists(), 5, "the process record is removed once the task ended")
    finally:
        procs.kill_leftovers()


def test_timeout_ends_every_process_and_the_stream(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_TASK_TIMEOUT_SECS": "5"})
    wd = tmp_path / "wd"
    task_id, procs, _ = start_long(runs, wd)
    try:
        st = runs.wait_status(task_id, {"completed", "failed", "stopped"}, timeout=30)
        assert st["task_status"] == "failed", st
        left = procs.wait_gone(timeout=10)
        assert not left, f"processes left after the timeout: {left}"
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "error" and events[-2]["error"] == "timed out after 5s", events[-2]
        wait_until(lambda: not record_of(runs, task_id).exists(), 5, "the process record is removed")
    finally:
        procs.kill_leftovers()


def test_graceful_shutdown_ends_every_process_then_restart_reports_it(fresh_runs, tmp_path):
    """Under the `fail` policy; under `resume` the run is left to go on
    after the restart, its processes ended just the same (test_durable.py)."""
    runs = fresh_runs({"AGENTD_ON_INTERRUPT": "fail"})
    wd = tmp_path / "wd"
    task_id, procs, _ = start_long(runs, wd)
    try:
        t0 = time.monotonic()
        rc = runs.stack.stop_agentd(signal.SIGTERM)
        exit_secs = time.monotonic() - t0
        assert rc == 0, f"agentd exited with {rc} on SIGTERM"
        assert exit_secs < 20, f"agentd took {exit_secs:.1f}s to exit"
        # Gone when agentd has exited, not merely some time later.
        left = procs.survivors()
        assert not left, f"processes left after SIGTERM: {left}"

        runs.stack.start_agentd()
        assert not list((runs.stack.data_dir / "run").iterdir()), "process records left after a restart"
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert events[-2]["type"] == "error", events[-2]
        assert events[-2]["error"] == "interrupted: agentd shut down", events[-2]
    finally:
        procs.kill_leftovers()


def test_sigkill_orphans_are_ended_before_agentd_serves_again(fresh_runs, tmp_path):
    """The crash case, alone: agentd gets SIGKILL, so nothing of it can end
    the task's processes; the next start does, from the durable record,
    before it answers health checks."""
    # Under `fail`: the point is the processes (resuming: test_durable.py).
    runs = fresh_runs({"AGENTD_ON_INTERRUPT": "fail"})
    wd = tmp_path / "wd"
    task_id, procs, _ = start_long(runs, wd)
    try:
        assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(0.5)
        assert procs.survivors(), "the task's processes died with agentd; nothing left to test"
        t0 = time.monotonic()
        runs.stack.start_agentd()
        healthy_after = time.monotonic() - t0
        left = procs.survivors()
        assert not left, f"orphans still running once agentd serves again: {left}"
        assert not record_of(runs, task_id).exists()
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        assert_well_formed_log(runs.sse(task_id), task_id)
        log = runs.stack.agentd_log.read_text(errors="replace")
        assert "ended processes a previous agentd left running" in log, log[-2000:]
        print(f"restart to healthy (orphans already ended): {healthy_after:.2f}s")
    finally:
        procs.kill_leftovers()


# ---- allowed roots -------------------------------------------------------


def test_allowed_roots_confine_working_dir(fresh_runs, tmp_path):
    root_a = tmp_path / "root a"
    root_b = tmp_path / "rootb"
    outside = tmp_path / "outside"
    for d in (root_a, root_b, outside):
        d.mkdir()
    (root_a / "escape").symlink_to(outside)
    (root_b / "inner").mkdir()
    (outside / "back").symlink_to(root_b / "inner")
    runs = fresh_runs({"AGENTD_ALLOWED_ROOTS": f"{root_a}:{root_b}"})
    trae = runs.stack.trae_url

    def post_run(wd: Path | str):
        route = runs.llm.route().script(openai_tool_call("task_done", {}, text="done"))
        body = {"task": "t", "working_dir": str(wd), "provider": "openai", "config_file": runs.config(route)}
        return requests.post(f"{trae}/api/run", json=body, timeout=30)

    # Inside a root, existing or not yet existing (created), and through a
    # symlink that resolves into a root.
    for wd in (root_a, root_b / "inner", root_a / "new" / "deeper", outside / "back"):
        r = post_run(wd)
        assert r.status_code == 200, f"{wd}: {r.status_code} {r.text}"
        tid = r.json()["task_id"]
        assert runs.wait_status(tid, {"completed", "failed", "stopped"})["task_status"] == "completed"
    assert (root_a / "new" / "deeper").is_dir()

    # Outside every root: refused before anything is created.
    for wd in (outside / "proj", root_a / "escape" / "proj", f"{root_a}/../outside/proj2",
               root_a / "new" / ".." / ".." / ".." / "x", Path("/"), Path(str(root_a) + "-sibling")):
        r = post_run(wd)
        body = assert_trae_error(r, 400)
        assert "allowed roots" in body["error"] or "`..`" in body["error"], body
    assert not (outside / "proj").exists() and not (outside / "proj2").exists()
    assert not Path(str(root_a) + "-sibling").exists()
    assert "outside the allowed roots" in assert_trae_error(post_run(outside), 400)["error"]

    # Agent Protocol tasks work in their own workspace (under the data dir).
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "pwd > where.txt"}),
        openai_tool_call("task_done", {}, text="done"),
    )
    r = requests.post(f"{runs.stack.ap_url}{AP}/tasks", timeout=30,
                      json={"input": "ap", "additional_input": {"config_file": runs.config(route)}})
    assert r.status_code == 200, r.text
    tid = r.json()["task_id"]
    for _ in range(5):
        step = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{tid}/steps", json={}, timeout=60)
        assert step.status_code == 200, step.text
        if step.json()["is_last"]:
            break
    where = (runs.stack.data_dir / "workspaces" / tid / "where.txt").read_text().strip()
    assert Path(where).resolve() == (runs.stack.data_dir / "workspaces" / tid).resolve()


# ---- sandbox -------------------------------------------------------------


def bwrap_usable() -> bool:
    if not shutil.which("bwrap"):
        return False
    try:
        return subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not bwrap_usable(), reason="bubblewrap is not installed or cannot run here")
def test_sandboxed_bash_writes_only_its_working_dir(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_SANDBOX": "1"})
    log = runs.stack.agentd_log.read_text(errors="replace")
    assert "bash sandbox on" in log, log[-2000:]
    wd = tmp_path / "wd"
    elsewhere = Path.cwd() / f"sandbox-escape-{os.getpid()}"
    data = runs.stack.data_dir
    script = (
        "echo $$ > bash.pid; echo inside > inside.txt; "
        f"touch '{elsewhere}' 2>/dev/null && echo wrote-outside > verdict.txt || echo read-only > verdict.txt; "
        f"ls -A '{data}' | wc -l > data_entries.txt; "
        "(exec 3<>/dev/tcp/127.0.0.1/%d && echo net-open || echo net-closed) > net.txt 2>/dev/null; "
        "sleep 300" % runs.llm.port
    )
    route = runs.llm.route().script(openai_tool_call("bash", {"command": script}))
    task_id = runs.run("sandboxed", wd, route=route)
    procs = None
    try:
        procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
        wait_file(wd / "net.txt")
        assert (wd / "inside.txt").read_text() == "inside\n"
        assert (wd / "verdict.txt").read_text() == "read-only\n"
        assert not elsewhere.exists()
        assert (wd / "data_entries.txt").read_text().strip() == "0", "the data directory is visible"
        assert (wd / "net.txt").read_text().strip() == "net-closed", "the network is reachable"
        # Stop still ends everything, bwrap included.
        assert runs.stop(task_id)["message"] == "Task stopped successfully"
        assert not procs.wait_gone(timeout=10), procs.survivors()

        # An Agent Protocol task's workspace lies inside the (hidden) data
        # directory: it is bound back in, writable, and its files become artifacts.
        route = runs.llm.route().script(
            openai_tool_call("bash", {"command": "echo made > made.txt; ls -A .. | wc -l > siblings.txt"}),
            openai_tool_call("task_done", {}, text="done"),
        )
        other = runs.stack.create_task("sibling")  # a workspace the sandboxed task must not see
        assert runs.stack.upload(other["task_id"], "private.txt", b"private").status_code == 200
        r = requests.post(f"{runs.stack.ap_url}{AP}/tasks", timeout=30,
                          json={"input": "ap", "additional_input": {"config_file": runs.config(route)}})
        tid = r.json()["task_id"]
        step = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{tid}/steps", json={}, timeout=60)
        assert step.status_code == 200, step.text
        assert "made.txt" in [a["file_name"] for a in step.json()["artifacts"]], step.json()
        ws = runs.stack.data_dir / "workspaces" / tid
        assert (ws / "made.txt").read_text() == "made\n"
        assert (ws / "siblings.txt").read_text().strip() == "1", "other tasks' workspaces are visible"
    finally:
        if elsewhere.exists():
            elsewhere.unlink()
        if procs is not None:
            procs.kill_leftovers()
