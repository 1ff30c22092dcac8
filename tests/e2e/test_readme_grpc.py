"""The README's "gRPC from the command line" commands (issue 7, reflection-first docs), run as written.

Every command between `<!-- grpc-examples:begin -->` and `<!-- grpc-examples:end -->` in README.md is taken from
its ```sh block and run with bash and the real `buf` (BUF_BIN), against a private agentd + Envoy wired to the
scripted LLM (runs_support): a private stack because the README shows RestartAgent (which ends every running task)
and the deletes. Only the address changes (`localhost:50051` -> the stack's agentd); the placeholders ($TASK_ID,
$STEP_ID, $ARTIFACT_ID, $WORKDIR) are environment variables holding real ids that each case prepares (a task with
artifacts, a finished step, a completed and a running Trae run). Each command must exit 0 and print what its RPC
answers for those ids.

test_readme_covers_every_rpc keeps the README complete: the RPCs it shows must be exactly the methods server
reflection lists for the two services (so a new RPC without a README command fails), and each needs a case here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, BUF_BIN, Reflection  # noqa: E402
from runs_support import Runs, _stop, long_bash, start_runs  # noqa: E402

pytest_plugins = ["runs_support"]

README = helpers.REPO / "README.md"
BEGIN, END = "<!-- grpc-examples:begin -->", "<!-- grpc-examples:end -->"
ADDRESS = "localhost:50051"
TRAE = "agentd.trae.v1.TraeService"
AGENT = "agentd.agent.v1.AgentService"
LIST_METHODS = "--list-methods"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
UPLOADED = b"hello, world\n"  # what the README's UploadArtifact stream sends


# ---- the README's commands ---------------------------------------------------


def readme_commands(text: str | None = None) -> list[tuple[str, str]]:
    """(rpc, command) for every command in the marked region, in order. `rpc` is `package.Service/Method`, or
    "--list-methods". A command is a line with its `\\` continuations and its heredoc, if any; comments and blank
    lines separate commands."""
    text = README.read_text() if text is None else text
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README needs exactly one {BEGIN} ... {END}"
    region = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    blocks = re.findall(r"^```sh\n(.*?)^```$", region, flags=re.S | re.M)
    assert blocks, "no ```sh blocks between the grpc-examples markers"
    out = []
    for block in blocks:
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cmd = [line]
            while cmd[-1].endswith("\\"):
                cmd.append(lines[i])
                i += 1
            m = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", "\n".join(cmd))
            if m:
                while lines[i] != m.group(1):
                    cmd.append(lines[i])
                    i += 1
                cmd.append(lines[i])
                i += 1
            command = "\n".join(cmd)
            out.append((rpc_of(command), command))
    return out


def rpc_of(command: str) -> str:
    assert command.startswith("buf curl "), f"not a buf curl command: {command}"
    assert command.count(ADDRESS) == 1, f"the address {ADDRESS} must appear once: {command}"
    if LIST_METHODS in command:
        return LIST_METHODS
    m = re.search(rf"http://{re.escape(ADDRESS)}/([\w.]+/\w+)(\s|$)", command)
    assert m, f"no http://{ADDRESS}/<service>/<method> URL in: {command}"
    return m.group(1)


COMMANDS = readme_commands()


def json_docs(text: str) -> list:
    """The JSON documents buf curl printed, one per response message."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        doc, i = dec.raw_decode(text, i)
        out.append(doc)


# ---- the stack and the runner ----------------------------------------------------


@pytest.fixture(scope="module")
def docs(tmp_path_factory, runs_llm) -> Runs:
    r = start_runs(tmp_path_factory.mktemp("readme-grpc"), runs_llm)
    yield r
    _stop(r)


@pytest.fixture(scope="module")
def buf_path(tmp_path_factory) -> Path:
    """A directory with `buf` in it (BUF_BIN), to put first on PATH: the commands say `buf`."""
    if not os.access(BUF_BIN, os.X_OK):
        pytest.fail(f"BUF_BIN={BUF_BIN} is not executable (run scripts/setup --test)")
    d = tmp_path_factory.mktemp("buf-bin")
    (d / "buf").symlink_to(Path(BUF_BIN).resolve())
    return d


@dataclass
class Ctx:
    runs: Runs
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    saved: dict = field(default_factory=dict)

    @property
    def stack(self) -> helpers.Stack:
        return self.runs.stack

    # REST helpers that prepare state

    def task(self, input: str = "readme task", **additional) -> str:
        return self.stack.create_task(input, **additional)["task_id"]

    def upload(self, task_id: str, name: str, data: bytes) -> str:
        r = self.stack.upload(task_id, name, data)
        assert r.status_code == 200, r.text
        return r.json()["artifact_id"]

    def step(self, task_id: str) -> str:
        r = requests.post(f"{self.stack.ap_url}{AP}/tasks/{task_id}/steps", json={"input": "go"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["step_id"]

    def completed_run(self) -> str:
        tid = self.runs.run("readme run", self.tmp / "done-run")
        self.runs.wait_status(tid, "completed")
        return tid

    def rest_events(self, task_id: str) -> list[dict]:
        return self.runs.status(task_id)["messages"]


def run_command(command: str, ctx: Ctx, buf_path: Path) -> subprocess.CompletedProcess:
    env = helpers.clean_env() | {
        "PATH": f"{buf_path}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "BUF_CACHE_DIR": str(ctx.tmp / "buf-cache"),
    } | ctx.env
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command.replace(ADDRESS, ctx.stack.grpc_target)],
        cwd=ctx.tmp, env=env, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )


# ---- what each command must print ----------------------------------------------------
# prepare(ctx) sets ctx.env (the placeholders) and may remember things in ctx.saved; check(ctx, docs) judges the
# JSON documents printed (one per response message; --list-methods prints lines, passed as [stdout]).


def _noop(ctx: Ctx) -> None:
    pass


def _assert_log(events: list[dict], task_id: str) -> None:
    assert events, "no events"
    events = [e for e in events if e.get("type") != "heartbeat"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert events[0]["type"] == "start" and events[-1]["type"] == "end", [e["type"] for e in events]
    assert {e["taskId"] for e in events} == {task_id}, events


def check_list_methods(ctx: Ctx, out: list) -> None:
    methods = set(out[0].split())
    with grpc.insecure_channel(ctx.stack.grpc_target) as ch:
        refl = Reflection(ch)
        expected = {f"{s}/{m}" for s in (TRAE, AGENT) for m in refl.service(s).methods_by_name}
    assert expected | {HEALTH_CHECK} <= methods, sorted(expected - methods)


def check_health_check(ctx, out):
    assert out == [{"status": "SERVING"}], out


def check_trae_health(ctx, out):
    assert out == [{"status": "healthy", "message": "Trae Agent API is running"}], out


def check_get_config(ctx, out):
    (cfg,) = out
    assert cfg["status"] == "success", cfg
    # the request's provider wins; the stack's config names the scripted model
    assert cfg["config"]["providerSettings"]["provider"] == "openai", cfg
    assert cfg["config"]["providerSettings"]["model"] == "scripted-model", cfg


def check_list_tools(ctx, out):
    (tools,) = out
    names = {t["name"] for t in tools["tools"]}
    assert {"bash", "str_replace_based_edit_tool", "task_done"} <= names, names
    assert tools["totalTools"] == len(tools["tools"]), tools


def prepare_run(ctx):
    ctx.env["WORKDIR"] = str(ctx.tmp / "workdir")


def check_run(ctx, out):
    (resp,) = out
    assert resp["status"] == "success" and resp["message"] == "Task started successfully", resp
    ctx.runs.wait_status(resp["taskId"], "completed")
    assert ctx.runs.status(resp["taskId"])["task_id"] == resp["taskId"]
    assert (ctx.tmp / "workdir").is_dir(), "the run did not use $WORKDIR"


def prepare_trae_list(ctx):
    ctx.saved["done"] = ctx.completed_run()
    ctx.saved["created"] = ctx.task("not completed")


def check_trae_list(ctx, out):
    (resp,) = out
    tasks = resp["activeTasks"]
    ids = {t["taskId"] for t in tasks}
    assert ctx.saved["done"] in ids and ctx.saved["created"] not in ids, resp
    assert {t["status"] for t in tasks} == {"completed"}, tasks
    assert 1 <= len(tasks) <= 20 and resp["totalTasks"] >= len(tasks), resp


def prepare_completed_run(ctx):
    ctx.env["TASK_ID"] = ctx.completed_run()


def check_task_status(ctx, out):
    (resp,) = out
    assert resp["taskId"] == ctx.env["TASK_ID"] and resp["taskStatus"] == "completed", resp
    _assert_log(resp["messages"], ctx.env["TASK_ID"])


def check_stream_task(ctx, out):
    _assert_log(out, ctx.env["TASK_ID"])
    assert [e["seq"] for e in out] == [e["seq"] for e in ctx.rest_events(ctx.env["TASK_ID"])]


def prepare_running_run(ctx):
    route = ctx.runs.llm.route().script(long_bash(secs=300))
    tid = ctx.runs.run("readme long run", ctx.tmp / "long-run", route=route)
    ctx.runs.wait_event(tid, lambda m: m["type"] == "tool_call", "tool_call")
    assert ctx.runs.status(tid)["task_status"] == "running"
    ctx.env["TASK_ID"] = tid


def check_stop(ctx, out):
    (resp,) = out
    assert resp["status"] == "success", resp
    ctx.runs.wait_status(ctx.env["TASK_ID"], "stopped", timeout=30)


def check_create_task(ctx, out):
    (task,) = out
    assert task["input"] == "Analyse the sales data" and task["status"] == "created", task
    assert task["additionalInput"] == {"priority": "high"}, task
    r = requests.get(f"{ctx.stack.ap_url}{AP}/tasks/{task['taskId']}", timeout=30)
    assert r.status_code == 200 and r.json()["input"] == "Analyse the sales data", r.text


def prepare_ap_list(ctx):
    ctx.saved["created"] = ctx.task("listed")
    done = ctx.task("stepped")
    ctx.step(done)
    ctx.saved["done"] = done


def check_ap_list(ctx, out):
    (resp,) = out
    tasks = resp["tasks"]
    assert 1 <= len(tasks) <= 10 and {t["status"] for t in tasks} == {"created"}, resp
    assert ctx.saved["done"] not in {t["taskId"] for t in tasks}, resp
    p = resp["pagination"]
    assert (p["page"], p["size"], p["currentPage"], p["pageSize"]) == (1, 10, 1, 10), p


def prepare_task(ctx):
    ctx.env["TASK_ID"] = ctx.task("readme get", origin="readme")


def check_get_task(ctx, out):
    (task,) = out
    assert task["taskId"] == ctx.env["TASK_ID"] and task["input"] == "readme get", task
    assert task["additionalInput"] == {"origin": "readme"}, task


def check_upload(ctx, out):
    (art,) = out
    assert (art["fileName"], art.get("relativePath"), art["fileSize"]) == ("hello.txt", "docs", len(UPLOADED)), art
    r = requests.get(f"{ctx.stack.ap_url}{AP}/tasks/{ctx.env['TASK_ID']}/artifacts/{art['artifactId']}", timeout=30)
    assert r.status_code == 200 and r.content == UPLOADED, (r.status_code, r.content[:200])


def prepare_artifacts(ctx):
    tid = ctx.task("readme artifacts")
    ctx.saved["data"] = os.urandom(70_000)
    ctx.saved["ids"] = {ctx.upload(tid, "a.bin", ctx.saved["data"]), ctx.upload(tid, "b.txt", b"b")}
    ctx.env["TASK_ID"] = tid
    ctx.env["ARTIFACT_ID"] = sorted(ctx.saved["ids"])[0]
    ctx.saved["data_id"] = next(a["artifact_id"] for a in ctx.stack.artifacts(tid) if a["file_name"] == "a.bin")


def check_list_artifacts(ctx, out):
    (resp,) = out
    assert {a["artifactId"] for a in resp["artifacts"]} == ctx.saved["ids"], resp
    assert resp["pagination"]["totalItems"] == 2, resp


def prepare_download(ctx):
    prepare_artifacts(ctx)
    ctx.env["ARTIFACT_ID"] = ctx.saved["data_id"]


def check_download(ctx, out):
    assert out, "no HttpBody messages"
    data = b"".join(base64.b64decode(m.get("data", "")) for m in out)
    assert data == ctx.saved["data"], f"{len(data)} bytes, not the {len(ctx.saved['data'])} uploaded"
    assert out[0].get("contentType"), out[0]


def check_execute_step(ctx, out):
    (step,) = out
    assert step["taskId"] == ctx.env["TASK_ID"] and step["stepId"], step
    assert step["status"] == "completed" and step.get("state") == "completed", step
    r = requests.get(f"{ctx.stack.ap_url}{AP}/tasks/{ctx.env['TASK_ID']}/steps", timeout=30)
    assert [s["step_id"] for s in r.json()["steps"]] == [step["stepId"]], r.text


def prepare_stepped(ctx):
    tid = ctx.task("readme steps")
    ctx.env["STEP_ID"] = ctx.step(tid)
    ctx.env["TASK_ID"] = tid


def check_list_steps(ctx, out):
    (resp,) = out
    assert [(s["taskId"], s["stepId"]) for s in resp["steps"]] == [(ctx.env["TASK_ID"], ctx.env["STEP_ID"])], resp


def check_get_step(ctx, out):
    (step,) = out
    assert (step["taskId"], step["stepId"]) == (ctx.env["TASK_ID"], ctx.env["STEP_ID"]), step


def check_stream_events(ctx, out):
    _assert_log(out, ctx.env["TASK_ID"])


def check_agent_status(ctx, out):
    (resp,) = out
    assert resp["status"] == "running" and resp["version"] and resp["agentId"], resp
    assert resp["totalTasks"] >= 1, resp


def check_delete_artifact(ctx, out):
    assert out[0]["success"] is True, out
    left = {a["artifact_id"] for a in ctx.stack.artifacts(ctx.env["TASK_ID"])}
    assert left == ctx.saved["ids"] - {ctx.env["ARTIFACT_ID"]}, left


def check_delete_task(ctx, out):
    assert out[0]["success"] is True, out
    r = requests.get(f"{ctx.stack.ap_url}{AP}/tasks/{ctx.env['TASK_ID']}", timeout=30)
    assert r.status_code == 404, r.text


def check_restart(ctx, out):
    assert out[0]["success"] is True, out
    r = requests.get(f"{ctx.stack.ap_url}{AP}/status", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text


CASES: dict[str, tuple[Callable, Callable]] = {
    LIST_METHODS: (_noop, check_list_methods),
    HEALTH_CHECK: (_noop, check_health_check),
    f"{TRAE}/Health": (_noop, check_trae_health),
    f"{TRAE}/GetConfig": (_noop, check_get_config),
    f"{TRAE}/ListTools": (_noop, check_list_tools),
    f"{TRAE}/Run": (prepare_run, check_run),
    f"{TRAE}/ListTasks": (prepare_trae_list, check_trae_list),
    f"{TRAE}/GetTaskStatus": (prepare_completed_run, check_task_status),
    f"{TRAE}/StreamTask": (prepare_completed_run, check_stream_task),
    f"{TRAE}/StopTask": (prepare_running_run, check_stop),
    f"{AGENT}/CreateTask": (_noop, check_create_task),
    f"{AGENT}/ListTasks": (prepare_ap_list, check_ap_list),
    f"{AGENT}/GetTask": (prepare_task, check_get_task),
    f"{AGENT}/UploadArtifact": (prepare_task, check_upload),
    f"{AGENT}/ListArtifacts": (prepare_artifacts, check_list_artifacts),
    f"{AGENT}/DownloadArtifact": (prepare_download, check_download),
    f"{AGENT}/ExecuteStep": (prepare_task, check_execute_step),
    f"{AGENT}/ListSteps": (prepare_stepped, check_list_steps),
    f"{AGENT}/GetStep": (prepare_stepped, check_get_step),
    f"{AGENT}/StreamTaskEvents": (prepare_stepped, check_stream_events),
    f"{AGENT}/GetAgentStatus": (_noop, check_agent_status),
    f"{AGENT}/DeleteArtifact": (prepare_artifacts, check_delete_artifact),
    f"{AGENT}/DeleteTask": (prepare_task, check_delete_task),
    f"{AGENT}/RestartAgent": (_noop, check_restart),
}


# ---- the tests ------------------------------------------------------------------


def test_readme_covers_every_rpc(docs):
    """The README shows each RPC of both services exactly once (plus the listing and the health check), and every
    one of them has a case here."""
    rpcs = [rpc for rpc, _ in COMMANDS]
    assert len(rpcs) == len(set(rpcs)), f"RPCs shown more than once: {sorted({r for r in rpcs if rpcs.count(r) > 1})}"
    with grpc.insecure_channel(docs.stack.grpc_target) as ch:
        refl = Reflection(ch)
        served = {f"{s}/{m}" for s in (TRAE, AGENT) for m in refl.service(s).methods_by_name}
    shown = {r for r in rpcs if r.startswith((TRAE + "/", AGENT + "/"))}
    assert shown == served, f"not in the README: {sorted(served - shown)}; not served: {sorted(shown - served)}"
    assert {LIST_METHODS, HEALTH_CHECK} <= set(rpcs)
    assert set(rpcs) == set(CASES), f"README commands without a case here: {sorted(set(rpcs) - set(CASES))}"


def test_readme_parser_finds_heredocs_and_continuations():
    text = f"""{BEGIN}
```sh
# a comment
buf curl --list-methods http://{ADDRESS}
buf curl -d @- http://{ADDRESS}/a.B/C <<EOF
{{"x": 1}}
{{"y": 2}}
EOF
buf curl -d '{{}}' \\
    http://{ADDRESS}/a.B/D
```
{END}"""
    got = readme_commands(text)
    assert [r for r, _ in got] == [LIST_METHODS, "a.B/C", "a.B/D"], got
    assert got[1][1].endswith('{"y": 2}\nEOF') and got[2][1].count("\n") == 1, got


@pytest.mark.timeout(180)
@pytest.mark.parametrize("rpc,command", COMMANDS, ids=[rpc for rpc, _ in COMMANDS])
def test_readme_command(docs, buf_path, tmp_path, rpc, command):
    assert rpc in CASES, f"no case for {rpc}: add one to CASES"
    prepare, check = CASES[rpc]
    ctx = Ctx(runs=docs, tmp=tmp_path)
    prepare(ctx)
    out = run_command(command, ctx, buf_path)
    assert out.returncode == 0, f"exit {out.returncode}\n$ {command}\nstdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-2000:]}"
    if rpc == LIST_METHODS:
        check(ctx, [out.stdout])
    else:
        try:
            docs_out = json_docs(out.stdout)
        except ValueError as e:
            pytest.fail(f"output is not JSON ({e}): {out.stdout[:2000]}")
        check(ctx, docs_out)
