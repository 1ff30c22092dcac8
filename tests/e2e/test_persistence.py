"""Durability: tasks and artifacts survive an agentd restart (SIGTERM, then a
new process on the same data directory), and SIGTERM shuts agentd down
cleanly."""

from __future__ import annotations

import hashlib
import os

import requests

from helpers import AP, MIB


def test_tasks_and_artifacts_survive_a_restart(fresh_stack):
    stack = fresh_stack()
    task = stack.create_task("survive a restart", priority="high", nested={"list": [1, None, True]})
    tid = task["task_id"]
    files = {
        ("notes.txt", ""): b"plain notes\n",
        ("sales_data.csv", "data/sales_data.csv"): b"month,amount\n2024-01,1024000\n",
        ("blob.bin", "bin"): os.urandom(3 * MIB + 7),
    }
    uploaded = {}
    for (name, rel), data in files.items():
        r = stack.upload(tid, name, data, relative_path=rel or None)
        assert r.status_code == 200, r.text
        uploaded[r.json()["artifact_id"]] = (r.json(), hashlib.sha256(data).hexdigest())
    before_task = requests.get(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=30).json()
    before_artifacts = stack.artifacts(tid)
    before_trae = requests.get(f"{stack.trae_url}/api/tasks/{tid}/status", timeout=30).json()
    old_pid = stack.agentd_pid

    rc = stack.stop_agentd()  # SIGTERM, by pid
    assert rc == 0, f"agentd exited with {rc} on SIGTERM\n{stack.logs()}"
    stack.start_agentd()  # same data dir, same port: Envoy keeps working
    assert stack.agentd_pid != old_pid

    r = requests.get(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == before_task
    assert stack.artifacts(tid) == before_artifacts
    for artifact_id, (meta, digest) in uploaded.items():
        r = requests.get(f"{stack.ap_url}{AP}/tasks/{tid}/artifacts/{artifact_id}", timeout=60)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == digest, meta
        assert r.headers["content-disposition"] == f'attachment; filename="{meta["file_name"]}"'
    after_trae = requests.get(f"{stack.trae_url}/api/tasks/{tid}/status", timeout=30).json()
    assert (after_trae["task_id"], after_trae["task_status"], after_trae["start_time"]) == (
        before_trae["task_id"], before_trae["task_status"], before_trae["start_time"],
    )
    status = requests.get(f"{stack.ap_url}{AP}/status", timeout=30).json()
    assert status["total_tasks"] == 1

    # Still writable after the restart, and deletions persist too.
    assert stack.upload(tid, "after.txt", b"after restart").status_code == 200
    assert requests.delete(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=30).status_code == 200
    stack.restart_agentd()
    r = requests.get(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=30)
    assert r.status_code == 404
    assert requests.get(f"{stack.trae_url}/api/tasks", timeout=30).json()["total_tasks"] == 0
