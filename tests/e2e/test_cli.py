"""The client commands of the agentd binary (`run`, `tasks`, `logs`, `stop`,
`artifacts`) run as a user would, against a live agentd over gRPC: progress
of a run (steps out of max_steps, tool calls, token totals) and its exit
code, listing with filters and pages, resumable logs (also across an agentd
that is killed and started again), stop, and an artifact round trip.

Standard output is a pipe here, so `run --follow` prints plain lines; one
test runs it on a pseudo-terminal for the progress-bar path."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP  # noqa: E402
from runs_support import RUN_WAIT, TaskProcesses, assert_well_formed_log, key, long_bash, wait_file  # noqa: E402
from scripted_llm import delayed, error, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

# Exit codes (src/cli/mod.rs).
OK, ERROR, USAGE, FAILED, STOPPED, UNAVAILABLE = 0, 1, 2, 3, 4, 5


def cli_env(stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    return helpers.clean_env() | {"AGENTD_SERVER": f"http://{stack.grpc_target}"} | (extra or {})


def cli(stack, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = RUN_WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([helpers.AGENTD_BIN, *args], env=cli_env(stack, env), cwd=cwd, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == OK, f"{r.args} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


class LiveCli:
    """A client command running in the background; its output lines are
    collected as they come (so a test can wait for one before acting)."""

    def __init__(self, stack, *args: str):
        self.proc = subprocess.Popen([helpers.AGENTD_BIN, *args], env=cli_env(stack), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._new: queue.Queue = queue.Queue()
        for pipe, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(pipe, sink), daemon=True).start()

    def _pump(self, pipe, sink):
        for line in pipe:
            sink.append(line.rstrip("\n"))
            self._new.put(None)

    def wait_line(self, pred, what: str, timeout: float = RUN_WAIT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if pred(line):
                    return line
            if self.proc.poll() is not None and self._new.empty():
                time.sleep(0.2)  # the last lines may still be in the pipe
                break
            try:
                self._new.get(timeout=0.2)
            except queue.Empty:
                pass
        match = [line for line in self.lines if pred(line)]
        assert match, f"no {what} line within {timeout}s; rc={self.proc.poll()} out={self.lines} err={self.err}"
        return match[0]

    def wait(self, timeout: float = RUN_WAIT) -> int:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.1)
        return rc

    def kill(self):
        helpers.stop_process(self.proc, signal.SIGKILL)


def seqs_of(lines: list[str]) -> list[int]:
    return [int(line.split()[0]) for line in lines]


def types_of(lines: list[str]) -> list[str]:
    return [line.split()[2] for line in lines]


# ---- run --------------------------------------------------------------------


def test_run_follow_shows_steps_tool_calls_and_tokens_and_exits_0(runs, tmp_path):
    wd = tmp_path / "wd"
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo cli-marker > made.txt"}, text="Writing the file."),
        openai_tool_call("str_replace_based_edit_tool", {"command": "view", "path": str(wd / "made.txt")}),
        openai_tool_call("task_done", {}, text="All done."),
    )
    r = cli(runs.stack, "run", "make a file", "--working-dir", str(wd), "--provider", "openai",
            "--config-file", runs.config(route), "--max-steps", "7", "--follow")
    lines = ok(r).splitlines()

    first = lines[0]
    m = re.fullmatch(r"task (\S+) started: openai/scripted-model, at most 7 steps, in (.+)", first)
    assert m and m.group(2) == str(wd), first
    task_id = m.group(1)
    assert [line for line in lines if line.startswith("step ") and "/" in line and " " not in line[5:]] == [
        "step 1/7", "step 2/7", "step 3/7"], lines
    tools = [line for line in lines if " tool: " in line]
    assert tools == [
        'step 1/7 tool: bash {"command":"echo cli-marker > made.txt"}',
        f'step 2/7 tool: str_replace_based_edit_tool {json.dumps({"command": "view", "path": str(wd / "made.txt")}, separators=(",", ":"))}',
        "step 3/7 tool: task_done {}",
    ], lines
    # Each tool call is shown within its step, as it happens.
    assert lines.index("step 1/7") < lines.index(tools[0]) < lines.index("step 2/7") < lines.index(tools[1])
    # The scripted model reports 10 input and 5 output tokens per call.
    assert [line for line in lines if " tokens: " in line] == [
        "step 1/7 tokens: 10 in / 5 out; total 10 in / 5 out",
        "step 2/7 tokens: 10 in / 5 out; total 20 in / 10 out",
        "step 3/7 tokens: 10 in / 5 out; total 30 in / 15 out",
    ], lines
    assert "step 1/7 model: Writing the file." in lines
    assert any(line.startswith("step 1/7 result: bash ok") for line in lines), lines
    assert lines[-1] == "completed: All done.", lines
    assert r.stderr == ""
    assert (wd / "made.txt").read_text() == "cli-marker\n"
    assert runs.status(task_id)["task_status"] == "completed"


def test_run_without_follow_prints_the_task_id_and_resolves_relative_paths(runs, tmp_path):
    route = runs.llm.route()  # an empty script: the model calls task_done at once
    (tmp_path / "conf").mkdir()
    cfg = Path(runs.config(route))
    local_cfg = tmp_path / "conf" / "mine.yaml"
    local_cfg.write_text(cfg.read_text())
    r = cli(runs.stack, "run", "quick one", "-w", "rel/wd", "--config-file", "conf/mine.yaml", cwd=tmp_path)
    out = ok(r)
    task_id = out.strip()
    assert out == f"{task_id}\n" and str(uuid.UUID(task_id)) == task_id, out
    st = runs.wait_status(task_id, {"completed", "failed", "stopped"})
    assert st["task_status"] == "completed", st
    start = st["messages"][0]
    assert start["type"] == "start" and start["data"]["working_dir"] == str(tmp_path / "rel" / "wd"), start
    assert (tmp_path / "rel" / "wd").is_dir()
    assert len(route.requests) == 1, "the config file given relative to the current directory was not used"


def test_failed_runs_exit_3(runs, tmp_path):
    # The provider fails until the retries run out.
    route = runs.llm.route().script(*[error(500, "scripted outage")] * 3)
    r = cli(runs.stack, "run", "fail please", "-w", str(tmp_path / "a"), "--follow",
            "--config-file", runs.config(route, max_retries=1))
    assert r.returncode == FAILED, (r.returncode, r.stdout, r.stderr)
    last = r.stdout.splitlines()[-1]
    assert last.startswith("failed: ") and "500" in last, r.stdout

    # max_steps runs out: one step, no task_done.
    route = runs.llm.route().script(openai_tool_call("bash", {"command": "true"}))
    r = cli(runs.stack, "run", "never done", "-w", str(tmp_path / "b"), "--max-steps", "1", "--follow",
            "--config-file", runs.config(route))
    assert r.returncode == FAILED, (r.returncode, r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert "step 1/1" in lines and "step 1/1 tool: bash {\"command\":\"true\"}" in lines, lines
    assert lines[-1].startswith("failed: ") and "step" in lines[-1].lower(), lines

    # A request agentd refuses never starts: exit 1 with its reason.
    r = cli(runs.stack, "run", "x", "-w", str(tmp_path / "c"), "--provider", "no-such-provider", "--follow")
    assert r.returncode == ERROR, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.startswith("agentd: submitting the task: ") and "[INVALID_REQUEST]" in r.stderr


def test_stop_ends_a_followed_run_which_exits_4(runs, tmp_path):
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    live = LiveCli(runs.stack, "run", "run something long", "-w", str(wd), "--follow",
                   "--config-file", runs.config(route))
    procs = None
    try:
        first = live.wait_line(lambda line: line.startswith("task "), "start")
        task_id = first.split()[1]
        # The tool call shows up while the run is still going.
        live.wait_line(lambda line: line.startswith("step 1/20 tool: bash "), "tool call")
        procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
        assert live.proc.poll() is None, "run --follow ended while the task was running"

        r = cli(runs.stack, "stop", task_id)
        assert ok(r) == "Task stopped successfully\n"
        assert live.wait() == STOPPED, (live.lines, live.err)
        assert live.lines[-1].startswith("stopped: "), live.lines
        assert not procs.wait_gone(timeout=15)
        assert runs.status(task_id)["task_status"] == "stopped"
        # Stopping again is harmless and says why.
        assert ok(cli(runs.stack, "stop", task_id)) == "Task is not running (status: stopped)\n"
    finally:
        live.kill()
        if procs is not None:
            procs.kill_leftovers()

    r = cli(runs.stack, "stop", "no-such-task")
    assert r.returncode == ERROR and "not found" in r.stderr and "[TASK_NOT_FOUND]" in r.stderr, r


def test_ctrl_c_leaves_the_run_going_and_says_how_to_resume(runs, tmp_path):
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    live = LiveCli(runs.stack, "run", "interrupt me", "-w", str(wd), "--follow", "--config-file", runs.config(route))
    procs = None
    resumed = None
    try:
        task_id = live.wait_line(lambda line: line.startswith("task "), "start").split()[1]
        live.wait_line(lambda line: " tool: bash " in line, "tool call")
        procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
        live.proc.send_signal(signal.SIGINT)
        assert live.wait() == 130, (live.lines, live.err)
        hint = "\n".join(live.err)
        m = re.search(rf"agentd logs {task_id} --follow --after-seq (\d+)", hint)
        assert m, hint
        after = int(m.group(1))
        assert runs.status(task_id)["task_status"] == "running"
        # Following from the hint shows what came next, up to the end.
        resumed = LiveCli(runs.stack, "logs", task_id, "--follow", "--after-seq", str(after))
        ok(cli(runs.stack, "stop", task_id))
        assert resumed.wait() == OK, (resumed.lines, resumed.err)
        events = runs.sse(task_id)
        assert seqs_of(resumed.lines) == [e["seq"] for e in events if e["seq"] > after], resumed.lines
        assert types_of(resumed.lines)[-2:] == ["stopped", "end"], resumed.lines
    finally:
        live.kill()
        if resumed is not None:
            resumed.kill()
        if procs is not None:
            procs.kill_leftovers()


def test_run_follow_on_a_terminal_draws_progress_and_keeps_the_exit_code(runs, tmp_path):
    import pty

    route = runs.llm.route().script(openai_tool_call("bash", {"command": "echo hi"}),
                                    openai_tool_call("task_done", {}, text="tty done"))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([helpers.AGENTD_BIN, "run", "on a tty", "-w", str(tmp_path / "wd"), "--follow",
                             "--config-file", runs.config(route)],
                            env=cli_env(runs.stack), stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO once the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=RUN_WAIT)
        reader.join(10)
    finally:
        helpers.stop_process(proc, signal.SIGKILL)
        os.close(controller)
    shown = b"".join(chunks).decode(errors="replace")
    assert rc == OK, (rc, shown, proc.stderr.read())
    assert "step 1/20 tool: bash {\"command\":\"echo hi\"}" in shown, shown
    assert "completed: tty done" in shown, shown


# ---- tasks --------------------------------------------------------------------


def all_tasks(stack, *args: str) -> list[dict]:
    """Every page of `tasks --json` with the given filter."""
    out, page = [], 1
    while True:
        listed = json.loads(ok(cli(stack, "tasks", "--json", "--page-size", "100", "--page", str(page), *args)))
        out += listed["tasks"]
        if page >= listed["pagination"]["pages"]:
            return out
        page += 1


def test_tasks_lists_with_status_filter_and_pages(runs, tmp_path):
    done = ok(cli(runs.stack, "run", "done soon", "-w", str(tmp_path / "d"),
                  "--config-file", runs.config(runs.llm.route()))).strip()
    runs.wait_status(done, "completed")
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    running = ok(cli(runs.stack, "run", "long one", "-w", str(wd), "--config-file", runs.config(route))).strip()
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        completed = all_tasks(runs.stack, "--status", "completed")
        assert done in [t["task_id"] for t in completed] and running not in [t["task_id"] for t in completed]
        assert {t["status"] for t in completed} == {"completed"}
        mine = next(t for t in completed if t["task_id"] == done)
        assert mine["input"] == "done soon" and helpers.ISO_RE.match(mine["created_at"]), mine

        in_progress = all_tasks(runs.stack, "--status", "running")
        assert running in [t["task_id"] for t in in_progress] and done not in [t["task_id"] for t in in_progress]
        assert {t["status"] for t in in_progress} == {"running"}

        # The table: a header, one row per task, the page summary on stderr.
        r = cli(runs.stack, "tasks", "--status", "running", "--page-size", "100")
        rows = ok(r).splitlines()
        assert rows[0].split() == ["TASK", "ID", "STATUS", "CREATED", "INPUT"], rows
        row = next(line for line in rows if line.startswith(running))
        assert row.split()[1] == "running" and row.endswith("long one"), row
        assert "with status running" in r.stderr, r.stderr

        # Pages of one: different tasks, and the total counts them all.
        p1 = json.loads(ok(cli(runs.stack, "tasks", "--json", "--page", "1", "--page-size", "1")))
        p2 = json.loads(ok(cli(runs.stack, "tasks", "--json", "--page", "2", "--page-size", "1")))
        assert len(p1["tasks"]) == 1 and len(p2["tasks"]) == 1
        assert p1["tasks"][0]["task_id"] != p2["tasks"][0]["task_id"]
        total = p1["pagination"]["total"]
        assert total >= 2 and p1["pagination"] == {"page": 1, "size": 1, "total": total, "pages": total}
        assert total == len(all_tasks(runs.stack))

        bad = cli(runs.stack, "tasks", "--status", "bogus")
        assert bad.returncode == USAGE and "bogus" in bad.stderr, bad
    finally:
        runs.stop(running)
        procs.kill_leftovers()


# ---- logs ---------------------------------------------------------------------


def test_logs_print_seqs_and_resume_after_one(runs, tmp_path):
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "echo one"}),
        openai_tool_call("bash", {"command": "echo two"}),
        openai_tool_call("task_done", {}, text="logged"),
    )
    task_id = ok(cli(runs.stack, "run", "log me", "-w", str(tmp_path / "wd"),
                     "--config-file", runs.config(route))).strip()
    runs.wait_status(task_id, "completed")
    events = runs.sse(task_id)
    assert_well_formed_log(events, task_id)
    n = len(events)

    full = ok(cli(runs.stack, "logs", task_id)).splitlines()
    assert seqs_of(full) == list(range(1, n + 1)), full
    assert types_of(full) == [e["type"] for e in events], full
    assert [line for line in full if "tool_call" in line][0].endswith('bash {"command":"echo one"}'), full
    assert "complete" in full[-2] and full[-2].endswith("logged"), full

    # Resuming prints exactly what comes after the seq, the same way.
    for after in (3, n - 1):
        rest = ok(cli(runs.stack, "logs", task_id, "--after-seq", str(after))).splitlines()
        assert rest == full[after:], (after, rest)
    # --follow on a finished task: the same, then it ends (nothing to wait for).
    assert ok(cli(runs.stack, "logs", task_id, "--follow", "--after-seq", "3", timeout=20)).splitlines() == full[3:]
    assert ok(cli(runs.stack, "logs", task_id, "--follow", "--after-seq", str(n), timeout=20)) == ""

    # JSON lines: the events every stream serves.
    as_json = [json.loads(line) for line in ok(cli(runs.stack, "logs", task_id, "--json")).splitlines()]
    assert key(as_json) == key(events)
    assert [e.get("data") for e in as_json] == [e.get("data") for e in events]

    r = cli(runs.stack, "logs", "no-such-task")
    assert r.returncode == ERROR and "not found" in r.stderr, r


def test_logs_follow_from_past_the_end_still_ends(runs, tmp_path):
    """A reader resumed past the last seq of a log that then ends: agentd's
    stream never ends then (heartbeats only), so the client notices the task
    finished at the next heartbeat (15 s of silence) and exits."""
    route = runs.llm.route().script(long_bash())
    wd = tmp_path / "wd"
    task_id = runs.run("long", wd, route=route)
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    live = LiveCli(runs.stack, "logs", task_id, "--follow", "--after-seq", "1000")
    try:
        time.sleep(1.5)  # let it open the stream before the end is written
        runs.stop(task_id)
        started = time.monotonic()
        assert live.wait(timeout=40) == OK, (live.lines, live.err)
        assert time.monotonic() - started > 5, "ended before a heartbeat: the stream did deliver an end?"
        assert live.lines == [] and live.err == [], (live.lines, live.err)
    finally:
        live.kill()
        procs.kill_leftovers()


def test_logs_follow_resumes_across_an_agentd_restart(fresh_runs, tmp_path):
    """The connection drops (agentd is killed); `logs --follow` reconnects and
    resumes after the last seq it printed: the log comes out whole, once."""
    runs = fresh_runs()
    # The model answers after a second, so the tool call arrives on the open
    # stream (not in the history printed first) and the kill cuts that stream.
    route = runs.llm.route().script(delayed(long_bash(), 1.0))
    wd = tmp_path / "wd"
    task_id = runs.run("long", wd, route=route)
    live = LiveCli(runs.stack, "logs", task_id, "--follow")
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        live.wait_line(lambda line: "tool_call" in line, "tool_call")
        before = len(live.lines)
        runs.stack.stop_agentd(signal.SIGKILL)
        runs.stack.start_agentd()  # resumes the interrupted run, which then completes
        assert live.wait(timeout=RUN_WAIT) == OK, (live.lines, live.err)
    finally:
        live.kill()
        procs.kill_leftovers()
    events = runs.sse(task_id)
    assert_well_formed_log(events, task_id)
    assert seqs_of(live.lines) == [e["seq"] for e in events], (live.lines, [e["type"] for e in events])
    assert types_of(live.lines)[-2:] == ["complete", "end"], live.lines
    assert {"interrupted", "resumed"} <= set(types_of(live.lines)), live.lines
    assert len(live.lines) > before
    last_before = seqs_of(live.lines)[before - 1]
    err = "\n".join(live.err)
    assert f"connection lost after seq {last_before}" in err, err
    assert f"reconnected; resuming after seq {last_before}" in err, err


# ---- artifacts ------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_artifacts_put_list_get_round_trip(stack, tmp_path):
    task_id = stack.create_task("artifacts via the cli")["task_id"]
    data = os.urandom(3 * 1024 * 1024 + 12345)  # several upload and download chunks
    src = tmp_path / "报告 data.bin"
    src.write_bytes(data)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")

    put = json.loads(ok(cli(stack, "artifacts", task_id, "put", str(src), "--relative-path", "in", "--json")))
    assert put["file_name"] == src.name and put["relative_path"] == "in" and put["file_size"] == len(data), put
    assert put["agent_created"] is False
    aid = put["artifact_id"]
    row = ok(cli(stack, "artifacts", task_id, "put", str(empty))).strip()
    empty_id = row.split()[0]
    assert row.split()[1] == "0" and row.endswith("empty.txt"), row

    # Listed by the CLI and by REST, the same.
    listed = json.loads(ok(cli(stack, "artifacts", task_id, "--json")))["artifacts"]
    assert sorted(a["artifact_id"] for a in listed) == sorted([aid, empty_id])
    rest = {a["artifact_id"]: a for a in stack.artifacts(task_id)}
    assert rest[aid]["file_size"] == len(data) and rest[aid]["file_name"] == src.name
    table = ok(cli(stack, "artifacts", task_id)).splitlines()
    assert table[0].split()[:2] == ["ARTIFACT", "ID"] and any(
        line.startswith(aid) and line.endswith(f"in/{src.name}") for line in table), table

    # Downloads: to a named file, to the file's own name here, to stdout.
    out = tmp_path / "out.bin"
    r = cli(stack, "artifacts", task_id, "get", aid, "-o", str(out))
    ok(r)
    assert sha256(out.read_bytes()) == sha256(data)
    assert f"wrote {len(data)} bytes" in r.stderr
    here = tmp_path / "here"
    here.mkdir()
    ok(cli(stack, "artifacts", task_id, "get", aid, cwd=here))
    assert sha256((here / src.name).read_bytes()) == sha256(data)
    assert sorted(p.name for p in here.iterdir()) == [src.name], "a partial file was left behind"
    # An existing file is not replaced unless named with -o.
    (here / src.name).write_bytes(b"keep me")
    r = cli(stack, "artifacts", task_id, "get", aid, cwd=here)
    assert r.returncode == ERROR and "already exists" in r.stderr, r
    assert (here / src.name).read_bytes() == b"keep me"
    piped = subprocess.run([helpers.AGENTD_BIN, "artifacts", task_id, "get", aid, "-o", "-"], env=cli_env(stack),
                           capture_output=True, timeout=RUN_WAIT)
    assert piped.returncode == OK and sha256(piped.stdout) == sha256(data), piped.stderr
    ok(cli(stack, "artifacts", task_id, "get", empty_id, "-o", str(tmp_path / "e")))
    assert (tmp_path / "e").read_bytes() == b""
    # The server stored the very bytes (REST download through Envoy).
    via_rest = requests.get(f"{stack.ap_url}{AP}/tasks/{task_id}/artifacts/{aid}", timeout=60)
    assert via_rest.status_code == 200 and sha256(via_rest.content) == sha256(data)

    # Refusals: exit 1 with agentd's reason, and nothing stored.
    r = cli(stack, "artifacts", task_id, "put", str(src), "--relative-path", "../escape")
    assert r.returncode == ERROR and "[INVALID_REQUEST]" in r.stderr, r
    r = cli(stack, "artifacts", task_id, "get", "no-such-artifact", "-o", str(tmp_path / "x"))
    assert r.returncode == ERROR and "[ARTIFACT_NOT_FOUND]" in r.stderr, r
    assert not (tmp_path / "x").exists()
    r = cli(stack, "artifacts", task_id, "put", str(tmp_path / "missing.bin"))
    assert r.returncode == ERROR and "missing.bin" in r.stderr, r
    assert len(stack.artifacts(task_id)) == 2


# ---- connection -----------------------------------------------------------------


def test_api_key_is_sent_as_agentd_expects(fresh_runs):
    runs = fresh_runs(extra_env={"AGENTD_API_KEYS": "k-cli-1,k-cli-2"})
    r = cli(runs.stack, "tasks")
    assert r.returncode == ERROR and "missing API key" in r.stderr and "--api-key" in r.stderr, r
    r = cli(runs.stack, "tasks", "--api-key", "wrong")
    assert r.returncode == ERROR and "invalid API key" in r.stderr, r
    ok(cli(runs.stack, "tasks", "--api-key", "k-cli-2"))
    ok(cli(runs.stack, "tasks", env={"AGENTD_API_KEY": "k-cli-1"}))


def test_unreachable_server_exits_5_at_once(stack):
    dead = f"http://127.0.0.1:{helpers.free_port()}"
    for args in (["tasks"], ["logs", "x", "--follow"], ["stop", "x"]):
        started = time.monotonic()
        r = cli(stack, *args, "--server", dead, timeout=30)
        assert r.returncode == UNAVAILABLE, (args, r)
        assert f"cannot reach agentd at {dead}" in r.stderr, r.stderr
        assert time.monotonic() - started < 15, args
