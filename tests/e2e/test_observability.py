"""Observability (issue 7): OpenTelemetry spans exported over OTLP, and the
Prometheus metrics at `GET /metrics` on agentd's own port.

One private stack for the module, with OTEL_EXPORTER_OTLP_ENDPOINT pointing at
an OTLP/gRPC trace receiver this module starts on a free 127.0.0.1 port
(decoded with the `opentelemetry-proto` package). Runs use the scripted LLM
of `runs_support` (provider `openai`, model `scripted-model`, 10 input and 5
output tokens per reply).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from helpers import AP

pytest.register_assert_rewrite("runs_support")

from runs_support import RUN_WAIT, _stop, long_bash, start_runs, wait_file  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

PROVIDER, MODEL = "openai", "scripted-model"
SPAN_WAIT = 20  # spans are exported every 100 ms here (OTEL_BSP_SCHEDULE_DELAY)


# ---- an OTLP/gRPC trace receiver ----------------------------------------


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attrs: dict
    service: str | None


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans: list[Span] = []
        self.cond = threading.Condition()

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                        name=s.name, kind=s.kind, attrs={a.key: _value(a.value) for a in s.attributes},
                        service=resource.get("service.name"),
                    ))
        with self.cond:
            self.spans.extend(got)
            self.cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait(self, pred, what: str, timeout: float = SPAN_WAIT) -> list[Span]:
        """Waits until pred(all spans) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = pred(list(self.spans))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({s.name for s in self.spans})
                    raise AssertionError(f"no {what} within {timeout}s; span names seen: {names}")
                self.cond.wait(left)

    def trace(self, trace_id: str) -> list[Span]:
        with self.cond:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    rec.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec
    server.stop(grace=None)


@pytest.fixture(scope="module")
def otel_runs(tmp_path_factory, runs_llm, receiver):
    """A stack exporting its spans to `receiver`; stopped before it."""
    r = start_runs(tmp_path_factory.mktemp("otel"), runs_llm, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
    yield r
    _stop(r)


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


# ---- /metrics -----------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(runs) -> dict[tuple[str, frozenset], float]:
    """agentd's /metrics as {(name, frozenset(labels.items())): value}."""
    r = requests.get(f"http://{runs.stack.grpc_target}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/openmetrics-text"), r.headers
    out = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable exposition line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples, name: str, **labels) -> float:
    """One series' value; 0 when it does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


# ---- traces ---------------------------------------------------------------


def test_a_rest_call_through_envoy_continues_the_callers_trace(otel_runs, receiver):
    header, trace_id, parent = traceparent()
    r = requests.get(f"{otel_runs.stack.trae_url}/api/health", headers={"traceparent": header}, timeout=30)
    assert r.status_code == 200, r.text
    [rpc] = receiver.wait(
        lambda spans: [s for s in spans if s.trace_id == trace_id and s.attrs.get("rpc.system") == "grpc"],
        f"RPC span in trace {trace_id}")
    assert rpc.parent_span_id == parent, rpc
    assert rpc.name == "agentd.trae.v1.TraeService/Health", rpc
    assert rpc.kind == 2, rpc  # SPAN_KIND_SERVER
    assert rpc.attrs["rpc.service"] == "agentd.trae.v1.TraeService", rpc.attrs
    assert rpc.attrs["rpc.method"] == "Health", rpc.attrs
    assert rpc.attrs["rpc.grpc.status_code"] == 0, rpc.attrs
    assert rpc.service == "agentd", rpc

    # Without a traceparent the call starts a trace of its own.
    before = {s.span_id for s in receiver.spans}
    r = requests.get(f"{otel_runs.stack.trae_url}/api/tools", timeout=30)
    assert r.status_code == 200, r.text
    [own] = receiver.wait(
        lambda spans: [s for s in spans if s.span_id not in before and s.name == "agentd.trae.v1.TraeService/ListTools"],
        "ListTools span")
    assert own.trace_id not in (trace_id, "0" * 32) and own.parent_span_id == "", own


def test_a_failed_call_has_its_grpc_status_on_the_span(otel_runs, receiver):
    header, trace_id, _ = traceparent()
    r = requests.get(f"{otel_runs.stack.ap_url}/ap/v1/agent/tasks/no-such-task",
                     headers={"traceparent": header}, timeout=30)
    assert r.status_code == 404, r.text
    [rpc] = receiver.wait(lambda spans: [s for s in spans if s.trace_id == trace_id], "the GetTask span")
    assert rpc.name == "agentd.agent.v1.AgentService/GetTask", rpc
    assert rpc.attrs["rpc.grpc.status_code"] == 5, rpc.attrs  # NOT_FOUND

    # A route agentd serves itself (past the transcoder): an HTTP span.
    header, trace_id, _ = traceparent()
    r = requests.get(f"{otel_runs.stack.trae_url}/api/tasks/no-such-task/status",
                     headers={"traceparent": header}, timeout=30)
    assert r.status_code == 404, r.text
    [http] = receiver.wait(lambda spans: [s for s in spans if s.trace_id == trace_id], "the status span")
    assert http.name == "GET /api/tasks/{task_id}/status", http
    assert http.attrs["http.response.status_code"] == 404, http.attrs


def test_a_run_is_one_trace_of_task_step_llm_and_tool_spans(otel_runs, receiver, tmp_path):
    route = otel_runs.llm.route().script(openai_tool_call("bash", {"command": "echo traced"}, text="Running"))
    header, trace_id, parent = traceparent()
    r = requests.post(f"{otel_runs.stack.trae_url}/api/run", headers={"traceparent": header}, timeout=30, json={
        "task": "traced task", "working_dir": str(tmp_path), "provider": "openai",
        "config_file": otel_runs.config(route)})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    assert otel_runs.wait_status(task_id, {"completed", "failed"})["task_status"] == "completed"

    def whole_run(spans):
        mine = [s for s in spans if s.trace_id == trace_id]
        names = [s.name for s in mine]
        wanted = ["agentd.trae.v1.TraeService/Run", "invoke_agent agentd", "step 1", "step 2",
                  f"chat {MODEL}", "execute_tool bash", "execute_tool task_done"]
        return mine if all(n in names for n in wanted) and names.count(f"chat {MODEL}") == 2 else None

    spans = receiver.wait(whole_run, f"the run's spans in trace {trace_id}")
    by_id = {s.span_id: s for s in spans}
    [rpc] = [s for s in spans if s.name == "agentd.trae.v1.TraeService/Run"]
    assert rpc.parent_span_id == parent
    [task] = [s for s in spans if s.name == "invoke_agent agentd"]
    assert task.parent_span_id == rpc.span_id, (task, rpc)
    assert task.attrs["task.id"] == task_id, task.attrs
    assert task.attrs["task.outcome"] == "completed", task.attrs
    assert (task.attrs["gen_ai.provider.name"], task.attrs["gen_ai.request.model"]) == (PROVIDER, MODEL)

    steps = {s.attrs["agent.step"]: s for s in spans if s.name.startswith("step ")}
    assert sorted(steps) == [1, 2], steps
    assert all(s.parent_span_id == task.span_id for s in steps.values()), steps

    chats = [s for s in spans if s.name == f"chat {MODEL}"]
    assert sorted(by_id[c.parent_span_id].name for c in chats) == ["step 1", "step 2"]
    for c in chats:
        assert c.kind == 3, c  # SPAN_KIND_CLIENT
        assert c.attrs["gen_ai.operation.name"] == "chat"
        assert c.attrs["gen_ai.system"] == c.attrs["gen_ai.provider.name"] == PROVIDER, c.attrs
        assert c.attrs["gen_ai.request.model"] == MODEL, c.attrs
        assert c.attrs["gen_ai.response.model"] == "scripted", c.attrs
        assert (c.attrs["gen_ai.usage.input_tokens"], c.attrs["gen_ai.usage.output_tokens"]) == (10, 5), c.attrs
        assert c.attrs["gen_ai.response.finish_reasons"] == "tool_calls", c.attrs

    [bash] = [s for s in spans if s.name == "execute_tool bash"]
    assert bash.attrs["gen_ai.tool.name"] == "bash" and bash.attrs["gen_ai.operation.name"] == "execute_tool"
    assert bash.attrs["gen_ai.tool.call.id"].startswith("call_"), bash.attrs
    assert by_id[bash.parent_span_id].name == "step 1", bash
    [done] = [s for s in spans if s.name == "execute_tool task_done"]
    assert by_id[done.parent_span_id].name == "step 2", done


# ---- metrics ------------------------------------------------------------


def test_metrics_count_rpcs_by_method_and_code(otel_runs):
    before = scrape(otel_runs)
    run = "/agentd.trae.v1.TraeService/ListTools"
    for _ in range(3):
        assert requests.get(f"{otel_runs.stack.trae_url}/api/tools", timeout=30).status_code == 200
    status = "/agentd.agent.v1.AgentService/GetTask"
    assert requests.get(f"{otel_runs.stack.ap_url}/ap/v1/agent/tasks/nope", timeout=30).status_code == 404
    # The Trae status is an HTTP route of agentd's own (past the transcoder).
    trae_status = "/api/tasks/{task_id}/status"
    assert requests.get(f"{otel_runs.stack.ap_url}/api/tasks/nope/status", timeout=30).status_code == 404
    after = scrape(otel_runs)
    total, duration = "agentd_rpc_requests_total", "agentd_rpc_duration_seconds_count"
    assert metric(after, total, method=run, code="OK") - metric(before, total, method=run, code="OK") == 3
    assert metric(after, duration, method=run, code="OK") - metric(before, duration, method=run, code="OK") == 3
    assert metric(after, total, method=status, code="NOT_FOUND") - metric(before, total, method=status,
                                                                         code="NOT_FOUND") == 1
    assert metric(after, total, method=status, code="OK") == metric(before, total, method=status, code="OK")
    assert metric(after, total, method=trae_status, code="404") - metric(before, total, method=trae_status,
                                                                          code="404") == 1
    # Plain HTTP routes by their route and HTTP status; the previous scrape counts.
    assert metric(after, total, method="/metrics", code="200") >= 1
    # Unknown paths are one series, not one per path.
    for p in ("/nope/1", "/nope/2"):
        assert requests.get(f"http://{otel_runs.stack.grpc_target}{p}", timeout=30).status_code == 404
    third = scrape(otel_runs)
    assert metric(third, total, method="unmatched", code="404") - metric(after, total, method="unmatched",
                                                                        code="404") == 2
    assert not [s for s in series(third, total) if "nope" in s["method"]]
    for s in series(third, total):
        assert s["code"] in {"OK", "NOT_FOUND", "CANCELLED", "INVALID_ARGUMENT"} or s["code"].isdigit(), s


def test_metrics_read_grpc_web_statuses(otel_runs):
    """gRPC-Web (straight to agentd) carries its status in a body frame."""
    def grpc_web(method: str, message: bytes) -> requests.Response:
        frame = b"\x00" + len(message).to_bytes(4, "big") + message
        return requests.post(f"http://{otel_runs.stack.grpc_target}/agentd.trae.v1.TraeService/{method}", data=frame,
                             headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}, timeout=30)

    before = scrape(otel_runs)
    r = grpc_web("Health", b"")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/grpc-web"), r.headers
    assert b"grpc-status:0" in r.content, r.content
    r = grpc_web("GetTaskStatus", b"\x0a\x04nope")  # task_id: "nope"
    assert r.headers.get("grpc-status") == "5" or b"grpc-status:5" in r.content, (r.headers, r.content)
    after = scrape(otel_runs)
    total = "agentd_rpc_requests_total"
    for method, code in (("Health", "OK"), ("GetTaskStatus", "NOT_FOUND")):
        labels = {"method": f"/agentd.trae.v1.TraeService/{method}", "code": code}
        assert metric(after, total, **labels) - metric(before, total, **labels) == 1, labels


def test_metrics_count_llm_tokens_tool_durations_and_tasks(otel_runs, tmp_path):
    before = scrape(otel_runs)
    route = otel_runs.llm.route().script(openai_tool_call("bash", {"command": "sleep 0.3"}))
    task_id = otel_runs.run("metrics task", tmp_path, route=route)
    assert otel_runs.wait_status(task_id, {"completed", "failed"})["task_status"] == "completed"
    after = scrape(otel_runs)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    llm = {"provider": PROVIDER, "model": MODEL}
    assert len(route.requests) == 2  # the bash call, then task_done
    assert delta("agentd_llm_requests_total", **llm) == 2
    assert delta("agentd_llm_tokens_total", **llm, token_type="input") == 20
    assert delta("agentd_llm_tokens_total", **llm, token_type="output") == 10
    assert ("agentd_llm_cost_usd_total", frozenset(llm.items())) in after
    assert delta("agentd_llm_errors_total", **llm) == 0

    assert delta("agentd_tool_call_seconds_count", tool="bash") == 1
    assert delta("agentd_tool_call_seconds_sum", tool="bash") >= 0.3
    assert delta("agentd_tool_call_seconds_count", tool="task_done") == 1
    assert delta("agentd_steps_total") == 2
    assert delta("agentd_step_overhead_seconds_count") == 2

    # Tasks by status come from the store: they match the task listing.
    for status in ("completed", "running", "created"):
        r = requests.get(f"{otel_runs.stack.ap_url}{AP}/tasks", params={"status": status, "size": 1}, timeout=30)
        assert r.status_code == 200, r.text
        assert metric(after, "agentd_tasks", status=status) == r.json()["pagination"]["total"], status
    assert metric(after, "agentd_tasks", status="completed") >= 1
    assert metric(after, "agentd_task_slots") == 5
    assert metric(after, "agentd_tasks_running") == 0


def test_metrics_show_a_running_task(otel_runs, tmp_path):
    route = otel_runs.llm.route().script(long_bash())
    task_id = otel_runs.run("long task", tmp_path, route=route)
    try:
        wait_file(tmp_path / "bash.pid")
        during = scrape(otel_runs)
        assert metric(during, "agentd_tasks_running") == 1
        assert metric(during, "agentd_tasks", status="running") >= 1
        assert metric(during, "agentd_tasks_queued") == 0
    finally:
        otel_runs.stop(task_id)
    assert otel_runs.wait_status(task_id, "stopped", timeout=RUN_WAIT)["task_status"] == "stopped"
    assert metric(scrape(otel_runs), "agentd_tasks_running") == 0
