"""The path a newcomer takes: agentd started exactly as `scripts/run` starts
it (`agentd serve`, no flags, in its own scratch working directory), so the
data directory is the relative default `data` and the model comes from the
default `trae_config.yaml` in that directory. Everything else in the suite
passes absolute temporary paths, which once hid a bug that refused every
Agent Protocol step under the defaults.

The scratch directory is this module's own (not pytest's tmp_path), and the
model is a scripted OpenAI-compatible server on 127.0.0.1 named by
`base_url` in that config file, as a local model server would be.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import websockets  # noqa: E402
from agent_protocol_client import AgentApi, ApiClient, Configuration, Step, TaskRequestBody  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

import helpers  # noqa: E402
from helpers import AP, Stack  # noqa: E402
from runs_support import Reader, RoutedLLM, alive, assert_well_formed_log, read_sse, trae_config_yaml  # noqa: E402
from scripted_llm import delayed, openai_text, openai_tool_call  # noqa: E402

NEWCOMER_KEY = "sk-newcomer-not-a-secret"
MAX_STEP_CALLS = 10


def config_with_key(base_url: str, **kw) -> str:
    """A Trae YAML config with the API key in the file, as a newcomer writes it."""
    text = trae_config_yaml(base_url, **kw)
    return text.replace("    provider: openai\n", f"    provider: openai\n    api_key: {NEWCOMER_KEY}\n", 1)


class Newcomer:
    def __init__(self, scratch: Path, llm: RoutedLLM):
        self.scratch = scratch
        self.llm = llm
        self.route = llm.route()
        (scratch / "trae_config.yaml").write_text(config_with_key(self.route.base_url, max_retries=0))
        self.stack = Stack(root=scratch, data_dir=scratch / "data", as_scripts_run=True)

    def start(self) -> "Newcomer":
        helpers.LIVE_STACKS.append(self.stack)
        self.stack.start()
        return self

    def stop(self) -> None:
        self.stack.stop()
        helpers.LIVE_STACKS.remove(self.stack)

    def client(self, fn):
        async def main():
            async with ApiClient(Configuration(host=self.stack.ap_url)) as c:
                return await fn(AgentApi(c))

        return asyncio.run(main())

    def create_task(self, text: str, **additional) -> str:
        r = requests.post(f"{self.stack.ap_url}{AP}/tasks", json={"input": text, "additional_input": additional},
                          timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["task_id"]

    def step(self, task_id: str, text: str = "", timeout: float = 120) -> requests.Response:
        return requests.post(f"{self.stack.ap_url}{AP}/tasks/{task_id}/steps", json={"input": text}, timeout=timeout)


@pytest.fixture(scope="module")
def llm():
    server = RoutedLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def newcomer(llm):
    scratch = Path(tempfile.mkdtemp(prefix="agentd-newcomer-"))
    n = Newcomer(scratch, llm).start()
    yield n
    n.stop()
    shutil.rmtree(scratch, ignore_errors=True)


def test_data_lives_in_the_relative_default_directory(newcomer):
    data = newcomer.scratch / "data"
    assert (data / "agentd.db").is_file(), sorted(p.name for p in data.iterdir())
    newcomer.route.script(openai_tool_call("task_done", {}, text="nothing to do"))
    task_id = newcomer.create_task("say hi")
    r = newcomer.step(task_id)
    assert r.status_code == 200, r.text
    events = read_sse(f"{newcomer.stack.trae_url}/api/tasks/{task_id}/stream")
    start = events[0]
    assert start["type"] == "start", start
    # The engine was handed the workspace as an absolute path under ./data.
    workdir = Path(start["data"]["working_dir"])
    assert workdir.is_absolute(), workdir
    assert workdir == (data / "workspaces" / task_id).resolve(), workdir


def test_official_client_steps_until_last_and_downloads_what_a_step_made(newcomer):
    newcomer.route.script(
        openai_tool_call("bash", {"command": "mkdir -p out && printf 'hello from the defaults\\n' > out/hello.txt"},
                         text="Writing hello.txt"),
        openai_tool_call("task_done", {}, text="Done"),
    )

    async def scenario(api: AgentApi):
        task = await api.create_agent_task(task_request_body=TaskRequestBody(input="write out/hello.txt"))
        steps: list[Step] = []
        downloads = {}
        for _ in range(MAX_STEP_CALLS):
            step = await api.execute_agent_task_step(task_id=task.task_id)
            assert isinstance(step, Step), "a non-200 answer makes the client return None"
            steps.append(step)
            for a in step.artifacts:
                downloads[a.file_name] = bytes(
                    await api.download_agent_task_artifact(task_id=task.task_id, artifact_id=a.artifact_id))
            if step.is_last:
                break
        listed = await api.list_agent_task_artifacts(task_id=task.task_id, current_page=1, page_size=10)
        return task, steps, downloads, listed

    task, steps, downloads, listed = newcomer.client(scenario)
    assert [s.is_last for s in steps] == [False, True], [s.output for s in steps]
    assert [s.additional_output["state"] for s in steps] == ["completed", "completed"]
    assert [(a.relative_path, a.file_name, a.agent_created) for a in steps[0].artifacts] == [("out", "hello.txt", True)]
    assert downloads == {"hello.txt": b"hello from the defaults\n"}
    assert [a.file_name for a in listed.artifacts] == ["hello.txt"]
    assert (newcomer.scratch / "data" / "workspaces" / task.task_id / "out" / "hello.txt").is_file()


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


def read_ws(ws, until, timeout: float = 60) -> tuple[list[dict], bool]:
    import json

    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"websocket: gave up after {timeout}s; got {out}"
        try:
            msg = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        except websockets.ConnectionClosed:
            return out, True
        out.append(msg)
        if until(msg):
            return out, False


def test_websocket_streams_of_a_stepped_task(newcomer):
    newcomer.route.script(
        delayed(openai_tool_call("bash", {"command": "echo one"}, text="first"), 0.3),
        delayed(openai_tool_call("task_done", {}, text="second"), 0.3),
    )
    task_id = newcomer.create_task("two steps, watched")
    with connect(ws_url(newcomer.stack.ap_url, f"{AP}/logs/ws"), open_timeout=10, close_timeout=5,
                 proxy=None) as logs, \
            connect(ws_url(newcomer.stack.ap_url, f"{AP}/tasks/{task_id}/ws"), open_timeout=10, close_timeout=5,
                    proxy=None) as task_ws:
        logs_reader = Reader(lambda: read_ws(logs, until=lambda m: m.get("task_id") == task_id
                                             and m.get("event") == "end"))
        updates_reader = Reader(lambda: read_ws(task_ws, until=lambda m: False))
        logs_reader.start()
        updates_reader.start()
        time.sleep(0.3)  # both sockets subscribed before the first step
        for _ in range(MAX_STEP_CALLS):
            r = newcomer.step(task_id)
            assert r.status_code == 200, r.text
            if r.json()["is_last"]:
                break
        log_msgs, _ = logs_reader.result()
        updates, closed = updates_reader.result()
    assert closed, "the task socket did not close after the task ended"
    events = read_sse(f"{newcomer.stack.ap_url}{AP}/tasks/{task_id}/events")
    assert_well_formed_log(events, task_id)
    mine = [m for m in log_msgs if m.get("task_id") == task_id]
    assert [(m["seq"], m["event"]) for m in mine] == [(e["seq"], e["type"]) for e in events], mine
    assert updates[-1]["status"] == "completed" and updates[-1]["event"] == "end", updates[-1]
    assert [u["seq"] for u in updates[1:]] == [e["seq"] for e in events[updates[1]["seq"] - 1:]], updates


def test_max_tokens_reaches_an_openai_compatible_server(newcomer):
    newcomer.route.script(openai_tool_call("task_done", {}, text="short"))
    before = len(newcomer.route.requests)
    task_id = newcomer.create_task("check the token limit")
    assert newcomer.step(task_id).status_code == 200
    body = newcomer.route.requests[before]["body"]
    # A base_url that is not OpenAI's own API gets the field such servers read.
    assert body.get("max_tokens") == 1024, body
    assert "max_completion_tokens" not in body, body


def test_a_hung_model_fails_the_step_in_time_and_the_task_goes_on(newcomer, llm):
    hung = llm.route().script(delayed(openai_text("far too late"), 60),
                              openai_tool_call("task_done", {}, text="answered this time"))
    # A relative config_file: looked for in agentd's start directory.
    (newcomer.scratch / "hung.yaml").write_text(
        config_with_key(hung.base_url, max_retries=0) + "    timeout: 2\n")
    task_id = newcomer.create_task("a model server that hangs", config_file="hung.yaml")
    started = time.monotonic()
    r = newcomer.step(task_id, "go")
    waited = time.monotonic() - started
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "OPENAI_API_ERROR", body
    assert "timed out" in body["error"]["message"], body
    # agentd answered itself, long before the hung server would have.
    assert waited < 50, waited
    # The next step goes on with the same session.
    r = newcomer.step(task_id, "go")
    assert r.status_code == 200, r.text
    assert r.json()["is_last"] is True and r.json()["output"] == "answered this time", r.json()
    status = requests.get(f"{newcomer.stack.ap_url}{AP}/tasks/{task_id}", timeout=30).json()["status"]
    assert status == "completed"


def test_ctrl_c_then_the_next_start_goes_on_with_every_running_task(newcomer):
    """Ctrl-C (SIGINT) while an Agent Protocol task is between steps and a
    Trae run is in a long command: agentd ends the command and exits; the
    next start, with the same defaults, resumes the Trae run from its
    checkpoint (its config is the relative default `trae_config.yaml`
    again) and the task's next step continues its conversation."""
    wd = newcomer.scratch / "trae-wd"
    newcomer.route.script(
        openai_tool_call("bash", {"command": "echo one > notes.txt"}, text="step one"),
        openai_tool_call("bash", {"command": "echo $$ > bash.pid; sleep 300"}, text="sleeping"),
        openai_tool_call("task_done", {}, text="trae run done"),
        openai_tool_call("task_done", {}, text="notes done"),
    )
    task_id = newcomer.create_task("keep notes")
    assert newcomer.step(task_id).status_code == 200
    r = requests.post(f"{newcomer.stack.trae_url}/api/run", json={"task": "sleep a while", "working_dir": str(wd)},
                      timeout=30)
    assert r.status_code == 200, r.text
    run_id = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while not (wd / "bash.pid").is_file() or not (wd / "bash.pid").read_text().strip():
        assert time.monotonic() < deadline, "the long command did not start"
        time.sleep(0.05)
    sleeper = int((wd / "bash.pid").read_text())

    assert newcomer.stack.stop_agentd(signal.SIGINT) == 0
    assert not alive(sleeper), "the Trae run's command outlived agentd"
    newcomer.stack.start_agentd()

    deadline = time.monotonic() + 60
    while (st := requests.get(f"{newcomer.stack.trae_url}/api/tasks/{run_id}/status", timeout=30).json())[
            "task_status"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st["task_status"] == "completed", st
    types = [m["type"] for m in st["messages"]]
    assert types.count("start") == 1 and "resumed" in types and types[-1] == "end", types
    second = newcomer.step(task_id, "finish")
    assert second.status_code == 200, second.text
    assert second.json()["output"] == "notes done" and second.json()["is_last"] is True, second.json()
    assert "step one" in str(newcomer.route.requests[-1]["body"]["messages"])


def test_a_symlinked_data_directory_works_like_a_real_one(llm):
    scratch = Path(tempfile.mkdtemp(prefix="agentd-newcomer-link-"))
    try:
        real = scratch / "elsewhere" / "agentd-data"
        real.mkdir(parents=True)
        os.symlink(real, scratch / "data")
        n = Newcomer(scratch, llm).start()
        try:
            n.route.script(openai_tool_call("bash", {"command": "printf x > made.txt"}, text="making"),
                           openai_tool_call("task_done", {}, text="made"))
            task_id = n.create_task("through a symlink")
            outs = [n.step(task_id) for _ in range(2)]
            assert [o.status_code for o in outs] == [200, 200], [o.text for o in outs]
            assert [a["file_name"] for a in outs[0].json()["artifacts"]] == ["made.txt"], outs[0].json()
            assert (real / "workspaces" / task_id / "made.txt").read_text() == "x"
            art = outs[0].json()["artifacts"][0]["artifact_id"]
            got = requests.get(f"{n.stack.ap_url}{AP}/tasks/{task_id}/artifacts/{art}", timeout=30)
            assert got.status_code == 200 and got.content == b"x", got.text
        finally:
            n.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("env, wanted", [
    ({"AGENTD_DATA_DIR": "~someone-else/data"}, "`~user` paths are not supported"),
    ({"AGENTD_DATA_DIR": "data", "AGENTD_ALLOWED_ROOTS": "no/such/root"}, "allowed root"),
    ({"AGENTD_API_KEYS_FILE": "missing-keys.txt"}, "missing-keys.txt"),
])
def test_a_path_that_cannot_be_resolved_stops_the_start(env, wanted, tmp_path):
    port = helpers.free_port()
    proc = subprocess.run(
        [helpers.AGENTD_BIN, "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=helpers.clean_env() | {"AGENTD_LISTEN": f"127.0.0.1:{port}"} | env, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert wanted in proc.stderr, proc.stderr
    # Resolved against the start directory, and named in full.
    if "KEYS" in next(iter(env)):
        assert str(tmp_path / "missing-keys.txt") in proc.stderr, proc.stderr
