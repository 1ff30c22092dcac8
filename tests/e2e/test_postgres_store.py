"""agentd on PostgreSQL (`AGENTD_DATABASE_URL`), behind the real Envoy: tasks
created over both REST dialects (an Agent Protocol task with an artifact, a
Trae run with its event log) are kept in PostgreSQL, not in the data
directory, and found again after a SIGTERM restart and after a SIGKILL; a
database URL agentd cannot use stops its start with a clear message and no
password."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, free_port  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402
from runs_support import assert_well_formed_log, key  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]


@pytest.fixture
def pg():
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


def stored_state(runs, task_ids: list[str]) -> dict:
    """Everything both dialects say about these tasks."""
    stack = runs.stack
    out = {
        "ap_list": requests.get(f"{stack.ap_url}{AP}/tasks", params={"size": 100}, timeout=30).json(),
        "trae_list": requests.get(f"{stack.trae_url}/api/tasks", timeout=30).json(),
    }
    # The agent's status: what is read from the store (not uptime or memory).
    status = requests.get(f"{stack.ap_url}{AP}/status", timeout=30).json()
    out["ap_status"] = {k: status[k] for k in ("total_tasks", "active_tasks", "task_counts", "api_usage")}
    for tid in task_ids:
        out[tid] = {
            "ap": requests.get(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=30).json(),
            "artifacts": stack.artifacts(tid),
            "events": key(runs.sse(tid)) if tid == task_ids[-1] else None,
        }
    return out


def test_tasks_of_both_dialects_live_in_postgres_across_restarts(fresh_runs, pg, tmp_path):
    pg.psql("CREATE DATABASE agentd")
    runs = fresh_runs({"AGENTD_DATABASE_URL": pg.url("agentd")})
    stack = runs.stack

    # Agent Protocol tasks, through each Envoy listener, one with an artifact.
    ap_task = stack.create_task("kept in postgres", team="infra", nested={"z": 1, "a": [1, None, True]})
    other = stack.create_task("through the trae listener", base=stack.trae_url)
    r = stack.upload(ap_task["task_id"], "notes.txt", b"stored beside, recorded in postgres\n",
                     relative_path="docs")
    assert r.status_code == 200, r.text
    # A Trae run: its whole event log and final status go to PostgreSQL.
    route = runs.llm.route().script(openai_tool_call("task_done", {}, text="done on postgres"))
    run_id = runs.run("a run on postgres", tmp_path / "wd", route=route)
    assert runs.wait_status(run_id, {"completed", "failed", "stopped"})["task_status"] == "completed"
    events = runs.sse(run_id)
    assert_well_formed_log(events, run_id)

    ids = [ap_task["task_id"], other["task_id"], run_id]
    assert sorted(pg.psql("SELECT task_id FROM tasks ORDER BY task_id", "agentd").split()) == sorted(ids)
    assert int(pg.psql(f"SELECT last_seq FROM tasks WHERE task_id = '{run_id}'", "agentd")) == len(events)
    assert pg.psql("SELECT count(*) FROM artifacts", "agentd") == "1"
    assert not list(stack.data_dir.glob("agentd.db*")), "agentd wrote a SQLite database"
    before = stored_state(runs, ids)
    assert before["ap_status"]["total_tasks"] == 3, before["ap_status"]
    assert before[ap_task["task_id"]]["ap"]["additional_input"] == {"team": "infra", "nested": {"z": 1, "a": [1, None, True]}}
    assert [a["file_name"] for a in before[ap_task["task_id"]]["artifacts"]] == ["notes.txt"]

    assert stack.stop_agentd() == 0, stack.logs()
    stack.start_agentd()
    assert stored_state(runs, ids) == before
    r = requests.get(f"{stack.ap_url}{AP}/tasks/{ap_task['task_id']}/artifacts/"
                     f"{before[ap_task['task_id']]['artifacts'][0]['artifact_id']}", timeout=30)
    assert r.status_code == 200 and r.content == b"stored beside, recorded in postgres\n"

    # Killed: nothing acknowledged is lost, and the store takes writes again.
    assert stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
    stack.start_agentd()
    assert stored_state(runs, ids) == before
    assert requests.delete(f"{stack.ap_url}{AP}/tasks/{other['task_id']}", timeout=30).status_code == 200
    stack.restart_agentd()
    assert requests.get(f"{stack.ap_url}{AP}/tasks/{other['task_id']}", timeout=30).status_code == 404
    assert requests.get(f"{stack.trae_url}/api/tasks", timeout=30).json()["total_tasks"] == 2
    assert pg.psql("SELECT count(*) FROM tasks", "agentd") == "2"

    # Its database gone first, agentd still shuts down by itself (no SIGKILL
    # after the wait), and leaves no control group behind.
    pg.stop()
    assert stack.stop_agentd() == 0, stack.logs()
    name = helpers.cgroup_id(stack.data_dir, stack.node_id())
    left = [p for p in Path("/sys/fs/cgroup").glob(f"*/{name}")] + list(Path("/sys/fs/cgroup").glob(name))
    assert not left, left


def start_with_database(tmp_path, url: str) -> subprocess.CompletedProcess:
    """`agentd serve` with this AGENTD_DATABASE_URL; it must exit by itself."""
    env = helpers.clean_env() | {"AGENTD_DATABASE_URL": url, "RUST_BACKTRACE": "0"}
    return subprocess.run(
        [helpers.AGENTD_BIN, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_a_database_url_agentd_cannot_use_stops_the_start(tmp_path, pg):
    secret = "pw-SECRET-e2e"
    closed = free_port()
    cases = [
        # Nothing listens there.
        (f"postgres://agentd:{secret}@127.0.0.1:{closed}/agentd",
         [f"connecting to PostgreSQL at postgres://agentd@127.0.0.1:{closed}/agentd", "refused"]),
        # A server, but no such database.
        (f"postgres://postgres:{secret}@127.0.0.1:{pg.port}/missing_db",
         [f"connecting to PostgreSQL at postgres://postgres@127.0.0.1:{pg.port}/missing_db",
          'database "missing_db" does not exist']),
        # Not PostgreSQL at all, and not a URL.
        (f"mysql://root:{secret}@127.0.0.1/agentd", ["must be a postgres:// URL"]),
        (f"postgres://u:{secret}@127.0.0.1:notaport/x", ["not a valid PostgreSQL URL"]),
    ]
    for url, wanted in cases:
        out = start_with_database(tmp_path, url)
        text = out.stdout + out.stderr
        assert out.returncode != 0, f"{url}: agentd exited 0\n{text}"
        for w in wanted:
            assert w in text, f"{url}: {w!r} not in\n{text}"
        assert secret not in text, f"{url}: the password was printed\n{text}"
    # Nothing was created in the cluster's default database either.
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'tasks'") == "0"
