"""Budgets (issue 16): per task `max_tokens_total`, `max_cost_usd` and
`max_wall_secs`, from the run request, an Agent Protocol task's
additional_input, the Trae config or the server's flags (request wins).
Checked before each model call: the scripted model counts the calls a run
makes (each answer reports 10 input and 5 output tokens)."""

from __future__ import annotations

import requests
import pytest

pytest.register_assert_rewrite("runs_support")

from helpers import AP  # noqa: E402
from runs_support import assert_well_formed_log  # noqa: E402
from scripted_llm import openai_text, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]


def of_type(messages, kind):
    return [m for m in messages if m["type"] == kind]


def test_a_run_at_its_token_budget_stops_before_the_fourth_model_call(runs, tmp_path):
    # Three calls spend 45 tokens: the fourth is never made.
    route = runs.llm.route().script(*[openai_text(f"thinking {i}") for i in range(6)])
    task_id = runs.run("Think a lot", tmp_path, route=route, max_tokens_total=45)
    status = runs.wait_status(task_id, "failed")
    assert len(route.requests) == 3
    messages = status["messages"]
    assert_well_formed_log(messages, task_id)
    assert of_type(messages, "start")[0]["data"]["budget"] == {"max_tokens_total": 45}
    (exceeded,) = of_type(messages, "budget_exceeded")
    assert exceeded["data"] == {"step": 3, "budget": "max_tokens_total", "limit": 45, "spent": 45,
                                "next_call_at_least": 10}, exceeded
    assert exceeded["message"].startswith("Budget exceeded: max_tokens_total is 45 tokens"), exceeded
    (error,) = of_type(messages, "error")
    assert error["error"] == exceeded["message"]
    assert [m["type"] for m in messages][-3:] == ["budget_exceeded", "error", "end"]
    assert len(of_type(messages, "step")) == 3
    # The task's status shows the budget and what was spent.
    assert status["budget"] == {"max_tokens_total": 45, "tokens_used": 45, "cost_usd": 0}, status["budget"]


def test_the_request_beats_the_config_and_nonsense_is_refused(runs, tmp_path):
    route = runs.llm.route().script(openai_text("one"), openai_text("two"), openai_tool_call("task_done", {}))
    cfg = runs.config(route).replace(".yaml", "-budget.yaml")
    text = open(runs.config(route)).read().replace("    max_steps: 20\n", "    max_steps: 20\n    max_tokens_total: 15\n")
    open(cfg, "w").write(text)
    # The config alone stops the run after one call ...
    task_id = runs.run("config budget", tmp_path, config_file=cfg)
    status = runs.wait_status(task_id, "failed")
    assert len(route.requests) == 1
    assert of_type(status["messages"], "budget_exceeded")[0]["data"]["limit"] == 15
    # ... a larger one in the request lets it finish.
    route2 = runs.llm.route().script(openai_text("one"), openai_text("two"), openai_tool_call("task_done", {}))
    cfg2 = cfg.replace("-budget.yaml", "-budget2.yaml")
    open(cfg2, "w").write(text.replace(route.base_url, route2.base_url))
    task_id = runs.run("request budget", tmp_path, config_file=cfg2, max_tokens_total=1000, max_cost_usd=5)
    status = runs.wait_status(task_id, "completed")
    assert status["budget"]["max_tokens_total"] == 1000 and status["budget"]["max_cost_usd"] == 5
    assert len(route2.requests) == 3
    # No budget: no `budget` key in the status (the document's shape).
    plain = runs.run("no budget", tmp_path, route=runs.llm.route())
    assert "budget" not in runs.wait_status(plain, "completed")

    r = requests.post(f"{runs.stack.trae_url}/api/run", json={
        "task": "t", "working_dir": str(tmp_path), "max_cost_usd": 0}, timeout=30)
    assert r.status_code == 400, r.text
    assert "max_cost_usd must be a positive number" in r.json()["error"], r.text


def test_agent_protocol_budget_and_server_defaults(fresh_runs):
    runs = fresh_runs({"AGENTD_MAX_TOKENS_TOTAL": "15", "AGENTD_MAX_WALL_SECS": "3600"})
    status = requests.get(f"{runs.stack.ap_url}{AP}/status", timeout=30).json()
    assert status["default_budget"] == {"max_tokens_total": 15, "max_wall_secs": 3600}, status
    # The server's default: one step (15 tokens), then the task fails before the next call.
    route = runs.llm.route().script(openai_text("step one"), openai_text("step two"))
    task = runs.stack.create_task("budgeted", config_file=runs.config(route))
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps"
    first = requests.post(url, json={}, timeout=120)
    assert first.status_code == 200, first.text
    second = requests.post(url, json={}, timeout=120).json()
    assert second["is_last"] is True, second
    assert "Budget exceeded: max_tokens_total is 15 tokens" in second["output"], second
    assert len(route.requests) == 1
    got = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}", timeout=30).json()
    assert got["status"] == "failed", got
    # additional_input wins over the server's default.
    route = runs.llm.route().script(openai_text("one"), openai_tool_call("task_done", {}))
    task = runs.stack.create_task("bigger budget", config_file=runs.config(route), max_tokens_total="100")
    url = f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}/steps"
    for _ in range(2):
        step = requests.post(url, json={}, timeout=120).json()
    assert step["is_last"] is True and len(route.requests) == 2, step
    assert requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task['task_id']}", timeout=30).json()["status"] == "completed"
