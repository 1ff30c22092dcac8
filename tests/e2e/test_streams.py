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
    read_ws,
    ws_url,
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


# ---- SSE resume as browsers do it (id:, retry:, Last-Event-ID) -------------

RETRY_MS = "3000"


def sse_paths(runs, task_id: str) -> list[tuple[str, str]]:
    """Both SSE paths through Envoy, each on its dialect's listener: (url, dialect)."""
    return [
        (f"{runs.stack.trae_url}/api/tasks/{task_id}/stream", "trae"),
        (f"{runs.stack.ap_url}{AP}/tasks/{task_id}/events", "ap"),
    ]


def frame_fields(raw: bytes) -> list[tuple[str, str]]:
    out = []
    for line in raw.decode("utf-8").split("\n"):
        if line and not line.startswith(":"):
            name, _, value = line.partition(":")
            out.append((name, value[1:] if value.startswith(" ") else value))
    return out


class RawSse:
    """An SSE response read frame by frame, as raw (field, value) lists, so
    framing that sseclient hides (`retry:`, an `id:` on a heartbeat, a
    repeated field) can be checked."""

    def __init__(self, url: str, headers: dict | None = None, params: dict | None = None, read_timeout: float = 40):
        self.resp = requests.get(url, params=params, stream=True, timeout=(10, read_timeout),
                                 headers={"Accept": "text/event-stream"} | (headers or {}))
        self._chunks = self.resp.iter_content(chunk_size=None)
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.resp.close()

    def next_frame(self) -> list[tuple[str, str]] | None:
        """The next frame, or None once the server closed the stream."""
        while b"\n\n" not in self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                assert not self._buf.strip(), f"stream ended inside a frame: {self._buf!r}"
                return None
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n\n", 1)
        return frame_fields(raw)

    def frames_until_end(self, timeout: float = RUN_WAIT) -> list[list[tuple[str, str]]]:
        """Every frame through the one carrying `end` (which must be followed by the close)."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            assert time.monotonic() < deadline, f"no `end` within {timeout}s: {out}"
            frame = self.next_frame()
            assert frame is not None, f"closed before `end`: {out}"
            out.append(frame)
            if event_of(frame).get("type") == "end":
                assert self.next_frame() is None, "the stream went on after `end`"
                return out


def event_of(frame: list[tuple[str, str]]) -> dict:
    data = [v for k, v in frame if k == "data"]
    return json.loads("\n".join(data)) if data else {}


def ids_of(frame: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in frame if k == "id"]


def read_events(url: str, headers: dict | None = None, params: dict | None = None) -> list[dict]:
    """A whole (re)connection: checks its framing (a `retry:` hint first, an
    `id:` equal to the seq on every event, none on heartbeats) and returns its
    events, heartbeats left out."""
    with RawSse(url, headers=headers, params=params) as s:
        assert s.resp.status_code == 200, f"{url} {headers}: {s.resp.status_code} {s.resp.text}"
        assert s.resp.headers["content-type"].startswith("text/event-stream"), s.resp.headers
        frames = s.frames_until_end()
    assert frames[0] == [("retry", RETRY_MS)], f"the stream does not open with a retry hint: {frames[0]}"
    events = []
    for frame in frames[1:]:
        ev = event_of(frame)
        if ev.get("type") == "heartbeat":
            assert ids_of(frame) == [], frame
            continue
        assert ids_of(frame) == [str(ev["seq"])], f"an event's id must be its seq: {frame}"
        assert [k for k, _ in frame].count("retry") == 0, frame
        events.append(ev)
    return events


def finished_task(runs, tmp_path, name: str = "resume me") -> tuple[str, list[dict]]:
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one"}, text="first"),
        openai_tool_call("task_done", {}, text="done"),
    )
    task_id = runs.run(name, tmp_path / "wd", route=route)
    log = runs.sse(task_id)
    assert_well_formed_log(log, task_id)
    assert len(log) >= 6, [e["type"] for e in log]
    return task_id, log


def test_sse_frames_carry_the_seq_as_id_after_a_retry_hint(runs, tmp_path):
    task_id, log = finished_task(runs, tmp_path)
    for url, _ in sse_paths(runs, task_id):
        got = read_events(url)
        assert key(got) == key(log), url
        # sseclient (as an EventSource does) sees the same ids.
        with requests.get(url, stream=True, timeout=(10, 40)) as resp:
            import sseclient

            seen = [(ev.id, json.loads(ev.data)["seq"]) for ev in sseclient.SSEClient(resp).events()]
        assert seen == [(str(e["seq"]), e["seq"]) for e in log], url


def test_last_event_id_resumes_after_that_seq_in_each_dialect(runs, tmp_path):
    task_id, log = finished_task(runs, tmp_path)
    n = log[-1]["seq"]
    for url, _ in sse_paths(runs, task_id):
        for k in sorted({1, 2, n // 2, n - 2, n - 1}):
            got = read_events(url, headers={"Last-Event-ID": str(k)})
            assert key(got) == key(log[k:]), f"{url} Last-Event-ID: {k}"
            assert_contiguous(got, first=k + 1)
            assert got[-1]["type"] == "end"
        # An empty Last-Event-ID is no resume point (an empty `id:` resets it).
        assert key(read_events(url, headers={"Last-Event-ID": ""})) == key(log), url
        assert key(read_events(url, headers={"Last-Event-ID": ""}, params={"after_seq": 3})) == key(log[3:]), url


def test_a_browser_that_loses_a_live_stream_resumes_without_gaps_or_repeats(runs, tmp_path):
    """What an EventSource does: the connection drops mid-run, it reconnects
    to the same URL (still carrying its `?after_seq=`) with the last id it
    saw; together the connections hold the log exactly once."""
    paths = (lambda t: f"{runs.stack.trae_url}/api/tasks/{t}/stream",
             lambda t: f"{runs.stack.ap_url}{AP}/tasks/{t}/events")
    for i, url_of in enumerate(paths):
        route = slow_script(runs.llm.route(), delay=0.4)
        task_id = runs.run("drop me", tmp_path / f"wd{i}", route=route)
        url, params = url_of(task_id), {"after_seq": 1}
        first, last_id = [], None
        with RawSse(url, params=params) as s:
            assert s.resp.status_code == 200, s.resp.text
            assert s.next_frame() == [("retry", RETRY_MS)]
            while len(first) < 3:
                frame = s.next_frame()
                assert frame is not None, first
                ev = event_of(frame)
                if ev["type"] != "heartbeat":
                    first.append(ev)
                    last_id = ids_of(frame)[-1]
        # Dropped before the run finished (the three turns take > 1 s).
        rest = read_events(url, headers={"Last-Event-ID": last_id}, params=params)
        assert rest[0]["seq"] == int(last_id) + 1, (last_id, key(rest))
        full = runs.sse(task_id)
        assert key(first + rest) == key(full[1:]), f"{url}: {key(first)} + {key(rest)}"
        assert rest[-1]["type"] == "end"
        assert [e["type"] for e in rest].count("step") >= 1, "the run ended before the drop: nothing was live"


def test_a_later_last_event_id_wins_over_after_seq(runs, tmp_path):
    task_id, log = finished_task(runs, tmp_path)
    for url, _ in sse_paths(runs, task_id):
        got = read_events(url, headers={"Last-Event-ID": "5"}, params={"after_seq": 2})
        assert key(got) == key(log[5:]), url
        # The later point always wins: an older Last-Event-ID does not replay
        # what the URL's after_seq skips.
        got = read_events(url, headers={"Last-Event-ID": "1"}, params={"after_seq": 4})
        assert key(got) == key(log[4:]), url


def test_a_malformed_last_event_id_is_refused_in_each_dialect(runs, tmp_path):
    from helpers import assert_ap_error, assert_trae_error

    task_id, _ = finished_task(runs, tmp_path)
    (trae, _), (ap, _) = sse_paths(runs, task_id)
    for bad in ("abc", "-1", "1.5", "4294967296", "3 4"):
        h = {"Last-Event-ID": bad}
        body = assert_trae_error(requests.get(trae, headers=h, timeout=30), 400)
        assert "Last-Event-ID" in body["error"], body
        body = assert_ap_error(requests.get(ap, headers=h, timeout=30), 400, "INVALID_REQUEST")
        assert "Last-Event-ID" in body["message"], body
        # Refused even when the query string is fine.
        assert_trae_error(requests.get(trae, headers=h, params={"after_seq": 1}, timeout=30), 400)


def test_reconnecting_after_end_is_told_to_stop(runs, tmp_path):
    """A browser that read `end` reconnects on its own when the stream
    closes; 204 No Content is what makes an EventSource stop for good."""
    task_id, log = finished_task(runs, tmp_path)
    n = log[-1]["seq"]
    for url, _ in sse_paths(runs, task_id):
        for extra in ({}, {"after_seq": 2}):
            r = requests.get(url, headers={"Last-Event-ID": str(n)}, params=extra, timeout=30)
            assert r.status_code == 204 and r.content == b"", (url, r.status_code, r.text)
        # One before the end still gets the `end`.
        assert [e["type"] for e in read_events(url, headers={"Last-Event-ID": str(n - 1)})] == ["end"]


def test_heartbeats_carry_no_id(runs):
    """A task with no events yet: the stream opens with the retry hint and,
    15 s later, a heartbeat with no `id:` (it must not move the resume point)."""
    task = runs.stack.create_task("never stepped")
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/events"
    with RawSse(url, headers={"Last-Event-ID": "0"}, read_timeout=40) as s:
        assert s.resp.status_code == 200, s.resp.text
        assert s.next_frame() == [("retry", RETRY_MS)]
        frame = s.next_frame()
    assert frame is not None and event_of(frame)["type"] == "heartbeat", frame
    assert ids_of(frame) == [] and [k for k, _ in frame] == ["data"], frame


# ---- WebSockets ------------------------------------------------------------

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
