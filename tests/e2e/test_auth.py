"""API keys on all four transports (REST through Envoy, gRPC, gRPC-Web,
WebSockets), health checks open, and the per-client rate limit."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import requests
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

import helpers
from helpers import AP, Reflection, assert_ap_error, assert_trae_error, grpc_web_frame, grpc_web_frames, parse_trailers

KEY = "agentd-test-key-6d1f"
OTHER_KEY = "agentd-second-key-93a2"
AGENT = "agentd.agent.v1.AgentService"


def _stack(tmp_path_factory, name, **env) -> helpers.Stack:
    root = tmp_path_factory.mktemp(name)
    paths = helpers.write_trae_configs(root)
    s = helpers.Stack(root=root, data_dir=root / "data", env=helpers.config_env(paths) | env, config_paths=paths)
    return s.start()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    s = _stack(tmp_path_factory, "auth", AGENTD_API_KEYS=f"{KEY},{OTHER_KEY}")
    yield s
    s.stop()


def bearer(key=KEY):
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- REST

@pytest.mark.parametrize("port", ["trae_url", "ap_url"])
def test_rest_needs_a_key(keyed, port):
    base = getattr(keyed, port)
    r = requests.post(f"{base}{AP}/tasks", json={"input": "x"}, timeout=30)
    body = assert_ap_error(r, 401, "UNAUTHENTICATED")
    assert "missing API key" in body["message"]
    assert_ap_error(requests.get(f"{base}{AP}/tasks", headers=bearer("wrong"), timeout=30), 401, "UNAUTHENTICATED")
    assert_trae_error(requests.get(f"{base}/api/tasks", timeout=30), 401)
    assert_trae_error(requests.get(f"{base}/api/config", headers={"X-API-Key": "nope"}, timeout=30), 401)

    # Either header, either key.
    r = requests.post(f"{base}{AP}/tasks", json={"input": "x"}, headers=bearer(), timeout=30)
    assert r.status_code == 200, r.text
    r = requests.get(f"{base}/api/tasks", headers={"X-API-Key": OTHER_KEY}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "success"


def test_health_needs_no_key(keyed):
    r = requests.get(f"{keyed.trae_url}/api/health", timeout=30)
    assert r.json() == {"status": "healthy", "message": "Trae Agent API is running"}
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_keys_never_echoed(keyed):
    r = requests.get(f"{keyed.ap_url}{AP}/tasks", headers=bearer("sk-guess-" + KEY[:5]), timeout=30)
    assert KEY not in r.text and "sk-guess" not in r.text
    assert KEY not in keyed.logs()


# ---------------------------------------------------------------- gRPC

@pytest.mark.parametrize("via", ["agentd", "envoy"])
def test_grpc_needs_a_key(keyed, via):
    target = keyed.grpc_target if via == "agentd" else keyed.envoy_grpc_target
    with grpc.insecure_channel(target) as raw:
        # Reflection too is behind the key.
        with pytest.raises(grpc.RpcError) as err:
            Reflection(raw).list_services()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ch = grpc.intercept_channel(raw, helpers.AddKey(KEY))
        refl = Reflection(ch)
        call, Req, _ = refl.unary(ch, f"{AGENT}/CreateTask")
        assert call(Req(input="via grpc"), timeout=10).status == "created"
        bare, Req, _ = refl.unary(raw, f"{AGENT}/CreateTask")
        with pytest.raises(grpc.RpcError) as err:
            bare(Req(input="no key"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            bare(Req(input="bad key"), timeout=10, metadata=[("x-api-key", "wrong")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert bare(Req(input="x-api-key"), timeout=10, metadata=[("x-api-key", OTHER_KEY)]).task_id


# ---------------------------------------------------------------- gRPC-Web

@pytest.mark.parametrize("via", ["envoy", "agentd"])
def test_grpc_web_needs_a_key(keyed, via):
    url = keyed.trae_url if via == "envoy" else f"http://{keyed.grpc_target}"
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    body = grpc_web_frame(b"")  # HealthRequest / ListToolsRequest are empty messages

    def status_of(r):
        trailers = {k.lower(): v for k, v in r.headers.items()}
        for flags, payload in grpc_web_frames(r.content):
            if flags & 0x80:
                trailers |= parse_trailers(payload)
        return trailers.get("grpc-status")

    r = requests.post(f"{url}/agentd.trae.v1.TraeService/ListTools", data=body, headers=headers, timeout=30)
    assert r.status_code == 200 and status_of(r) == "16", r.headers
    assert r.headers["content-type"].startswith("application/grpc-web")
    r = requests.post(f"{url}/agentd.trae.v1.TraeService/ListTools", data=body, headers=headers | bearer(), timeout=30)
    assert status_of(r) == "0"
    r = requests.post(f"{url}/agentd.trae.v1.TraeService/Health", data=body, headers=headers, timeout=30)
    assert status_of(r) == "0", "health needs no key"


# ---------------------------------------------------------------- WebSockets

def test_websockets_need_a_key(keyed):
    task = requests.post(f"{keyed.ap_url}{AP}/tasks", json={"input": "ws"}, headers=bearer(), timeout=30).json()
    ws_base = keyed.ap_url.replace("http://", "ws://")

    async def attempt(path, **kw):
        try:
            async with websockets.connect(f"{ws_base}{path}", open_timeout=10, **kw) as ws:
                return ("open", await asyncio.wait_for(ws.recv(), 10) if "tasks" in path else None)
        except websockets.InvalidStatus as e:
            return ("refused", e.response.status_code)

    async def main():
        for path in (f"{AP}/tasks/{task['task_id']}/ws", f"{AP}/logs/ws"):
            assert await attempt(path) == ("refused", 401)
            assert await attempt(path, additional_headers={"Authorization": "Bearer wrong"}) == ("refused", 401)
            state, _ = await attempt(path, additional_headers=bearer())
            assert state == "open"
            # Browsers cannot set headers on a WebSocket: the key may come in the query.
            state, _ = await attempt(f"{path}?api_key={KEY}")
            assert state == "open"
        # The other key's own logs socket opens; the task is not its own (test_ownership.py).
        assert (await attempt(f"{AP}/logs/ws?api_key={OTHER_KEY}"))[0] == "open"

    asyncio.run(main())


# ---------------------------------------------------------------- rate limit

def test_rate_limit_per_client(tmp_path_factory):
    s = _stack(tmp_path_factory, "ratelimit", AGENTD_RATE_LIMIT="5")
    try:
        url = f"{s.ap_url}{AP}/tasks"
        codes = [requests.get(url, timeout=30).status_code for _ in range(5)]
        assert codes == [200] * 5
        r = requests.get(url, timeout=30)
        body = assert_ap_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert "5 requests per minute" in body["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert_trae_error(requests.get(f"{s.trae_url}/api/tasks", timeout=30), 429)
        # Health checks are not counted or refused.
        assert requests.get(f"{s.trae_url}/api/health", timeout=30).status_code == 200
        # A client cannot reset its budget by sending its own X-Forwarded-For:
        # Envoy appends the real address and agentd reads only that entry.
        r = requests.get(url, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=30)
        assert r.status_code == 429
    finally:
        s.stop()
