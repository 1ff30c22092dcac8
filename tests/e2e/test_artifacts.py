"""Artifacts over REST through Envoy: multipart upload (parts in any order,
relative_path as form field or query parameter, directory and full-path
semantics), list, download, delete; checked against the files on disk."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import requests

from helpers import AP, ISO_RE, MultipartFile, assert_ap_error, assert_pagination

ARTIFACT_KEYS = {"artifact_id", "file_name", "relative_path", "file_size", "created_at", "agent_created"}
SALES_CSV = b"month,region,amount\n2024-01,asia-pacific,1024000\n2024-02,emea,2048000\n"


def check_artifact(a: dict, file_name: str, relative_path: str, size: int) -> None:
    assert set(a) == ARTIFACT_KEYS, a
    uuid.UUID(a["artifact_id"])
    assert a["file_name"] == file_name
    assert a["relative_path"] == relative_path
    assert type(a["file_size"]) is int and a["file_size"] == size
    assert ISO_RE.match(a["created_at"]), a
    assert a["agent_created"] is False


def workspace(stack, task_id: str) -> Path:
    return stack.data_dir / "workspaces" / task_id


def upload_ordered(base: str, task_id: str, tmp_path: Path, name: str, data: bytes, before=(), after=(), query=""):
    """A multipart upload with the form fields placed before or after the file part."""
    src = tmp_path / f"src-{uuid.uuid4().hex}"
    src.write_bytes(data)
    body = MultipartFile(src, name, fields_before=before, fields_after=after)
    return requests.post(
        f"{base}{AP}/tasks/{task_id}/artifacts{query}", data=body, headers=body.headers(), timeout=60
    )


def test_upload_document_example_full_path(stack, base, task):
    # file: (binary data); relative_path: data/sales_data.csv
    tid = task["task_id"]
    r = requests.post(
        f"{base}{AP}/tasks/{tid}/artifacts",
        files={"file": ("sales_data.csv", SALES_CSV, "text/csv")},
        data={"relative_path": "data/sales_data.csv"},
        timeout=60,
    )
    assert r.status_code == 200, r.text  # not 201
    a = r.json()
    check_artifact(a, "sales_data.csv", "data/sales_data.csv", len(SALES_CSV))
    # The path names the file itself: it lands at data/sales_data.csv, not data/sales_data.csv/sales_data.csv.
    assert (workspace(stack, tid) / "data" / "sales_data.csv").read_bytes() == SALES_CSV
    assert sorted(p.name for p in workspace(stack, tid).rglob("*") if p.is_file()) == ["sales_data.csv"]


def test_upload_directory_semantics(stack, base, task):
    tid = task["task_id"]
    r = stack.upload(tid, "report.pdf", b"%PDF-1.4 fake", relative_path="reports/2024", base=base)
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "report.pdf", "reports/2024", 13)
    assert (workspace(stack, tid) / "reports" / "2024" / "report.pdf").read_bytes() == b"%PDF-1.4 fake"


def test_upload_to_workspace_root(stack, base, task):
    tid = task["task_id"]
    r = stack.upload(tid, "root.txt", b"at the root", base=base)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["relative_path"] in ("", None)
    check_artifact(a, "root.txt", a["relative_path"], 11)
    assert (workspace(stack, tid) / "root.txt").read_bytes() == b"at the root"


def test_parts_in_any_order(stack, base, task, tmp_path):
    tid = task["task_id"]
    # relative_path before the file (what the official client sends) ...
    r = upload_ordered(base, tid, tmp_path, "first.txt", b"one", before=[("relative_path", "before")])
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "first.txt", "before", 3)
    # ... and after it.
    r = upload_ordered(base, tid, tmp_path, "second.txt", b"two", after=[("relative_path", "after")])
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "second.txt", "after", 3)
    # Unknown extra parts are ignored.
    r = upload_ordered(
        base, tid, tmp_path, "third.txt", b"three", before=[("comment", "x")], after=[("relative_path", "x/y")]
    )
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "third.txt", "x/y", 5)
    ws = workspace(stack, tid)
    assert (ws / "before" / "first.txt").read_bytes() == b"one"
    assert (ws / "after" / "second.txt").read_bytes() == b"two"
    assert (ws / "x" / "y" / "third.txt").read_bytes() == b"three"


def test_relative_path_as_query_parameter(stack, base, task, tmp_path):
    tid = task["task_id"]
    r = upload_ordered(base, tid, tmp_path, "q.txt", b"query", query="?relative_path=from/query")
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "q.txt", "from/query", 5)
    assert (workspace(stack, tid) / "from" / "query" / "q.txt").read_bytes() == b"query"
    # Full-path semantics work from the query too.
    r = upload_ordered(base, tid, tmp_path, "sales_data.csv", SALES_CSV, query="?relative_path=data/sales_data.csv")
    assert r.status_code == 200, r.text
    check_artifact(r.json(), "sales_data.csv", "data/sales_data.csv", len(SALES_CSV))
    assert (workspace(stack, tid) / "data" / "sales_data.csv").read_bytes() == SALES_CSV


def test_list_artifacts_paginated(stack, base, task):
    tid = task["task_id"]
    uploaded = []
    for i in range(3):
        r = stack.upload(tid, f"f{i}.txt", f"content {i}".encode(), relative_path="list")
        assert r.status_code == 200, r.text
        uploaded.append(r.json())

    # The document's example: GET /ap/v1/agent/tasks/{task_id}/artifacts
    r = requests.get(f"{base}{AP}/tasks/{tid}/artifacts", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"artifacts", "pagination"}
    assert_pagination(body["pagination"], 1, 10, 3)
    by_id = {a["artifact_id"]: a for a in body["artifacts"]}
    assert by_id == {a["artifact_id"]: a for a in uploaded}
    for a in body["artifacts"]:
        check_artifact(a, a["file_name"], "list", 9)

    seen = []
    for page in (1, 2):
        for params in ({"page": page, "size": 2}, {"current_page": page, "page_size": 2}):
            body = requests.get(f"{base}{AP}/tasks/{tid}/artifacts", params=params, timeout=30).json()
            assert_pagination(body["pagination"], page, 2, 3)
            assert len(body["artifacts"]) == (2 if page == 1 else 1)
        seen += [a["artifact_id"] for a in body["artifacts"]]
    assert sorted(seen) == sorted(by_id)

    # The task shows its artifacts too.
    t = requests.get(f"{base}{AP}/tasks/{tid}", timeout=30).json()
    assert {a["artifact_id"]: a for a in t["artifacts"]} == by_id


def test_download(stack, base, task):
    tid = task["task_id"]
    data = bytes(range(256)) * 1000 + b"\r\n--not-a-boundary--\r\n"
    a = stack.upload(tid, "sales_data.csv", data, relative_path="data").json()
    # GET /ap/v1/agent/tasks/{task_id}/artifacts/{artifact_id}
    r = requests.get(f"{base}{AP}/tasks/{tid}/artifacts/{a['artifact_id']}", timeout=60)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="sales_data.csv"'
    assert r.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()
    # The official client sends Accept: application/json; that must not change anything.
    r = requests.get(
        f"{base}{AP}/tasks/{tid}/artifacts/{a['artifact_id']}", headers={"Accept": "application/json"}, timeout=60
    )
    assert r.status_code == 200 and r.content == data


def test_download_empty_and_non_ascii_names(stack, base, task):
    tid = task["task_id"]
    empty = stack.upload(tid, "empty.bin", b"").json()
    assert empty["file_size"] == 0
    r = requests.get(f"{base}{AP}/tasks/{tid}/artifacts/{empty['artifact_id']}", timeout=30)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-disposition"] == 'attachment; filename="empty.bin"'

    report = stack.upload(tid, "报告 1.txt", "月度报告".encode()).json()
    assert report["file_name"] == "报告 1.txt"
    r = requests.get(f"{base}{AP}/tasks/{tid}/artifacts/{report['artifact_id']}", timeout=30)
    assert r.status_code == 200 and r.content.decode() == "月度报告"
    cd = r.headers["content-disposition"]
    assert cd.startswith("attachment; filename=\"") and cd.isascii(), cd
    assert "filename*=UTF-8''%E6%8A%A5%E5%91%8A%201.txt" in cd, cd


def test_delete_artifact(stack, base, task):
    tid = task["task_id"]
    keep = stack.upload(tid, "keep.txt", b"keep").json()
    gone = stack.upload(tid, "gone.txt", b"gone", relative_path="d").json()
    path = workspace(stack, tid) / "d" / "gone.txt"
    assert path.read_bytes() == b"gone"

    # DELETE /ap/v1/agent/tasks/{task_id}/artifacts/{artifact_id}
    r = requests.delete(f"{base}{AP}/tasks/{tid}/artifacts/{gone['artifact_id']}", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and isinstance(body["message"], str) and body["message"]

    assert not path.exists()
    for method in (requests.get, requests.delete):
        body = assert_ap_error(
            method(f"{base}{AP}/tasks/{tid}/artifacts/{gone['artifact_id']}", timeout=30), 404, "ARTIFACT_NOT_FOUND"
        )
        assert body["error"]["details"]["artifact_id"] == gone["artifact_id"]
    assert [a["artifact_id"] for a in stack.artifacts(tid)] == [keep["artifact_id"]]
    t = requests.get(f"{base}{AP}/tasks/{tid}", timeout=30).json()
    assert [a["artifact_id"] for a in t["artifacts"]] == [keep["artifact_id"]]
    assert (workspace(stack, tid) / "keep.txt").read_bytes() == b"keep"
