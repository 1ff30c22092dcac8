"""Keys are tenants (issue 18, items 2 and 3): a task belongs to the key that
created it. Another key gets 404 (never 403) for it on every endpoint of both
dialects, over gRPC and on both WebSockets; lists and counts show only the
caller's tasks; an admin key sees everything. The keys file (names, roles,
digests) is read again on SIGHUP. Creations, stops and deletions are audited
by key name in the log and in /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import time

import grpc
import pytest
import requests
import websockets

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, assert_ap_error, assert_trae_error  # noqa: E402
from runs_support import alive, long_bash, start_runs, wait_file, _stop  # noqa: E402

pytest_plugins = ["runs_support"]

ALICE, BOB, ROOT, CAROL = "alice-key-5b0e71c2", "bob-key-91fd03aa", "root-key-e3c8d4f1", "carol-key-0a77b9e2"


def keys_yaml(*entries: tuple[str, str, str]) -> str:
    out = "# test tenants\n"
    for name, key, role in entries:
        if name == "bob":  # one key given by its digest only
            out += f"- name: {name}\n  key_sha256: {hashlib.sha256(key.encode()).hexdigest()}\n  role: {role}\n"
        else:
            out += f"- name: {name}\n  key: {key}\n  role: {role}\n"
    return out


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, runs_llm):
    root = tmp_path_factory.mktemp("tenants")
    keys = root / "keys.yaml"
    keys.write_text(keys_yaml(("alice", ALICE, "user"), ("bob", BOB, "user"), ("root", ROOT, "admin")))
    runs = start_runs(root, runs_llm, {"AGENTD_API_KEYS_FILE": str(keys)})
    runs.keys_file = keys
    yield runs
    _stop(runs)


def h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def create(stack, key: str, text: str = "owned") -> str:
    r = requests.post(f"{stack.ap_url}{AP}/tasks", json={"input": text}, headers=h(key), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def test_another_keys_task_is_not_found_on_every_rest_endpoint(tenants):
    s = tenants.stack
    task_id = create(s, ALICE)
    ap, tr = f"{s.ap_url}{AP}/tasks/{task_id}", f"{s.trae_url}/api/tasks/{task_id}"
    files = {"file": ("a.txt", b"alice's bytes")}
    r = requests.post(f"{ap}/artifacts", files=files, headers=h(ALICE), timeout=30)
    assert r.status_code == 200, r.text
    artifact_id = r.json()["artifact_id"]

    calls = [
        ("get", ap, {}), ("get", f"{ap}/steps", {}), ("post", f"{ap}/steps", {"json": {"input": "x"}}),
        ("get", f"{ap}/steps/nope", {}), ("get", f"{ap}/artifacts", {}),
        ("post", f"{ap}/artifacts", {"files": files}), ("get", f"{ap}/artifacts/{artifact_id}", {}),
        ("get", f"{ap}/events", {}), ("delete", ap, {}),
    ]
    for method, url, kw in calls:
        r = requests.request(method, url, headers=h(BOB), timeout=30, **kw)
        body = assert_ap_error(r, 404, None)
        assert task_id in body["message"] or "not found" in body["message"].lower(), (method, url, body)
    for method, url in [("get", f"{tr}/status"), ("get", f"{tr}/stream"), ("post", f"{tr}/stop")]:
        assert_trae_error(requests.request(method, url, headers=h(BOB), timeout=30), 404)

    # Nothing was changed by the refused calls; the owner and the admin see it all.
    for key in (ALICE, ROOT):
        r = requests.get(ap, headers=h(key), timeout=30)
        assert r.status_code == 200 and r.json()["task_id"] == task_id, r.text
        r = requests.get(f"{ap}/artifacts/{artifact_id}", headers=h(key), timeout=30)
        assert r.status_code == 200 and r.content == b"alice's bytes"
        assert requests.get(f"{tr}/status", headers=h(key), timeout=30).status_code == 200


def test_lists_and_counts_are_per_key_and_the_admin_sees_all(tenants):
    s = tenants.stack
    mine = {create(s, ALICE, "a1"), create(s, ALICE, "a2")}
    theirs = {create(s, BOB, "b1")}

    def listed(key, url, field):
        r = requests.get(url, headers=h(key), params={"page_size": 100} if "/ap/" in url else {"limit": 100}, timeout=30)
        assert r.status_code == 200, r.text
        return {t["task_id"] for t in r.json()[field]}

    ap_list, trae_list = f"{s.ap_url}{AP}/tasks", f"{s.trae_url}/api/tasks"
    for url, field in [(ap_list, "tasks"), (trae_list, "active_tasks")]:
        alice, bob, root = listed(ALICE, url, field), listed(BOB, url, field), listed(ROOT, url, field)
        assert mine <= alice and not (theirs & alice), url
        assert theirs <= bob and not (mine & bob), url
        assert mine | theirs <= root, url

    def total(key):
        r = requests.get(f"{s.ap_url}{AP}/status", headers=h(key), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["total_tasks"]

    r = requests.get(ap_list, headers=h(BOB), timeout=30)
    assert r.json()["pagination"]["total_items"] == total(BOB) == len(listed(BOB, ap_list, "tasks"))
    assert total(ROOT) >= total(ALICE) + total(BOB)


def test_grpc_and_websockets_refuse_another_keys_task(tenants):
    s = tenants.stack
    task_id = create(s, ALICE)
    with grpc.insecure_channel(s.grpc_target) as raw:
        refl = helpers.Reflection(grpc.intercept_channel(raw, helpers.AddKey(ROOT)))
        for key, expected in [(BOB, grpc.StatusCode.NOT_FOUND), (ALICE, None)]:
            ch = grpc.intercept_channel(raw, helpers.AddKey(key))
            for method in ["agentd.agent.v1.AgentService/GetTask", "agentd.trae.v1.TraeService/GetTaskStatus"]:
                call, Req, _ = refl.unary(ch, method)
                if expected is None:
                    assert call(Req(task_id=task_id), timeout=10)
                    continue
                with pytest.raises(grpc.RpcError) as err:
                    call(Req(task_id=task_id), timeout=10)
                assert err.value.code() == expected, method
            service, _, name = "agentd.agent.v1.AgentService/StreamTaskEvents".partition("/")
            m = refl.service(service).methods_by_name[name]
            Req = refl.message_class(m.input_type.full_name)
            Resp = refl.message_class(m.output_type.full_name)
            stream = ch.unary_stream(f"/{service}/{name}", request_serializer=Req.SerializeToString,
                                     response_deserializer=Resp.FromString)(Req(task_id=task_id), timeout=10)
            if expected is None:
                stream.cancel()
                continue
            with pytest.raises(grpc.RpcError) as err:
                next(iter(stream))
            assert err.value.code() == expected

    ws = s.ap_url.replace("http://", "ws://")

    async def refused(path, key):
        try:
            async with websockets.connect(f"{ws}{path}", additional_headers=h(key), open_timeout=10):
                return None
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    assert asyncio.run(refused(f"{AP}/tasks/{task_id}/ws", BOB)) == 404
    assert asyncio.run(refused(f"{AP}/tasks/{task_id}/ws", ALICE)) is None


def test_the_logs_websocket_carries_only_the_callers_tasks_and_stops_are_owned(tenants, tmp_path):
    s = tenants.stack
    route = tenants.llm.route().script(long_bash())
    body = {"task": "alice runs", "working_dir": str(tmp_path / "wd"), "provider": "openai",
            "config_file": tenants.config(route)}
    ws = s.ap_url.replace("http://", "ws://")

    async def scenario():
        async with websockets.connect(f"{ws}{AP}/logs/ws", additional_headers=h(BOB), open_timeout=10) as bob_ws, \
                websockets.connect(f"{ws}{AP}/logs/ws", additional_headers=h(ALICE), open_timeout=10) as alice_ws:
            r = requests.post(f"{s.trae_url}/api/run", json=body, headers=h(ALICE), timeout=30)
            assert r.status_code == 200, r.text
            task_id = r.json()["task_id"]
            seen_by_alice = []
            while not any(m.get("task_id") == task_id for m in seen_by_alice):
                seen_by_alice.append(json.loads(await asyncio.wait_for(alice_ws.recv(), 30)))
            bash = int(wait_file(tmp_path / "wd" / "bash.pid"))
            # Bob's stop is a 404 and changes nothing.
            assert_trae_error(requests.post(f"{s.trae_url}/api/tasks/{task_id}/stop", headers=h(BOB), timeout=30), 404)
            assert alive(bash)
            r = requests.post(f"{s.trae_url}/api/tasks/{task_id}/stop", headers=h(ALICE), timeout=60)
            assert r.json()["message"] == "Task stopped successfully", r.text
            deadline = time.monotonic() + 10
            while alive(bash) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(bash)
            # Alice's stream got her run's events; Bob's got none of them.
            bob_saw = []
            try:
                while True:
                    bob_saw.append(json.loads(await asyncio.wait_for(bob_ws.recv(), 1.5)))
            except asyncio.TimeoutError:
                pass
            assert not [m for m in bob_saw if m.get("task_id") == task_id], bob_saw
            return task_id

    task_id = asyncio.run(scenario())
    requests.delete(f"{s.ap_url}{AP}/tasks/{task_id}", headers=h(ALICE), timeout=30)
    # Audit: who created, stopped and deleted what.
    log = re.sub(r"\x1b\[[0-9;]*m", "", s.agentd_log.read_text()).replace('"', "")
    for action in ("create", "stop", "delete"):
        assert any(
            "agentd::audit" in line and "key=alice" in line and f"action={action}" in line and task_id in line
            for line in log.splitlines()
        ), f"no audit line for {action}"
    metrics = requests.get(f"http://{s.grpc_target}/metrics", headers=h(ROOT), timeout=30).text
    assert 'agentd_audit_actions_total{key="alice",action="delete"}' in metrics.replace(" ", "") or \
        'audit_actions_total{key="alice",action="delete"}' in metrics, metrics[-2000:]


def test_the_keys_file_reloads_on_sighup(tenants):
    s = tenants.stack
    url = f"{s.ap_url}{AP}/tasks"
    assert_ap_error(requests.get(url, headers=h(CAROL), timeout=30), 401, "UNAUTHENTICATED")
    original = tenants.keys_file.read_text()
    try:
        tenants.keys_file.write_text(keys_yaml(("alice", ALICE, "user"), ("bob", BOB, "user"),
                                               ("root", ROOT, "admin"), ("carol", CAROL, "user")))
        os.kill(s.agentd.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while requests.get(url, headers=h(CAROL), timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "carol's key was not taken"
            time.sleep(0.1)
        # A broken file keeps the keys in force.
        tenants.keys_file.write_text("- name: carol\n")
        os.kill(s.agentd.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert requests.get(url, headers=h(CAROL), timeout=30).status_code == 200
        assert "API keys not reloaded" in s.agentd_log.read_text()
    finally:
        tenants.keys_file.write_text(original)
        os.kill(s.agentd.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while requests.get(url, headers=h(CAROL), timeout=30).status_code != 401:
        assert time.monotonic() < deadline, "carol's key outlived its removal"
        time.sleep(0.1)
