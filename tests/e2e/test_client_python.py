"""The Python clients of clients/python against the live agentd + Envoy.

- AutoGPTClient (`autogpt_client`): the AutoGPT document's snippet run as
  written (only the base URL changed), every method, the error exception, the
  event iterator, and its retries (proved against a scripted local server).
- The generated gRPC stubs (`agentd`, made by clients/python/generate.py at
  build time, never committed) and examples/run_task.py, run as a program.

Runs use the scripted LLM (runs_support); this module starts its own stack
so that the document's snippet, which names no config, gets the default
route to itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from runs_support import (  # noqa: E402
    RUN_WAIT,
    Reader,
    TaskProcesses,
    assert_well_formed_log,
    long_bash,
    start_runs,
    wait_file,
)
from scripted_llm import openai_tool_call  # noqa: E402

try:
    from autogpt_client import (
        APIConnectionError,
        APIError,
        Artifact,
        AuthenticationError,
        AutoGPTClient,
        NotFoundError,
        Page,
        RateLimitError,
        Step,
        Task,
        TaskEvent,
    )
except ImportError as e:  # pragma: no cover - a setup problem, said plainly
    raise ImportError(f"{e}: install clients/python first (scripts/setup --test does)") from e

pytest_plugins = ["runs_support"]

CLIENT_DIR = helpers.REPO / "clients" / "python"
EXAMPLES = CLIENT_DIR / "examples"
API_KEY = "agentd-python-client-key-51c3"

# The AutoGPT document's "SDK和客户端库 / Python客户端" snippet, verbatim.
DOC_SNIPPET = textwrap.dedent(
    '''\
    from autogpt_client import AutoGPTClient

    client = AutoGPTClient(base_url="http://localhost:8000")

    # 创建任务
    task = client.create_task(
        input="分析销售数据",
        additional_input={"priority": "high"}
    )

    # 执行步骤
    step = client.execute_step(
        task_id=task.task_id,
        input="开始分析"
    )

    # 获取结果
    artifacts = client.get_artifacts(task.task_id)
    '''
)


# ---- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def crun(tmp_path_factory, runs_llm):
    """A private agentd + Envoy whose default Trae config uses a route of the
    scripted LLM no other test module scripts."""
    r = start_runs(tmp_path_factory.mktemp("pyclient"), runs_llm)
    yield r
    r.stack.stop()
    if r.stack in helpers.LIVE_STACKS:
        helpers.LIVE_STACKS.remove(r.stack)


@pytest.fixture
def client(crun):
    with AutoGPTClient(base_url=crun.stack.ap_url, timeout=30, backoff_factor=0.05) as c:
        yield c


@pytest.fixture(scope="module")
def stubs() -> Path:
    """Runs the generator as the build does; it regenerates only if the protos
    changed, so an editable install follows the protos."""
    out = subprocess.run([sys.executable, str(CLIENT_DIR / "generate.py")], capture_output=True, text=True,
                         timeout=120, env=helpers.clean_env())
    assert out.returncode == 0, f"generate.py failed:\n{out.stdout}\n{out.stderr}"
    generated = Path(out.stdout.strip().splitlines()[-1])
    assert generated == CLIENT_DIR / "src" / "agentd", generated
    return generated


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def step_until_last(client: AutoGPTClient, task_id: str, limit: int = 10) -> list[Step]:
    steps = []
    for _ in range(limit):
        steps.append(client.execute_step(task_id))
        if steps[-1].is_last:
            return steps
    raise AssertionError(f"no last step after {limit}: {[s.output for s in steps]}")


# ---- the document's snippet ---------------------------------------------------


def test_document_snippet_runs_verbatim(crun):
    route = crun.default_route  # the snippet names no config: the default one is used
    route.script(openai_tool_call(
        "bash", {"command": "mkdir -p reports && printf '# 销售报告\\n' > reports/sales_report.md"},
        text="开始分析销售数据"))
    snippet = DOC_SNIPPET.replace('base_url="http://localhost:8000"', f'base_url="{crun.stack.ap_url}"')
    assert snippet.count(crun.stack.ap_url) == 1, "the snippet no longer names http://localhost:8000"

    ns, _ = helpers.run_in_thread(snippet, "autogpt-doc-snippet", RUN_WAIT)

    task, step, artifacts = ns["task"], ns["step"], ns["artifacts"]
    assert isinstance(task, Task) and isinstance(step, Step), (task, step)
    assert task.input == "分析销售数据" and task.status == "created", task
    assert task.additional_input == {"priority": "high"}, task
    assert task.raw["task_id"] == task.task_id and task.raw["additional_input"] == {"priority": "high"}
    assert (step.task_id, step.input, step.output) == (task.task_id, "开始分析", "开始分析销售数据"), step
    assert step.is_last is False and step.status == "completed" and step.state == "completed", step
    assert [(a.relative_path, a.file_name, a.agent_created) for a in step.artifacts] == [
        ("reports", "sales_report.md", True)], step.artifacts
    assert type(artifacts) is list and all(isinstance(a, Artifact) for a in artifacts), artifacts
    assert [a.artifact_id for a in artifacts] == [a.artifact_id for a in step.artifacts], artifacts

    # The model was given the task and the step's input.
    assert len(route.requests) == 1, "one step is one LLM call"
    sent = json.dumps(route.requests[0]["body"]["messages"], ensure_ascii=False)
    assert "分析销售数据" in sent and "开始分析" in sent, sent[-1500:]
    assert route.remaining() == 0

    # Finish the task (the script is used up, so the model calls task_done).
    client = ns["client"]
    assert step_until_last(client, task.task_id)[-1].is_last
    assert client.get_task(task.task_id).status == "completed"
    assert client.download_artifact(task.task_id, artifacts[0].artifact_id) == "# 销售报告\n".encode()


def test_quickstart_example_is_the_document_snippet():
    text = (EXAMPLES / "autogpt_quickstart.py").read_text()
    assert DOC_SNIPPET in text, "examples/autogpt_quickstart.py no longer carries the document's snippet verbatim"


# ---- every method against agentd ------------------------------------------------


def test_upload_and_download_round_trip(client, tmp_path):
    task = client.create_task("files", additional_input={"kind": "upload"})
    data = os.urandom(3 * helpers.MIB + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    from_path = client.upload_artifact(task.task_id, src, relative_path="data")
    from_bytes = client.upload_artifact(task.task_id, b"a,b\n1,2\n", relative_path="data/sales_data.csv",
                                        file_name="sales_data.csv")
    with open(src, "rb") as f:
        f.seek(100)  # a file object uploads from where it stands
        from_stream = client.upload_artifact(task.task_id, f, file_name="报告 2024.bin")

    assert (from_path.file_name, from_path.relative_path, from_path.file_size) == ("src.bin", "data", len(data))
    assert from_path.agent_created is False and from_path.raw["artifact_id"] == from_path.artifact_id
    assert (from_bytes.file_name, from_bytes.relative_path, from_bytes.file_size) == (
        "sales_data.csv", "data/sales_data.csv", 8)
    assert (from_stream.file_name, from_stream.file_size) == ("报告 2024.bin", len(data) - 100)
    listed = client.get_artifacts(task.task_id)
    assert sorted(a.artifact_id for a in listed) == sorted(
        a.artifact_id for a in (from_path, from_bytes, from_stream)), listed
    assert {a.artifact_id for a in client.get_task(task.task_id).artifacts} == {a.artifact_id for a in listed}

    # Every way of downloading gives back the exact bytes.
    assert sha256(client.download_artifact(task.task_id, from_path.artifact_id)) == sha256(data)
    (tmp_path / "dl").mkdir()
    into_dir = client.download_artifact(task.task_id, from_stream.artifact_id, tmp_path / "dl")
    assert into_dir == tmp_path / "dl" / "报告 2024.bin", into_dir  # the name from Content-Disposition
    assert sha256(into_dir.read_bytes()) == sha256(data[100:])
    named = client.download_artifact(task.task_id, from_path.artifact_id, tmp_path / "deep" / "copy.bin")
    assert named == tmp_path / "deep" / "copy.bin" and sha256(named.read_bytes()) == sha256(data)
    sink = io.BytesIO()
    assert client.download_artifact(task.task_id, from_bytes.artifact_id, sink) == 8
    assert sink.getvalue() == b"a,b\n1,2\n"
    leftovers = [p.name for p in tmp_path.rglob("*.part")]
    assert leftovers == [], leftovers

    # Delete one: gone from the list and from downloads.
    assert client.delete_artifact(task.task_id, from_bytes.artifact_id).success is True
    assert from_bytes.artifact_id not in {a.artifact_id for a in client.get_artifacts(task.task_id)}
    with pytest.raises(NotFoundError) as gone:
        client.download_artifact(task.task_id, from_bytes.artifact_id)
    assert (gone.value.status_code, gone.value.code) == (404, "ARTIFACT_NOT_FOUND"), gone.value


def test_steps_lists_status_events_restart_and_delete(crun, client):
    route = crun.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p out && printf 'rows: 3\\n' > out/result.txt"}, text="counting"),
        openai_tool_call("task_done", {}, text="finished"),
    )
    task = client.create_task("整理数据", additional_input={"config_file": crun.config(route)})
    assert client.get_task(task.task_id).status == "created"

    # Follow the log live, from before the first step, in another thread.
    live = Reader(lambda: list(client.events(task.task_id)))
    live.start()
    first = client.execute_step(task.task_id, input="第一步", additional_input={"focus": "rows"})
    mid_status = client.get_task(task.task_id).status
    last = client.execute_step(task.task_id)
    events = live.result()

    assert (first.is_last, last.is_last, first.output, last.output) == (False, True, "counting", "finished")
    assert first.additional_input == {"focus": "rows"} and first.additional_output["step_number"] == 1
    assert [(a.relative_path, a.file_name) for a in first.artifacts] == [("out", "result.txt")]
    assert mid_status == "running"

    # The event iterator: the whole log, seq 1..N, up to `end`.
    assert all(isinstance(e, TaskEvent) for e in events)
    assert_well_formed_log([e.raw for e in events], task.task_id)
    assert events[-2].type == "complete" and events[-2].result == "finished", events[-2]
    assert [e.type for e in events].count("step") == 2
    replay = [(e.seq, e.type) for e in client.events(task.task_id)]
    assert replay == [(e.seq, e.type) for e in events]
    resumed = [(e.seq, e.type) for e in client.events(task.task_id, after_seq=3)]
    assert resumed == replay[3:], resumed

    # Steps: list (paged) and get.
    steps = client.list_steps(task.task_id)
    assert isinstance(steps, Page) and [s.step_id for s in steps] == [first.step_id, last.step_id]
    assert (steps.pagination.total, steps.pagination.page, steps.pagination.size) == (2, 1, 10), steps.pagination
    second_page = client.list_steps(task.task_id, page=2, page_size=1)
    assert [s.step_id for s in second_page] == [last.step_id] and second_page.pagination.pages == 2
    got = client.get_step(task.task_id, first.step_id)
    assert (got.step_id, got.input, got.output, got.is_last) == (first.step_id, "第一步", "counting", False)
    assert [a.artifact_id for a in got.artifacts] == [a.artifact_id for a in first.artifacts]

    # Task lists: paging and the status filter.
    other = client.create_task("still waiting")
    completed = client.list_tasks(page_size=100, status="completed")
    created = client.list_tasks(page_size=100, status="created")
    assert task.task_id in {t.task_id for t in completed} and task.task_id not in {t.task_id for t in created}
    assert other.task_id in {t.task_id for t in created} and other.task_id not in {t.task_id for t in completed}
    assert all(t.status == "completed" for t in completed)
    one = client.list_tasks(page=1, page_size=1)
    assert len(one) == 1 and one.pagination.size == 1 and one.pagination.total >= 2, one.pagination
    assert one.pagination.pages == one.pagination.total

    # Agent status, then restart: the runtime restarts, stored data stays.
    status = client.get_status()
    assert status.status == "running" and status.total_tasks >= 2 and status.task_counts.completed >= 1, status
    assert status.memory_usage.used.endswith("B"), status.memory_usage
    restarted = client.restart()
    assert restarted.success is True and isinstance(restarted.message, str) and restarted.message, restarted
    assert client.get_status().status == "running"
    assert client.get_task(task.task_id).status == "completed"

    # Delete: then the task is a 404 with the document's envelope.
    assert client.delete_task(task.task_id).success is True
    with pytest.raises(NotFoundError) as err:
        client.get_task(task.task_id)
    e = err.value
    assert (e.status_code, e.code, e.details.get("task_id")) == (404, "TASK_NOT_FOUND", task.task_id), e
    assert e.envelope["success"] is False and e.envelope["error"]["code"] == "TASK_NOT_FOUND", e.envelope
    assert "TASK_NOT_FOUND" in str(e) and task.task_id in str(e)
    client.delete_task(other.task_id)


def test_errors_raise_api_error_with_the_envelope(client):
    task = client.create_task("errors")
    cases = [
        (lambda: client.get_task("no-such-task"), NotFoundError, 404, "TASK_NOT_FOUND"),
        (lambda: client.get_step(task.task_id, "no-such-step"), NotFoundError, 404, "STEP_NOT_FOUND"),
        (lambda: client.delete_artifact(task.task_id, "no-such-artifact"), NotFoundError, 404, "ARTIFACT_NOT_FOUND"),
        (lambda: next(client.events("no-such-task")), NotFoundError, 404, "TASK_NOT_FOUND"),
        (lambda: client.list_tasks(status="bogus"), APIError, 400, "INVALID_REQUEST"),
        (lambda: client.upload_artifact(task.task_id, b"x", relative_path="../escape", file_name="x"),
         APIError, 400, "INVALID_REQUEST"),
    ]
    for call, cls, status, code in cases:
        with pytest.raises(cls) as err:
            call()
        e = err.value
        assert (type(e) is cls, e.status_code, e.code) == (True, status, code), e
        assert e.envelope["success"] is False and e.message == e.envelope["error"]["message"], e.envelope


def test_unreachable_server_raises_connection_error_after_retrying():
    waits: list[float] = []
    port = helpers.free_port()  # nothing listens there
    c = AutoGPTClient(base_url=f"http://127.0.0.1:{port}", max_retries=3, backoff_factor=0.01, sleep=waits.append)
    with pytest.raises(APIConnectionError):
        c.create_task("x")  # never sent, so even a POST is retried
    assert len(waits) == 3, waits


# ---- retries, against a scripted local server -------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: object = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    sse: str | None = None  # a raw text/event-stream body, then close

    def send(self, h: BaseHTTPRequestHandler) -> None:
        if self.drop:
            h.close_connection = True
            return
        if self.sse is not None:
            h.send_response(self.status)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(self.sse.encode())
            h.close_connection = True
            return
        data = json.dumps(self.body).encode()
        h.send_response(self.status)
        for k, v in self.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes
    at: float


def ap_error(code: str, message: str = "scripted") -> dict:
    return {"success": False, "message": message, "error": {"code": code, "message": message, "details": {}}}


TASK_JSON = {"task_id": "t1", "input": "x", "additional_input": {}, "status": "created",
             "created_at": "2024-01-15T10:30:00Z", "modified_at": "2024-01-15T10:30:00Z", "artifacts": []}


class ScriptedServer:
    """An HTTP server on a free 127.0.0.1 port (a thread of this process):
    each request gets the next scripted Reply and is recorded."""

    def __init__(self, *replies: Reply):
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with server._lock:
                    server.seen.append(Seen(self.command, self.path, dict(self.headers), body, time.monotonic()))
                    reply = server.replies.pop(0) if server.replies else Reply(500, ap_error("SCRIPT_RAN_OUT"))
                reply.send(self)

            do_GET = do_POST = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def client(self, **kw) -> AutoGPTClient:
        return AutoGPTClient(base_url=self.url, timeout=10, **({"backoff_factor": 0.01} | kw))


def test_429_is_retried_after_the_retry_after_it_names():
    busy = Reply(429, ap_error("INSUFFICIENT_RESOURCES"), {"Retry-After": "1"})
    with ScriptedServer(busy, Reply(200, TASK_JSON)) as srv:
        start = time.monotonic()
        task = srv.client().create_task("x", additional_input={"a": 1})
        elapsed = time.monotonic() - start
    assert task.task_id == "t1"
    assert [(s.method, s.path) for s in srv.seen] == [("POST", "/ap/v1/agent/tasks")] * 2, srv.seen
    assert srv.seen[0].body == srv.seen[1].body and json.loads(srv.seen[1].body) == {"input": "x",
                                                                                     "additional_input": {"a": 1}}
    # backoff_factor 0.01 alone would retry within ~10 ms: the wait is Retry-After's.
    assert srv.seen[1].at - srv.seen[0].at >= 0.95 and elapsed >= 0.95, elapsed


def test_5xx_are_retried_with_growing_backoff():
    replies = [Reply(503, ap_error("SERVICE_UNAVAILABLE")), Reply(500, ap_error("INTERNAL_ERROR")),
               Reply(502, ap_error("OPENAI_API_ERROR")), Reply(200, TASK_JSON)]
    with ScriptedServer(*replies) as srv:
        task = srv.client(backoff_factor=0.1).get_task("t1")
    assert task.task_id == "t1" and len(srv.seen) == 4, srv.seen
    gaps = [b.at - a.at for a, b in zip(srv.seen, srv.seen[1:])]
    # factor * 2**n with 50-100 % jitter: at least 0.05, 0.1, 0.2 s.
    for n, gap in enumerate(gaps):
        assert gap >= 0.1 * 2**n * 0.5 - 0.005, gaps


def test_retries_stop_after_max_retries_with_the_last_error():
    with ScriptedServer(*[Reply(503, ap_error("SERVICE_UNAVAILABLE", "no healthy upstream"))] * 5) as srv:
        with pytest.raises(APIError) as err:
            srv.client(max_retries=2).list_tasks()
    assert len(srv.seen) == 3, srv.seen
    e = err.value
    assert (e.status_code, e.code, e.message) == (503, "SERVICE_UNAVAILABLE", "no healthy upstream"), e
    assert e.envelope == ap_error("SERVICE_UNAVAILABLE", "no healthy upstream")


def test_a_step_is_not_retried_after_an_ambiguous_500_but_is_after_503():
    with ScriptedServer(Reply(500, ap_error("INTERNAL_ERROR")), Reply(200, {"step_id": "s1"})) as srv:
        with pytest.raises(APIError) as err:
            srv.client().execute_step("t1", input="go")
    assert err.value.status_code == 500 and len(srv.seen) == 1, srv.seen
    with ScriptedServer(Reply(503, ap_error("SERVICE_UNAVAILABLE")), Reply(200, {"step_id": "s1"})) as srv:
        step = srv.client().execute_step("t1", input="go")
    assert step.step_id == "s1" and len(srv.seen) == 2, srv.seen


def test_dropped_connections_are_retried_for_reads_only():
    with ScriptedServer(Reply(drop=True), Reply(drop=True), Reply(200, TASK_JSON)) as srv:
        assert srv.client().get_task("t1").task_id == "t1"
    assert len(srv.seen) == 3, srv.seen
    with ScriptedServer(Reply(drop=True), Reply(200, TASK_JSON)) as srv:
        with pytest.raises(APIConnectionError):
            srv.client().create_task("x")  # the server may have acted: not repeated
    assert len(srv.seen) == 1, srv.seen


def test_a_long_retry_after_is_raised_not_waited_for():
    with ScriptedServer(Reply(429, ap_error("RATE_LIMIT_EXCEEDED"), {"Retry-After": "3600"})) as srv:
        start = time.monotonic()
        with pytest.raises(RateLimitError) as err:
            srv.client().get_status()
    assert time.monotonic() - start < 1 and len(srv.seen) == 1
    assert err.value.retry_after == 3600 and err.value.code == "RATE_LIMIT_EXCEEDED"


def test_event_stream_resumes_after_a_drop_without_repeating():
    def sse(*events):
        return "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events)

    ev = lambda seq, type_, **kw: {"type": type_, "task_id": "t1", "seq": seq, "timestamp": 1.7e9 + seq, **kw}  # noqa: E731
    first = sse(ev(1, "start", message="line\u2028separator"), ev(2, "step")) + ": comment\n\n" + sse(
        ev(2, "heartbeat"))
    # A server that resumed one event early must not make the client repeat it.
    second = sse(ev(2, "step"), ev(3, "complete", result="ok"), ev(4, "end"))
    with ScriptedServer(Reply(sse=first), Reply(sse=second)) as srv:
        events = list(srv.client().events("t1"))
    assert [(e.seq, e.type) for e in events] == [(1, "start"), (2, "step"), (3, "complete"), (4, "end")], events
    assert events[0].message == "line\u2028separator" and events[2].result == "ok"
    assert [s.path for s in srv.seen] == ["/ap/v1/agent/tasks/t1/events", "/ap/v1/agent/tasks/t1/events?after_seq=2"]
    assert srv.seen[0].headers.get("Accept") == "text/event-stream"


def test_agentd_429_is_read_through_envoy(fresh_runs, tmp_path):
    """agentd's own 429 (no free run slot) arrives as RateLimitError with its
    Retry-After (lower-case through Envoy); one longer than max_retry_wait is
    raised at once instead of being slept through."""
    runs = fresh_runs({"AGENTD_MAX_RUNNING_TASKS": "1"})
    wd = tmp_path / "wd"
    busy = runs.run("occupies the only slot", wd, route=runs.llm.route().script(long_bash()))
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        c = AutoGPTClient(base_url=runs.stack.ap_url, timeout=30, max_retry_wait=5)
        task = c.create_task("waits for a slot", additional_input={"config_file": runs.config(runs.llm.route())})
        start = time.monotonic()
        with pytest.raises(RateLimitError) as err:
            c.execute_step(task.task_id)
        assert time.monotonic() - start < 3
        e = err.value
        assert (e.status_code, e.code) == (429, "INSUFFICIENT_RESOURCES") and e.retry_after >= 5, (e, e.headers)
        runs.stop(busy)
        assert not procs.wait_gone(), procs.survivors()
        assert c.execute_step(task.task_id).is_last is True  # the slot is free again
    finally:
        procs.kill_leftovers()


def test_get_artifacts_reads_every_page():
    def page(n, ids):
        return Reply(200, {"artifacts": [{"artifact_id": i, "file_name": f"{i}.txt"} for i in ids],
                           "pagination": {"page": n, "size": 100, "total": 3, "pages": 2}})

    with ScriptedServer(page(1, ["a", "b"]), page(2, ["c"])) as srv:
        got = srv.client().get_artifacts("t1")
    assert [(a.artifact_id, a.file_name) for a in got] == [("a", "a.txt"), ("b", "b.txt"), ("c", "c.txt")]
    assert [s.path for s in srv.seen] == [f"/ap/v1/agent/tasks/t1/artifacts?page={n}&size=100" for n in (1, 2)]


def test_api_key_is_sent_as_bearer():
    with ScriptedServer(Reply(200, TASK_JSON), Reply(200, TASK_JSON)) as srv:
        srv.client(api_key="k-123").get_task("t1")
        srv.client().get_task("t1")
    assert srv.seen[0].headers.get("Authorization") == "Bearer k-123"
    assert "Authorization" not in srv.seen[1].headers


# ---- generated gRPC stubs and the gRPC example ----------------------------------------


def test_stubs_are_generated_not_committed_and_match_the_protos(stubs, tmp_path):
    # The installed package imports these generated files.
    where = subprocess.run([sys.executable, "-c", "import agentd.agent.v1.agent_pb2_grpc as m; print(m.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == stubs / "agent" / "v1" / "agent_pb2_grpc.py"

    # Every service and rpc of the protos is in the stubs.
    from agentd.agent.v1 import agent_pb2, agent_pb2_grpc
    from agentd.trae.v1 import trae_pb2, trae_pb2_grpc

    for proto, module, grpc_module, service in (
        ("agent/v1/agent.proto", agent_pb2, agent_pb2_grpc, "AgentService"),
        ("trae/v1/trae.proto", trae_pb2, trae_pb2_grpc, "TraeService"),
    ):
        rpcs = set(re.findall(r"^\s*rpc (\w+)\(", (helpers.REPO / "proto" / "agentd" / proto).read_text(), re.M))
        assert rpcs and set(module.DESCRIPTOR.services_by_name[service].methods_by_name) == rpcs, proto
        with grpc.insecure_channel("127.0.0.1:9") as ch:  # never connected
            stub = getattr(grpc_module, f"{service}Stub")(ch)
            assert all(callable(getattr(stub, r)) for r in rpcs), proto

    # Regenerating from the protos gives the same files: they are current.
    fresh = tmp_path / "gen"
    out = subprocess.run([sys.executable, str(CLIENT_DIR / "generate.py"), "--out", str(fresh), "--force"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(fresh / "agentd") == files(stubs)

    # Build output only: ignored by git and not tracked.
    git = lambda *a: subprocess.run(["git", *a], cwd=helpers.REPO, capture_output=True, text=True, timeout=30)  # noqa: E731
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    generated = stubs / "agent" / "v1" / "agent_pb2.py"
    assert git("check-ignore", "-q", str(generated)).returncode == 0, f"{generated} is not git-ignored"
    assert git("ls-files", str(stubs)).stdout == "", "generated stubs are committed"


def run_example(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "run_task.py"), *args], capture_output=True, text=True,
                          timeout=RUN_WAIT * 2, cwd=cwd, env=helpers.clean_env())


EVENT_LINE = re.compile(r"^\[\s*(\d+)\] (\S+)", re.M)


def check_example_run(out: subprocess.CompletedProcess, client: AutoGPTClient, out_dir: Path) -> str:
    """The example printed the task's whole log through `end` and wrote the
    artifact; returns the task id."""
    assert out.returncode == 0, f"run_task.py exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    created = re.search(r"^task (\S+) created \(created\)$", out.stdout, re.M)
    assert created, out.stdout
    task_id = created.group(1)
    printed = [(int(seq), type_) for seq, type_ in EVENT_LINE.findall(out.stdout)]
    logged = [(e.seq, e.type) for e in client.events(task_id)]
    assert printed == logged, f"printed {printed}\nlogged {logged}"
    assert printed[0][1] == "start" and printed[-1][1] == "end", printed
    assert re.search(r"^\[\s*\d+\] complete\s.*\| result: all done$", out.stdout, re.M), out.stdout

    body = b"hello from the agent\n"
    written = out_dir / "out" / "hello.txt"
    assert written.read_bytes() == body
    assert f"-> {written} ({len(body)} bytes, sha256 {sha256(body)})" in out.stdout, out.stdout
    assert f"task {task_id} completed" in out.stdout
    return task_id


def hello_route(runs):
    return runs.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p out && printf 'hello from the agent\\n' > out/hello.txt"},
                         text="writing hello"),
        openai_tool_call("task_done", {}, text="all done"),
    )


@pytest.mark.parametrize("via", ["agentd", "envoy"])
def test_grpc_example_runs_a_task_follows_events_and_downloads(crun, client, stubs, tmp_path, via):
    route = hello_route(crun)
    target = crun.stack.grpc_target if via == "agentd" else crun.stack.envoy_grpc_target
    out_dir = tmp_path / "artifacts"
    out = run_example(["--server", target, "--input", "写 hello.txt", "--config-file", crun.config(route),
                       "--out-dir", str(out_dir)], tmp_path)
    task_id = check_example_run(out, client, out_dir)
    assert client.get_task(task_id).input == "写 hello.txt"
    assert route.remaining() == 0


# ---- with API keys ---------------------------------------------------------------------


def test_api_keys_rest_and_grpc(fresh_runs, tmp_path):
    runs = fresh_runs({"AGENTD_API_KEYS": API_KEY})
    anonymous = AutoGPTClient(base_url=runs.stack.ap_url, timeout=30, max_retries=0)
    with pytest.raises(AuthenticationError) as err:
        anonymous.create_task("no key")
    assert (err.value.status_code, err.value.code) == (401, "UNAUTHENTICATED"), err.value
    assert API_KEY not in err.value.text

    keyed = AutoGPTClient(base_url=runs.stack.ap_url, api_key=API_KEY, timeout=30)
    route = runs.llm.route().script(openai_tool_call("task_done", {}, text="keyed done"))
    task = keyed.create_task("keyed", additional_input={"config_file": runs.config(route)})
    uploaded = keyed.upload_artifact(task.task_id, b"secret bytes", file_name="s.txt")
    assert keyed.download_artifact(task.task_id, uploaded.artifact_id) == b"secret bytes"
    assert step_until_last(keyed, task.task_id)[-1].output == "keyed done"
    assert [e.type for e in keyed.events(task.task_id)][-2:] == ["complete", "end"]

    # The gRPC example: refused without the key, runs with it.
    args = ["--server", runs.stack.grpc_target, "--out-dir", str(tmp_path / "a")]
    refused = run_example(args, tmp_path)
    assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr, (refused.stdout, refused.stderr)
    route = hello_route(runs)
    out = run_example([*args, "--config-file", runs.config(route), "--api-key", API_KEY], tmp_path)
    check_example_run(out, keyed, tmp_path / "a")
