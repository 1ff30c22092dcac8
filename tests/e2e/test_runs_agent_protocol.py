"""Agent Protocol runs (issue 4): `POST /ap/v1/agent/tasks/{id}/steps`
executes one engine step and returns it with its output, the artifacts it
created or changed, and `is_last`, driven here by the official
`agent-protocol-client` exactly as agbenchmark drives an agent."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from agent_protocol_client import (  # noqa: E402
    AgentApi,
    ApiClient,
    ApiException,
    Configuration,
    Step,
    StepRequestBody,
    TaskRequestBody,
)

from helpers import AP, Reflection, assert_ap_error, error_info  # noqa: E402
from runs_support import TaskProcesses, assert_well_formed_log, long_bash, wait_file  # noqa: E402
from scripted_llm import delayed, error, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

MAX_STEP_CALLS = 10


def with_client(url: str, fn):
    async def main():
        async with ApiClient(Configuration(host=url)) as client:
            return await fn(AgentApi(client))

    return asyncio.run(main())


def ap_task(runs, task_id: str) -> dict:
    r = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_official_client_steps_until_is_last(runs):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p reports && printf 'summary v1\\n' > reports/summary.md"},
                         text="Writing the summary"),
        openai_tool_call("bash", {"command": "printf 'a,b\\n1,2\\n' > data.csv && printf 'v2\\n' >> reports/summary.md"},
                         text="Adding the data"),
        openai_tool_call("task_done", {}, text="Report ready"),
    )
    cfg = runs.config(route)
    statuses: list[str] = []

    async def scenario(api: AgentApi):
        task = await api.create_agent_task(
            task_request_body=TaskRequestBody(input="写一份报告", additional_input={"config_file": cfg, "max_steps": 10})
        )
        statuses.append(ap_task(runs, task.task_id)["status"])
        steps: list[Step] = []
        downloads = {}
        for _ in range(MAX_STEP_CALLS):
            step = await api.execute_agent_task_step(task_id=task.task_id)  # no body, as agbenchmark sends it
            assert isinstance(step, Step), "a non-200 answer makes the client return None"
            steps.append(step)
            statuses.append(ap_task(runs, task.task_id)["status"])
            # Each step's artifacts, downloaded right after the step (as agbenchmark does).
            for a in step.artifacts:
                downloads[(len(steps), a.artifact_id)] = bytes(
                    await api.download_agent_task_artifact(task_id=task.task_id, artifact_id=a.artifact_id))
            if step.is_last:
                break
        listed = await api.list_agent_task_steps(task_id=task.task_id, current_page=1, page_size=10)
        paged = [await api.list_agent_task_steps(task_id=task.task_id, current_page=p, page_size=2) for p in (1, 2)]
        got = await api.get_agent_task_step(task_id=task.task_id, step_id=steps[1].step_id)
        artifacts = await api.list_agent_task_artifacts(task_id=task.task_id, current_page=1, page_size=50)
        with pytest.raises(ApiException) as more:
            await api.execute_agent_task_step(task_id=task.task_id)
        return task, steps, downloads, listed, paged, got, artifacts, more.value

    task, steps, downloads, listed, paged, got, artifacts, more = with_client(runs.stack.ap_url, scenario)

    assert [s.is_last for s in steps] == [False, False, True], [s.is_last for s in steps]
    assert statuses == ["created", "running", "running", "completed"], statuses
    for i, s in enumerate(steps, 1):
        assert s.task_id == task.task_id and getattr(s.status, "value", s.status) == "completed", s
        assert s.additional_output["state"] == "completed", s.additional_output
        assert s.additional_output["step_number"] == i and s.additional_output["max_steps"] == 10
        assert isinstance(s.additional_output["usage"], dict), s.additional_output
    assert [s.output for s in steps] == ["Writing the summary", "Adding the data", "Report ready"]
    assert [[c["name"] for c in s.additional_output["tool_calls"]] for s in steps] == [["bash"], ["bash"], ["task_done"]]

    # Artifacts: what each step created or changed, marked agent_created.
    def files(step):
        return sorted((a.relative_path or "", a.file_name, a.agent_created) for a in step.artifacts)

    assert files(steps[0]) == [("reports", "summary.md", True)]
    assert files(steps[1]) == [("", "data.csv", True), ("reports", "summary.md", True)]
    assert files(steps[2]) == []
    got_bytes = [[(a.file_name, downloads[(i, a.artifact_id)]) for a in sorted(s.artifacts, key=lambda a: a.file_name)]
                 for i, s in enumerate(steps, 1)]
    assert got_bytes == [
        [("summary.md", b"summary v1\n")],
        [("data.csv", b"a,b\n1,2\n"), ("summary.md", b"summary v1\nv2\n")],
        [],
    ], got_bytes
    # An artifact is the file at its place in the workspace: changed by step 2,
    # it keeps the id step 1 returned (which now serves the current bytes).
    summary_ids = {a.artifact_id for s in steps for a in s.artifacts if a.file_name == "summary.md"}
    assert len(summary_ids) == 1, summary_ids
    listed_names = sorted((a.relative_path or "", a.file_name) for a in artifacts.artifacts)
    assert listed_names == [("", "data.csv"), ("reports", "summary.md")], listed_names
    assert all(a.agent_created for a in artifacts.artifacts)

    # Steps list (paginated) and get.
    assert [s.step_id for s in listed.steps] == [s.step_id for s in steps]
    assert listed.pagination.total_items == 3 and listed.pagination.total_pages == 1
    assert [s.step_id for p in paged for s in p.steps] == [s.step_id for s in steps]
    assert paged[0].pagination.total_pages == 2 and len(paged[0].steps) == 2
    assert got.step_id == steps[1].step_id and got.output == "Adding the data" and got.is_last is False
    # (that GET and list also show each step's artifacts: test_get_and_list_steps_show_the_steps_artifacts)

    # A finished task takes no more steps: 400.
    assert more.status == 400, (more.status, more.body)
    assert json.loads(more.body)["error"]["code"] == "INVALID_REQUEST"

    # The event log of a step-by-step task, readable like any other.
    events = runs.sse(task.task_id, path=f"{AP}/tasks/{task.task_id}/events")
    assert_well_formed_log(events, task.task_id)
    assert events[-2]["type"] == "complete" and events[-2]["result"] == "Report ready"
    assert [e["type"] for e in events].count("step") == 3
    assert len(route.requests) == 3


def test_artifact_ids_a_step_returned_stay_valid_after_a_later_step_changes_the_file(runs):
    """A step's artifacts are its record: a later step changing the same file
    must not turn the earlier step's artifact id into a 404 or empty the
    earlier step's artifact list."""
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "printf 'v1\\n' > notes.txt"}, text="first"),
        openai_tool_call("bash", {"command": "printf 'v2\\n' >> notes.txt"}, text="second"),
        openai_tool_call("task_done", {}, text="done"),
    )
    task = runs.stack.create_task("notes", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}"
    s1 = requests.post(f"{url}/steps", timeout=120).json()
    s2 = requests.post(f"{url}/steps", timeout=120).json()
    assert [a["file_name"] for a in s1["artifacts"]] == ["notes.txt"], s1
    assert [a["file_name"] for a in s2["artifacts"]] == ["notes.txt"], s2
    first = s1["artifacts"][0]["artifact_id"]
    r = requests.get(f"{url}/artifacts/{first}", timeout=30)
    assert r.status_code == 200, f"GET artifact {first} (returned by step 1) -> {r.status_code}: {r.text}"


def test_get_and_list_steps_show_the_steps_artifacts(runs):
    """The document's GET .../steps/{step_id} shows the step's artifacts; the
    step that created a file must keep listing it after it returned."""
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "mkdir -p out && printf 'x\\n' > out/x.txt"}, text="made x"),
    )
    task = runs.stack.create_task("x", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}"
    step = requests.post(f"{url}/steps", timeout=120).json()
    made = [(a["artifact_id"], a["relative_path"], a["file_name"]) for a in step["artifacts"]]
    assert [m[1:] for m in made] == [("out", "x.txt")], step
    got = requests.get(f"{url}/steps/{step['step_id']}", timeout=30).json()
    assert [(a["artifact_id"], a["relative_path"], a["file_name"]) for a in got["artifacts"]] == made, got
    listed = requests.get(f"{url}/steps", timeout=30).json()["steps"]
    assert [[a["artifact_id"] for a in s["artifacts"]] for s in listed] == [[made[0][0]]], listed


def test_step_input_reaches_the_model(runs):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo first"}, text="first step"),
        openai_tool_call("task_done", {}, text="done"),
    )
    cfg = runs.config(route)

    async def scenario(api: AgentApi):
        task = await api.create_agent_task(task_request_body=TaskRequestBody(input="do it", additional_input={"config_file": cfg}))
        s1 = await api.execute_agent_task_step(task_id=task.task_id)
        s2 = await api.execute_agent_task_step(task_id=task.task_id,
                                               step_request_body=StepRequestBody(input="请重点关注Q4的销售趋势"))
        return s1, s2

    s1, s2 = with_client(runs.stack.ap_url, scenario)
    assert (s1.is_last, s2.is_last) == (False, True)
    assert s2.input == "请重点关注Q4的销售趋势"
    second = json.dumps(route.requests[1]["body"]["messages"], ensure_ascii=False)
    assert "请重点关注Q4的销售趋势" in second, second[-1500:]


def test_provider_failure_is_a_502_the_task_survives(runs):
    # 500 until the retries run out (1 retry: two requests), then a working model.
    route = runs.llm.route().script(
        error(500, "model overloaded"), error(500, "model overloaded"),
        error(503, "still down"), error(503, "still down"),
        openai_tool_call("task_done", {}, text="done after the outage"))
    cfg = runs.config(route, max_retries=1)
    task = runs.stack.create_task("survives an outage", config_file=cfg)
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps"
    r = requests.post(url, json={"input": "go"}, timeout=120)
    # The AutoGPT document's table: OPENAI_API_ERROR -> 502, in the AP envelope.
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "OPENAI_API_ERROR", body
    assert "model overloaded" in body["error"]["message"] and "500" in body["error"]["message"], body
    assert body["error"]["details"]["provider"] == "openai", body
    assert body["error"]["details"]["provider_status"] == 500, body
    assert len(route.requests) == 2
    # No completed step is recorded, and the task can take the next step.
    steps = requests.get(url, timeout=30).json()
    assert steps["steps"] == [] and steps["pagination"]["total_items"] == 0, steps
    assert ap_task(runs, task["task_id"])["status"] == "running"

    # gRPC callers get UNAVAILABLE with ErrorInfo.reason OPENAI_API_ERROR.
    with grpc.insecure_channel(runs.stack.grpc_target) as ch:
        step, Req, _ = Reflection(ch).unary(ch, "agentd.agent.v1.AgentService/ExecuteStep")
        with pytest.raises(grpc.RpcError) as exc:
            step(Req(task_id=task["task_id"], input="go"), timeout=120)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
    info = error_info(exc.value)
    assert info is not None and info.reason == "OPENAI_API_ERROR", info
    assert info.metadata["provider_status"] == "503", info.metadata

    # The outage is over: the same step again, and the task completes.
    r = requests.post(url, json={"input": "go"}, timeout=120)
    assert r.status_code == 200, r.text
    step = r.json()
    assert step["is_last"] is True and step["additional_output"]["state"] == "completed", step
    assert step["additional_output"]["step_number"] == 1, step
    assert step["output"] == "done after the outage"
    assert ap_task(runs, task["task_id"])["status"] == "completed"
    # The step input reached the model once, not once per failed attempt.
    last_messages = route.requests[-1]["body"]["messages"]
    assert [m["content"] for m in last_messages if m["role"] == "user"].count("go") == 1, last_messages
    events = runs.sse(task["task_id"])
    assert_well_formed_log(events, task["task_id"])
    failed = [e for e in events if e["type"] == "step_failed"]
    assert len(failed) == 2 and "500" in failed[0]["message"] and "503" in failed[1]["message"], failed
    assert [e["type"] for e in events].count("error") == 0, [e["type"] for e in events]
    assert events[-2]["type"] == "complete", events[-2]


def test_a_step_whose_caller_hung_up_still_completes_and_is_recorded(runs):
    route = runs.llm.route().script(
        delayed(openai_tool_call("bash", {"command": "echo kept"}, text="slow model"), 1.5),
        openai_tool_call("task_done", {}, text="finished"))
    task = runs.stack.create_task("the caller goes away", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps"
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url, json={}, timeout=(10, 0.3))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = requests.get(url, timeout=30).json()
        if listed["steps"]:
            break
        time.sleep(0.1)
    assert [s["output"] for s in listed["steps"]] == ["slow model"], listed
    # The session went on from there: the next step is step 2.
    r = requests.post(url, json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["additional_output"]["step_number"] == 2 and r.json()["is_last"] is True, r.json()


def test_stepping_a_task_with_a_background_trae_run_is_409(runs, tmp_path):
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    task_id = runs.run("background", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        for base in runs.stack.urls():
            r = requests.post(f"{base}{AP}/tasks/{task_id}/steps", headers={"Content-Type": "application/json"},
                              timeout=30)
            body = assert_ap_error(r, 409, "TASK_ALREADY_RUNNING")
            assert task_id in json.dumps(body), body
        # The refused step changed nothing: still one run, still running, no step stored.
        assert runs.status(task_id)["task_status"] == "running"
        steps = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task_id}/steps", timeout=30).json()
        assert steps["steps"] == [], steps
        assert runs.stop(task_id)["message"] == "Task stopped successfully"
        assert not procs.wait_gone(), procs.survivors()
        r = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{task_id}/steps", json={}, timeout=30)
        assert_ap_error(r, 400, "INVALID_REQUEST")
    finally:
        procs.kill_leftovers()
