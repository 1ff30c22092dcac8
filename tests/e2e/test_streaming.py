"""Streamed model responses (issue 16): agentd asks the model to stream,
publishes the text as `llm_delta` events while it arrives, assembles the
turn (tool-call arguments split across chunks) exactly as the unstreamed
answer, and closes the connection when the task is stopped mid-stream, so
the model server stops generating. `stream: false` turns it off."""

from __future__ import annotations

import time

import pytest

pytest.register_assert_rewrite("runs_support")

from runs_support import RUN_WAIT, assert_well_formed_log  # noqa: E402
from scripted_llm import openai_stream  # noqa: E402

pytest_plugins = ["runs_support"]


def of_type(messages, kind, step=None):
    return [m for m in messages if m["type"] == kind and (step is None or m["data"]["step"] == step)]


def test_a_streamed_turn_is_published_as_it_comes_and_assembled_whole(runs, tmp_path):
    text = "Let me list the files first, and then I will finish the task."
    route = runs.llm.route().script(openai_stream(text, [("bash", {"command": "ls -la"})]))
    task_id = runs.run("List files", tmp_path, route=route)
    status = runs.wait_status(task_id, "completed")
    messages = status["messages"]
    assert_well_formed_log(messages, task_id)
    deltas = of_type(messages, "llm_delta", step=1)
    assert deltas and "".join(d["message"] for d in deltas) == text, deltas
    (response,) = of_type(messages, "llm_response", step=1)
    assert response["data"]["content"] == text
    assert max(d["seq"] for d in deltas) < response["seq"]
    (call,) = [c for c in of_type(messages, "tool_call", step=1)]
    assert (call["data"]["name"], call["data"]["arguments"]) == ("bash", {"command": "ls -la"}), call
    first = route.requests[0]["body"]
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    # Usage came with the stream.
    assert of_type(messages, "usage", step=1)[0]["data"]["usage"]["input_tokens"] == 10


def test_a_stop_mid_stream_closes_the_connection_to_the_model(runs, tmp_path):
    route = runs.llm.route().script(openai_stream("word " * 400, chunk_delay=0.05))
    task_id = runs.run("Talk for a long time", tmp_path, route=route)
    runs.wait_event(task_id, lambda m: m["type"] == "llm_delta", "the first streamed text")
    runs.stop(task_id)
    status = runs.wait_status(task_id, "stopped")
    assert not of_type(status["messages"], "llm_response")
    deadline = time.monotonic() + RUN_WAIT
    prefix = f"/r/{route.name}/"
    while time.monotonic() < deadline and not [p for p in runs.llm.disconnects if p.startswith(prefix)]:
        time.sleep(0.05)
    assert [p for p in runs.llm.disconnects if p.startswith(prefix)], "the model server never saw the stream closed"


def test_stream_false_asks_for_one_answer(runs, tmp_path):
    route = runs.llm.route().script(openai_stream("Plain answer.", [("task_done", {})]))
    cfg = runs.config(route)
    text = open(cfg).read().replace("    model: scripted-model\n", "    model: scripted-model\n    stream: false\n")
    open(cfg, "w").write(text)
    task_id = runs.run("No streaming", tmp_path, config_file=cfg)
    status = runs.wait_status(task_id, "completed")
    assert "stream" not in route.requests[0]["body"]
    assert not of_type(status["messages"], "llm_delta")
    assert of_type(status["messages"], "llm_response")[0]["data"]["content"] == "Plain answer."
