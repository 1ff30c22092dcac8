// The task list: both dialects, newest first, one page at a time (the server
// pages, so 100,000 tasks cost what 25 do), kept live by WatchTasks.

import { consoleApi, errorText, isAbort } from "../api";
import { age, clear, h, setText, span, statusBadge, tokens, usd } from "../dom";
import type { ListTasksResponse, TaskRow } from "../gen/agentd/console/v1/console_pb";
import type { Stop } from "../main";

const PAGE_SIZE = 25;
const STATUSES = ["", "created", "running", "completed", "failed", "stopped"];

export function renderTasks(main: HTMLElement): Stop {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  let status = params.get("status") ?? "";
  let page = Math.max(1, Number(params.get("page") ?? 1) || 1);

  const filter = h(
    "select",
    { id: "status-filter" },
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "any status")),
  );
  const info = h("span", { id: "page-info", "aria-live": "polite" });
  const newer = h("button", { type: "button", id: "newer" }, "← Newer");
  const older = h("button", { type: "button", id: "older" }, "Older →");
  const live = h("span", { class: "muted", id: "live" });
  const body = h("tbody");
  const table = h(
    "table",
    { class: "tasks", "aria-describedby": "page-info" },
    h("caption", { class: "sr-only" }, "Tasks, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Task", "Dialect", "Status", "Age", "Duration", "Steps", "Tokens", "Cost"].map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    body,
  );
  main.append(
    h("h1", {}, "Tasks"),
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "status-filter" }, "Status"),
      filter,
      newer,
      older,
      info,
      live,
    ),
    table,
  );

  let rows: TaskRow[] = [];
  let total = 0;
  let abort = new AbortController();

  function draw(): void {
    clear(body);
    const now = Date.now() / 1000;
    if (rows.length === 0) {
      body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, total ? "No tasks on this page." : "No tasks yet.")));
    }
    for (const t of rows) {
      body.append(
        h(
          "tr",
          { "data-task-id": t.taskId, "data-status": t.status },
          h(
            "td",
            {},
            h("a", { href: `#/tasks/${encodeURIComponent(t.taskId)}`, title: t.taskId }, t.taskId.slice(0, 8)),
            " ",
            h("span", { class: "preview" }, t.input),
          ),
          h("td", {}, t.dialect === "trae" ? "Trae" : "Agent Protocol"),
          h("td", {}, statusBadge(t.status)),
          h("td", {}, age(t.createdAt, now)),
          h("td", {}, t.startedAt ? span(t.duration) : "–"),
          h("td", { class: "num" }, t.steps),
          h("td", { class: "num", title: `${t.inputTokens} in, ${t.outputTokens} out` }, tokens(t.inputTokens + t.outputTokens)),
          h("td", { class: "num" }, usd(t.costUsd)),
        ),
      );
    }
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    setText(info, `${total} task${total === 1 ? "" : "s"} · page ${page} of ${pages}`);
    newer.disabled = page <= 1;
    older.disabled = page >= pages;
  }

  function show(resp: ListTasksResponse): void {
    rows = resp.tasks;
    total = resp.total;
    draw();
  }

  // One stream per (status, page); a dropped stream is opened again.
  async function watch(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        setText(live, "connecting…");
        const query = { status, page, pageSize: PAGE_SIZE };
        for await (const msg of consoleApi.watchTasks({ query }, { signal })) {
          setText(live, "live");
          if (msg.page) show(msg.page);
        }
      } catch (e) {
        if (signal.aborted || isAbort(e)) return;
        setText(live, `reconnecting (${errorText(e)})`);
      }
      await new Promise((r) => setTimeout(r, 1500));
    }
  }

  function restart(): void {
    abort.abort();
    abort = new AbortController();
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (page > 1) q.set("page", String(page));
    history.replaceState(null, "", `#/tasks${q.size ? `?${q}` : ""}`);
    void watch(abort.signal);
  }

  filter.addEventListener("change", () => {
    status = filter.value;
    page = 1;
    restart();
  });
  newer.addEventListener("click", () => {
    page = Math.max(1, page - 1);
    restart();
  });
  older.addEventListener("click", () => {
    page += 1;
    restart();
  });
  // Ages tick between updates.
  const ticker = setInterval(draw, 1000);
  draw();
  restart();
  return () => {
    abort.abort();
    clearInterval(ticker);
  };
}
