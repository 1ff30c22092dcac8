"""The web console (issue 17) in a real browser: Playwright driving Debian's Chromium against agentd + Envoy with
the scripted LLM. The console talks to agentd only over gRPC-Web through Envoy; these tests act in the page and
check the outcome over REST (or on the processes) where a user could not see it.

- a run started from the form streams its events live (held at a gate file until the page has shown it running)
  and reaches `completed` without a reload; its patch opens as a diff;
- an Agent Protocol task made over REST is stepped from the page until `is_last`;
- files uploaded by drag and drop and by the file picker (several chunks) download back byte for byte;
- Stop on a `sleep 300` run ends its processes (by pid), and the live list follows;
- the event log resumes from its last seq after Envoy restarts under it (no event lost or repeated);
- with API keys on, the page asks for one, refuses a wrong one, works with the right one, and keeps it in
  sessionStorage only;
- the files: `/` redirects to /console/ on both ports, hashed assets are immutable, index.html is revalidated,
  and without a build /console/ says how to get one while the API works.

Screenshots of every page go to test-output/console/ (or $CONSOLE_SCREENSHOTS), with page-load numbers in
load.json. The page may reach nothing but 127.0.0.1: any other request fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

pytest.register_assert_rewrite("runs_support")

import helpers  # noqa: E402
from helpers import AP, MIB  # noqa: E402
from runs_support import RUN_WAIT, TaskProcesses, _stop, long_bash, start_runs, wait_file  # noqa: E402
from scripted_llm import openai_text, openai_tool_call  # noqa: E402

pytest_plugins = ["runs_support"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="scripts/setup --test installs playwright")
expect = playwright_api.expect
expect.set_options(timeout=RUN_WAIT * 1000)

CONSOLE_DIR = helpers.REPO / "web" / "console" / "dist"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS") or helpers.REPO / "test-output" / "console")
API_KEY = "sk-console-e2e-not-a-secret"


# ---- fixtures ---------------------------------------------------------------


def _console_env(**extra: str) -> dict[str, str]:
    if not (CONSOLE_DIR / "index.html").is_file():
        pytest.fail(f"the web console is not built ({CONSOLE_DIR}): run scripts/setup (needs Node.js 20.19+ and npm)")
    return {"AGENTD_CONSOLE_DIR": str(CONSOLE_DIR)} | extra


@pytest.fixture(scope="module")
def console_runs(tmp_path_factory, runs_llm):
    """A stack serving the built console, its default config on the scripted LLM."""
    r = start_runs(tmp_path_factory.mktemp("console"), runs_llm, _console_env())
    yield r
    _stop(r)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/setup --test installs Debian's chromium")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-proxy-server", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """A fresh browser context and page that may reach 127.0.0.1 only (the console's files, and gRPC-Web for
    everything else), with uncaught page errors collected."""

    def __init__(self, browser):
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._only_loopback)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _only_loopback(self, route):
        req = route.request
        url = urlparse(req.url)
        if req.url.startswith(("data:", "blob:")):
            route.continue_()
        elif url.hostname != "127.0.0.1":
            self.blocked.append(req.url)
            route.abort()
        elif url.path == "/" or url.path.startswith("/console/"):
            route.continue_()  # the console's own files
        elif req.headers.get("content-type", "").startswith("application/grpc-web"):
            route.continue_()  # the generated client's calls
        else:
            self.blocked.append(f"not gRPC-Web: {req.method} {req.url}")
            route.abort()

    def close(self) -> None:
        self.context.close()
        assert not self.blocked, f"the console reached beyond its files and gRPC-Web on 127.0.0.1: {self.blocked}"
        assert not self.errors, f"uncaught errors in the page: {self.errors}"


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p.page
    p.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def event_log(page) -> list[tuple[int, str]]:
    """(seq, type) of every event the page shows, in page order."""
    return [
        (int(seq), kind)
        for seq, kind in page.locator("#events li").evaluate_all("els => els.map(e => [e.dataset.seq, e.dataset.type])")
    ]


def server_log(runs, task_id: str) -> list[tuple[int, str]]:
    return [(m["seq"], m["type"]) for m in runs.status(task_id)["messages"]]


def gate_bash(gate: str = "go") -> dict:
    """A tool call that holds the run until the test creates `gate` in the working directory."""
    return openai_tool_call("bash", {"command": f"while [ ! -e {gate} ]; do sleep 0.1; done; echo released"},
                            text="Waiting for the gate")


# ---- the files --------------------------------------------------------------


def test_console_files_on_both_ports_with_cache_headers(console_runs):
    stack = console_runs.stack
    for base in stack.urls():
        r = requests.get(f"{base}/", allow_redirects=False, timeout=10)
        assert r.status_code in (302, 307) and r.headers["location"] == "/console/", (r.status_code, r.headers)
        index = requests.get(f"{base}/console/", timeout=10)
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html"), index.headers
        assert index.headers["cache-control"] == "no-cache", index.headers
        assets = re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', index.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), index.text
        for asset in assets:
            a = requests.get(f"{base}{asset}", timeout=10)
            assert a.status_code == 200, asset
            assert a.headers["cache-control"] == "public, max-age=31536000, immutable", (asset, a.headers)
            # Precompressed by the build: the same bytes, a third of the transfer.
            z = requests.get(f"{base}{asset}", headers={"Accept-Encoding": "gzip"}, timeout=10)
            assert z.headers.get("content-encoding") == "gzip" and z.content == a.content, (asset, z.headers)
            assert "accept-encoding" in z.headers.get("vary", "").lower(), z.headers
        # No CDN: every script and stylesheet is the console's own.
        assert not re.search(r'(?:src|href)="(?:https?:)?//', index.text), index.text
        missing = requests.get(f"{base}/console/assets/nope-0000.js", timeout=10)
        assert missing.status_code == 404 and "immutable" not in missing.headers.get("cache-control", "")
    # The documents' REST routes are untouched.
    assert requests.get(f"{stack.trae_url}/api/health", timeout=10).json()["status"] == "healthy"


def test_without_a_build_the_console_says_how_and_the_api_works(tmp_path):
    empty = tmp_path / "no-console"
    empty.mkdir()
    stack = helpers.Stack(root=tmp_path, data_dir=tmp_path / "data", env={"AGENTD_CONSOLE_DIR": str(empty)})
    helpers.LIVE_STACKS.append(stack)
    try:
        stack.start()
        r = requests.get(f"{stack.ap_url}/console/", timeout=10)
        assert r.status_code == 503 and "scripts/setup" in r.text and "Node.js" in r.text, r.text
        assert requests.get(f"{stack.ap_url}{AP}/tasks", timeout=10).status_code == 200
    finally:
        stack.stop()
        helpers.LIVE_STACKS.remove(stack)


def test_the_task_list_pages_newest_first_and_filters_by_status(tmp_path, browser):
    """30 tasks: page 1 holds the 25 newest, page 2 the 5 oldest, newest first; the filter narrows it; a new task
    appears on the watched page."""
    stack = helpers.Stack(root=tmp_path, data_dir=tmp_path / "data", env=_console_env())
    helpers.LIVE_STACKS.append(stack)
    p = Page(browser)
    try:
        stack.start()
        made = {stack.create_task(f"task {i:02d}")["task_id"] for i in range(30)}
        # The store's order (creation time, then id), oldest first.
        listed = requests.get(f"{stack.ap_url}{AP}/tasks", params={"page": 1, "size": 100}, timeout=10).json()["tasks"]
        oldest_first = [t["task_id"] for t in listed]
        assert set(oldest_first) == made
        page = p.page
        page.goto(f"{stack.ap_url}/console/#/tasks")
        rows = page.locator("table.tasks tbody tr[data-task-id]")
        expect(page.locator("#page-info")).to_have_text("30 tasks · page 1 of 2")
        expect(rows).to_have_count(25)
        assert rows.evaluate_all("els => els.map(e => e.dataset.taskId)") == oldest_first[::-1][:25]
        expect(page.get_by_role("button", name="← Newer")).to_be_disabled()
        page.get_by_role("button", name="Older →").click()
        expect(page.locator("#page-info")).to_have_text("30 tasks · page 2 of 2")
        expect(rows).to_have_count(5)
        assert rows.evaluate_all("els => els.map(e => e.dataset.taskId)") == oldest_first[::-1][25:]
        expect(page.get_by_role("button", name="Older →")).to_be_disabled()
        assert "page=2" in page.url

        page.get_by_label("Status").select_option("running")
        expect(page.locator("#page-info")).to_have_text("0 tasks · page 1 of 1")
        expect(page.locator("table.tasks tbody")).to_contain_text("No tasks yet.")
        page.get_by_label("Status").select_option("created")
        expect(page.locator("#page-info")).to_have_text("30 tasks · page 1 of 2")
        # A task created now shows up on the watched page without a reload.
        newest = stack.create_task("one more")["task_id"]
        expect(rows.first).to_have_attribute("data-task-id", newest)
        expect(page.locator("#page-info")).to_have_text("31 tasks · page 1 of 2")
        shot(page, "tasks-paged")
    finally:
        p.close()
        stack.stop()
        helpers.LIVE_STACKS.remove(stack)


# ---- runs, steps, files, stop -----------------------------------------------


def test_start_a_run_from_the_form_watch_it_live_and_open_its_patch(console_runs, git_repo, page):
    runs = console_runs
    hello = git_repo / "hello.py"
    runs.default_route.script(
        gate_bash(),
        openai_tool_call("str_replace_based_edit_tool", {
            "command": "str_replace", "path": str(hello),
            "old_str": 'print("hello")', "new_str": 'print("Hello, World!")'}),
        openai_tool_call("task_done", {}, text="The greeting is fixed."),
    )
    t0 = time.monotonic()
    page.goto(f"{runs.stack.trae_url}/")
    expect(page).to_have_url(re.compile(r"/console/"))
    expect(page.locator("table.tasks")).to_be_visible()
    load = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        return {dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd,
                transferred_bytes: performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize, 0)
                                   + n.transferSize}; }""")
    load["task_list_visible_ms"] = round((time.monotonic() - t0) * 1000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "load.json").write_text(json.dumps(load, indent=2))
    print(f"console page load: {load}")
    shot(page, "tasks-empty")

    page.get_by_role("link", name="Start a run").click()
    page.get_by_label("Task").fill("Fix the greeting")
    page.get_by_label("Working directory").fill(str(git_repo))
    page.get_by_label("Provider").fill("openai")
    page.get_by_label("Max steps").fill("10")
    page.get_by_label("Must produce a patch").check()
    page.get_by_text("More options").click()
    page.get_by_label("Patch file").fill("out/task.patch")
    shot(page, "run-form")
    page.get_by_role("button", name="Start run").click()

    expect(page).to_have_url(re.compile(r"#/tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")
    # Live: the run is held in its first tool call, and the page shows it so.
    call = page.locator('#events li[data-type="tool_call"]')
    expect(call).to_have_count(1)
    expect(page.locator("#task-facts")).to_have_attribute("data-status", "running")
    assert page.locator('#events li[data-type="complete"]').count() == 0
    # The tool call is folded; unfolded, it shows its arguments.
    details = call.locator("details")
    assert details.get_attribute("open") is None
    details.locator("summary").click()
    expect(details.locator("pre")).to_contain_text("while [ ! -e go ]")
    shot(page, "task-running")

    (git_repo / "go").write_text("")
    expect(page.locator('#events li[data-type="end"]')).to_have_count(1)
    expect(page.locator("#task-facts")).to_have_attribute("data-status", "completed")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    # Every event of the log, once, in order.
    assert event_log(page) == server_log(runs, task_id)
    assert runs.default_route.remaining() == 0

    page.get_by_role("button", name="Show patch").click()
    diff = page.locator("pre.diff")
    expect(diff.locator(".d-add", has_text='print("Hello, World!")')).to_have_count(1)
    expect(diff.locator(".d-del", has_text='print("hello")')).to_have_count(1)
    assert diff.inner_text().strip() == (git_repo / "out" / "task.patch").read_text().strip()
    shot(page, "task-completed-patch")

    # The list shows it with its steps and tokens (the scripted model: 10 in + 5 out per call).
    page.get_by_role("link", name="Tasks").click()
    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_have_attribute("data-status", "completed")
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "Trae" and cells[5] == "3" and cells[6] == "45", cells
    shot(page, "tasks")


def test_the_form_shows_the_servers_validation_error_and_works_by_keyboard(console_runs, page):
    body = {"task": "x", "working_dir": "relative/dir"}
    expected = requests.post(f"{console_runs.stack.trae_url}/api/run", json=body, timeout=10)
    assert expected.status_code == 400, expected.text
    page.goto(f"{console_runs.stack.ap_url}/console/#/run")
    # By keyboard alone: the form opens focused on its first field; Enter submits it.
    expect(page.get_by_label("Task")).to_be_focused()
    page.keyboard.type(body["task"])
    page.keyboard.press("Tab")
    expect(page.get_by_label("Working directory")).to_be_focused()
    page.keyboard.type(body["working_dir"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text(expected.json()["error"])
    expect(page.get_by_role("alert")).to_be_focused()
    assert "#/run" in page.url
    shot(page, "run-form-error")


def test_step_an_agent_protocol_task_from_the_console_until_is_last(console_runs, page):
    runs = console_runs
    route = runs.llm.route().script(
        openai_tool_call("bash", {"command": "printf 'v1\\n' > notes.txt"}, text="Writing the notes"),
        openai_tool_call("task_done", {}, text="Notes written."),
    )
    task = runs.stack.create_task("write the notes", config_file=runs.config(route))
    task_id = task["task_id"]
    page.goto(f"{runs.stack.ap_url}/console/#/tasks/{task_id}")
    expect(page.get_by_role("heading", name="Steps")).to_be_visible()
    run = page.get_by_role("button", name="Run next step")
    steps = page.locator("#steps li[data-step-id]")

    page.get_by_label("Step input").fill("start with the notes")
    run.click()
    expect(steps).to_have_count(1)
    expect(run).to_be_enabled()
    assert page.locator('#steps li[data-is-last="true"]').count() == 0
    expect(page.locator('#artifacts li[data-file-name="notes.txt"]')).to_have_count(1)
    shot(page, "ap-task-one-step")
    run.click()
    expect(page.locator('#steps li[data-is-last="true"]')).to_have_count(1)
    expect(steps).to_have_count(2)
    expect(run).to_be_disabled()
    shot(page, "ap-task-last-step")

    listed = requests.get(f"{runs.stack.ap_url}{AP}/tasks/{task_id}/steps", timeout=10).json()["steps"]
    assert [s["is_last"] for s in listed] == [False, True], listed
    assert listed[0]["input"] == "start with the notes", listed[0]
    assert route.remaining() == 0


def test_upload_by_drop_and_by_picker_then_download_the_same_bytes(console_runs, page):
    stack = console_runs.stack
    task_id = stack.create_task("files")["task_id"]
    page.goto(f"{stack.trae_url}/console/#/tasks/{task_id}")
    expect(page.locator("#artifacts")).to_contain_text("No artifacts.")

    small = b"hello \x00\xff console\n"
    drop = page.evaluate_handle(
        """(b64) => { const dt = new DataTransfer();
            dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], "dropped.bin"));
            return dt; }""",
        base64.b64encode(small).decode(),
    )
    page.locator("#drop-zone").dispatch_event("drop", {"dataTransfer": drop})
    expect(page.locator('#artifacts li[data-file-name="dropped.bin"]')).to_have_count(1)

    big = os.urandom(9 * MIB + 12345)  # three chunks of at most 4 MiB
    page.get_by_label("Upload into").fill("data")
    page.locator("#upload-file").set_input_files(
        files=[{"name": "big.bin", "mimeType": "application/octet-stream", "buffer": big}])
    expect(page.locator('#artifacts li[data-file-name="big.bin"]')).to_have_count(1)
    expect(page.locator("#upload-state")).to_have_text(re.compile(r"^Uploaded big\.bin"))
    shot(page, "artifacts")

    listed = requests.get(f"{stack.ap_url}{AP}/tasks/{task_id}/artifacts", timeout=10).json()["artifacts"]
    by_name = {a["file_name"]: a for a in listed}
    assert by_name["big.bin"]["relative_path"] == "data" and by_name["big.bin"]["file_size"] == len(big), listed
    assert by_name["dropped.bin"]["agent_created"] is False, listed
    for name, data in (("dropped.bin", small), ("big.bin", big)):
        rest = requests.get(f"{stack.ap_url}{AP}/tasks/{task_id}/artifacts/{by_name[name]['artifact_id']}", timeout=30)
        assert rest.content == data, f"{name}: stored bytes differ"
        with page.expect_download() as got:
            page.locator(f'#artifacts li[data-file-name="{name}"] button.download').click()
        assert got.value.suggested_filename == name
        assert Path(got.value.path()).read_bytes() == data, f"{name}: downloaded bytes differ"


def test_stop_a_sleeping_run_from_the_console_ends_its_processes(console_runs, page, tmp_path):
    runs = console_runs
    wd = tmp_path / "wd"
    wd.mkdir()
    page.goto(f"{runs.stack.trae_url}/console/#/tasks")
    expect(page.locator("#live")).to_have_text("live")
    task_id = runs.run("sleep for a long time", wd, route=runs.llm.route().script(long_bash()))
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        # The live list shows the new run without a reload.
        row = page.locator(f'tr[data-task-id="{task_id}"]')
        expect(row).to_have_attribute("data-status", "running")
        shot(page, "tasks-running")
        row.get_by_role("link").click()
        expect(page.locator('#events li[data-type="tool_call"]')).to_have_count(1)
        stop = page.get_by_role("button", name="Stop")
        expect(stop).to_be_enabled()
        stop.click()
        expect(page.locator('#events li[data-type="end"]')).to_have_count(1)
        expect(page.locator("#task-facts")).to_have_attribute("data-status", "stopped")
        assert procs.wait_gone() == [], "processes of the stopped run are still running"
        shot(page, "task-stopped")
        assert runs.status(task_id)["task_status"] == "stopped"
        page.go_back()
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_attribute("data-status", "stopped")
    finally:
        procs.kill_leftovers()


def test_the_event_log_resumes_from_its_last_seq_after_envoy_restarts(console_runs, page, tmp_path):
    runs = console_runs
    wd = tmp_path / "wd"
    wd.mkdir()
    route = runs.llm.route().script(gate_bash(), openai_tool_call("task_done", {}, text="done"))
    task_id = runs.run("wait for the gate", wd, route=route)
    page.goto(f"{runs.stack.trae_url}/console/#/tasks/{task_id}")
    expect(page.locator('#events li[data-type="tool_call"]')).to_have_count(1)
    page.evaluate("""() => { window.__states = [];
        new MutationObserver(() => window.__states.push(document.getElementById('stream-state').textContent))
          .observe(document.getElementById('stream-state'), {childList: true, characterData: true, subtree: true}); }""")
    shown_before = event_log(page)

    helpers.stop_process(runs.stack.envoy)
    runs.stack.start_envoy()
    (wd / "go").write_text("")
    expect(page.locator('#events li[data-type="end"]')).to_have_count(1)
    states = page.evaluate("window.__states")
    assert any(f"after #{shown_before[-1][0]}" in s for s in states), states
    assert event_log(page) == server_log(runs, task_id), "events lost or repeated across the reconnect"
    expect(page.locator("#task-facts")).to_have_attribute("data-status", "completed")


def test_a_run_resumed_after_an_agentd_restart_shows_as_one_log_with_its_summaries(console_runs, page, tmp_path):
    """The page follows a run across an agentd shutdown and restart: the
    stream comes back after its last seq, `interrupted` and `resumed` show as
    such, and lakeview's summary of the step after the restart shows too."""
    runs = console_runs
    wd = tmp_path / "wd"
    wd.mkdir()
    agent = runs.llm.route().script(long_bash(), openai_tool_call("task_done", {}, text="done after the restart"))
    lakeview = runs.llm.route().script(
        *[openai_text(" is finishing.</task><details>It calls task_done.</details>"), openai_text("REPORT</tags>")] * 2)
    task_id = runs.run("outlive a restart", wd, route=agent, config_file=runs.config(agent, lakeview=lakeview))
    procs = TaskProcesses.of(int(wait_file(wd / "bash.pid")))
    try:
        page.goto(f"{runs.stack.trae_url}/console/#/tasks/{task_id}")
        expect(page.locator('#events li[data-type="tool_call"]')).to_have_count(1)
        runs.stack.restart_agentd()  # SIGTERM: the run is left to resume
        assert procs.survivors() == []
        expect(page.locator('#events li[data-type="end"]')).to_have_count(1)
        expect(page.locator('#events li[data-type="interrupted"]')).to_contain_text("Interrupted (attempt 1)")
        expect(page.locator('#events li[data-type="resumed"]')).to_contain_text("Resumed: attempt 2, from the checkpoint of step 1")
        expect(page.locator('#events li[data-type="lakeview"]').last).to_contain_text("The agent is finishing.")
        expect(page.locator("#task-facts")).to_have_attribute("data-status", "completed")
        assert event_log(page) == server_log(runs, task_id), "events lost or repeated across the restart"
        shot(page, "task-resumed")
    finally:
        procs.kill_leftovers()


def test_overview_counts_and_usage_chart(console_runs, page, tmp_path):
    stack = console_runs.stack
    done = console_runs.run("a quick one", tmp_path, route=console_runs.llm.route())  # task_done at once
    console_runs.wait_status(done, "completed")
    page.goto(f"{stack.ap_url}/console/#/overview")
    expect(page.locator("svg.chart rect.bar")).to_have_count(24)
    counts = requests.get(f"{stack.ap_url}{AP}/status", timeout=10).json()["task_counts"]
    finished = counts["completed"] + counts["failed"] + counts["stopped"]
    assert finished >= 1, counts
    expect(page.locator("#ov-finished .big")).to_have_text(str(finished))
    expect(page.locator("#ov-running .big")).to_have_text(str(counts["running"]))
    expect(page.locator("#ov-tokens .big")).not_to_have_text("0")
    shot(page, "overview")


# ---- ConsoleService edges (over gRPC-Web through Envoy, as the page calls it) ----


def console_call(stack, method: str, body: dict) -> tuple[dict | None, str]:
    """One ConsoleService call with `buf curl --protocol grpcweb` on Envoy's REST port: (answer, error text)."""
    out = subprocess.run(
        [helpers.BUF_BIN, "curl", "--protocol", "grpcweb", "-d", json.dumps(body),
         f"{stack.trae_url}/agentd.console.v1.ConsoleService/{method}"],
        capture_output=True, text=True, timeout=60, env=helpers.clean_env(),
    )
    return (json.loads(out.stdout) if out.returncode == 0 else None), out.stderr


def test_upload_chunks_must_arrive_in_order(console_runs):
    stack = console_runs.stack
    task_id = stack.create_task("chunks")["task_id"]
    first, err = console_call(stack, "UploadChunk", {
        "task_id": task_id, "file_name": "a.txt", "offset": 0, "data": base64.b64encode(b"abc").decode()})
    assert first and first["received"] == 3 and first["uploadId"], err
    upload = first["uploadId"]
    skipped, err = console_call(stack, "UploadChunk", {
        "task_id": task_id, "upload_id": upload, "offset": 5, "data": base64.b64encode(b"def").decode(), "last": True})
    assert skipped is None and "invalid_argument" in err and "offset 5 but 3 bytes" in err, err
    # A refused chunk ends the upload: nothing half-written is recorded.
    again, err = console_call(stack, "UploadChunk", {
        "task_id": task_id, "upload_id": upload, "offset": 3, "data": base64.b64encode(b"def").decode(), "last": True})
    assert again is None and "no open upload" in err, err
    listed = requests.get(f"{stack.ap_url}{AP}/tasks/{task_id}/artifacts", timeout=10).json()["artifacts"]
    assert listed == [], listed
    bad, err = console_call(stack, "UploadChunk", {"task_id": task_id, "file_name": "x", "relative_path": "../up"})
    assert bad is None and "invalid_argument" in err, err
    bad, err = console_call(stack, "ListTasks", {"status": "sleeping"})
    assert bad is None and "invalid_argument" in err and "unknown status" in err, err


def test_a_patch_replaced_by_a_symlink_out_of_the_working_dir_is_not_served(console_runs, git_repo, tmp_path):
    runs = console_runs
    route = runs.llm.route().script(openai_tool_call("bash", {"command": "echo changed >> README.md"}))
    task_id = runs.run("change the readme", git_repo, route=route, patch_path="out/task.patch")
    runs.wait_status(task_id, "completed")
    patch = git_repo / "out" / "task.patch"
    served, err = console_call(runs.stack, "GetPatch", {"task_id": task_id})
    assert served and served["diff"] == patch.read_text() and "+changed" in served["diff"], err

    secret = tmp_path / "secret.yaml"
    secret.write_text("api_key: sk-not-for-the-console\n")
    patch.unlink()
    patch.symlink_to(secret)
    refused, err = console_call(runs.stack, "GetPatch", {"task_id": task_id})
    assert refused is None and "outside the run's working directory" in err and "sk-not" not in err, err
    # A symlink that stays inside the working directory is still the run's business.
    patch.unlink()
    (git_repo / "out" / "copy.patch").write_text("diff --git a/x b/x\n")
    patch.symlink_to(git_repo / "out" / "copy.patch")
    inside, err = console_call(runs.stack, "GetPatch", {"task_id": task_id})
    assert inside and inside["diff"] == "diff --git a/x b/x\n", err


# ---- API keys ---------------------------------------------------------------


def test_with_api_keys_the_console_asks_for_one_and_keeps_it_in_the_session_only(tmp_path, runs_llm, browser):
    runs = start_runs(tmp_path / "keyed", runs_llm, _console_env(AGENTD_API_KEYS=API_KEY))
    p = Page(browser)
    page = p.page
    try:
        base = runs.stack.trae_url
        r = requests.post(f"{base}{AP}/tasks", json={"input": "made with a key"},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        assert requests.post(f"{base}{AP}/tasks", json={"input": "no key"}, timeout=10).status_code == 401

        sent: list[str | None] = []
        page.on("request", lambda req: sent.append(req.headers.get("authorization"))
                if "/agentd.console.v1." in req.url else None)
        page.goto(f"{base}/console/#/tasks")
        expect(page.get_by_role("heading", name="API key required")).to_be_visible()
        assert page.locator("table.tasks").count() == 0
        shot(page, "api-key-prompt")

        page.get_by_label("API key", exact=True).fill("sk-wrong")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-error")).to_contain_text("Refused")
        assert page.locator("table.tasks").count() == 0
        shot(page, "api-key-refused")

        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.get_by_role("button", name="Use key").click()
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()
        assert f"Bearer {API_KEY}" in sent and sent[0] is None, sent
        assert page.evaluate("sessionStorage.getItem('agentd.apiKey')") == API_KEY
        assert page.evaluate("localStorage.length") == 0
        assert p.context.cookies() == []
        shot(page, "tasks-with-key")

        # Another tab (a new session) asks again.
        other = p.context.new_page()
        other.goto(f"{base}/console/")
        expect(other.get_by_role("heading", name="API key required")).to_be_visible()
        other.close()
    finally:
        p.close()
        _stop(runs)
