"""Several agentd nodes (issue 14): three nodes share one throwaway PostgreSQL
and one data directory, behind one Envoy that balances over them
(`AGENTD_UPSTREAMS`). Any node answers for any task: readers on one node
follow a run executing on another, a stop sent to a third node ends the run's
processes, the run-slot limit (429) holds cluster-wide, the runs of a node
killed with SIGKILL are resumed by a survivor from their checkpoint (or end
`failed` (interrupted) under `on_interrupt: fail`) on the survivors' watch, and
both documents' client flows pass unchanged through the cluster.

Each node runs one task at a time (AGENTD_MAX_RUNNING_TASKS=1) with a 3 s
lease, so node loss is noticed within a few seconds."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, Stack  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402
from runs_support import (  # noqa: E402
    RUN_WAIT,
    RUNS_API_KEY,
    Reader,
    Runs,
    TaskProcesses,
    assert_contiguous,
    assert_well_formed_log,
    key,
    long_bash,
    read_sse,
    read_ws,
    trae_config_yaml,
    wait_file,
    ws_url,
)
from scripted_llm import delayed, openai_tool_call  # noqa: E402

import test_runs_agent_protocol as ap_flows  # noqa: E402
import test_runs_trae as trae_flows  # noqa: E402

pytest_plugins = ["runs_support"]

NODES = 3
LEASE_SECS = 3


@dataclass
class Cluster:
    pg: PgCluster
    nodes: list[Stack]
    front: Stack  # Envoy only; its grpc_target is node 0
    runs: Runs

    def node(self, node_id: str) -> Stack:
        return self.nodes[int(node_id.removeprefix("n"))]

    def owner(self, task_id: str) -> str:
        """The node that holds (or held) the task's run, from its row."""
        deadline = time.monotonic() + RUN_WAIT
        while time.monotonic() < deadline:
            owner = self.pg.psql(
                f"SELECT node_id FROM runs WHERE task_id = '{task_id}' AND node_id IS NOT NULL "
                "ORDER BY created_at DESC LIMIT 1", "agentd")
            if owner:
                return owner
            time.sleep(0.05)
        raise AssertionError(f"no node holds task {task_id}")

    def others(self, node_id: str) -> list[Stack]:
        return [n for i, n in enumerate(self.nodes) if f"n{i}" != node_id]


def grpc_call(target: str, method: str, **fields) -> dict:
    from google.protobuf import json_format

    with grpc.insecure_channel(target) as ch:
        call, req, _ = helpers.Reflection(ch).unary(ch, method)
        resp = call(req(**fields), timeout=60)
    return json_format.MessageToDict(resp, preserving_proto_field_name=True)


def run_on(node: Stack, runs: Runs, task: str, working_dir: Path, route, **extra) -> str:
    """A Trae run started on one node directly (gRPC), so that it runs there."""
    out = grpc_call(node.grpc_target, "agentd.trae.v1.TraeService/Run", task=task,
                    working_dir=str(working_dir), provider="openai", config_file=runs.config(route), **extra)
    return out["task_id"]


def sse_from(node: Stack, task_id: str, path: str | None = None, **kw) -> list[dict]:
    """The task's SSE stream read from one node itself (agentd serves it; Envoy only routes it)."""
    return read_sse(f"http://{node.grpc_target}{path or f'/api/tasks/{task_id}/stream'}", **kw)


def ws_from(node: Stack, task_id: str) -> list[dict]:
    msgs, _ = read_ws(ws_url(f"http://{node.grpc_target}", f"{AP}/tasks/{task_id}/ws"),
                      until=lambda m: m.get("event") == "end")
    return msgs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, runs_llm):
    root = tmp_path_factory.mktemp("cluster")
    pg = PgCluster().start()
    pg.psql("CREATE DATABASE agentd")
    configs = root / "configs"
    configs.mkdir()
    default_route = runs_llm.route()
    default_cfg = configs / "default_config.yaml"
    default_cfg.write_text(trae_config_yaml(default_route.base_url))
    shared = root / "shared-data"  # one data directory, as on a shared volume
    nodes = []
    try:
        for i in range(NODES):
            env = {
                "TRAE_CONFIG_FILE": str(default_cfg), "OPENAI_API_KEY": RUNS_API_KEY,
                "AGENTD_DATABASE_URL": pg.url("agentd"), "AGENTD_NODE_ID": f"n{i}",
                "AGENTD_LEASE_SECS": str(LEASE_SECS), "AGENTD_MAX_RUNNING_TASKS": "1",
            }
            node = Stack(root=root / f"n{i}", data_dir=shared, env=env)
            node.root.mkdir()
            helpers.LIVE_STACKS.append(node)
            nodes.append(node)
            node.start_agentd()
        front = Stack(root=root / "envoy", data_dir=shared, upstreams=[n.grpc_target for n in nodes],
                      agentd_port=nodes[0].agentd_port)
        front.root.mkdir()
        helpers.LIVE_STACKS.append(front)
        front.start_envoy()
        runs = Runs(stack=front, llm=runs_llm, default_route=default_route, configs_dir=configs)
        yield Cluster(pg=pg, nodes=nodes, front=front, runs=runs)
    finally:
        for s in [*nodes, *([front] if "front" in locals() else [])]:
            s.stop()
            if s in helpers.LIVE_STACKS:
                helpers.LIVE_STACKS.remove(s)
        pg.stop()


def test_nodes_register_and_keep_their_parts_of_the_shared_data_dir_apart(cluster):
    rows = cluster.pg.psql("SELECT node_id, address, slots FROM nodes ORDER BY node_id", "agentd").splitlines()
    assert rows == [f"n{i}|{n.grpc_target}|1" for i, n in enumerate(cluster.nodes)], rows
    data = cluster.nodes[0].data_dir
    assert sorted(p.name for p in (data / "run").iterdir()) == ["n0", "n1", "n2"]
    assert sorted(p.name for p in (data / "tmp").iterdir()) == ["n0", "n1", "n2"]


def test_readers_on_one_node_get_every_event_of_a_run_on_another(cluster, tmp_path):
    runs = cluster.runs
    # Replies spaced out, so the readers follow the run live rather than replay it.
    route = runs.llm.route().script(
        delayed(openai_tool_call("bash", {"command": "echo one"}, text="first"), 0.4),
        delayed(openai_tool_call("bash", {"command": "echo two"}, text="second"), 0.4),
        delayed(openai_tool_call("bash", {"command": "echo three"}, text="third"), 0.4),
        delayed(openai_tool_call("task_done", {}, text="all three"), 0.4),
    )
    owner = cluster.nodes[1]
    task_id = run_on(owner, runs, "three echoes", tmp_path / "wd", route)
    assert cluster.owner(task_id) == "n1"
    reader_node = cluster.nodes[0]
    arrivals: list[tuple[int, float]] = []

    def timed_sse():
        out = []
        with requests.get(f"http://{reader_node.grpc_target}/api/tasks/{task_id}/stream", stream=True,
                          timeout=(10, 40), headers={"Accept": "text/event-stream"}) as resp:
            import sseclient

            for ev in sseclient.SSEClient(resp).events():
                msg = json.loads(ev.data)
                if msg["type"] == "heartbeat":
                    continue
                arrivals.append((msg["seq"], time.time() - msg["timestamp"]))
                out.append(msg)
                if msg["type"] == "end":
                    return out
        return out

    from websockets.sync.client import connect

    sse = Reader(timed_sse)
    ws = Reader(lambda: ws_from(reader_node, task_id))
    with connect(ws_url(f"http://{reader_node.grpc_target}", f"{AP}/logs/ws"), open_timeout=10,
                 close_timeout=5, proxy=None) as logs_socket:
        logs = Reader(lambda: read_ws(logs_socket, until=lambda m: m.get("task_id") == task_id
                                      and m.get("event") == "end")[0])
        logs.start()
        sse.start()
        ws.start()
        got_sse, got_ws = sse.result(), ws.result()
        got_logs = [m for m in logs.result() if m.get("task_id") == task_id]

    full = sse_from(owner, task_id)
    assert_well_formed_log(full, task_id)
    assert full[-2]["type"] == "complete" and full[-2]["result"] == "all three"
    assert key(got_sse) == key(full), "the reader on another node missed or reordered events"
    # The WebSocket: a snapshot, then one update per event, in order, each once.
    updates = [m for m in got_ws if m["seq"] > 0]
    seqs = [m["seq"] for m in updates]
    assert seqs == list(range(seqs[0], len(full) + 1)), seqs
    assert [m["event"] for m in updates] == [e["type"] for e in full[seqs[0] - 1:]]
    assert updates[-1]["status"] == "completed"
    # The logs WebSocket (every task's live events) of the reader's node too.
    assert [m["event"] for m in got_logs][-2:] == ["complete", "end"], got_logs[-3:]
    # Live events (after the first second) crossed nodes through the doorbell.
    live = [lat for seq, lat in arrivals if seq > 2]
    print(f"cross-node delivery latency (event timestamp to SSE arrival): max {max(live) * 1000:.0f} ms, "
          f"median {sorted(live)[len(live) // 2] * 1000:.0f} ms over {len(live)} events")


def test_a_stop_sent_to_a_third_node_ends_the_runs_processes(cluster, tmp_path):
    runs = cluster.runs
    wd = tmp_path / "wd"
    route = runs.llm.route().script(long_bash())
    owner, asked, watcher = cluster.nodes[2], cluster.nodes[0], cluster.nodes[1]
    task_id = run_on(owner, runs, "sleep for long", wd, route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        assert cluster.owner(task_id) == "n2"
        out = grpc_call(asked.grpc_target, "agentd.trae.v1.TraeService/StopTask", task_id=task_id)
        assert out["message"] == "Task stopped successfully", out
        assert procs.wait_gone() == [], "the run's processes survived a stop sent to another node"
        st = grpc_call(watcher.grpc_target, "agentd.trae.v1.TraeService/GetTaskStatus", task_id=task_id)
        assert st["task_status"] == "stopped", st
        events = sse_from(watcher, task_id)
        assert_well_formed_log(events, task_id)
        assert [e["type"] for e in events][-2:] == ["stopped", "end"]
    finally:
        procs.kill_leftovers()


def test_a_stop_its_node_died_in_the_middle_of_ends_the_run_stopped(cluster, tmp_path):
    """The node holding a run is asked to stop it and dies before the run's
    end is written (its command ignores SIGTERM, so ending it takes the
    2 s grace): the request is on the run row, so the node taking the run
    over ends it `stopped` instead of resuming it."""
    runs = cluster.runs
    wd = tmp_path / "wd"
    stubborn = openai_tool_call("bash", {"command": "echo $$ > bash.pid; trap '' TERM; sleep 300"})
    route = runs.llm.route().script(stubborn, openai_tool_call("task_done", {}, text="must not run"))
    victim_id, victim = "n1", cluster.nodes[1]
    task_id = run_on(victim, runs, "stopped as its node dies", wd, route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        stop = Reader(lambda: grpc_call(victim.grpc_target, "agentd.trae.v1.TraeService/StopTask", task_id=task_id))
        stop.start()
        deadline = time.monotonic() + RUN_WAIT
        while not cluster.pg.psql(f"SELECT cancel_reason FROM runs WHERE task_id = '{task_id}'", "agentd"):
            assert time.monotonic() < deadline, "the stop request was not recorded"
            time.sleep(0.02)
        assert victim.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        status = cluster.pg.psql(f"SELECT status FROM tasks WHERE task_id = '{task_id}'", "agentd")
        assert status == "running", f"the stop ended before the node died ({status}): nothing was tested"
        survivor = cluster.others(victim_id)[0]
        events = sse_from(survivor, task_id, timeout=RUN_WAIT)
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        assert types[-2:] == ["stopped", "end"] and "resumed" not in types, types
        assert events[-1]["data"]["status"] == "stopped"
        assert len(route.requests) == 1
    finally:
        if victim.agentd is None or victim.agentd.poll() is not None:
            victim.start_agentd()  # and it ends the processes its last life left
        procs.wait_gone()
        procs.kill_leftovers()


def test_the_run_slot_limit_holds_across_the_cluster(cluster, tmp_path):
    runs = cluster.runs
    started: list[tuple[str, Path]] = []
    procs: list[TaskProcesses] = []
    try:
        # Three runs through Envoy: one per node, wherever Envoy sent them
        # (a full node queues the run for one with a free slot).
        for i in range(NODES):
            wd = tmp_path / f"wd{i}"
            started.append((runs.run(f"long {i}", wd, route=runs.llm.route().script(long_bash())), wd))
        for _, wd in started:
            procs.append(TaskProcesses.of(int(wait_file(wd / "bash.pid"))))
        owners = sorted(cluster.owner(t) for t, _ in started)
        assert owners == ["n0", "n1", "n2"], owners
        # Every slot of every node is busy: 429 through Envoy, and from each node.
        r = requests.post(f"{cluster.front.trae_url}/api/run", timeout=30, json={
            "task": "one too many", "working_dir": str(tmp_path / "extra"), "provider": "openai"})
        assert r.status_code == 429, r.text
        assert r.json()["status"] == "error" and "busy" in r.json()["error"], r.text
        assert int(r.headers["retry-after"]) > 0
        r = requests.post(f"{cluster.front.ap_url}/api/run", timeout=30, json={
            "task": "one too many", "working_dir": str(tmp_path / "extra"), "provider": "openai"})
        assert r.status_code == 429 and r.json()["status"] == "error", r.text
        for node in cluster.nodes:
            with pytest.raises(grpc.RpcError) as refused:
                grpc_call(node.grpc_target, "agentd.trae.v1.TraeService/Run", task="one too many",
                          working_dir=str(tmp_path / "extra"), provider="openai")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        counted = cluster.pg.psql("SELECT count(*) FROM tasks WHERE input = 'one too many'", "agentd")
        assert counted == "0", "a refused run was stored"
        # An Agent Protocol step too: no node has room for its session.
        step_cfg = runs.config(runs.llm.route().script(openai_tool_call("task_done", {}, text="stepped")))
        ap_task = cluster.front.create_task("a step with nowhere to run", config_file=step_cfg)
        r = requests.post(f"{cluster.front.ap_url}{AP}/tasks/{ap_task['task_id']}/steps", json={}, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "INSUFFICIENT_RESOURCES", r.text
        # A slot frees up: a first step asked of a node that is still full
        # runs on the node with room, and answers on the node asked.
        freed = cluster.owner(started[0][0])
        runs.stop(started[0][0])
        assert procs[0].wait_gone() == []
        full = next(n for i, n in enumerate(cluster.nodes) if f"n{i}" != freed)
        step = grpc_call(full.grpc_target, "agentd.agent.v1.AgentService/ExecuteStep", task_id=ap_task["task_id"])
        assert step["is_last"] is True and step["output"] == "stepped", step
        assert cluster.owner(ap_task["task_id"]) == freed
        wd = tmp_path / "after"
        again = runs.run("fits again", wd, route=runs.llm.route())
        assert runs.wait_status(again, {"completed", "failed", "stopped"})["task_status"] == "completed"
    finally:
        for task_id, _ in started:
            requests.post(f"{cluster.front.trae_url}/api/tasks/{task_id}/stop", timeout=60)
        for p in procs:
            p.kill_leftovers()


def test_a_killed_nodes_run_ends_failed_on_the_survivors(cluster, tmp_path):
    """Under `on_interrupt: fail` (the behaviour before durable runs)."""
    runs = cluster.runs
    wd = tmp_path / "wd"
    victim_id, victim = "n1", cluster.nodes[1]
    task_id = run_on(victim, runs, "outlived by its node", wd, runs.llm.route().script(long_bash()),
                     on_interrupt="fail")
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    survivors = cluster.others(victim_id)
    try:
        readers = [Reader(lambda: sse_from(survivors[0], task_id, timeout=RUN_WAIT)),
                   Reader(lambda: sse_from(survivors[1], task_id, path=f"{AP}/tasks/{task_id}/events",
                                           timeout=RUN_WAIT)),
                   Reader(lambda: ws_from(survivors[0], task_id))]
        for r in readers:
            r.start()
        time.sleep(0.5)  # the readers are following
        assert victim.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        deadline = killed + RUN_WAIT
        while True:
            st = grpc_call(survivors[0].grpc_target, "agentd.trae.v1.TraeService/GetTaskStatus", task_id=task_id)
            if st["task_status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        detected = time.monotonic() - killed
        print(f"node death detected and its run ended {detected:.1f} s after SIGKILL (lease {LEASE_SECS} s)")
        assert st["task_status"] == "failed", st
        assert "interrupted" in st["messages"][-2]["error"], st["messages"][-2]
        sse_a, sse_b, ws = (r.result() for r in readers)
        for events in (sse_a, sse_b):
            assert_well_formed_log(events, task_id)
            assert [e["type"] for e in events][-2:] == ["error", "end"]
            assert events[-1]["data"]["status"] == "failed"
        assert key(sse_a) == key(sse_b)
        assert [m["event"] for m in ws if m["seq"] > 0][-2:] == ["error", "end"]
        assert_contiguous([m for m in ws if m["seq"] > 0], first=[m for m in ws if m["seq"] > 0][0]["seq"])
        # Through Envoy too (the dead node is out of its rotation).
        assert runs.status(task_id)["task_status"] == "failed"
        # The node comes back under its name: it ends what its last life left
        # running (the `sleep 300`), and the task stays ended once.
        victim.start_agentd()
        assert procs.wait_gone() == [], "the dead node's processes survived its restart"
        after = sse_from(survivors[1], task_id)
        assert key(after) == key(sse_a)
        assert [e["type"] for e in after].count("end") == 1
    finally:
        procs.kill_leftovers()
        if victim.agentd is None or victim.agentd.poll() is not None:
            victim.start_agentd()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_nodes_run_is_resumed_and_finished_by_a_survivor(cluster, tmp_path, sig):
    """Kill (or shut down) the node running a three-step run in its long
    step 3: another node takes the lease over, resumes the run from its
    checkpoint (step 3 answered as interrupted) and finishes it; readers on
    a third node see one continuous log. A node shut down gives its leases
    up as it goes, so the takeover needs no lease to run out."""
    runs = cluster.runs
    wd = tmp_path / "wd"
    victim_id, victim = "n2", cluster.nodes[2]
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one >> steps.txt"}),
        openai_tool_call("bash", {"command": "echo two >> steps.txt"}),
        long_bash(),
        openai_tool_call("bash", {"command": "echo four >> steps.txt"}),
        openai_tool_call("task_done", {}, text="finished elsewhere"),
    )
    task_id = run_on(victim, runs, "resumed by another node", wd, route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    survivors = cluster.others(victim_id)
    try:
        reader = Reader(lambda: sse_from(survivors[0], task_id, timeout=RUN_WAIT))
        reader.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert victim.stop_agentd(sig) == (0 if sig == signal.SIGTERM else -sig)
        if sig == signal.SIGTERM:
            assert not procs.survivors(), procs.survivors()
        events = reader.result()
        print(f"{signal.Signals(sig).name}: resumed on another node {time.monotonic() - t0:.1f} s after "
              f"the signal (lease {LEASE_SECS} s)")
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        for once in ("start", "interrupted", "resumed", "complete", "end"):
            assert types.count(once) == 1, (once, types)
        assert events[-1]["data"]["status"] == "completed", events[-1]
        assert events[types.index("interrupted")]["data"] == {"attempt": 1, "step": 3}
        assert [e["data"]["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4, 5]
        assert (wd / "steps.txt").read_text() == "one\ntwo\nfour\n"
        usage = [e["data"] for e in events if e["type"] == "usage"]
        assert usage[-1]["total"]["input_tokens"] == sum(u["usage"]["input_tokens"] for u in usage)
        assert len(route.requests) == 5
        assert cluster.owner(task_id) != victim_id
        assert key(sse_from(survivors[1], task_id)) == key(events)
    finally:
        # The dead node's `sleep 300` is ended when it comes back.
        if victim.agentd is None or victim.agentd.poll() is not None:
            victim.start_agentd()
        procs.wait_gone()
        procs.kill_leftovers()


def test_readers_on_other_nodes_outlive_a_postgresql_restart(cluster, tmp_path):
    runs = cluster.runs
    replies = [delayed(openai_tool_call("bash", {"command": f"echo {i}"}, text=f"step {i}"), 0.3) for i in range(8)]
    route = runs.llm.route().script(*replies, delayed(openai_tool_call("task_done", {}, text="done"), 0.3))
    owner = cluster.nodes[2]
    task_id = run_on(owner, runs, "through a database restart", tmp_path / "wd", route)
    readers = [Reader(lambda: sse_from(cluster.nodes[0], task_id, timeout=RUN_WAIT)),
               Reader(lambda: ws_from(cluster.nodes[1], task_id))]
    for r in readers:
        r.start()
    runs.wait_event(task_id, lambda m: m["type"] == "tool_result", "a first tool result")
    cluster.pg.restart(down_for=1.0)  # mid-run: every connection of every node is cut
    sse, ws = (r.result() for r in readers)
    stored = sse_from(cluster.nodes[1], task_id)
    assert_well_formed_log(stored, task_id)
    assert stored[-2]["type"] == "complete" and stored[-2]["result"] == "done", [e["type"] for e in stored]
    assert key(sse) == key(stored), "a reader lost or repeated events across the restart"
    updates = [m for m in ws if m["seq"] > 0]
    assert [m["seq"] for m in updates] == list(range(updates[0]["seq"], len(stored) + 1))
    assert [e["type"] for e in stored].count("tool_result") == 9  # 8 bash calls and task_done


def test_a_step_asked_of_any_node_runs_in_the_tasks_session(cluster):
    runs = cluster.runs
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one"}, text="one"),
        openai_tool_call("bash", {"command": "echo two"}, text="two"),
        openai_tool_call("task_done", {}, text="three"),
    )
    task = cluster.front.create_task("stepped on every node", config_file=runs.config(route))
    steps = [grpc_call(node.grpc_target, "agentd.agent.v1.AgentService/ExecuteStep", task_id=task["task_id"])
             for node in cluster.nodes]
    assert [s["output"] for s in steps] == ["one", "two", "three"], steps
    assert [s.get("is_last", False) for s in steps] == [False, False, True]
    assert [s["additional_output"]["step_number"] for s in steps] == [1, 2, 3]
    assert cluster.owner(task["task_id"]) == "n0", "the session stayed where the first step started it"
    events = sse_from(cluster.nodes[2], task["task_id"], path=f"{AP}/tasks/{task['task_id']}/events")
    assert_well_formed_log(events, task["task_id"])
    assert [e["type"] for e in events].count("start") == 1


def test_a_killed_nodes_run_waits_in_the_queue_for_a_free_slot(cluster, tmp_path):
    """Every survivor is busy when the node dies: the run taken over goes
    back to the queue, and the first node with a free slot resumes it."""
    runs = cluster.runs
    victim_id, victim = "n1", cluster.nodes[1]
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one >> steps.txt"}),
        long_bash(),
        openai_tool_call("task_done", {}, text="resumed after waiting"),
    )
    wd = tmp_path / "wd"
    task_id = run_on(victim, runs, "waits for a slot", wd, route)
    procs = [TaskProcesses.of(int(wait_file(wd / "bash.pid")))]
    survivors = cluster.others(victim_id)
    blockers = []
    try:
        for i, node in enumerate(survivors):
            bwd = tmp_path / f"blocker{i}"
            blockers.append(run_on(node, runs, f"blocker {i}", bwd, runs.llm.route().script(long_bash())))
            procs.append(TaskProcesses.of(int(wait_file(bwd / "bash.pid"))))
        assert victim.stop_agentd(signal.SIGKILL) == -signal.SIGKILL
        deadline = time.monotonic() + RUN_WAIT
        status = ""
        while time.monotonic() < deadline:
            status = cluster.pg.psql(f"SELECT status FROM runs WHERE task_id = '{task_id}'", "agentd")
            if status == "queued":
                break
            time.sleep(0.1)
        assert status == "queued", status
        assert runs.status(task_id)["task_status"] == "running"
        runs.stop(blockers[0])  # a slot frees up on that node
        st = runs.wait_status(task_id, {"completed", "failed", "stopped"})
        assert st["task_status"] == "completed", [(m["type"], m.get("error")) for m in st["messages"]]
        events = runs.sse(task_id)
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        assert types.count("start") == 1 and types.count("resumed") == 1, types
        assert cluster.owner(task_id) == survivors[0].env["AGENTD_NODE_ID"]
    finally:
        for b in blockers:
            runs.stop(b)
        if victim.agentd is None or victim.agentd.poll() is not None:
            victim.start_agentd()
        for p in procs:
            p.wait_gone()
            p.kill_leftovers()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_an_agent_protocol_session_outlives_its_node(cluster, sig):
    """Two steps on one node, that node killed (or shut down): a survivor
    takes the session over, and the third step, asked of any node,
    continues the conversation."""
    runs = cluster.runs
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one"}, text="one"),
        openai_tool_call("bash", {"command": "echo two"}, text="two"),
        openai_tool_call("task_done", {}, text="three"),
    )
    victim_id, victim = "n1", cluster.nodes[1]
    task_id = cluster.front.create_task("session outlives node", config_file=runs.config(route))["task_id"]
    for _ in range(2):
        grpc_call(victim.grpc_target, "agentd.agent.v1.AgentService/ExecuteStep", task_id=task_id)
    assert cluster.owner(task_id) == victim_id
    try:
        assert victim.stop_agentd(sig) == (0 if sig == signal.SIGTERM else -sig)
        deadline = time.monotonic() + RUN_WAIT
        while cluster.owner(task_id) == victim_id and time.monotonic() < deadline:
            time.sleep(0.1)
        new_owner = cluster.owner(task_id)
        assert new_owner != victim_id, "nobody took the session over"
        asked = next(n for i, n in enumerate(cluster.nodes) if f"n{i}" not in (victim_id, new_owner))
        third = grpc_call(asked.grpc_target, "agentd.agent.v1.AgentService/ExecuteStep", task_id=task_id)
        assert third["output"] == "three" and third.get("is_last") is True, third
        assert third["additional_output"]["step_number"] == 3, third
        calls = route.requests
        assert len(calls) == 3
        assert calls[2]["body"]["messages"][: len(calls[1]["body"]["messages"])] == calls[1]["body"]["messages"]
        events = sse_from(asked, task_id, path=f"{AP}/tasks/{task_id}/events")
        assert_well_formed_log(events, task_id)
        types = [e["type"] for e in events]
        for once in ("start", "interrupted", "resumed", "complete", "end"):
            assert types.count(once) == 1, (once, types)
    finally:
        if victim.agentd is None or victim.agentd.poll() is not None:
            victim.start_agentd()


def test_the_trae_documents_python_example_through_the_cluster(cluster, git_repo):
    trae_flows.test_document_python_example_runs_a_task_in_a_git_repo(cluster.runs, git_repo)


def test_the_official_agent_protocol_client_steps_through_the_cluster(cluster):
    # Steps land on any node; each runs where the task's agent session lives
    # (one session, one run row, for all three steps).
    sessions = "SELECT count(*) FROM runs WHERE kind = 'session'"
    before = int(cluster.pg.psql(sessions, "agentd"))
    ap_flows.test_official_client_steps_until_is_last(cluster.runs)
    assert int(cluster.pg.psql(sessions, "agentd")) == before + 1
