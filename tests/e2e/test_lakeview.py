"""Lakeview (issue 16): with `enable_lakeview` and a `lakeview.model`, each
finished step is summarised by that second model (a summary call, then a
tags call, as Trae does) beside the run, reported as a `lakeview` event
before the run's end; its tokens count in the task's usage; a lakeview model
that fails never fails the run; `enable_lakeview: false` asks it nothing.

The lakeview model is a second route of the scripted LLM, so its requests and
the agent's are told apart by URL."""

from __future__ import annotations

import signal
import subprocess

import grpc
import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP  # noqa: E402
from runs_support import RUN_WAIT, assert_well_formed_log, wait_file  # noqa: E402
from scripted_llm import delayed, error, openai_text, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]


def of_type(messages, kind):
    return [m for m in messages if m["type"] == kind]


def summary(task_rest: str, details: str) -> dict:
    """A summary answer, going on from the prefilled `<task>The agent`."""
    return openai_text(f" {task_rest}</task><details>{details}</details>")


def two_steps(runs, wd):
    """An agent route: a bash step, then task_done."""
    return runs.llm.route().script(
        openai_tool_call("bash", {"command": "ls"}, text="Let me look."),
        openai_tool_call("task_done", {}, text="All done."),
    )


def stored_tokens(runs, task_id: str) -> tuple[float, float]:
    """The task's usage as stored (ConsoleService.GetTask)."""
    with grpc.insecure_channel(runs.stack.grpc_target) as ch:
        call, Req, _ = helpers.Reflection(ch).unary(ch, "agentd.console.v1.ConsoleService/GetTask")
        row = call(Req(task_id=task_id), timeout=30)
    return row.input_tokens, row.output_tokens


def llm_series(runs, model: str) -> dict[str, float]:
    """agentd's /metrics series of one model's calls, by name (token types apart)."""
    text = requests.get(f"http://{runs.stack.grpc_target}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("agentd_llm_") and f'model="{model}"' in line:
            name = line.split("{")[0] + ("" if "token_type" not in line else "_" + line.split('token_type="')[1].split('"')[0])
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def test_each_step_gets_its_summary_and_tags_and_their_tokens_count(runs, tmp_path):
    metrics_before = llm_series(runs, "scripted-lakeview")
    agent = two_steps(runs, tmp_path)
    lakeview = runs.llm.route().script(
        summary("is listing the files.", "It runs ls in the working directory."),
        openai_text("EXAMINE_CODE</tags>"),
        summary("is reporting that it is done.", "It calls task_done."),
        openai_text("REPORT,THINK</tags>"),
    )
    cfg = runs.config(agent, lakeview=lakeview)
    task_id = runs.run("look around", tmp_path / "wd", route=agent, config_file=cfg)
    messages = runs.wait_status(task_id, "completed")["messages"]
    assert_well_formed_log(messages, task_id)

    summaries = of_type(messages, "lakeview")
    assert [m["data"] for m in summaries] == [
        {"step": 1, "task": "The agent is listing the files.", "details": "It runs ls in the working directory.",
         "tags": ["EXAMINE_CODE"]},
        {"step": 2, "task": "The agent is reporting that it is done.", "details": "It calls task_done.",
         "tags": ["REPORT", "THINK"]},
    ], summaries
    assert summaries[0]["message"] == "The agent is listing the files. It runs ls in the working directory."
    # Both land before the run's end.
    complete = of_type(messages, "complete")[0]
    assert max(m["seq"] for m in summaries) < complete["seq"]

    # Two questions per step, to the lakeview model only; no tools, not streamed.
    asked = [r["body"] for r in lakeview.requests]
    assert len(asked) == 4 and len(agent.requests) == 2
    assert all("tools" not in b and not b.get("stream") for b in asked), asked
    assert all(b["model"] == "scripted-lakeview" and b["temperature"] == 0.1 for b in asked), asked
    first = asked[0]["messages"]
    assert "<this_step>Let me look.\n\nTool calls:\n[`bash`] `{\"command\":\"ls\"}`</this_step>" in first[0]["content"]
    assert first[-1]["role"] == "assistant" and first[-1]["content"].endswith("<task>The agent")
    assert "<previous_step>Let me look." in asked[2]["messages"][0]["content"]
    assert '<step id="1">' in asked[3]["messages"][0]["content"]

    # The lakeview calls' tokens (10 in / 5 out each, as the agent's) are the task's too.
    usage = of_type(messages, "usage")
    assert [u["data"].get("lakeview", False) for u in usage].count(True) == 4, usage
    assert usage[-1]["data"]["total"]["input_tokens"] == 60, usage[-1]
    assert stored_tokens(runs, task_id) == (60, 30)
    # /metrics counts lakeview's calls under its own model.
    after = llm_series(runs, "scripted-lakeview")
    delta = {k: v - metrics_before.get(k, 0.0) for k, v in after.items()}
    assert delta.get("agentd_llm_requests_total") == 4, after
    assert delta.get("agentd_llm_tokens_total_input") == 40, after
    assert delta.get("agentd_llm_tokens_total_output") == 20, after


def test_lakeview_tokens_count_toward_the_budget(runs, tmp_path):
    """Every call reports 10 in / 5 out. With max_tokens_total 50, the agent
    alone would take step 3 (30 spent, the next call at least 10 more); with
    step 1's two lakeview calls (30) counted, the run stops before it. Step 2's
    answer comes a second late, so step 1's summary is in by then."""
    agent = runs.llm.route().script(
        openai_tool_call("bash", {"command": "ls"}, text="Let me look."),
        delayed(openai_tool_call("bash", {"command": "pwd"}), 1.0),
        openai_tool_call("task_done", {}, text="All done."),
    )
    lakeview = runs.llm.route().script(
        summary("is listing the files.", "It runs ls."), openai_text("EXAMINE_CODE</tags>"),
        summary("is checking where it is.", "It runs pwd."), openai_text("EXAMINE_CODE</tags>"),
    )
    cfg = runs.config(agent, lakeview=lakeview)
    task_id = runs.run("look around", tmp_path / "wd", route=agent, config_file=cfg, max_tokens_total=50)
    status = runs.wait_status(task_id, {"completed", "failed"})
    assert status["task_status"] == "failed", status
    messages = status["messages"]
    (exceeded,) = of_type(messages, "budget_exceeded")
    assert exceeded["data"]["budget"] == "max_tokens_total" and exceeded["data"]["step"] == 2, exceeded
    assert len(agent.requests) == 2 and agent.remaining() == 1
    assert of_type(messages, "lakeview")[0]["data"]["step"] == 1


def test_a_failing_lakeview_model_leaves_the_run_completed(runs, tmp_path):
    agent = two_steps(runs, tmp_path)
    lakeview = runs.llm.route().script(*[error(500, "lakeview is down")] * 6)
    cfg = runs.config(agent, lakeview=lakeview, lakeview_retries=0)
    task_id = runs.run("look around", tmp_path / "wd", route=agent, config_file=cfg)
    status = runs.wait_status(task_id, {"completed", "failed"})
    assert status["task_status"] == "completed", status
    messages = status["messages"]
    assert_well_formed_log(messages, task_id)
    assert not of_type(messages, "lakeview"), messages
    assert not [m for m in messages if m["type"] == "error"], messages
    # One failed summary call per step (no tags call after it); the agent's usage only.
    assert len(lakeview.requests) == 2
    assert of_type(messages, "usage")[-1]["data"]["total"]["input_tokens"] == 20


def test_enable_lakeview_false_asks_the_lakeview_model_nothing(runs, tmp_path):
    agent = two_steps(runs, tmp_path)
    lakeview = runs.llm.route().script(summary("is idle.", "Nothing."), openai_text("THINK</tags>"))
    cfg = runs.config(agent, lakeview=lakeview, enable_lakeview=False)
    task_id = runs.run("look around", tmp_path / "wd", route=agent, config_file=cfg)
    messages = runs.wait_status(task_id, "completed")["messages"]
    assert not of_type(messages, "lakeview")
    assert not [u for u in of_type(messages, "usage") if u["data"].get("lakeview")]
    assert lakeview.requests == [] and lakeview.remaining() == 2


def test_agent_protocol_steps_are_summarised_too(runs, tmp_path):
    agent = runs.llm.route().script(openai_tool_call("task_done", {}, text="Done at once."))
    lakeview = runs.llm.route().script(summary("is finishing.", "It calls task_done."),
                                       openai_text("REPORT</tags>"))
    cfg = runs.config(agent, lakeview=lakeview)
    task_id = runs.stack.create_task("finish", config_file=cfg)["task_id"]
    r = requests.post(f"{runs.stack.ap_url}{AP}/tasks/{task_id}/steps", json={"input": "go"}, timeout=120)
    assert r.status_code == 200, r.text
    events = runs.sse(task_id)
    (lv,) = of_type(events, "lakeview")
    assert lv["data"]["tags"] == ["REPORT"] and lv["data"]["task"] == "The agent is finishing.", lv
    assert lv["seq"] < of_type(events, "end")[0]["seq"]


def test_run_follow_prints_each_steps_lakeview_line(runs, tmp_path):
    agent = two_steps(runs, tmp_path)
    lakeview = runs.llm.route().script(
        summary("is listing the files.", "It runs ls."),
        openai_text("EXAMINE_CODE</tags>"),
        summary("is done.", "It calls task_done."),
        openai_text("REPORT</tags>"),
    )
    r = subprocess.run(
        [helpers.AGENTD_BIN, "run", "look around", "--working-dir", str(tmp_path / "wd"), "--provider", "openai",
         "--config-file", runs.config(agent, lakeview=lakeview), "--follow"],
        env=helpers.clean_env() | {"AGENTD_SERVER": f"http://{runs.stack.grpc_target}"},
        capture_output=True, stdin=subprocess.DEVNULL, text=True, timeout=RUN_WAIT)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert [line for line in lines if line.startswith("lakeview ")] == [
        "lakeview step 1: 👁️EXAMINE_CODE — The agent is listing the files. It runs ls.",
        "lakeview step 2: 📣REPORT — The agent is done. It calls task_done.",
    ], lines
    # Lakeview's calls are in the totals but get no token lines of their own.
    assert len([line for line in lines if " tokens: " in line]) == 2, lines
    assert lines[-1] == "completed: All done.", lines


def test_a_resumed_run_is_summarised_too(fresh_runs, tmp_path):
    """SIGTERM in step 1's long command, then a restart: the resumed run
    gets lakeview again, so its next step is summarised."""
    runs = fresh_runs()
    wd = tmp_path / "wd"
    agent = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo $$ > bash.pid; sleep 300"}, text="Waiting."),
        openai_tool_call("task_done", {}, text="Done after the restart."),
    )
    lakeview = runs.llm.route().script(*[summary("is finishing.", "It calls task_done."),
                                         openai_text("REPORT</tags>")] * 2)
    task_id = runs.run("wait, then finish", wd, route=agent, config_file=runs.config(agent, lakeview=lakeview))
    wait_file(wd / "bash.pid")
    assert runs.stack.stop_agentd(signal.SIGTERM) == 0
    runs.stack.start_agentd()
    messages = runs.wait_status(task_id, {"completed", "failed"})["messages"]
    assert [m["type"] for m in messages].count("resumed") == 1, messages
    assert 2 in [m["data"]["step"] for m in of_type(messages, "lakeview")], messages
