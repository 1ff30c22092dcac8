"""Shared helpers for the end-to-end tests: starting agentd and Envoy as real
processes, envelope checks, snapshots of stored state, streamed multipart
bodies, gRPC reflection and gRPC-Web framing.

Everything listens on 127.0.0.1 only; processes are stopped by their own PIDs.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import requests

ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

REPO = Path(__file__).resolve().parents[2]
AGENTD_BIN = os.environ.get("AGENTD_BIN") or str(REPO / "target" / "debug" / "agentd")
ENVOY_BIN = os.environ.get("ENVOY_BIN") or str(REPO / ".venv" / "bin" / "envoy")
BUF_BIN = os.environ.get("BUF_BIN") or str(REPO / ".tools" / "node_modules" / ".bin" / "buf")
ENVOY_CONFIG_SCRIPT = REPO / "scripts" / "envoy-config"

AP = "/ap/v1/agent"
MIB = 1024 * 1024
MAX_UPLOAD = 100 * MIB

# Secrets placed in config files and the environment: none may ever appear in a response.
SECRETS = (
    "sk-file-SECRET-doc-0001",
    "sk-file-SECRET-router-0002",
    "sk-env-SECRET-router-0003",
    "sk-env-SECRET-anthropic-0004",
    "sk-legacy-SECRET-0005",
)

_base_ids = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Stops one process we started, by its own PID: signal, wait, then kill."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def cgroup_id(data_dir: Path, node: str | None = None) -> str:
    """The name agentd gives its control groups (FNV-1a of the data
    directory's real path, `/nodes/<node id>` added for a node of a shared
    one, as `src/tasks/cgroups.rs` and `tasks/mod.rs` compute it)."""
    path = os.path.realpath(data_dir) + (f"/nodes/{node}" if node else "")
    h = 0xCBF29CE484222325
    for b in os.fsencode(path):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"agentd-{h:016x}"


def remove_task_cgroups(data_dir: Path, node: str | None = None) -> None:
    """Removes what a stopped (or killed) agentd of `data_dir` left of its
    control groups: empty directories only, so nothing running is touched."""
    name = cgroup_id(data_dir, node)
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for mount in _cgroup_mount_points(names):
            base = Path(mount + path.rstrip("/")) / name
            if not base.is_dir():
                continue
            for child in base.iterdir():
                if child.is_dir():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
            try:
                base.rmdir()
            except OSError:
                pass


def _cgroup_mount_points(names: str) -> list[str]:
    """Mount points of the hierarchy `names` ("" is v2) whose root is /."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(" "), right.split(" ")
        if fields[3] != "/":
            continue
        if (not names and rfields[0] == "cgroup2") or (
            names and rfields[0] == "cgroup" and set(names.split(",")) <= set(rfields[2].split(","))
        ):
            points.append(fields[4])
    return points


def clean_env() -> dict[str, str]:
    """The test process's environment without anything that would change
    agentd's configuration behind the tests' back."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.endswith("_API_KEY") or k.endswith("_BASE_URL") or k.startswith("AGENTD_") or k == "TRAE_CONFIG_FILE")
        and k not in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # Tests make hundreds of calls from one address; test_auth.py checks the limit itself.
    env["AGENTD_RATE_LIMIT"] = "0"
    return env


def write_trae_configs(root: Path) -> dict[str, Path]:
    """Config files the /api/config tests rely on.

    - root/trae_config.yaml: the document's example (openai, gpt-4, key in file).
      agentd runs with cwd=root, so `?config_file=trae_config.yaml` finds it.
    - root/conf/env_config.yaml: named by TRAE_CONFIG_FILE (the default when the
      request names none); anthropic by default, an openrouter entry whose key
      and base_url the environment overrides.
    - root/conf/legacy_config.json: the legacy JSON format.
    """
    (root / "conf").mkdir(parents=True, exist_ok=True)
    doc = root / "trae_config.yaml"
    doc.write_text(
        f"""\
agents:
  trae_agent:
    model: doc_model
    max_steps: 20
    enable_lakeview: false
model_providers:
  openai:
    provider: openai
    api_key: {SECRETS[0]}
    base_url: https://api.openai.com/v1
    api_version: v1
models:
  doc_model:
    model_provider: openai
    model: gpt-4
    max_tokens: 4096
    temperature: 0.7
    top_p: 1.0
"""
    )
    env_cfg = root / "conf" / "env_config.yaml"
    env_cfg.write_text(
        f"""\
agents:
  trae_agent:
    model: claude_model
    max_steps: 42
model_providers:
  anthropic:
    provider: anthropic
  router:
    provider: openrouter
    api_key: {SECRETS[1]}
    base_url: https://file.example/router
models:
  claude_model:
    model_provider: anthropic
    model: claude-from-env-file
    max_tokens: 2048
    temperature: 0.25
    top_p: 0.9
  router_model:
    model_provider: router
    model: router-file-model
    max_tokens: 1024
    temperature: 0.5
    top_p: 1.0
"""
    )
    legacy = root / "conf" / "legacy_config.json"
    legacy.write_text(
        '{"default_provider": "openai", "max_steps": 30, "model_providers": {"openai": '
        f'{{"api_key": "{SECRETS[4]}", "model": "gpt-4o", "max_tokens": 8192, "temperature": 0.3, "top_p": 1}}}}}}'
    )
    return {"doc": doc, "env": env_cfg, "legacy": legacy}


def config_env(paths: dict[str, Path]) -> dict[str, str]:
    return {
        "TRAE_CONFIG_FILE": str(paths["env"]),
        "OPENROUTER_API_KEY": SECRETS[2],
        "OPENROUTER_BASE_URL": "https://env.example/router",
        "ANTHROPIC_API_KEY": SECRETS[3],
    }


# Stacks that are up, whoever started them: conftest attaches their logs to
# any failing test's report.
LIVE_STACKS: list["Stack"] = []


class EnvoyPortTaken(RuntimeError):
    """Envoy exited because one of its listener ports was taken meanwhile."""


@dataclass
class Stack:
    """agentd plus the real Envoy in front of it, on free 127.0.0.1 ports."""

    root: Path
    data_dir: Path
    agentd_port: int = field(default_factory=free_port)
    trae_port: int = field(default_factory=free_port)
    ap_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    config_paths: dict[str, Path] = field(default_factory=dict)
    agentd: subprocess.Popen | None = None
    envoy: subprocess.Popen | None = None
    agentd_starts: int = 0
    # Start agentd as `scripts/run` does: `agentd serve` with no flags, in
    # `root` (so the data directory is the relative default `data` and the
    # Trae config the default `trae_config.yaml` there); only the port comes
    # from AGENTD_LISTEN, which scripts/run honours too.
    as_scripts_run: bool = False
    # Envoy in front of several agentd nodes (AGENTD_UPSTREAMS), not this one.
    upstreams: list[str] = field(default_factory=list)

    @property
    def trae_url(self) -> str:
        return f"http://127.0.0.1:{self.trae_port}"

    @property
    def ap_url(self) -> str:
        return f"http://127.0.0.1:{self.ap_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.agentd_port}"

    @property
    def envoy_grpc_target(self) -> str:
        return f"127.0.0.1:{self.trae_port}"

    @property
    def agentd_pid(self) -> int:
        assert self.agentd is not None
        return self.agentd.pid

    @property
    def agentd_log(self) -> Path:
        return self.root / "agentd.log"

    @property
    def envoy_log(self) -> Path:
        return self.root / "envoy.log"

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "Stack":
        try:
            self.start_agentd()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_agentd(self) -> None:
        self.agentd_starts += 1
        log = open(self.agentd_log, "ab")
        log.write(f"\n===== agentd start #{self.agentd_starts}\n".encode())
        log.flush()
        env = clean_env() | self.env
        if self.as_scripts_run:
            assert self.data_dir == self.root / "data", "scripts/run uses the default data directory"
            args = [AGENTD_BIN, "serve"]
            env["AGENTD_LISTEN"] = self.grpc_target
        else:
            args = [AGENTD_BIN, "serve", "--listen", self.grpc_target, "--data-dir", str(self.data_dir)]
        self.agentd = subprocess.Popen(
            args,
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.wait_agentd()

    def wait_agentd(self, timeout: float = 60) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.agentd.poll() is not None:
                raise RuntimeError(f"agentd exited with {self.agentd.returncode}:\n{tail(self.agentd_log)}")
            try:
                with grpc.insecure_channel(self.grpc_target) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"agentd did not become healthy: {last}\n{tail(self.agentd_log)}")

    def start_envoy(self) -> None:
        # A free port is only free when picked: another process (an outgoing
        # connection's ephemeral port) may bind it before Envoy does. A first
        # start then picks new ports and tries again; a restart keeps its
        # ports, which its clients hold.
        first = self.envoy is None
        for attempt in range(3):
            try:
                return self._launch_envoy()
            except EnvoyPortTaken:
                if not first or attempt == 2:
                    raise
                self.trae_port, self.ap_port, self.admin_port = free_port(), free_port(), free_port()

    def _launch_envoy(self) -> None:
        cfg_dir = self.root / "envoy"
        env = clean_env() | {
            "AGENTD_LISTEN": self.grpc_target,
            "TRAE_PORT": str(self.trae_port),
            "AP_PORT": str(self.ap_port),
            "ENVOY_ADMIN_PORT": str(self.admin_port),
        }
        if self.upstreams:
            env["AGENTD_UPSTREAMS"] = ",".join(self.upstreams)
        out = subprocess.run(
            [str(ENVOY_CONFIG_SCRIPT), str(cfg_dir), AGENTD_BIN],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"scripts/envoy-config failed: {out.stderr}"
        cfg = out.stdout.strip().splitlines()[-1]
        base_id = (os.getpid() % 50000) * 20 + next(_base_ids)
        log = open(self.envoy_log, "ab")
        log_start = log.tell()
        self.envoy = subprocess.Popen(
            [ENVOY_BIN, "-c", cfg, "--log-level", "warn", "--base-id", str(base_id)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 60
        last: Exception | str | None = None
        while time.monotonic() < deadline:
            if self.envoy.poll() is not None:
                error = RuntimeError(f"envoy exited with {self.envoy.returncode}:\n{tail(self.envoy_log)}")
                with open(self.envoy_log, "rb") as f:
                    f.seek(log_start)
                    if b"Address already in use" in f.read():
                        raise EnvoyPortTaken(str(error)) from error
                raise error
            try:
                ok = all(
                    requests.get(f"{url}/api/health", timeout=2).status_code == 200
                    for url in (self.trae_url, self.ap_url)
                )
                if ok:
                    return
            except requests.RequestException as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"envoy did not answer /api/health: {last}\n{tail(self.envoy_log)}")

    def stop_agentd(self, sig: int = signal.SIGTERM) -> int | None:
        rc = stop_process(self.agentd, sig)
        return rc

    def restart_agentd(self) -> int | None:
        rc = self.stop_agentd()
        self.start_agentd()
        return rc

    def stop(self) -> None:
        stop_process(self.envoy)
        stop_process(self.agentd)
        if self.agentd is not None and self.agentd.poll() is not None:
            remove_task_cgroups(self.data_dir, self.node_id())

    def node_id(self) -> str | None:
        """The node agentd names itself on PostgreSQL (its default: host name
        and port, as `node_id::default_node_id`); None on SQLite."""
        if "AGENTD_DATABASE_URL" not in self.env:
            return None
        host = Path("/proc/sys/kernel/hostname").read_text().strip() or "localhost"
        host = "".join(c if c.isascii() and (c.isalnum() or c in "-_.:") else "-" for c in host)
        return self.env.get("AGENTD_NODE_ID") or f"{host}:{self.agentd_port}"

    def logs(self) -> str:
        return (
            f"---- agentd log tail ({self.agentd_log})\n{tail(self.agentd_log)}\n"
            f"---- envoy log tail ({self.envoy_log})\n{tail(self.envoy_log)}"
        )

    # ---- conveniences ----------------------------------------------------

    def urls(self) -> tuple[str, str]:
        return (self.trae_url, self.ap_url)

    def create_task(self, input: str = "e2e task", base: str | None = None, **additional) -> dict:
        body: dict = {"input": input}
        if additional:
            body["additional_input"] = additional
        r = requests.post(f"{base or self.ap_url}{AP}/tasks", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, task_id: str, name: str, data: bytes, relative_path: str | None = None, base: str | None = None):
        files = {"file": (name, data, "application/octet-stream")}
        form = {"relative_path": relative_path} if relative_path is not None else None
        return requests.post(f"{base or self.ap_url}{AP}/tasks/{task_id}/artifacts", files=files, data=form, timeout=60)

    def all_tasks(self) -> list[dict]:
        """Every stored task, via the Trae list, 1,000 at a time."""
        tasks: list[dict] = []
        while True:
            params = {"limit": 1000, "offset": len(tasks)}
            r = requests.get(f"{self.trae_url}/api/tasks", params=params, timeout=30)
            assert r.status_code == 200, r.text
            page = r.json()["active_tasks"]
            tasks += page
            if len(page) < 1000:
                return sorted(tasks, key=lambda t: t["task_id"])

    def artifacts(self, task_id: str) -> list[dict]:
        r = requests.get(f"{self.ap_url}{AP}/tasks/{task_id}/artifacts", params={"size": 100}, timeout=30)
        assert r.status_code == 200, r.text
        return sorted(r.json()["artifacts"], key=lambda a: a["artifact_id"])

    def data_files(self) -> dict[str, int]:
        """Every file and directory under the data directory except the
        database itself (whose pages change on reads too): files with their
        size, directories (ending in "/") with -1."""
        out = {}
        for p in self.data_dir.rglob("*"):
            rel = str(p.relative_to(self.data_dir))
            if p.is_dir():
                out[rel + "/"] = -1
            elif not p.name.startswith("agentd.db"):
                out[rel] = p.stat().st_size
        return out

    def snapshot(self, task_ids: tuple[str, ...] = ()) -> dict:
        """What is stored: tasks (with status), their artifacts, and the files."""
        return {
            "tasks": [(t["task_id"], t["status"]) for t in self.all_tasks()],
            "artifacts": {tid: self.artifacts(tid) for tid in task_ids},
            "files": self.data_files(),
        }


def assert_trae_error(r: requests.Response, status: int) -> dict:
    """The Trae envelope, exactly: {"status":"error","error":"<non-empty>"}."""
    assert r.status_code == status, f"{r.status_code} != {status}: {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"status", "error"}, body
    assert body["status"] == "error"
    assert isinstance(body["error"], str) and body["error"], body
    return body


def assert_ap_error(r: requests.Response, status: int, code: str | None) -> dict:
    """The Agent Protocol envelope:
    {"success":false,"message":"…","error":{"code":…,"message":…,"details":{…}}}."""
    assert r.status_code == status, f"{r.status_code} != {status}: {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("success") is False, body
    assert isinstance(body.get("message"), str) and body["message"], body
    err = body.get("error")
    assert isinstance(err, dict), body
    assert set(err) >= {"code", "message", "details"}, body
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["details"], dict), body
    if code is not None:
        assert err["code"] == code, body
    return body


def assert_pagination(p: dict, page: int, size: int, total: int) -> None:
    pages = (total + size - 1) // size
    expected = {
        "page": page,
        "size": size,
        "total": total,
        "pages": pages,
        "current_page": page,
        "page_size": size,
        "total_items": total,
        "total_pages": pages,
    }
    for k, v in expected.items():
        assert type(p.get(k)) is int, (k, p)
        assert p[k] == v, (k, p)


def sha256_file(path: Path, chunk: int = MIB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def make_file(path: Path, size: int, seed: bytes = b"agentd") -> str:
    """Writes `size` pseudo-random (incompressible, non-repeating) bytes to
    `path` a MiB at a time and returns their sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (MIB // 32)
    written = 0
    n = 0
    with open(path, "wb") as f:
        while written < size:
            # Vary every block so that a server mixing up chunks is caught.
            chunk = n.to_bytes(8, "big") + block[8:]
            chunk = chunk[: size - written]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            n += 1
    return h.hexdigest()


class MultipartFile:
    """A multipart/form-data body read lazily from a file on disk, so neither
    side holds the file in memory. `fields` come before or after the file
    part, as given. Pass it as `data=` to requests: its length becomes
    Content-Length and its chunks are sent as they are read."""

    def __init__(self, path: Path, file_name: str, fields_before=(), fields_after=(), chunk: int = MIB):
        self.boundary = "e2e-" + uuid.uuid4().hex
        self.path = path
        self.chunk = chunk
        b = self.boundary

        def field_part(name: str, value: str) -> bytes:
            return (
                f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
                + value.encode()
                + b"\r\n"
            )

        self.head = b"".join(field_part(k, v) for k, v in fields_before) + (
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.closing = b"\r\n" + b"".join(field_part(k, v) for k, v in fields_after) + f"--{b}--\r\n".encode()
        self.length = len(self.head) + path.stat().st_size + len(self.closing)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def headers(self) -> dict[str, str]:
        # requests sets Content-Length from __len__ and then streams __iter__.
        return {"Content-Type": self.content_type}

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        with open(self.path, "rb") as f:
            while b := f.read(self.chunk):
                yield b
        yield self.closing


# ---- gRPC-Web framing ------------------------------------------------------


def grpc_web_frame(message: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(message).to_bytes(4, "big") + message


def grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    """Splits a gRPC-Web response body into (flags, payload) frames."""
    frames = []
    i = 0
    while i < len(body):
        assert len(body) - i >= 5, f"truncated frame header at {i}: {body[i:]!r}"
        flags = body[i]
        n = int.from_bytes(body[i + 1 : i + 5], "big")
        payload = body[i + 5 : i + 5 + n]
        assert len(payload) == n, "truncated frame"
        frames.append((flags, payload))
        i += 5 + n
    return frames


def parse_trailers(payload: bytes) -> dict[str, str]:
    out = {}
    for line in payload.decode().split("\r\n"):
        if line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return out


# ---- gRPC server reflection (no generated code) ---------------------------


class Reflection:
    """A small client of the gRPC server reflection service, v1 or v1alpha.

    grpcio-reflection ships only the v1alpha messages; v1 is wire-identical
    (same messages and field numbers under another package), so the same
    classes serialise requests for `grpc.reflection.v1.ServerReflection`.
    Message classes for the discovered services are built at run time from
    the fetched FileDescriptorProtos.
    """

    def __init__(self, channel: grpc.Channel, version: str = "v1"):
        from google.protobuf import descriptor_pool
        from grpc_reflection.v1alpha import reflection_pb2

        self._pb = reflection_pb2
        self._call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        self.pool = descriptor_pool.DescriptorPool()
        self._files: dict[str, object] = {}
        self._added: set[str] = set()

    def _ask(self, **kw):
        (resp,) = list(self._call(iter([self._pb.ServerReflectionRequest(**kw)]), timeout=10))
        if resp.HasField("error_response"):
            raise LookupError(f"reflection error {resp.error_response.error_code}: {resp.error_response.error_message}")
        return resp

    def list_services(self) -> list[str]:
        resp = self._ask(list_services="")
        return sorted(s.name for s in resp.list_services_response.service)

    def _load(self, resp) -> None:
        from google.protobuf import descriptor_pb2

        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            self._files.setdefault(fdp.name, fdp)

    def _add(self, name: str) -> None:
        """Adds a file to the pool after its dependencies (fetching any the
        server did not send along)."""
        if name in self._added:
            return
        if name not in self._files:
            self._load(self._ask(file_by_filename=name))
        fdp = self._files[name]
        for dep in fdp.dependency:
            self._add(dep)
        self.pool.Add(fdp)
        self._added.add(name)

    def load_symbol(self, symbol: str) -> list[str]:
        """Fetches the file defining `symbol` (and its dependencies) into the
        pool; returns the file names the server sent."""
        resp = self._ask(file_containing_symbol=symbol)
        names = []
        from google.protobuf import descriptor_pb2

        for raw in resp.file_descriptor_response.file_descriptor_proto:
            names.append(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
        self._load(resp)
        for n in names:
            self._add(n)
        return names

    def service(self, name: str):
        self.load_symbol(name)
        return self.pool.FindServiceByName(name)

    def message_class(self, full_name: str):
        from google.protobuf import message_factory

        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def unary(self, channel: grpc.Channel, method: str):
        """A callable for `package.Service/Method` with request/response
        classes built from the reflected descriptors. Returns (call, Req, Resp)."""
        service_name, _, method_name = method.partition("/")
        svc = self.service(service_name)
        m = svc.methods_by_name[method_name]
        req_cls = self.message_class(m.input_type.full_name)
        resp_cls = self.message_class(m.output_type.full_name)
        call = channel.unary_unary(
            f"/{method}", request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString
        )
        return call, req_cls, resp_cls


def error_info(err: grpc.RpcError):
    """The google.rpc.ErrorInfo detail of a gRPC error, from
    `grpc-status-details-bin` in its trailing metadata (or None)."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            assert st.code == err.code().value[0], (st.code, err.code())
            for any_ in st.details:
                info = error_details_pb2.ErrorInfo()
                if any_.Unpack(info):
                    return info
    return None


def run_in_thread(code: str, name: str, timeout: float = 60) -> tuple[dict, str]:
    """Executes a document's example `code` in a thread (so that a hang fails
    clearly, after `timeout` seconds); returns its globals and what it printed."""
    ns: dict = {"__name__": name}
    out = io.StringIO()
    failure: list[BaseException] = []

    def main():
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, name, "exec"), ns)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failure.append(e)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{name} did not finish within {timeout}s; printed:\n{out.getvalue()}"
    if failure:
        raise AssertionError(f"{name} raised {failure[0]!r}; printed:\n{out.getvalue()}") from failure[0]
    return ns, out.getvalue()


class AddKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sends `Authorization: Bearer <key>` with every call of a channel."""

    def __init__(self, key):
        self.key = key

    def _with_key(self, details):
        md = list(details.metadata or []) + [("authorization", f"Bearer {self.key}")]
        Details = collections.namedtuple("Details", ("method", "timeout", "metadata", "credentials",
                                                     "wait_for_ready", "compression"))
        return Details(details.method, details.timeout, md, details.credentials,
                       getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, cont, details, request):
        return cont(self._with_key(details), request)

    def intercept_stream_stream(self, cont, details, request_iterator):
        return cont(self._with_key(details), request_iterator)

    def intercept_unary_stream(self, cont, details, request):
        return cont(self._with_key(details), request)
