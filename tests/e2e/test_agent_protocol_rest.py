"""The Agent Protocol API (shared/spec/autogpt-agent-protocol-api.md, plus the
official spec's compatibility rules) over REST through Envoy: tasks, steps
and the agent status, on both listeners."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import requests

from helpers import AP, ISO_RE, assert_ap_error, assert_pagination

TASK_KEYS = {"task_id", "input", "additional_input", "status", "created_at", "modified_at", "artifacts"}

DOCUMENT_CREATE_BODY = {
    "input": "请分析这个销售数据文件并生成月度报告",
    "additional_input": {
        "priority": "high",
        "deadline": "2024-01-31T23:59:59Z",
        "context": {"department": "sales", "region": "asia-pacific"},
    },
}

NESTED = {
    "str": "text ünïcødé 报告",
    "int": 42,
    "neg": -7,
    "float": 2.5,
    "zero": 0,
    "t": True,
    "f": False,
    "none": None,
    "empty_obj": {},
    "empty_list": [],
    "list": [1, "two", 3.5, None, False, {"deep": [[], {"x": [True]}]}],
    "obj": {"a": {"b": {"c": {"d": "e"}}}},
}


def check_task(t: dict) -> None:
    assert set(t) == TASK_KEYS, t
    uuid.UUID(t["task_id"])
    assert isinstance(t["input"], str)
    assert isinstance(t["additional_input"], dict)
    assert t["status"] in {"created", "running", "completed", "failed", "stopped"}
    assert ISO_RE.match(t["created_at"]), t["created_at"]
    assert ISO_RE.match(t["modified_at"]), t["modified_at"]
    assert isinstance(t["artifacts"], list)


def list_tasks(base: str, **params) -> dict:
    r = requests.get(f"{base}{AP}/tasks", params=params, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"tasks", "pagination"}, body.keys()
    for t in body["tasks"]:
        check_task(t)
    return body


def list_all(base: str, **filters) -> list[dict]:
    """Every task the list shows with these filters, page after page."""
    out, page = [], 1
    while True:
        body = list_tasks(base, page=page, size=100, **filters)
        out += body["tasks"]
        if page >= body["pagination"]["pages"]:
            assert len(out) == body["pagination"]["total"]
            return out
        page += 1


def listed_task(base: str, task_id: str) -> dict | None:
    """The task as the list shows it, searching every page."""
    return next((t for t in list_all(base) if t["task_id"] == task_id), None)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def test_create_task_document_example(base):
    r = requests.post(f"{base}{AP}/tasks", json=DOCUMENT_CREATE_BODY, timeout=30)
    assert r.status_code == 200, r.text  # not 201: the official clients only accept 200
    assert r.headers["content-type"].startswith("application/json")
    t = r.json()
    check_task(t)
    assert t["input"] == DOCUMENT_CREATE_BODY["input"]
    assert t["additional_input"] == DOCUMENT_CREATE_BODY["additional_input"]
    assert t["status"] == "created"
    assert t["artifacts"] == []
    assert t["created_at"] == t["modified_at"]


def test_additional_input_round_trips(stack, base):
    r = requests.post(f"{base}{AP}/tasks", json={"input": "nested", "additional_input": NESTED}, timeout=30)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["additional_input"] == NESTED
    # Types survive too (True is not 1, None is not missing).
    assert created["additional_input"]["t"] is True and created["additional_input"]["none"] is None
    got = requests.get(f"{base}{AP}/tasks/{created['task_id']}", timeout=30).json()
    assert got == created
    assert listed_task(base, created["task_id"]) == created


def test_create_without_additional_input(base):
    r = requests.post(f"{base}{AP}/tasks", json={"input": "plain"}, timeout=30)
    assert r.status_code == 200, r.text
    t = r.json()
    check_task(t)
    assert t["additional_input"] == {}
    assert t["artifacts"] == []


def test_get_task(stack, base):
    created = stack.create_task("get me", priority="low")
    r = requests.get(f"{base}{AP}/tasks/{created['task_id']}", timeout=30)
    assert r.status_code == 200, r.text
    t = r.json()
    check_task(t)
    assert t == created


def test_listeners_share_one_store(stack):
    created = stack.create_task("made on the trae port", base=stack.trae_url)
    r = requests.get(f"{stack.ap_url}{AP}/tasks/{created['task_id']}", timeout=30)
    assert r.status_code == 200 and r.json() == created


def test_list_pagination_both_spellings(stack, base):
    for i in range(5):
        stack.create_task(f"page filler {i}")
    full = list_all(base)
    total = len(full)
    assert total >= 5
    assert len({t["task_id"] for t in full}) == total, "a task listed twice"

    pages = (total + 1) // 2
    for page in (1, 2, pages):
        expected = [t["task_id"] for t in full[(page - 1) * 2 : page * 2]]
        # The document's names (page/size) ...
        body = list_tasks(base, page=page, size=2)
        assert [t["task_id"] for t in body["tasks"]] == expected
        assert_pagination(body["pagination"], page, 2, total)
        # ... and the official spec's (current_page/page_size), as its client sends them.
        body = list_tasks(base, current_page=page, page_size=2)
        assert [t["task_id"] for t in body["tasks"]] == expected
        assert_pagination(body["pagination"], page, 2, total)
    # Agreeing values in both spellings are fine.
    body = list_tasks(base, page=2, current_page=2, size=2, page_size=2)
    assert [t["task_id"] for t in body["tasks"]] == [t["task_id"] for t in full[2:4]]
    # Past the end: an empty page, not an error.
    body = list_tasks(base, page=pages + 1, size=2)
    assert body["tasks"] == []
    assert_pagination(body["pagination"], pages + 1, 2, total)


def test_list_defaults(base):
    body = list_tasks(base)
    p = body["pagination"]
    assert (p["page"], p["size"], p["current_page"], p["page_size"]) == (1, 10, 1, 10)
    assert len(body["tasks"]) == min(10, p["total"])


def test_list_size_is_capped_at_100(stack, base):
    total = list_tasks(base, size=1)["pagination"]["total"]
    for i in range(max(0, 101 - total)):
        stack.create_task(f"cap filler {i}")
    for params in ({"size": 1000}, {"page_size": 1000}, {"size": 101}):
        body = list_tasks(base, **params)
        assert len(body["tasks"]) == 100, params
        p = body["pagination"]
        assert p["size"] == p["page_size"] == 100, p
        assert p["total"] == p["total_items"] >= 101
        assert p["pages"] == p["total_pages"] == (p["total"] + 99) // 100


def test_list_status_filter(stack, base):
    stack.create_task("filter me")
    # The document's example: GET /ap/v1/agent/tasks?page=1&size=10&status=running
    body = list_tasks(base, page=1, size=10, status="running")
    assert all(t["status"] == "running" for t in body["tasks"])
    assert_pagination(body["pagination"], 1, 10, body["pagination"]["total"])
    # Each status filter returns exactly the tasks in that status; together, all of them.
    total = list_tasks(base, size=1)["pagination"]["total"]
    counted = 0
    for status in ("created", "running", "completed", "failed", "stopped"):
        tasks = list_all(base, status=status)
        assert all(t["status"] == status for t in tasks), status
        counted += len(tasks)
    assert counted == total
    assert list_all(base, status="created"), "the task just created is missing"


def test_list_created_after_filter(stack, base):
    t = stack.create_task("created after")
    created = parse_iso(t["created_at"])
    total = list_tasks(base, size=1)["pagination"]["total"]

    assert list_tasks(base, created_after="2000-01-01T00:00:00Z", size=1)["pagination"]["total"] == total
    assert list_tasks(base, created_after="2999-01-01T00:00:00Z")["pagination"]["total"] == 0

    before = created - dt.timedelta(seconds=1)
    for spelling in (iso(before), before.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()):
        tasks = list_all(base, created_after=spelling)
        assert t["task_id"] in [x["task_id"] for x in tasks], spelling
        assert all(parse_iso(x["created_at"]) >= before for x in tasks)
        assert len(tasks) <= total
    # Filters combine.
    both = list_all(base, created_after=iso(before), status="created")
    assert t["task_id"] in [x["task_id"] for x in both]
    assert all(x["status"] == "created" and parse_iso(x["created_at"]) >= before for x in both)


def test_delete_task(stack, base):
    t = stack.create_task("delete me", keep=False)
    tid = t["task_id"]
    assert stack.upload(tid, "a.txt", b"alpha").status_code == 200
    assert stack.upload(tid, "b.txt", b"beta", relative_path="sub/dir").status_code == 200
    workspace = stack.data_dir / "workspaces" / tid
    assert (workspace / "a.txt").read_bytes() == b"alpha"
    assert (workspace / "sub" / "dir" / "b.txt").read_bytes() == b"beta"

    r = requests.delete(f"{base}{AP}/tasks/{tid}", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and isinstance(body["message"], str) and body["message"]

    for path in ("", "/artifacts", "/steps"):
        body = assert_ap_error(requests.get(f"{base}{AP}/tasks/{tid}{path}", timeout=30), 404, "TASK_NOT_FOUND")
        assert body["error"]["details"]["task_id"] == tid
    assert_ap_error(requests.delete(f"{base}{AP}/tasks/{tid}", timeout=30), 404, "TASK_NOT_FOUND")
    assert not workspace.exists(), list(workspace.rglob("*"))
    assert tid not in [x["task_id"] for x in stack.all_tasks()]
    assert not any(tid in p for p in stack.data_files()), "files of the deleted task remain"


def test_steps_of_a_new_task(stack, base):
    tid = stack.create_task("no steps yet")["task_id"]
    r = requests.get(f"{base}{AP}/tasks/{tid}/steps", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"steps", "pagination"}
    assert body["steps"] == []
    assert_pagination(body["pagination"], 1, 10, 0)
    # The document's example: GET /ap/v1/agent/tasks/{task_id}/steps?page=1&size=20
    body = requests.get(f"{base}{AP}/tasks/{tid}/steps?page=1&size=20", timeout=30).json()
    assert body["steps"] == []
    assert_pagination(body["pagination"], 1, 20, 0)
    body = requests.get(f"{base}{AP}/tasks/{tid}/steps?current_page=3&page_size=5", timeout=30).json()
    assert body["steps"] == []
    assert_pagination(body["pagination"], 3, 5, 0)


def test_unknown_step(stack, base):
    tid = stack.create_task("step lookup")["task_id"]
    r = requests.get(f"{base}{AP}/tasks/{tid}/steps/step-456", timeout=30)
    body = assert_ap_error(r, 404, "STEP_NOT_FOUND")
    assert body["error"]["details"]["step_id"] == "step-456"


def test_agent_status(stack, base):
    r = requests.get(f"{base}{AP}/status", timeout=30)
    assert r.status_code == 200, r.text
    s = r.json()
    doc_keys = {
        "agent_id", "status", "version", "capabilities", "active_tasks", "total_tasks", "uptime",
        "memory_usage", "api_usage",
    }
    assert doc_keys <= set(s), s.keys()
    assert isinstance(s["agent_id"], str) and s["agent_id"]
    assert s["status"] == "running"
    assert isinstance(s["version"], str) and s["version"]
    assert isinstance(s["capabilities"], list) and all(isinstance(c, str) for c in s["capabilities"])
    assert type(s["total_tasks"]) is int
    assert type(s["active_tasks"]) is int and 0 <= s["active_tasks"] <= s["total_tasks"]
    assert ISO_RE.match(s["uptime"]), s["uptime"]
    assert parse_iso(s["uptime"]) <= dt.datetime.now(dt.timezone.utc)
    mem = s["memory_usage"]
    for k in ("used", "total"):
        assert re.match(r"^\d+(\.\d+)?\s?[KMGT]?i?B$", mem[k]), mem
    usage = s["api_usage"]
    for k in ("openai_tokens_used", "openai_cost"):
        assert type(usage[k]) in (int, float) and usage[k] >= 0, usage  # numbers, not strings
    if "uptime_seconds" in s:
        assert type(s["uptime_seconds"]) in (int, float) and s["uptime_seconds"] >= 0

    # total_tasks counts the stored tasks, and follows creations and deletions.
    assert s["total_tasks"] == len(stack.all_tasks())
    t = stack.create_task("counted")
    after = requests.get(f"{base}{AP}/status", timeout=30).json()
    assert after["total_tasks"] == s["total_tasks"] + 1
    if "task_counts" in after:
        assert after["task_counts"]["created"] == s["task_counts"]["created"] + 1
        assert sum(after["task_counts"].values()) == after["total_tasks"]
    requests.delete(f"{base}{AP}/tasks/{t['task_id']}", timeout=30)
    assert requests.get(f"{base}{AP}/status", timeout=30).json()["total_tasks"] == s["total_tasks"]
