"""Shared support for the issue-4 run tests (tasks that actually run): a
routed scripted LLM, stacks configured to reach it, and readers of every
event transport (SSE, gRPC, WebSocket), process checks and bounded waits.

Test modules load this as a plugin (`pytest_plugins = ["runs_support"]`), so
its session fixture is shared by all of them:

- `runs` (session): one agentd + Envoy whose default Trae config points the
  `openai` provider at a route of one scripted LLM server. Each test takes its
  own route (`runs.llm.route()`) and names a config file for it
  (`runs.config(route)`), so concurrent or leftover runs never consume another
  test's script.
- `fresh_runs` (function): a factory for a private stack (timeouts, limits,
  SIGKILL), with extra environment for agentd.

Failing tests get the tails of these stacks' agentd and Envoy logs attached.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import psutil
import pytest
import requests

import helpers
from helpers import AP, Stack
from scripted_llm import ScriptedLLM, openai_tool_call

RUNS_API_KEY = "sk-runs-e2e-not-a-secret"
# The seconds the bounded waits allow: scripted runs end in about a second,
# so these only matter when something is broken.
RUN_WAIT = 60

_route_ids = itertools.count(1)


# ---- a scripted LLM with one script per route --------------------------------


class RoutedLLM(ScriptedLLM):
    """The scripted LLM server, with a separate script per URL prefix
    `/r/<name>/`. A request outside any route (or whose route's script ran
    out) is answered with `task_done`, as the plain server does."""

    def __init__(self):
        super().__init__()
        self._routes: dict[str, list] = {}

    def route(self) -> "Route":
        name = f"t{next(_route_ids)}"
        with self._lock:
            self._routes[name] = []
        return Route(self, name)

    def _next(self, path):
        parts = path.split("/")
        if len(parts) > 2 and parts[1] == "r":
            with self._lock:
                script = self._routes.get(parts[2])
                if script:
                    return script.pop(0)
        return super()._next(path)


@dataclass
class Route:
    llm: RoutedLLM
    name: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.llm.port}/r/{self.name}/v1"

    def script(self, *replies) -> "Route":
        with self.llm._lock:
            self.llm._routes[self.name].extend(replies)
        return self

    @property
    def requests(self) -> list[dict]:
        prefix = f"/r/{self.name}/"
        with self.llm._lock:
            return [r for r in self.llm.requests if r["path"].startswith(prefix)]

    def remaining(self) -> int:
        with self.llm._lock:
            return len(self.llm._routes[self.name])


def trae_config_yaml(base_url: str, max_retries: int | None = None, max_steps: int = 20,
                     lakeview_url: str | None = None, lakeview_retries: int = 0,
                     enable_lakeview: bool | None = None) -> str:
    """A Trae YAML config whose agent uses the `openai` provider at
    `base_url`; the API key comes from OPENAI_API_KEY in agentd's environment.
    With `lakeview_url`, a lakeview model there (lakeview on unless
    `enable_lakeview` is False); without it, lakeview off."""
    retries = f"    max_retries: {max_retries}\n" if max_retries is not None else ""
    if enable_lakeview is None:
        enable_lakeview = lakeview_url is not None
    text = (
        "agents:\n"
        "  trae_agent:\n"
        "    model: scripted_model\n"
        f"    max_steps: {max_steps}\n"
        f"    enable_lakeview: {'true' if enable_lakeview else 'false'}\n"
        "model_providers:\n"
        "  openai:\n"
        "    provider: openai\n"
        f"    base_url: {base_url}\n"
    )
    if lakeview_url is not None:
        text += (
            "  lakeview_provider:\n"
            "    provider: openai\n"
            f"    base_url: {lakeview_url}\n"
        )
    text += (
        "models:\n"
        "  scripted_model:\n"
        "    model_provider: openai\n"
        "    model: scripted-model\n"
        "    max_tokens: 1024\n"
        "    temperature: 0.0\n"
        "    top_p: 1.0\n" + retries
    )
    if lakeview_url is not None:
        text += (
            "  lakeview_model:\n"
            "    model_provider: lakeview_provider\n"
            "    model: scripted-lakeview\n"
            "    max_tokens: 256\n"
            f"    max_retries: {lakeview_retries}\n"
            "lakeview:\n"
            "  model: lakeview_model\n"
        )
    return text


# ---- a stack wired to the scripted LLM --------------------------------------


@dataclass
class Runs:
    """A stack plus the scripted LLM it talks to, with the conveniences the
    run tests share."""

    stack: Stack
    llm: RoutedLLM
    default_route: Route
    configs_dir: Path
    _config_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ---- configuration ----

    def config(self, route: Route, max_retries: int | None = None, max_steps: int = 20,
               lakeview: Route | None = None, **lakeview_options) -> str:
        """Writes a config file for `route` (and a lakeview model on
        `lakeview`, see `trae_config_yaml`); returns its absolute path (for
        `config_file` on /api/run or in an Agent Protocol task's
        additional_input)."""
        path = self.configs_dir / f"{route.name}-{next(self._config_ids)}.yaml"
        path.write_text(trae_config_yaml(route.base_url, max_retries=max_retries, max_steps=max_steps,
                                         lakeview_url=lakeview and lakeview.base_url, **lakeview_options))
        return str(path)

    # ---- Trae runs ----

    def run(self, task: str, working_dir: Path | str, route: Route | None = None, base: str | None = None, **extra) -> str:
        """POST /api/run; asserts the document's success envelope; returns the task id."""
        body = {"task": task, "working_dir": str(working_dir), "provider": "openai"} | extra
        if route is not None and "config_file" not in body:
            body["config_file"] = self.config(route)
        r = requests.post(f"{base or self.stack.trae_url}/api/run", json=body, timeout=30)
        assert r.status_code == 200, f"/api/run answered {r.status_code}: {r.text}"
        out = r.json()
        assert out["status"] == "success" and out["message"] == "Task started successfully", out
        assert isinstance(out["task_id"], str) and out["task_id"], out
        return out["task_id"]

    def status(self, task_id: str) -> dict:
        r = requests.get(f"{self.stack.trae_url}/api/tasks/{task_id}/status", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, task_id: str, wanted: set[str] | str, timeout: float = RUN_WAIT) -> dict:
        """Polls /status until task_status is one of `wanted`."""
        wanted = {wanted} if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status(task_id)
            if last["task_status"] in wanted:
                return last
            time.sleep(0.1)
        raise AssertionError(
            f"task {task_id} did not reach {sorted(wanted)} within {timeout}s; last status "
            f"{last and last['task_status']}, events {[m['type'] for m in (last or {}).get('messages', [])]}"
        )

    def wait_event(self, task_id: str, pred: Callable[[dict], bool], what: str, timeout: float = RUN_WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.status(task_id)["messages"]:
                if pred(m):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"task {task_id}: no {what} within {timeout}s: {self.status(task_id)['messages']}")

    def stop(self, task_id: str) -> dict:
        r = requests.post(f"{self.stack.trae_url}/api/tasks/{task_id}/stop", timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    # ---- streams ----

    def sse(self, task_id: str, after_seq: int | None = None, base: str | None = None,
            path: str | None = None, timeout: float = RUN_WAIT) -> list[dict]:
        return read_sse(
            f"{base or self.stack.trae_url}{path or f'/api/tasks/{task_id}/stream'}",
            params=None if after_seq is None else {"after_seq": after_seq},
            timeout=timeout,
        )

    def grpc_events(self, service_method: str, task_id: str, after_seq: int | None = None,
                    target: str | None = None) -> list[dict]:
        return grpc_stream(target or self.stack.grpc_target, service_method, task_id, after_seq)


def read_sse(url: str, params: dict | None = None, timeout: float = RUN_WAIT, read_timeout: float = 40) -> list[dict]:
    """Reads an SSE stream with sseclient-py until `end` (included) or the
    server closes it; heartbeats are left out. Fails after `timeout` seconds
    (checked between events; heartbeats arrive every 15 s while idle)."""
    deadline = time.monotonic() + timeout
    out: list[dict] = []
    with requests.get(url, params=params, stream=True, timeout=(10, read_timeout),
                      headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status_code == 200, f"{url}: {resp.status_code} {resp.text}"
        assert resp.headers.get("content-type", "").startswith("text/event-stream"), resp.headers
        try:
            for ev in _events(resp):
                if not ev.data:
                    continue
                msg = json.loads(ev.data)
                if msg.get("type") != "heartbeat":
                    out.append(msg)
                    if msg.get("type") == "end":
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url}: no `end` within {timeout}s; got {[m['type'] for m in out]}")
        except requests.exceptions.ConnectionError as e:  # a read timeout surfaces as this while streaming
            raise AssertionError(
                f"{url} {params or ''}: nothing (not even a close) for {read_timeout}s after "
                f"{[m['type'] for m in out]}: {e}") from None
    return out


def _events(resp):
    import sseclient

    return sseclient.SSEClient(resp).events()


def grpc_stream(target: str, service_method: str, task_id: str, after_seq: int | None = None,
                timeout: float = RUN_WAIT) -> list[dict]:
    """Calls a server-streaming RPC (`package.Service/Method`) found by server
    reflection; returns the events (as dicts with the JSON names) up to and
    including `end`, heartbeats left out."""
    from google.protobuf import json_format

    service_name, _, method_name = service_method.partition("/")
    with grpc.insecure_channel(target) as ch:
        refl = helpers.Reflection(ch)
        m = refl.service(service_name).methods_by_name[method_name]
        assert m.server_streaming, service_method
        req_cls = refl.message_class(m.input_type.full_name)
        resp_cls = refl.message_class(m.output_type.full_name)
        call = ch.unary_stream(f"/{service_method}", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
        req = req_cls(task_id=task_id)
        if after_seq is not None:
            req.after_seq = after_seq
        out = []
        stream = call(req, timeout=timeout)
        for ev in stream:
            d = json_format.MessageToDict(ev, preserving_proto_field_name=True)
            if d.get("type") == "heartbeat":
                continue
            out.append(d)
            if d.get("type") == "end":
                stream.cancel()
                break
        return out


# ---- WebSockets ------------------------------------------------------------


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


def read_ws(url_or_ws, until, timeout: float = RUN_WAIT) -> tuple[list[dict], bool]:
    """Reads JSON messages until `until(msg)` or the server closes; returns
    (messages, closed_by_server). Takes a URL or an open connection."""
    import websockets
    from websockets.sync.client import connect

    if isinstance(url_or_ws, str):
        with connect(url_or_ws, open_timeout=10, close_timeout=5, proxy=None) as ws:
            return read_ws(ws, until, timeout)
    ws = url_or_ws
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"websocket: gave up after {timeout}s; got {out}")
        try:
            raw = ws.recv(timeout=left)
        except TimeoutError:
            continue
        except websockets.ConnectionClosed:
            return out, True
        msg = json.loads(raw)
        out.append(msg)
        if until(msg):
            return out, False


def key(events: list[dict]) -> list[tuple]:
    """What two readers of one log must agree on, event by event."""
    return [(e["seq"], e["type"], e.get("message"), e.get("result"), e.get("error")) for e in events]


def assert_contiguous(events: list[dict], first: int = 1) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(first, first + len(seqs))), f"seqs not contiguous from {first}: {seqs}"


def assert_well_formed_log(events: list[dict], task_id: str) -> None:
    """A finished task's full log: seq 1..N, starts with `start`, ends with
    exactly one `end`, every event carries the task id and a timestamp."""
    assert events, "empty event log"
    assert_contiguous(events)
    types = [e["type"] for e in events]
    assert types[0] == "start", types
    assert types[-1] == "end" and types.count("end") == 1, types
    for e in events:
        assert e["task_id"] == task_id, e
        assert isinstance(e["timestamp"], (int, float)) and e["timestamp"] > 1.6e9, e
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps), f"timestamps go backwards: {stamps}"


# ---- processes ----------------------------------------------------------


def wait_file(path: Path, timeout: float = RUN_WAIT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout}s")


def alive(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group `pgid`."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return out


@dataclass
class TaskProcesses:
    """The task's bash (pid from `$$`), its process group and descendants."""

    pid: int
    pgid: int
    descendants: list[int]

    @classmethod
    def of(cls, pid: int, expect_child: str | None = "sleep", timeout: float = 10) -> "TaskProcesses":
        assert alive(pid), f"the task's bash (pid {pid}) is not running"
        pgid = os.getpgid(pid)
        deadline = time.monotonic() + timeout
        kids: list[psutil.Process] = []
        while time.monotonic() < deadline:
            kids = psutil.Process(pid).children(recursive=True)
            if expect_child is None or any(expect_child in (k.name() or "") for k in kids):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"bash {pid} has no `{expect_child}` child: {[k.name() for k in kids]}")
        return cls(pid, pgid, [k.pid for k in kids])

    def survivors(self) -> list[str]:
        out = [f"pid {p}" for p in [self.pid, *self.descendants] if alive(p)]
        out += [f"group {self.pgid} member {p.pid} ({p.name()})" for p in group_members(self.pgid)]
        return out

    def wait_gone(self, timeout: float = 15) -> list[str]:
        """Waits for every process of the task to end; returns the survivors."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.survivors()
            if not left:
                return []
            time.sleep(0.1)
        return self.survivors()

    def kill_leftovers(self) -> None:
        """Test cleanup: ends what survived, by the recorded ids only."""
        import signal

        if group_members(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in [self.pid, *self.descendants]:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def long_bash(pid_file: str = "bash.pid", secs: int = 300) -> dict:
    """A scripted tool call: the shell records its pid, then sleeps."""
    return openai_tool_call("bash", {"command": f"echo $$ > {pid_file}; sleep {secs}"}, text="Running a long command")


# ---- stacks and fixtures ------------------------------------------------


def start_runs(root: Path, llm: RoutedLLM, extra_env: dict[str, str] | None = None) -> Runs:
    """A stack whose default Trae config (TRAE_CONFIG_FILE) uses the openai
    provider at a route of `llm`; OPENAI_API_KEY is in the environment."""
    root.mkdir(parents=True, exist_ok=True)
    configs = root / "configs"
    configs.mkdir(exist_ok=True)
    default_route = llm.route()
    default_cfg = configs / "default_config.yaml"
    default_cfg.write_text(trae_config_yaml(default_route.base_url))
    env = {"TRAE_CONFIG_FILE": str(default_cfg), "OPENAI_API_KEY": RUNS_API_KEY} | (extra_env or {})
    stack = Stack(root=root, data_dir=root / "data", env=env)
    helpers.LIVE_STACKS.append(stack)
    try:
        stack.start()
    except BaseException:
        helpers.LIVE_STACKS.remove(stack)
        raise
    return Runs(stack=stack, llm=llm, default_route=default_route, configs_dir=configs)


def _stop(runs: Runs) -> None:
    runs.stack.stop()
    if runs.stack in helpers.LIVE_STACKS:
        helpers.LIVE_STACKS.remove(runs.stack)


@pytest.fixture(scope="session")
def runs_llm():
    llm = RoutedLLM().start()
    yield llm
    llm.stop()


@pytest.fixture(scope="session")
def runs(tmp_path_factory, runs_llm) -> Runs:
    r = start_runs(tmp_path_factory.mktemp("runs"), runs_llm)
    yield r
    _stop(r)


@pytest.fixture
def fresh_runs(tmp_path, runs_llm):
    """make(extra_env=None) -> a private Runs stack, stopped after the test."""
    started: list[Runs] = []

    def make(extra_env: dict[str, str] | None = None) -> Runs:
        r = start_runs(tmp_path / f"runs{len(started)}", runs_llm, extra_env)
        started.append(r)
        return r

    yield make
    for r in started:
        _stop(r)


@pytest.fixture
def git_repo(tmp_path) -> Path:
    """A temporary git repository with one commit."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.py").write_text('def greet():\n    print("hello")\n\n\ngreet()\n')
    (repo / "README.md").write_text("# demo\n")
    env = helpers.clean_env() | {
        "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "initial"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, timeout=30)
    return repo



class Reader(threading.Thread):
    """Runs a reader function in a thread; `.result()` re-raises its error."""

    def __init__(self, fn: Callable[[], list[dict]]):
        super().__init__(daemon=True)
        self.fn = fn
        self.value = None
        self.error: BaseException | None = None

    def run(self):
        try:
            self.value = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self.error = e

    def result(self, timeout: float = RUN_WAIT + 30):
        self.join(timeout)
        assert not self.is_alive(), f"reader still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


__all__ = [
    "AP", "RUN_WAIT", "Reader", "Route", "Runs", "RoutedLLM", "TaskProcesses", "alive", "assert_contiguous",
    "assert_well_formed_log", "grpc_stream", "key", "long_bash", "read_sse", "wait_file",
]
