"""The official Agent Protocol Python client (agent-protocol-client 1.1.0 from
PyPI) against agentd through Envoy: every answer must deserialize into its
pydantic models without validation errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from agent_protocol_client import (
    AgentApi,
    ApiClient,
    ApiException,
    Artifact,
    Configuration,
    Task,
    TaskArtifactsListResponse,
    TaskListResponse,
    TaskRequestBody,
    TaskStepsListResponse,
)


def run(stack, fn):
    """Runs `fn(api)` with a client whose host is Envoy's Agent Protocol listener."""

    async def main():
        async with ApiClient(Configuration(host=stack.ap_url)) as client:
            return await fn(AgentApi(client))

    return asyncio.run(main())


def test_tasks_steps_and_artifacts(stack, tmp_path):
    src = tmp_path / "notes.md"
    src.write_bytes(b"# notes\n\nfrom the official client\n")

    async def scenario(api: AgentApi):
        created = await api.create_agent_task(
            task_request_body=TaskRequestBody(input="分析销售数据", additional_input={"priority": "high", "n": [1, 2]})
        )
        listed = await api.list_agent_tasks(current_page=1, page_size=5)
        got = await api.get_agent_task(task_id=created.task_id)
        uploaded = await api.upload_agent_task_artifacts(task_id=created.task_id, file=str(src), relative_path="docs")
        artifacts = await api.list_agent_task_artifacts(task_id=created.task_id, current_page=1, page_size=10)
        downloaded = await api.download_agent_task_artifact(task_id=created.task_id, artifact_id=uploaded.artifact_id)
        steps = await api.list_agent_task_steps(task_id=created.task_id, current_page=1, page_size=10)
        got_after = await api.get_agent_task(task_id=created.task_id)
        return created, listed, got, uploaded, artifacts, bytes(downloaded), steps, got_after

    created, listed, got, uploaded, artifacts, downloaded, steps, got_after = run(stack, scenario)

    assert isinstance(created, Task)  # a 201 would have made this None
    assert created.input == "分析销售数据"
    assert created.additional_input == {"priority": "high", "n": [1, 2]}
    assert created.artifacts == []

    assert isinstance(listed, TaskListResponse)
    assert listed.pagination.current_page == 1 and listed.pagination.page_size == 5
    assert listed.pagination.total_items >= 1
    assert listed.pagination.total_pages == (listed.pagination.total_items + 4) // 5
    assert 1 <= len(listed.tasks) <= 5

    assert isinstance(got, Task) and got.task_id == created.task_id and got.input == created.input

    assert isinstance(uploaded, Artifact)
    assert (uploaded.file_name, uploaded.relative_path, uploaded.agent_created) == ("notes.md", "docs", False)

    assert isinstance(artifacts, TaskArtifactsListResponse)
    assert [a.artifact_id for a in artifacts.artifacts] == [uploaded.artifact_id]
    assert artifacts.pagination.total_items == 1 and artifacts.pagination.total_pages == 1

    assert downloaded == src.read_bytes()

    assert isinstance(steps, TaskStepsListResponse)
    assert steps.steps == [] and steps.pagination.total_items == 0

    assert [a.artifact_id for a in got_after.artifacts] == [uploaded.artifact_id]


def test_pages_through_every_task(stack):
    for i in range(3):
        stack.create_task(f"official paging {i}")

    async def scenario(api: AgentApi):
        first = await api.list_agent_tasks(current_page=1, page_size=2)
        ids = []
        for page in range(1, first.pagination.total_pages + 1):
            resp = await api.list_agent_tasks(current_page=page, page_size=2)
            assert resp.pagination.current_page == page
            ids += [t.task_id for t in resp.tasks]
        return first.pagination.total_items, ids

    total, ids = run(stack, scenario)
    assert len(ids) == total == len(set(ids))


def test_not_found_raises_api_exception_with_message(stack):
    async def scenario(api: AgentApi):
        await api.get_agent_task(task_id="no-such-task")

    with pytest.raises(ApiException) as exc:
        run(stack, scenario)
    assert exc.value.status == 404
    body = json.loads(exc.value.body)
    # The official spec's 404 schema requires a top-level `message`.
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"]["code"] == "TASK_NOT_FOUND"

    async def step(api: AgentApi):
        t = await api.create_agent_task(task_request_body=TaskRequestBody(input="x"))
        await api.get_agent_task_step(task_id=t.task_id, step_id="no-such-step")

    with pytest.raises(ApiException) as exc:
        run(stack, step)
    assert exc.value.status == 404
