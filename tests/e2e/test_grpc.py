"""gRPC, straight to agentd and through Envoy: Python grpcio driven by server
reflection (no generated code), the standard health service, `buf curl`
(gRPC and gRPC-Web), and raw gRPC-Web calls with `requests`."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import grpc
import pytest
import requests
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import AP, BUF_BIN, Reflection, error_info, grpc_web_frame, grpc_web_frames, parse_trailers

AGENT = "agentd.agent.v1.AgentService"
TRAE = "agentd.trae.v1.TraeService"
SERVICES = {AGENT, TRAE, "grpc.health.v1.Health"}


@pytest.fixture(params=["agentd", "envoy"])
def target(request, stack) -> str:
    """host:port of agentd itself, or of Envoy (which passes gRPC through)."""
    return stack.grpc_target if request.param == "agentd" else stack.envoy_grpc_target


@pytest.fixture
def channel(target):
    with grpc.insecure_channel(target) as ch:
        yield ch


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services(channel, version):
    services = set(Reflection(channel, version).list_services())
    assert SERVICES <= services, services
    assert f"grpc.reflection.{version}.ServerReflection" in services


def test_reflection_describes_the_api(channel):
    refl = Reflection(channel)
    agent = refl.service(AGENT)
    assert {"CreateTask", "GetTask", "ListTasks", "DeleteTask", "UploadArtifact", "DownloadArtifact"} <= set(
        agent.methods_by_name
    )
    assert agent.methods_by_name["UploadArtifact"].client_streaming
    assert agent.methods_by_name["DownloadArtifact"].server_streaming
    trae = refl.service(TRAE)
    assert {"Health", "Run", "GetConfig", "ListTools", "ListTasks", "GetTaskStatus", "StopTask", "StreamTask"} <= set(
        trae.methods_by_name
    )
    # The files carry their HTTP bindings and the error-detail types clients decode.
    task = refl.message_class("agentd.agent.v1.Task")
    assert {"task_id", "additional_input", "artifacts"} <= set(task.DESCRIPTOR.fields_by_name)
    refl.load_symbol("google.rpc.ErrorInfo")
    assert refl.pool.FindMessageTypeByName("google.rpc.ErrorInfo")


def test_create_and_get_task(stack, channel):
    refl = Reflection(channel)
    create, CreateReq, _ = refl.unary(channel, f"{AGENT}/CreateTask")
    get, GetReq, _ = refl.unary(channel, f"{AGENT}/GetTask")

    req = CreateReq(input="from grpcio")
    req.additional_input.update({"priority": "high", "nested": {"flags": [True, False, None], "n": 3}})
    task = create(req, timeout=30)
    assert task.task_id and task.status == "created" and task.input == "from grpcio"
    assert len(task.artifacts) == 0

    got = get(GetReq(task_id=task.task_id), timeout=30)
    assert got == task
    # The same task through REST.
    r = requests.get(f"{stack.ap_url}{AP}/tasks/{task.task_id}", timeout=30)
    assert r.status_code == 200
    assert r.json()["additional_input"] == {"priority": "high", "nested": {"flags": [True, False, None], "n": 3}}


def test_not_found_carries_error_info(channel):
    refl = Reflection(channel)
    get, GetReq, _ = refl.unary(channel, f"{AGENT}/GetTask")
    with pytest.raises(grpc.RpcError) as exc:
        get(GetReq(task_id="no-such-task"), timeout=30)
    err = exc.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(err)
    assert info is not None, f"no ErrorInfo in grpc-status-details-bin: {err.trailing_metadata()}"
    assert info.reason == "TASK_NOT_FOUND"
    assert info.domain
    assert info.metadata["task_id"] == "no-such-task"

    status, StatusReq, _ = refl.unary(channel, f"{TRAE}/GetTaskStatus")
    with pytest.raises(grpc.RpcError) as exc:
        status(StatusReq(task_id="no-such-task"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc.value).reason == "TASK_NOT_FOUND"


def test_invalid_argument_carries_error_info(channel):
    refl = Reflection(channel)
    list_tasks, Req, _ = refl.unary(channel, f"{AGENT}/ListTasks")
    with pytest.raises(grpc.RpcError) as exc:
        list_tasks(Req(status="bogus"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == "INVALID_REQUEST"


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary(f"/{AGENT}/NoSuchMethod", request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.RpcError) as exc:
        call(b"", timeout=30)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", AGENT, TRAE):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as exc:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_trae_health_over_grpc(channel):
    refl = Reflection(channel)
    health, Req, _ = refl.unary(channel, f"{TRAE}/Health")
    resp = health(Req(), timeout=30)
    assert (resp.status, resp.message) == ("healthy", "Trae Agent API is running")


# ---- buf curl ---------------------------------------------------------------


def buf_curl(*args: str, tmp_path=None) -> subprocess.CompletedProcess:
    if not os.access(BUF_BIN, os.X_OK):
        pytest.fail(f"BUF_BIN={BUF_BIN} is not executable (run scripts/setup --test)")
    env = dict(os.environ)
    if tmp_path is not None:
        env["BUF_CACHE_DIR"] = str(tmp_path / "buf-cache")
    return subprocess.run([BUF_BIN, "curl", *args], capture_output=True, text=True, timeout=60, env=env)


BUF_GRPC = ("--protocol", "grpc", "--http2-prior-knowledge")
BUF_GRPCWEB = ("--protocol", "grpcweb")


@pytest.mark.parametrize("via", ["agentd-grpc", "envoy-grpcweb"])
def test_buf_curl_lists_methods(stack, via, tmp_path):
    if via == "agentd-grpc":
        out = buf_curl(*BUF_GRPC, "--list-methods", f"http://{stack.grpc_target}", tmp_path=tmp_path)
    else:
        out = buf_curl(*BUF_GRPCWEB, "--list-methods", stack.trae_url, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    methods = set(out.stdout.split())
    expected = {
        f"{AGENT}/CreateTask", f"{AGENT}/GetTask", f"{AGENT}/ListTasks", f"{AGENT}/UploadArtifact",
        f"{TRAE}/Health", f"{TRAE}/GetConfig", f"{TRAE}/ListTools", "grpc.health.v1.Health/Check",
    }
    assert expected <= methods, methods


def test_buf_curl_calls(stack, tmp_path):
    grpc_url = f"http://{stack.grpc_target}"
    # CreateTask over gRPC, straight to agentd.
    out = buf_curl(
        *BUF_GRPC, "-d", '{"input": "from buf curl", "additional_input": {"k": [1, "v"]}}',
        f"{grpc_url}/{AGENT}/CreateTask", tmp_path=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    task_id = task["taskId"]
    assert task["input"] == "from buf curl" and task["status"] == "created"

    # GetTask over gRPC-Web, through Envoy.
    out = buf_curl(*BUF_GRPCWEB, "-d", json.dumps({"task_id": task_id}), f"{stack.ap_url}/{AGENT}/GetTask",
                   tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["taskId"] == task_id and got["additionalInput"] == {"k": [1, "v"]}

    # Health: the Trae one and the standard one, both ways.
    for args, url in ((BUF_GRPC, grpc_url), (BUF_GRPCWEB, stack.trae_url)):
        out = buf_curl(*args, "-d", "{}", f"{url}/{TRAE}/Health", tmp_path=tmp_path)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"status": "healthy", "message": "Trae Agent API is running"}
        out = buf_curl(*args, "-d", "{}", f"{url}/grpc.health.v1.Health/Check", tmp_path=tmp_path)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"status": "SERVING"}


@pytest.mark.parametrize("via", ["agentd-grpc", "envoy-grpcweb"])
def test_buf_curl_not_found(stack, via, tmp_path):
    if via == "agentd-grpc":
        args, url = BUF_GRPC, f"http://{stack.grpc_target}"
    else:
        args, url = BUF_GRPCWEB, stack.ap_url
    out = buf_curl(*args, "-d", '{"task_id": "no-such-task"}', f"{url}/{AGENT}/GetTask", tmp_path=tmp_path)
    assert out.returncode != 0
    err = json.loads(out.stderr)
    assert err["code"] == "not_found", err
    infos = [d for d in err.get("details", []) if d["type"] == "google.rpc.ErrorInfo"]
    assert infos, err
    raw = infos[0]["value"]
    info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    assert info.reason == "TASK_NOT_FOUND"


# ---- gRPC-Web with plain HTTP -----------------------------------------------


def decode_grpc_web_text(body: bytes) -> bytes:
    # Each 4-character base64 quantum decodes on its own, so concatenated
    # padded chunks decode correctly group by group.
    body = b"".join(body.split())
    return b"".join(base64.b64decode(body[i : i + 4]) for i in range(0, len(body), 4))


@pytest.fixture
def agent_messages(stack):
    with grpc.insecure_channel(stack.grpc_target) as ch:
        refl = Reflection(ch)
        refl.service(AGENT)
        yield {name: refl.message_class(f"agentd.agent.v1.{name}") for name in ("CreateTaskRequest", "Task", "GetTaskRequest")}


@pytest.mark.parametrize("via", ["envoy", "agentd"])
def test_grpc_web_binary(stack, agent_messages, via):
    url = stack.trae_url if via == "envoy" else f"http://{stack.grpc_target}"
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "accept": "application/grpc-web+proto"}
    req = agent_messages["CreateTaskRequest"](input="from grpc-web")
    r = requests.post(f"{url}/{AGENT}/CreateTask", data=grpc_web_frame(req.SerializeToString()), headers=headers,
                      timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/grpc-web")
    frames = grpc_web_frames(r.content)
    assert [f for f, _ in frames] == [0x00, 0x80], frames
    task = agent_messages["Task"].FromString(frames[0][1])
    assert task.input == "from grpc-web" and task.status == "created" and task.task_id
    assert parse_trailers(frames[1][1])["grpc-status"] == "0"

    # An error: trailers-only, so grpc-status arrives in the headers (or a trailer frame).
    req = agent_messages["GetTaskRequest"](task_id="no-such-task")
    r = requests.post(f"{url}/{AGENT}/GetTask", data=grpc_web_frame(req.SerializeToString()), headers=headers,
                      timeout=30)
    assert r.status_code == 200
    trailers = dict(r.headers)
    for flags, payload in grpc_web_frames(r.content):
        if flags & 0x80:
            trailers |= parse_trailers(payload)
    trailers = {k.lower(): v for k, v in trailers.items()}
    assert trailers["grpc-status"] == "5", trailers


def test_grpc_web_text(stack, agent_messages):
    req = agent_messages["CreateTaskRequest"](input="from grpc-web-text")
    body = base64.b64encode(grpc_web_frame(req.SerializeToString()))
    r = requests.post(
        f"{stack.ap_url}/{AGENT}/CreateTask",
        data=body,
        headers={"content-type": "application/grpc-web-text", "accept": "application/grpc-web-text", "x-grpc-web": "1"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/grpc-web-text")
    frames = grpc_web_frames(decode_grpc_web_text(r.content))
    assert [f for f, _ in frames] == [0x00, 0x80], frames
    task = agent_messages["Task"].FromString(frames[0][1])
    assert task.input == "from grpc-web-text"
    assert parse_trailers(frames[1][1])["grpc-status"] == "0"
    # And it is stored like any other task.
    got = requests.get(f"{stack.ap_url}{AP}/tasks/{task.task_id}", timeout=30)
    assert got.status_code == 200 and got.json()["input"] == "from grpc-web-text"
