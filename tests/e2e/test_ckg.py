"""The `ckg` tool (issue 16): a config that lists it gets it, and a scripted
model's calls through a real agentd run find definitions in the working
directory, across languages, with "not found" as a normal answer."""

from __future__ import annotations

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

from runs_support import assert_well_formed_log, trae_config_yaml  # noqa: E402
from scripted_llm import openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

SOURCES = {
    "app/greet.py": 'class Greeter:\n    def greet(self, name):\n        return f"hi {name}"\n\n\ndef shout(s):\n    return s.upper()\n',
    "lib/counter.rs": "pub struct Counter {\n    n: u32,\n}\n\nimpl Counter {\n    pub fn bump(&mut self) {\n        self.n += 1;\n    }\n}\n",
    "web/util.ts": "export function shout(s: string): string {\n  return s.toUpperCase();\n}\n",
}


def ckg_config(runs, route) -> str:
    path = runs.configs_dir / f"{route.name}-ckg.yaml"
    text = trae_config_yaml(route.base_url).replace(
        "    enable_lakeview: false\n", "    enable_lakeview: false\n    tools: [bash, ckg, task_done]\n")
    assert "tools: [bash, ckg, task_done]" in text
    path.write_text(text)
    return str(path)


def test_a_run_finds_functions_classes_and_methods_with_ckg(runs, tmp_path):
    for rel, text in SOURCES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    route = runs.llm.route().script(
        openai_tool_call("ckg", {"command": "search_function", "path": str(tmp_path), "identifier": "shout"}),
        openai_tool_call("ckg", {"command": "search_class_method", "path": ".", "identifier": "bump",
                                 "print_body": False}),
        openai_tool_call("ckg", {"command": "search_class", "path": str(tmp_path), "identifier": "Nowhere"}),
        openai_tool_call("ckg", {"command": "search_class", "path": str(tmp_path / "missing"), "identifier": "X"}),
        openai_tool_call("task_done", {}),
    )
    task_id = runs.run("Find shout", tmp_path, config_file=ckg_config(runs, route))
    status = runs.wait_status(task_id, "completed")
    assert_well_formed_log(status["messages"], task_id)
    results = [m for m in status["messages"] if m["type"] == "tool_result"]
    assert [(r["data"]["name"], r["data"]["success"]) for r in results] == [
        ("ckg", True), ("ckg", True), ("ckg", True), ("ckg", False), ("task_done", True)], results

    found = results[0]["message"]
    assert found.startswith("Found 2 functions named shout:\n"), found
    assert f"1. {tmp_path}/app/greet.py:6-7\ndef shout(s):\n    return s.upper()\n" in found, found
    assert f"2. {tmp_path}/web/util.ts:1-3\nfunction shout(s: string): string {{" in found, found
    assert results[1]["message"] == (
        f"Found 1 class methods named bump:\n1. {tmp_path}/lib/counter.rs:6-8 within class Counter\n")
    assert results[2]["message"] == "No classes named Nowhere found."
    assert results[3]["data"]["error"] == f"Codebase path {tmp_path / 'missing'} does not exist", results[3]

    # The model was offered ckg with Trae's schema and read the answer.
    offered = {t["function"]["name"]: t["function"] for t in route.requests[0]["body"]["tools"]}
    assert list(offered) == ["bash", "ckg", "task_done"]
    assert offered["ckg"]["parameters"]["required"] == ["command", "path", "identifier"]
    answer = [m for m in route.requests[1]["body"]["messages"] if m["role"] == "tool"][-1]
    assert answer["content"] == found


def test_the_tool_list_includes_ckg(runs):
    r = requests.get(f"{runs.stack.trae_url}/api/tools", timeout=30)
    assert r.status_code == 200, r.text
    tools = {t["name"]: t for t in r.json()["tools"]}
    assert tools["ckg"]["parameters"]["properties"]["command"]["enum"] == [
        "search_function", "search_class", "search_class_method"]
