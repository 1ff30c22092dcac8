"""The TypeScript clients of clients/typescript, run by Node against the live
agentd + Envoy: the AutoGPT document's JavaScript snippet (`@autogpt/client`),
every AutoGPTClient method, its retries (against a scripted HTTP server in this
process), and the gRPC example built on the generated `@agentd/grpc` client.

The node scripts print what they saw; the assertions are made here. They run
the compiled JavaScript, so the module first brings the build up to date
(`tsc -b`; `scripts/setup --test` installs the packages and generates code).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, REPO, make_file, sha256_file  # noqa: E402
from runs_support import assert_well_formed_log, key  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

TS = REPO / "clients" / "typescript"
NODE = shutil.which("node")

# The document's JavaScript example ("SDK和客户端库") after its constructor,
# which examples/quickstart.ts must contain as it is.
DOC_SNIPPET = """\
import { AutoGPTClient } from '@autogpt/client';

const client = new AutoGPTClient({
  baseURL: process.env.AUTOGPT_BASE_URL ?? 'http://localhost:8000'
});

// 创建任务
const task = await client.createTask({
  input: '分析销售数据',
  additionalInput: { priority: 'high' }
});

// 执行步骤
const step = await client.executeStep(task.taskId, {
  input: '开始分析'
});
"""


@pytest.fixture(scope="module")
def ts() -> Path:
    """clients/typescript, compiled from its current sources."""
    if NODE is None:
        pytest.fail("node is not on PATH")
    tsc = TS / "node_modules" / ".bin" / "tsc"
    if not tsc.exists() or not (TS / "packages" / "grpc" / "src" / "gen").is_dir():
        pytest.fail(f"{TS} is not installed and generated: run scripts/setup --test")
    out = subprocess.run([str(tsc), "-b"], cwd=TS, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"tsc -b failed:\n{out.stdout}\n{out.stderr}"
    return TS


def node(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(TS / script), *args],
        cwd=TS,
        env=helpers.clean_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout[-4000:]}\nstderr:\n{out.stderr[-4000:]}"
    return out.stdout


def ap_get(runs, path: str) -> requests.Response:
    return requests.get(f"{runs.stack.ap_url}{AP}{path}", timeout=30)


# ---- the document's snippet -------------------------------------------------


def test_quickstart_is_the_documents_snippet(ts):
    lines = (ts / "examples" / "quickstart.ts").read_text().splitlines()
    while lines and lines[0].startswith("//"):  # the file's own header comment
        lines.pop(0)
    assert "\n".join(lines).strip() == DOC_SNIPPET.strip(), lines


@pytest.mark.parametrize("port", ["ap_url", "trae_url"])
def test_quickstart_creates_a_task_and_executes_a_step(ts, runs, port):
    before = {t["task_id"] for t in runs.stack.all_tasks()}
    ok(node("examples/dist/quickstart.js", env={"AUTOGPT_BASE_URL": getattr(runs.stack, port)}))
    new = [t["task_id"] for t in runs.stack.all_tasks() if t["task_id"] not in before]
    assert len(new) == 1, new
    task = ap_get(runs, f"/tasks/{new[0]}").json()
    assert task["input"] == "分析销售数据" and task["additional_input"] == {"priority": "high"}, task
    steps = ap_get(runs, f"/tasks/{new[0]}/steps").json()["steps"]
    assert [(s["input"], s["status"]) for s in steps] == [("开始分析", "completed")], steps


# ---- every AutoGPTClient method -----------------------------------------------


def test_every_client_method(ts, runs, tmp_path):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p out && printf 'result v1\\n' > out/result.txt"},
                         text="Writing the result"),
        openai_tool_call("task_done", {}, text="Done"),
    )
    cfg = runs.config(route)
    upload = tmp_path / "upload.bin"
    upload_sha = make_file(upload, 300_000, seed=b"ts-client")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = ok(node("e2e/dist/exercise.js", env={
        "AP_URL": runs.stack.ap_url, "CONFIG_FILE": cfg, "UPLOAD_PATH": str(upload), "DOWNLOAD_DIR": str(downloads),
    }))
    r = json.loads(out.strip().splitlines()[-1])
    task_id = r["created"]["taskId"]

    # camelCase results, the wire JSON kept as `raw`, user keys left alone.
    assert r["status"]["status"] == "running" and r["status"]["agentId"] == r["status"]["rawAgentId"] != "", r["status"]
    assert r["status"]["taskCountsKeys"] == ["created", "running", "completed", "failed", "stopped"], r["status"]
    assert r["created"]["rawTaskId"] == task_id and r["created"]["status"] == "created", r["created"]
    assert r["created"]["additionalInput"] == {"config_file": cfg, "priority": "high"}, r["created"]
    assert set(r["created"]["json"]) == {"taskId", "input", "additionalInput", "status", "createdAt", "modifiedAt",
                                         "artifacts"}, r["created"]["json"]
    assert r["got"]["taskId"] == task_id and r["got"]["input"] == "exercise every method", r["got"]
    assert helpers.ISO_RE.match(r["got"]["createdAt"]), r["got"]

    # listTasks({page, pageSize, status}).
    assert task_id in r["listed"]["ids"] and r["listed"]["statuses"] == ["created"], r["listed"]
    total = len(r["listed"]["ids"])
    assert r["listed"]["pagination"] == {"page": 1, "size": 100, "total": total, "pages": 1, "totalItems": total,
                                         "totalPages": 1, "currentPage": 1, "pageSize": 100}, r["listed"]
    helpers.assert_pagination(r["listed"]["rawPagination"], 1, 100, total)

    # Uploads (a path, a Buffer) and downloads (Buffer, file, stream): same bytes.
    up, tiny = r["uploaded"]["fromPath"], r["uploaded"]["fromBuffer"]
    assert (up["fileName"], up["relativePath"], up["fileSize"], up["agentCreated"]) == ("upload.bin", "data", 300_000, False)
    assert (tiny["fileName"], tiny["relativePath"], tiny["fileSize"]) == ("tiny.txt", "", 5), tiny
    for name in ("buffer.bin", "stream.bin"):
        assert sha256_file(downloads / name) == upload_sha, name
    d = r["downloaded"]
    assert (d["bufferBytes"], d["savedBytes"], d["streamedName"], d["tinyText"]) == (300_000, 300_000, "tiny.txt", "tiny\n"), d
    served = ap_get(runs, f"/tasks/{task_id}/artifacts/{up['artifactId']}")
    assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == upload_sha

    # Steps: executeStep until is_last, listSteps, getStep.
    steps = r["steps"]
    assert [(s["isLast"], s["state"], s["output"]) for s in steps] == [
        (False, "completed", "Writing the result"), (True, "completed", "Done")], steps
    assert steps[0]["artifacts"] == [["out", "result.txt", True]] and steps[1]["artifacts"] == [], steps
    assert [s["additionalInput"] for s in steps] == [{"note": "step 0"}, {"note": "step 1"}], steps
    assert steps[1]["input"] == "continue 1", steps
    assert r["stepList"] == {"ids": [s["stepId"] for s in steps], "totalItems": 2}, r["stepList"]
    assert r["firstStep"] == {"stepId": steps[0]["stepId"], "output": "Writing the result"}, r["firstStep"]
    assert sorted(map(tuple, r["artifacts"])) == [
        ("", "tiny.txt", False, 5), ("data", "upload.bin", False, 300_000), ("out", "result.txt", True, 10)], r["artifacts"]
    assert r["agentFile"] == "result v1\n"

    # events(): the whole log through `end`, and resumed after seq 3.
    raw = [e["raw"] for e in r["events"]]
    assert_well_formed_log(raw, task_id)
    assert [e["camel"] for e in r["events"]] == [{"type": e["type"], "seq": e["seq"], "taskId": task_id} for e in raw]
    assert raw[-2]["type"] == "complete" and raw[-2]["result"] == "Done", raw[-2]
    assert key(raw) == key(runs.sse(task_id, path=f"{AP}/tasks/{task_id}/events"))
    assert [e["raw"] for e in r["resumed"]] == raw[3:]

    # deleteArtifact, then the typed errors.
    assert r["deletedArtifact"]["success"] is True, r["deletedArtifact"]
    assert "tiny.txt" not in r["afterDelete"] and "upload.bin" in r["afterDelete"], r["afterDelete"]
    errors = r["errors"]
    for what, status, code in [("task", 404, "TASK_NOT_FOUND"), ("step", 404, "STEP_NOT_FOUND"),
                               ("artifact", 404, "ARTIFACT_NOT_FOUND"), ("events", 404, "TASK_NOT_FOUND"),
                               ("finishedStep", 400, "INVALID_REQUEST")]:
        e = errors[what]
        assert (e["threw"], e["apiError"], e["name"], e["status"], e["code"]) == (True, True, "ApiError", status, code), (what, e)
        assert e["body"]["success"] is False and e["body"]["error"]["code"] == code, (what, e)
    assert errors["task"]["details"]["task_id"] == "no-such-task", errors["task"]

    # restart and deleteTask.
    assert r["restart"]["success"] is True and "estimatedDowntime" in r["restart"], r["restart"]
    assert r["deletedTask"]["success"] is True, r["deletedTask"]
    assert (r["afterDeleteTask"]["status"], r["afterDeleteTask"]["code"]) == (404, "TASK_NOT_FOUND"), r["afterDeleteTask"]
    assert ap_get(runs, f"/tasks/{r['doomed']}").status_code == 404
    assert ap_get(runs, f"/tasks/{task_id}").json()["status"] == "completed"


# ---- retries ----------------------------------------------------------------

TASK = {"task_id": "t1", "input": "x", "additional_input": {}, "status": "created",
        "created_at": "2024-01-15T10:30:00Z", "modified_at": "2024-01-15T10:30:00Z", "artifacts": []}


def reply(status: int, body: dict | None = None, **headers: str) -> dict:
    if body is None:
        body = TASK if status == 200 else {
            "success": False, "message": f"scripted {status}",
            "error": {"code": {429: "INSUFFICIENT_RESOURCES", 500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE"}.get(
                status, "INTERNAL_ERROR"), "message": f"scripted {status}", "details": {"attempt": "scripted"}}}
    return {"status": status, "body": body, "headers": headers}


DROP = {"drop": True}


def delayed(seconds: float, r: dict) -> dict:
    return dict(r, delay=seconds)


class FlakyServer:
    """Scripted answers per case (the first path segment: the client's base
    URL is http://127.0.0.1:<port>/<case>); records every attempt. A case's
    unscripted requests get 418, which no client retries."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scripts: dict[str, list[dict]] = {}
        self.attempts: dict[str, list[dict]] = defaultdict(list)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle_any(self):
                case = self.path.split("/")[1]
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer.lock:
                    outer.attempts[case].append({"at": time.monotonic(), "method": self.command, "path": self.path,
                                                 "auth": self.headers.get("authorization"), "body": body.decode()})
                    script = outer.scripts.get(case) or []
                    r = script.pop(0) if script else reply(418, {"unscripted": True})
                if r.get("drop"):
                    self.close_connection = True  # no answer at all: the client sees the connection close
                    return
                time.sleep(r.get("delay", 0))
                data = r["raw"].encode() if "raw" in r else json.dumps(r["body"]).encode()
                try:
                    self.send_response(r["status"])
                    for k, v in r["headers"].items():
                        self.send_header(k.replace("_", "-"), v)
                    if "content-type" not in r["headers"]:
                        self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout case)

            do_GET = do_POST = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{case}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def flaky():
    s = FlakyServer()
    yield s
    s.stop()


def http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


# case: (call, env, script, expected outcome, expected attempts)
RETRY_CASES = {
    "retry-after-429": ("get", {}, [reply(429, Retry_After="1"), reply(200)], {"ok": True}, 2),
    "retry-after-date": ("get", {}, [reply(503, Retry_After="DATE+2"), reply(200)], {"ok": True}, 2),
    "5xx-then-200": ("get", {}, [reply(500), reply(503), reply(200)], {"ok": True}, 3),
    "gives-up": ("get", {"MAX_RETRIES": "2"}, [reply(500)] * 3 + [reply(200)],
                 {"ok": False, "name": "ApiError", "status": 500, "code": "INTERNAL_ERROR"}, 3),
    "dropped-get": ("get", {}, [DROP, reply(200)], {"ok": True}, 2),
    "timeout-get": ("get", {"TIMEOUT_MS": "300"}, [delayed(2, reply(200)), reply(200)], {"ok": True}, 2),
    # A POST may change state: repeated after a refusal (429/503), not after a 500 or a lost answer.
    "post-429": ("create", {}, [reply(429, Retry_After="0"), reply(200)], {"ok": True}, 2),
    "post-500": ("create", {}, [reply(500), reply(200)],
                 {"ok": False, "name": "ApiError", "status": 500, "code": "INTERNAL_ERROR"}, 1),
    "post-dropped": ("create", {}, [DROP, reply(200)], {"ok": False, "name": "ConnectionError"}, 1),
}


@pytest.mark.parametrize("case", list(RETRY_CASES))
def test_retries(ts, flaky, case):
    call, env, script, expected, attempts = RETRY_CASES[case]
    script = [dict(r, headers={k: http_date(2) if v == "DATE+2" else v for k, v in r["headers"].items()})
              if "headers" in r else r for r in script]
    with flaky.lock:
        flaky.scripts[case] = script
    out = json.loads(ok(node("e2e/dist/retries.js", flaky.url(case), call, env=env)).strip().splitlines()[-1])
    assert {k: out.get(k) for k in expected} == expected, out
    seen = flaky.attempts[case]
    assert len(seen) == attempts, (out, seen)
    path = f"/{case}{AP}/tasks" + ("/t1" if call == "get" else "")
    assert all(a["path"] == path and a["auth"] == "Bearer k-retry-test" for a in seen), seen
    if call == "create":
        assert all(json.loads(a["body"]) == {"input": "x"} for a in seen), seen
    if case == "retry-after-429":
        assert seen[1]["at"] - seen[0]["at"] >= 0.95, "Retry-After: 1 was not honoured"
    if case == "retry-after-date":
        assert seen[1]["at"] - seen[0]["at"] >= 0.9, "an HTTP-date Retry-After was not honoured"
    if case == "timeout-get":
        assert out["ms"] < 1900, f"the 300 ms timeout did not cut the slow attempt: {out}"


def sse(*events: dict) -> dict:
    text = "".join(f"data: {json.dumps(dict(e, task_id='t1', timestamp=1.7e9))}\n\n" for e in events)
    return {"status": 200, "raw": text, "headers": {"content-type": "text/event-stream"}}


def test_events_resume_after_the_stream_drops(ts, flaky):
    """A stream that closes before `end` is resumed after the last seq seen;
    heartbeats are left out and do not move the position."""
    with flaky.lock:
        flaky.scripts["sse"] = [
            sse({"type": "start", "seq": 1}, {"type": "step", "seq": 2}, {"type": "heartbeat", "seq": 2}),
            reply(503),  # the reconnect is refused once
            sse({"type": "complete", "seq": 3}, {"type": "end", "seq": 4}),
        ]
    out = json.loads(ok(node("e2e/dist/retries.js", flaky.url("sse"), "events")).strip().splitlines()[-1])
    assert out["ok"] is True and out["events"] == [[1, "start"], [2, "step"], [3, "complete"], [4, "end"]], out
    paths = [a["path"] for a in flaky.attempts["sse"]]
    assert paths == [f"/sse{AP}/tasks/t1/events"] + [f"/sse{AP}/tasks/t1/events?after_seq=2"] * 2, paths


# ---- the gRPC example ---------------------------------------------------------


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line[len("event "):]) for line in stdout.splitlines() if line.startswith("event ")]


@pytest.mark.parametrize("via", ["agentd", "envoy"])
def test_grpc_example_runs_a_task_to_the_end(ts, runs, tmp_path, via):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p reports && printf '# Report\\nall good\\n' > reports/report.md"},
                         text="Writing the report"),
        openai_tool_call("task_done", {}, text="Report ready"),
    )
    source = tmp_path / "input.bin"
    source_sha = make_file(source, 200_000, seed=b"grpc-upload")
    target = runs.stack.grpc_target if via == "agentd" else runs.stack.envoy_grpc_target
    out = ok(node("examples/dist/run-task.js", "--server", f"http://{target}", "--input", "write the report",
                  "--additional-input", json.dumps({"config_file": runs.config(route)}),
                  "--upload", str(source), "--upload-path", "inputs",
                  "--artifact", "reports/report.md", "--out", str(tmp_path / "dl")))
    lines = out.splitlines()
    task_id = lines[0].removeprefix("task ")
    assert lines[0].startswith("task ") and task_id, lines[:2]

    # The upload went over a client stream: the server holds the same bytes.
    uploaded = json.loads(next(line for line in lines if line.startswith("uploaded "))[len("uploaded "):])
    assert (uploaded["file_name"], uploaded["relative_path"], uploaded["file_size"]) == ("input.bin", "inputs", 200_000)
    served = ap_get(runs, f"/tasks/{task_id}/artifacts/{uploaded['artifact_id']}")
    assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == source_sha

    # The printed events: the task's whole log through `end`, as SSE serves it.
    events = events_of(out)
    assert_well_formed_log(events, task_id)
    assert events[-2]["type"] == "complete" and events[-2]["result"] == "Report ready", events[-2]
    assert [e["type"] for e in events].count("step") == 2, [e["type"] for e in events]
    assert key(events) == key(runs.sse(task_id))

    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and steps[-1].startswith("step 2 task_done state=completed is_last=true"), steps
    saved = tmp_path / "dl" / "report.md"
    assert lines[-1] == f"saved {saved} 18", lines[-1]
    assert saved.read_bytes() == b"# Report\nall good\n"


def test_grpc_example_reports_the_error_code(ts, runs, tmp_path):
    out = node("examples/dist/run-task.js", "--server", f"http://{runs.stack.grpc_target}", "--input", "x",
               "--additional-input", json.dumps({"config_file": str(tmp_path / "missing.yaml")}))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.startswith("run-task: INVALID_REQUEST: "), out.stderr
    assert "missing.yaml" in out.stderr, out.stderr
