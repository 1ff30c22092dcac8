"""Durable runs (issue 15): agentd SIGKILLed in the middle of a scripted
multi-step run (a long `sleep` in step 3) and started again on the same
data directory resumes the run from its checkpoint:

- steps 1 and 2 are not run again; step 3's tool call is answered as
  interrupted (a tool_result of step 3) and the run goes on with step 4;
- the scripted model receives the earlier turns again, with that answer;
- the stream replayed from the start is one log: one `start`, `interrupted`,
  `resumed` (attempt 2), the remaining steps, one `complete`, one `end`;
- the patch and the trajectory cover every step; the token totals add up
  over both attempts.

`on_interrupt: "fail"` (per run) and `--max-resumes` keep today's
behaviour of failing an interrupted run (see also test_recovery.py)."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websockets
from websockets.sync.client import connect

pytest.register_assert_rewrite("runs_support")

from runs_support import TaskProcesses, assert_well_formed_log, key, wait_file, ws_url  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

INTERRUPTED = "interrupted: agentd stopped while the task was running"


def bash(command: str) -> dict:
    return openai_tool_call("bash", {"command": command})


def start_three_step_run(runs, wd, extra_script=(), **extra):
    """Steps 1 and 2 append to hello.py; step 3 records its shell's pid and
    sleeps. Returns (task_id, route, the sleeping shell's processes)."""
    route = runs.llm.route().script(
        bash("echo '# one' >> hello.py"),
        bash("echo '# two' >> hello.py"),
        bash("echo $$ > bash.pid; echo '# three' >> hello.py; sleep 300"),
        *extra_script,
    )
    task_id = runs.run("durable run", wd, route=route, **extra)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    runs.wait_event(task_id, lambda m: m["type"] == "tool_call" and "sleep 300" in str(m.get("data")),
                    "step 3's long tool call")
    return task_id, route, procs


def stored_task(runs, task_id: str) -> tuple[str, list[str]]:
    """The task's status and its event types, read from the SQLite file itself."""
    with sqlite3.connect(f"file:{runs.stack.data_dir / 'agentd.db'}?mode=ro", uri=True) as db:
        (status,) = db.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        types = [t for (t,) in db.execute("SELECT type FROM events WHERE task_id = ? ORDER BY seq", (task_id,))]
    return status, types


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_run_cut_off_mid_run_resumes_from_the_checkpoint(fresh_runs, git_repo, sig):
    """SIGKILL (a crash) or SIGTERM (a graceful shutdown) in step 3's long
    command: after the restart the run goes on from its checkpoint."""
    runs = fresh_runs()
    wd = git_repo
    task_id, route, procs = start_three_step_run(
        runs, wd,
        extra_script=(bash("echo '# four' >> hello.py"),
                      openai_tool_call("task_done", {}, text="all four lines written")),
        patch_path="out/task.patch", trajectory_file="out/trajectory.json")
    try:
        before = runs.status(task_id)["messages"]
        assert runs.stack.stop_agentd(sig) == (0 if sig == signal.SIGTERM else -sig)
        if sig == signal.SIGTERM:
            # A graceful shutdown ends the run's processes before it exits,
            # and leaves the run as it was, to resume: no end in its log.
            assert not procs.survivors(), procs.survivors()
            status, types = stored_task(runs, task_id)
            assert status == "running", (status, types)
            assert types[-1] == "tool_call" and "end" not in types, types
            assert not list((runs.stack.data_dir / "run").glob("*.pids")), "process records left"
        runs.stack.start_agentd()

        st = runs.wait_status(task_id, {"completed", "failed", "stopped"})
        assert st["task_status"] == "completed", [(m["type"], m.get("error")) for m in st["messages"]]
        assert not procs.wait_gone(timeout=10), procs.survivors()

        events = runs.sse(task_id, after_seq=0)
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        for once in ("start", "interrupted", "resumed", "complete", "end"):
            assert types.count(once) == 1, (once, types)
        # The log from before the crash is kept as it was, then goes on.
        assert key(events[: len(before)]) == key(before)
        at = types.index("interrupted")
        assert at == len(before), types
        interrupted, resumed = events[at], events[at + 1]
        assert interrupted["data"] == {"attempt": 1, "step": 3}, interrupted
        assert interrupted["message"] == INTERRUPTED, interrupted
        assert resumed["type"] == "resumed" and resumed["data"] == {"attempt": 2, "step": 3}, resumed
        # Step 3's call is answered as interrupted, then steps 4 and 5 (never 1 or 2 again).
        cut = events[at + 2]
        assert cut["type"] == "tool_result" and cut["data"]["step"] == 3, cut
        assert cut["data"]["success"] is False and "restarted" in cut["data"]["error"], cut
        steps_after = [e["data"]["step"] for e in events[at:] if e["type"] == "step"]
        assert steps_after == [4, 5], types
        assert [e["data"]["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4, 5]

        # The file shows each step ran once; the patch has all of it.
        assert (wd / "hello.py").read_text().endswith("greet()\n# one\n# two\n# three\n# four\n")
        patch = (wd / "out/task.patch").read_text()
        for line in ("+# one", "+# two", "+# three", "+# four"):
            assert patch.count(line) == 1, patch
        trajectory = json.loads((wd / "out/trajectory.json").read_text())
        assert [s["step_number"] for s in trajectory["agent_steps"]] == [1, 2, 3, 4, 5]
        assert len(trajectory["llm_interactions"]) == 5
        assert trajectory["success"] is True
        assert "sk-runs-e2e" not in json.dumps(trajectory)

        # Five model calls in all; the first after the restart carries the
        # whole earlier conversation with step 3's call answered as interrupted.
        calls = route.requests
        assert len(calls) == 5, len(calls)
        resumed_call = calls[3]["body"]["messages"]
        assert resumed_call[: len(calls[2]["body"]["messages"])] == calls[2]["body"]["messages"]
        tool_msgs = [m for m in resumed_call if m["role"] == "tool"]
        assert len(tool_msgs) == 3, tool_msgs
        assert "restarted" in tool_msgs[-1]["content"], tool_msgs[-1]

        # Token usage: the totals are the sum over both attempts' calls.
        usage = [e["data"] for e in events if e["type"] == "usage"]
        assert len(usage) == 5
        assert usage[-1]["total"]["input_tokens"] == sum(u["usage"]["input_tokens"] for u in usage) == 50
        assert usage[-1]["total"]["output_tokens"] == 25
        ap = requests.get(f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task_id}", timeout=30).json()
        assert ap["status"] == "completed", ap

        # The checkpoints: up to two per step (in flight, completed; those
        # forwarded together are one row), across
        # both attempts; each row holds only what it added (no message is
        # written twice: steps 4 and 5 add two each to the 8 the model had at step 4).
        with sqlite3.connect(f"file:{runs.stack.data_dir / 'agentd.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT n, step, body FROM checkpoints WHERE task_id = ? ORDER BY n",
                              (task_id,)).fetchall()
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1)), rows
        steps = [step for _, step, _ in rows]
        assert steps == sorted(steps) and steps[-1] == 5 and len(rows) <= 10, rows
        assert all(steps.count(s) <= 2 for s in set(steps)), rows
        bodies = [json.loads(b) for _, _, b in rows]
        assert bodies[-1]["in_flight"] is False, bodies[-1]
        firsts = [b["first_message"] for b in bodies]
        assert firsts == sorted(firsts) and sum(len(b["messages"]) for b in bodies) == len(resumed_call) + 4
        print(f"checkpoint rows: {len(rows)}, bytes per row {[len(b) for _, _, b in rows]}, "
              f"conversation {len(json.dumps(resumed_call))} bytes as the model got it at step 4")

        # A further restart changes nothing.
        runs.stack.restart_agentd()
        assert key(runs.sse(task_id, after_seq=0)) == key(events)
    finally:
        procs.kill_leftovers()


def test_repeated_crashes_at_any_point_never_tear_a_checkpoint(fresh_runs, tmp_path):
    """SIGKILL again and again at random moments of a run of many short
    steps, writes of events and checkpoints included: every restart resumes
    from a whole, current checkpoint (the write is one transaction with its
    events), so the run completes, no completed step runs twice, and its
    usage adds up."""
    runs = fresh_runs({"AGENTD_MAX_RESUMES": "50"})
    wd = tmp_path / "wd"
    steps = 24
    route = runs.llm.route().script(
        *(bash(f"echo line-{i} >> lines.txt") for i in range(1, steps + 1)),
        openai_tool_call("task_done", {}, text="all lines written"),
    )
    task_id = runs.run("many short steps", wd, route=route, config_file=runs.config(route, max_steps=200))
    rng = random.Random(15)
    kills = 0
    db_file = runs.stack.data_dir / "agentd.db"

    def last_seq() -> int:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE task_id = ?",
                              (task_id,)).fetchone()[0]

    while kills < 8:
        status, _ = stored_task(runs, task_id)
        if status != "running":
            break
        # A few events further on, then a kill somewhere inside the next writes.
        target = last_seq() + rng.randint(1, 6)
        deadline = time.monotonic() + 30
        while last_seq() < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        kills += 1
        runs.stack.start_agentd()

    st = runs.wait_status(task_id, {"completed", "failed", "stopped"})
    assert st["task_status"] == "completed", [(m["type"], m.get("error")) for m in st["messages"]][-6:]
    events = runs.sse(task_id, after_seq=0)
    assert_well_formed_log(events, task_id)
    types = [e["type"] for e in events]
    assert types.count("start") == 1 and types.count("complete") == 1, types
    assert types.count("interrupted") == types.count("resumed") >= 1, types
    # Step numbers go up by one, except that each resume goes on from its
    # checkpoint: the last step started before the crash (its model had
    # answered) or the one before it (the step was cut off before that,
    # so it starts again) - never an older one.
    started, resumes = 0, 0
    for e in events:
        if e["type"] == "resumed":
            assert e["data"]["step"] in (started - 1, started), (e, started)
            started = e["data"]["step"]
            resumes += 1
        elif e["type"] == "step":
            assert e["data"]["step"] == started + 1, (e, started)
            started += 1
    lines = (wd / "lines.txt").read_text().split()
    assert len(lines) == len(set(lines)), f"a line written twice: {lines}"
    usage = [e["data"] for e in events if e["type"] == "usage"]
    assert usage[-1]["total"]["input_tokens"] == sum(u["usage"]["input_tokens"] for u in usage)
    print(f"{kills} SIGKILLs, {resumes} resumes, {started} steps, "
          f"{len(lines)} of {steps} lines, {len(route.requests)} model calls")


def test_a_run_stopped_a_moment_before_a_crash_ends_stopped_not_resumed(fresh_runs, tmp_path):
    """The stop is on disk before the run is told: agentd SIGKILLed while the
    stopped run's command is still being ended (it ignores SIGTERM, so that
    takes the 2 s grace) leaves the task running, and the next start ends it
    `stopped` instead of resuming it."""
    runs = fresh_runs()
    wd = tmp_path / "wd"
    route = runs.llm.route().script(
        bash("echo $$ > bash.pid; trap '' TERM; sleep 300"),
        openai_tool_call("task_done", {}, text="must not run"),
    )
    task_id = runs.run("stopped, then a crash", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    db_file = runs.stack.data_dir / "agentd.db"
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(requests.post, f"{runs.stack.trae_url}/api/tasks/{task_id}/stop", timeout=60)
            deadline = time.monotonic() + 30
            while True:
                with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as db:
                    if db.execute("SELECT 1 FROM stop_requests WHERE task_id = ?", (task_id,)).fetchone():
                        break
                assert time.monotonic() < deadline, "the stop was not recorded"
                time.sleep(0.01)
            assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        status, types = stored_task(runs, task_id)
        assert status == "running" and "end" not in types, f"the stop ended first: nothing was tested ({types})"
        runs.stack.start_agentd()
        st = runs.status(task_id)
        assert st["task_status"] == "stopped", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        assert types[-2:] == ["stopped", "end"] and "resumed" not in types, types
        assert len(route.requests) == 1
        assert not procs.wait_gone(timeout=10), procs.survivors()
    finally:
        procs.kill_leftovers()


def test_interrupted_runs_beyond_the_slots_wait_for_one_and_can_be_stopped_meanwhile(fresh_runs, tmp_path):
    """Three runs interrupted, agentd started again with one run slot: one
    resumes, the others wait for the slot instead of failing; a stop ends a
    waiting one `stopped` at once, without a model call, and the slot freed
    by the running one goes to the run still waiting."""
    runs = fresh_runs({"AGENTD_MAX_RUNNING_TASKS": "3"})
    started = {}
    for name in ("first", "second", "third"):
        wd = tmp_path / name
        route = runs.llm.route().script(bash("echo $$ > bash.pid; sleep 300"), bash("echo $$ > again.pid; sleep 300"))
        task_id = runs.run(name, wd, route=route)
        started[task_id] = (wd, route)
    procs = [TaskProcesses.of(int(wait_file(wd / "bash.pid"))) for wd, _ in started.values()]

    def resumed() -> list[str]:
        return [t for t, (wd, _) in started.items() if (wd / "again.pid").is_file()]

    def wait_resumed(n: int) -> list[str]:
        deadline = time.monotonic() + 60
        while len(resumed()) < n:
            assert time.monotonic() < deadline, f"{n} runs were not resumed: {resumed()}"
            time.sleep(0.05)
        return resumed()

    try:
        assert runs.stack.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        runs.stack.env["AGENTD_MAX_RUNNING_TASKS"] = "1"
        runs.stack.start_agentd()
        (running,) = wait_resumed(1)
        procs.append(TaskProcesses.of(int(wait_file(started[running][0] / "again.pid"))))
        time.sleep(0.5)  # a waiting run that did not wait would call its model now
        waiting = [t for t in started if t != running]
        for t in waiting:
            assert runs.status(t)["task_status"] == "running"
            assert len(started[t][1].requests) == 1, "a waiting run called its model"
        # A stop while it waits: stopped at once, its model never called again.
        assert runs.stop(waiting[0])["message"] == "Task stopped successfully"
        events = runs.sse(waiting[0])
        assert_well_formed_log(events, waiting[0])
        types = [e["type"] for e in events]
        assert types.count("resumed") == 1 and types[-2:] == ["stopped", "end"], types
        assert len(started[waiting[0]][1].requests) == 1
        # The slot the running one frees goes to the run still waiting.
        assert runs.stop(running)["message"] == "Task stopped successfully"
        assert sorted(wait_resumed(2)) == sorted([running, waiting[1]])
        procs.append(TaskProcesses.of(int(wait_file(started[waiting[1]][0] / "again.pid"))))
        assert runs.stop(waiting[1])["message"] == "Task stopped successfully"
    finally:
        for p in procs:
            p.kill_leftovers()


def test_a_run_asking_to_fail_on_interrupt_fails(fresh_runs, tmp_path):
    runs = fresh_runs()
    bad = requests.post(f"{runs.stack.trae_url}/api/run", timeout=30, json={
        "task": "t", "working_dir": str(tmp_path / "x"), "on_interrupt": "retry"})
    assert bad.status_code == 400 and "on_interrupt" in bad.json()["error"], bad.text
    task_id, route, procs = start_three_step_run(runs, tmp_path / "wd", on_interrupt="fail")
    try:
        runs.stack.stop_agentd(signal.SIGKILL)
        runs.stack.start_agentd()
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        assert [e["type"] for e in events[-2:]] == ["error", "end"]
        assert events[-2]["error"] == INTERRUPTED
        assert "resumed" not in [e["type"] for e in events]
        assert len(route.requests) == 3
    finally:
        procs.kill_leftovers()


def test_a_run_past_max_resumes_fails_with_the_reason(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_MAX_RESUMES": "0"})
    task_id, _, procs = start_three_step_run(runs, tmp_path / "wd")
    try:
        runs.stack.stop_agentd(signal.SIGKILL)
        runs.stack.start_agentd()
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        error = runs.sse(task_id)[-2]["error"]
        assert error.startswith(INTERRUPTED) and "resumed 0 times already" in error, error
    finally:
        procs.kill_leftovers()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_an_agent_protocol_task_continues_its_conversation_after_a_restart(fresh_runs, sig):
    """Two steps, SIGKILL or SIGTERM between steps, restart: the third step
    continues the same conversation (the model receives the earlier turns)
    instead of failing, and the task's log stays one log."""
    runs = fresh_runs()
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo first > notes.txt"}, text="step one"),
        openai_tool_call("bash", {"command": "echo second >> notes.txt"}, text="step two"),
        openai_tool_call("task_done", {}, text="notes complete"),
    )
    task = runs.stack.create_task("keep notes", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task['task_id']}"
    for _ in range(2):
        s = requests.post(f"{url}/steps", json={"input": "go on"}, timeout=120)
        assert s.status_code == 200 and not s.json()["is_last"], s.text
    if sig == signal.SIGTERM:
        # A shutdown ends the task's WebSocket with 1012 (service restart), at once.
        with connect(ws_url(runs.stack.ap_url, f"/ap/v1/agent/tasks/{task['task_id']}/ws"),
                     open_timeout=10, proxy=None) as ws:
            ws.recv(timeout=30)  # the snapshot
            assert runs.stack.stop_agentd(sig) == 0
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    else:
        assert runs.stack.stop_agentd(sig) == -sig
    runs.stack.start_agentd()

    assert requests.get(url, timeout=30).json()["status"] == "running"
    third = requests.post(f"{url}/steps", json={"input": "finish up"}, timeout=120)
    assert third.status_code == 200, third.text
    assert third.json()["is_last"] is True and third.json()["output"] == "notes complete", third.json()
    assert third.json()["additional_output"]["step_number"] == 3, third.json()

    calls = route.requests
    assert len(calls) == 3
    resumed = calls[2]["body"]["messages"]
    # The earlier turns, as the model saw them, then the new input.
    assert resumed[: len(calls[1]["body"]["messages"])] == calls[1]["body"]["messages"]
    contents = [str(m.get("content")) for m in resumed]
    assert any("step one" in c for c in contents) and any("step two" in c for c in contents), contents
    assert "restarted" in contents[-2] and contents[-1] == "finish up", contents[-2:]

    events = runs.sse(task["task_id"], after_seq=0)
    assert_well_formed_log(events, task["task_id"])
    types = [e["type"] for e in events]
    for once in ("start", "interrupted", "resumed", "complete", "end"):
        assert types.count(once) == 1, (once, types)
    assert [e["data"]["step"] for e in events if e["type"] == "step"] == [1, 2, 3]
    assert events[types.index("resumed")]["data"] == {"attempt": 2, "step": 2}


def test_an_agent_protocol_step_in_flight_at_a_shutdown_answers_503_and_the_task_goes_on(fresh_runs):
    """SIGTERM while a step runs a long command: that step answers 503
    SERVICE_UNAVAILABLE (with Retry-After), its processes end, and after the
    restart the next step continues with the cut-off call answered as
    interrupted."""
    runs = fresh_runs()
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo first > notes.txt"}, text="step one"),
        openai_tool_call("bash", {"command": "echo $$ > bash.pid; sleep 300"}, text="step two"),
        openai_tool_call("task_done", {}, text="notes complete"),
    )
    task = runs.stack.create_task("keep notes", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task['task_id']}"
    assert requests.post(f"{url}/steps", json={"input": "go on"}, timeout=120).status_code == 200
    wd = runs.stack.data_dir / "workspaces" / task["task_id"]
    with ThreadPoolExecutor(1) as pool:
        step = pool.submit(requests.post, f"{url}/steps", json={"input": "go on"}, timeout=120)
        procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
        try:
            assert runs.stack.stop_agentd(signal.SIGTERM) == 0
            cut = step.result()
            assert not procs.survivors(), procs.survivors()
        finally:
            procs.kill_leftovers()
    assert cut.status_code == 503, cut.text
    assert cut.json()["error"]["code"] == "SERVICE_UNAVAILABLE", cut.json()
    assert "shutting down" in cut.json()["error"]["message"], cut.json()
    assert int(cut.headers["retry-after"]) >= 1, cut.headers

    runs.stack.start_agentd()
    third = requests.post(f"{url}/steps", json={"input": "finish up"}, timeout=120)
    assert third.status_code == 200, third.text
    assert third.json()["is_last"] is True and third.json()["output"] == "notes complete", third.json()
    calls = route.requests
    assert len(calls) == 3
    tool_msgs = [m for m in calls[2]["body"]["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 2 and "restarted" in tool_msgs[-1]["content"], tool_msgs
    events = runs.sse(task["task_id"], after_seq=0)
    assert_well_formed_log(events, task["task_id"])
    types = [e["type"] for e in events]
    for once in ("start", "interrupted", "resumed", "complete", "end"):
        assert types.count(once) == 1, (once, types)


def test_a_run_whose_time_ran_out_while_agentd_was_down_is_not_resumed(fresh_runs, tmp_path):
    """The timeout counts from the run's first start, downtime included."""
    runs = fresh_runs({"AGENTD_TASK_TIMEOUT_SECS": "3"})
    task_id, _, procs = start_three_step_run(runs, tmp_path / "wd")
    try:
        started = runs.status(task_id)["messages"][0]["timestamp"]
        runs.stack.stop_agentd(signal.SIGKILL)
        while time.time() < started + 3.5:
            time.sleep(0.1)
        runs.stack.start_agentd()
        st = runs.status(task_id)
        assert st["task_status"] == "failed", st
        error = runs.sse(task_id)[-2]["error"]
        assert error.startswith(INTERRUPTED) and "timed out after 3s" in error, error
    finally:
        procs.kill_leftovers()


def test_an_agent_protocol_task_with_a_bad_policy_is_refused(fresh_runs):
    runs = fresh_runs()
    task = runs.stack.create_task("bad policy", on_interrupt="sometimes")
    r = requests.post(f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task['task_id']}/steps", timeout=60)
    assert r.status_code == 400 and "on_interrupt" in r.text, r.text


def test_a_stopped_agent_protocol_task_is_never_resumed(fresh_runs):
    """Stopped while its session waits to be rebuilt (after a restart): it
    ends `stopped` there, and its next step is refused, not resumed."""
    runs = fresh_runs()
    route = runs.llm.route().script(openai_tool_call("bash", {"command": "echo first"}, text="one"))
    task = runs.stack.create_task("stop me", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}/ap/v1/agent/tasks/{task['task_id']}"
    assert requests.post(f"{url}/steps", timeout=120).status_code == 200
    runs.stack.stop_agentd(signal.SIGKILL)
    runs.stack.start_agentd()
    assert runs.stop(task["task_id"])["message"] == "Task stopped successfully"
    assert requests.get(url, timeout=30).json()["status"] == "stopped"
    again = requests.post(f"{url}/steps", timeout=120)
    assert again.status_code == 400 and "no more steps" in again.text, again.text
    events = runs.sse(task["task_id"])
    assert_well_formed_log(events, task["task_id"])
    assert [e["type"] for e in events][-4:] == ["interrupted", "resumed", "stopped", "end"]
    assert len(route.requests) == 1
