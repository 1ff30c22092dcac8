"""The per-task event log on every transport (issue 4): SSE readers (live,
concurrent, late, resumed), gRPC server streams and WebSockets all see the
same events in the same order, seq 1..N with no gaps; reading consumes
nothing."""

from __future__ import annotations

import json
import time

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import websockets  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from helpers import AP  # noqa: E402
from runs_support import (  # noqa: E402
    RUN_WAIT,
    Reader,
    assert_contiguous,
    assert_well_formed_log,
    grpc_stream,
    key,
    read_sse,
)
from scripted_llm import delayed, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]


def slow_script(route, delay: float = 0.4):
    """Three turns, each answered after `delay`, so readers attach mid-run."""
    return route.script(
        delayed(openai_tool_call("bash", {"command": "echo one"}, text="first"), delay),
        delayed(openai_tool_call("bash", {"command": "echo two"}, text="second"), delay),
        delayed(openai_tool_call("task_done", {}, text="all done"), delay),
    )


def test_concurrent_late_and_resumed_sse_readers_see_the_same_log(runs, tmp_path):
    route = slow_script(runs.llm.route())
    task_id = runs.run("stream me", tmp_path / "wd", route=route)
    # Two readers while the task runs, one on each listener.
    a = Reader(lambda: runs.sse(task_id))
    b = Reader(lambda: runs.sse(task_id, base=runs.stack.ap_url))
    a.start()
    b.start()
    ev_a, ev_b = a.result(), b.result()
    assert runs.status(task_id)["task_status"] in ("running", "completed")  # (see the status test below)

    assert_well_formed_log(ev_a, task_id)
    assert key(ev_a) == key(ev_b), "two concurrent readers saw different logs"
    assert [e["timestamp"] for e in ev_a] == [e["timestamp"] for e in ev_b]
    n = len(ev_a)
    assert ev_a[-2]["type"] == "complete" and ev_a[-2]["result"] == "all done"
    # The readers really followed a live task (the run takes > 1 s): its steps are there.
    assert [e["type"] for e in ev_a].count("step") == 3

    # A late reader, after the end: the whole log again (nothing was consumed).
    late = runs.sse(task_id)
    assert key(late) == key(ev_a)
    assert key(runs.status(task_id)["messages"]) == key(ev_a)

    # Resume after a seq: exactly the events after it, through `end`.
    for k in sorted({1, 2, n // 2, n - 2, n - 1}):
        resumed = runs.sse(task_id, after_seq=k)
        assert key(resumed) == key(ev_a[k:]), f"after_seq={k}"
        assert_contiguous(resumed, first=k + 1)
    # The Agent Protocol side of the same log, resumed too.
    ap = runs.sse(task_id, path=f"{AP}/tasks/{task_id}/events", base=runs.stack.ap_url, after_seq=n // 2)
    assert key(ap) == key(ev_a[n // 2:])


def test_resume_after_the_last_seq_of_a_finished_task_ends(runs, tmp_path):
    """A reader resuming after the `end` it already saw gets nothing more and
    a closed stream, not an endless run of heartbeats."""
    route = runs.llm.route().script(openai_tool_call("task_done", {}, text="quick"))
    task_id = runs.run("quick", tmp_path / "wd", route=route)
    events = runs.sse(task_id)
    n = events[-1]["seq"]
    # 5 s without a byte is "open but idle" (heartbeats come every 15 s).
    rest = read_sse(f"{runs.stack.trae_url}/api/tasks/{task_id}/stream", params={"after_seq": n}, read_timeout=5)
    assert rest in ([], [events[-1]]), rest


def test_grpc_streams_deliver_the_same_log(runs, tmp_path):
    route = slow_script(runs.llm.route(), delay=0.3)
    task_id = runs.run("stream me over grpc", tmp_path / "wd", route=route)
    live_grpc = Reader(lambda: grpc_stream(runs.stack.grpc_target, "agentd.trae.v1.TraeService/StreamTask", task_id))
    live_grpc.start()
    sse = runs.sse(task_id)
    got = live_grpc.result()
    assert_well_formed_log(sse, task_id)

    def norm(events):
        # proto3 JSON: seq is a number, unset optionals absent, as in SSE.
        return [(int(e["seq"]), e["type"], e.get("message"), e.get("result"), e.get("error")) for e in events]

    assert norm(got) == key(sse), "the gRPC stream differs from the SSE stream"
    for g, s in zip(got, sse):
        assert g["task_id"] == task_id and abs(float(g["timestamp"]) - s["timestamp"]) < 1e-3, (g, s)
        assert g.get("data", {}) == s.get("data", {}), (g, s)
    # The Agent Protocol service's stream, late and resumed.
    ap = grpc_stream(runs.stack.grpc_target, "agentd.agent.v1.AgentService/StreamTaskEvents", task_id)
    assert norm(ap) == key(sse)
    resumed = grpc_stream(runs.stack.grpc_target, "agentd.trae.v1.TraeService/StreamTask", task_id, after_seq=3)
    assert norm(resumed) == key(sse[3:])
    # Through Envoy's gRPC route as well.
    via_envoy = grpc_stream(runs.stack.envoy_grpc_target, "agentd.trae.v1.TraeService/StreamTask", task_id)
    assert norm(via_envoy) == key(sse)


def test_buf_curl_streams_the_log(runs, tmp_path):
    import os
    import subprocess

    from helpers import BUF_BIN, clean_env

    if not os.access(BUF_BIN, os.X_OK):
        pytest.skip(f"buf is not installed at {BUF_BIN}")
    route = runs.llm.route().script(openai_tool_call("task_done", {}, text="via buf"))
    task_id = runs.run("buf", tmp_path / "wd", route=route)
    sse = runs.sse(task_id)
    out = subprocess.run(
        [BUF_BIN, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", json.dumps({"task_id": task_id}),
         f"http://{runs.stack.grpc_target}/agentd.trae.v1.TraeService/StreamTask"],
        capture_output=True, text=True, timeout=RUN_WAIT, env=clean_env(),
    )
    assert out.returncode == 0, out.stderr
    dec = json.JSONDecoder()
    text, i, got = out.stdout, 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        got.append(obj)
    assert [(int(e["seq"]), e["type"]) for e in got] == [(e["seq"], e["type"]) for e in sse], out.stdout[:3000]


def test_status_is_final_once_the_stream_has_ended(runs, tmp_path):
    """A client that read `end` and then asks for the status (the document's
    example does exactly this) must not be told the task is still running."""
    import sseclient

    import subprocess

    seen = []
    for i in range(10):
        route = runs.llm.route().script(
            openai_tool_call("bash", {"command": "echo changed > file.txt"}),
            openai_tool_call("task_done", {}, text=f"done {i}"),
        )
        wd = tmp_path / f"wd{i}"
        wd.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=wd, check=True, timeout=30)
        # Patch and trajectory files make the end of a run do some I/O, as real runs do.
        task_id = runs.run(f"quick {i}", wd, route=route, patch_path="p.patch", trajectory_file="t.json")
        with requests.get(f"{runs.stack.trae_url}/api/tasks/{task_id}/stream", stream=True, timeout=(10, 40)) as resp:
            for ev in sseclient.SSEClient(resp).events():
                if json.loads(ev.data)["type"] == "end":
                    # Ask while still connected, as the document's example does.
                    seen.append(runs.status(task_id)["task_status"])
                    break
    assert seen == ["completed"] * 10, f"/status right after `end`: {seen}"


# ---- WebSockets ------------------------------------------------------------


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


def read_ws(url_or_ws, until, timeout: float = RUN_WAIT) -> tuple[list[dict], bool]:
    """Reads JSON messages until `until(msg)` or the server closes; returns
    (messages, closed_by_server). Takes a URL or an open connection."""
    if isinstance(url_or_ws, str):
        with connect(url_or_ws, open_timeout=10, close_timeout=5, proxy=None) as ws:
            return read_ws(ws, until, timeout)
    ws = url_or_ws
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"websocket: gave up after {timeout}s; got {out}")
        try:
            raw = ws.recv(timeout=left)
        except TimeoutError:
            continue
        except websockets.ConnectionClosed:
            return out, True
        msg = json.loads(raw)
        out.append(msg)
        if until(msg):
            return out, False


def test_websockets_report_status_updates_and_logs(runs, tmp_path):
    # The logs socket (on the Trae listener) carries live events only: make
    # sure it is subscribed by waiting for a warm-up task's `end` on it.
    with connect(ws_url(runs.stack.trae_url, f"{AP}/logs/ws"), open_timeout=10, close_timeout=5, proxy=None) as logs:
        warm = runs.run("warm up", tmp_path / "warm",
                        route=runs.llm.route().script(delayed(openai_tool_call("task_done", {}, text="w"), 0.3)))
        read_ws(logs, until=lambda m: m.get("task_id") == warm and m.get("event") == "end")

        route = slow_script(runs.llm.route(), delay=0.5)
        task_id = runs.run("watch me", tmp_path / "wd", route=route)
        logs_reader = Reader(lambda: read_ws(logs, until=lambda m: m.get("task_id") == task_id and m.get("event") == "end"))
        logs_reader.start()
        updates, closed = read_ws(ws_url(runs.stack.ap_url, f"{AP}/tasks/{task_id}/ws"), until=lambda m: False)
        assert closed, "the task socket did not close after the task ended"
        log_msgs, _ = logs_reader.result()

    sse = runs.sse(task_id)
    n = len(sse)
    # status_update messages: a snapshot, then one per event up to `end`.
    assert updates, "no status updates"
    for u in updates:
        assert u["type"] == "status_update" and u["task_id"] == task_id, u
        assert u["status"] in ("created", "running", "completed", "failed", "stopped"), u
        assert isinstance(u["progress"], (int, float)) and 0.0 <= u["progress"] <= 1.0, u
        assert isinstance(u["current_step"], str), u
        assert isinstance(u["timestamp"], str) and u["timestamp"][:2] == "20" and "T" in u["timestamp"], u
    seqs = [u["seq"] for u in updates]
    assert seqs == list(range(seqs[0], n + 1)), f"status updates skip or repeat events: {seqs}"
    assert seqs[0] < n, "the socket connected only after the task ended; the run was too quick to watch"
    assert [u["event"] for u in updates[1:]] == [e["type"] for e in sse[seqs[1] - 1:]]
    running = [u for u in updates if u["status"] == "running"]
    assert running, [u["status"] for u in updates]
    assert any(u["current_step"].startswith("step ") for u in running), running
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert updates[-1]["event"] == "end" and updates[-1]["status"] == "completed", updates[-1]
    assert updates[-1]["progress"] == 1.0

    # log messages: every event of the task, live, in order.
    mine = [m for m in log_msgs if m.get("task_id") == task_id]
    assert [(m["seq"], m["event"]) for m in mine] == [(e["seq"], e["type"]) for e in sse], mine
    for m in mine:
        assert m["type"] == "log" and m["level"] in ("DEBUG", "INFO", "WARNING", "ERROR"), m
        assert isinstance(m["message"], str) and isinstance(m["component"], str) and m["component"], m
        assert isinstance(m["timestamp"], str) and "T" in m["timestamp"], m
    tool_logs = [m for m in mine if m["event"] == "tool_call"]
    assert [m["component"] for m in tool_logs] == ["tool:bash", "tool:bash", "tool:task_done"], tool_logs

    # After the end: a snapshot (completed, progress 1.0), then the socket closes.
    after, closed = read_ws(ws_url(runs.stack.trae_url, f"{AP}/tasks/{task_id}/ws"), until=lambda m: False)
    assert closed and len(after) == 1, after
    assert after[0]["status"] == "completed" and after[0]["progress"] == 1.0 and after[0]["seq"] == n, after


def test_websocket_for_an_unknown_task_is_404_before_the_upgrade(runs):
    with pytest.raises(websockets.InvalidStatus) as exc:
        with connect(ws_url(runs.stack.ap_url, f"{AP}/tasks/no-such-task/ws"), open_timeout=10, proxy=None):
            pass
    resp = exc.value.response
    assert resp.status_code == 404, resp.status_code
    body = json.loads(resp.body)
    assert body["success"] is False and body["error"]["code"] == "TASK_NOT_FOUND", body
    # And a plain GET (no upgrade) of a known path is not mistaken for a socket.
    r = requests.get(f"{runs.stack.ap_url}{AP}/tasks/no-such-task", timeout=30)
    assert r.status_code == 404
