// One task: its header (status, usage), stop, the live event log (resumed
// from the last seq after a dropped connection), and for Agent Protocol
// tasks the steps with "run next step"; artifacts for both.

import { consoleApi, errorText, isAbort, trae } from "../api";
import { age, clear, h, setText, span, statusBadge, tokens, usd } from "../dom";
import { renderEvent } from "../events";
import type { TaskRow } from "../gen/agentd/console/v1/console_pb";
import type { Stop } from "../main";
import { renderArtifacts } from "./artifacts";
import { renderSteps } from "./steps";

const RECONNECT_MS = 1000;

export function renderTask(main: HTMLElement, taskId: string): Stop {
  const abort = new AbortController();
  const title = h("h1", {}, "Task ", h("code", {}, taskId));
  const header = h("dl", { class: "facts", id: "task-facts" });
  const notice = h("p", { class: "error", role: "alert", id: "task-error" });
  const stop = h("button", { type: "button", id: "stop", class: "danger" }, "Stop");
  const conn = h("span", { class: "muted", id: "stream-state", "aria-live": "polite" });
  const log = h("ol", { class: "events", id: "events", "aria-label": "Event log", "aria-live": "off" });
  const side = h("div", { class: "side" });
  main.append(
    title,
    h("div", { class: "toolbar" }, stop, conn),
    notice,
    header,
    h("div", { class: "task-layout" }, h("section", { "aria-labelledby": "log-title" }, h("h2", { id: "log-title" }, "Events"), log), side),
  );

  let row: TaskRow | null = null;
  let panelsDrawn = false;
  let refreshArtifacts = () => {};

  async function refresh(): Promise<void> {
    try {
      row = await consoleApi.getTask({ taskId });
      setText(notice, "");
      drawHeader(row);
      if (!panelsDrawn) {
        panelsDrawn = true;
        if (row.dialect === "agent_protocol") {
          side.append(renderSteps(taskId, abort.signal, () => { void refresh(); refreshArtifacts(); }));
        }
        const artifacts = renderArtifacts(taskId, abort.signal);
        refreshArtifacts = artifacts.refresh;
        side.append(artifacts.el);
      }
    } catch (e) {
      if (!isAbort(e)) notice.textContent = errorText(e);
    }
  }

  function drawHeader(t: TaskRow): void {
    clear(header);
    const fact = (k: string, v: Node | string) => [h("dt", {}, k), h("dd", {}, v)];
    header.append(
      ...fact("Status", statusBadge(t.status)),
      ...fact("Dialect", t.dialect === "trae" ? "Trae (POST /api/run)" : "Agent Protocol"),
      ...fact("Created", age(t.createdAt)),
      ...fact("Duration", t.startedAt ? span(t.duration) : "not started"),
      ...fact("Steps", String(t.steps)),
      ...fact("Tokens", `${tokens(t.inputTokens)} in / ${tokens(t.outputTokens)} out`),
      ...fact("Cost", usd(t.costUsd)),
      ...fact("Input", h("span", { class: "preview" }, t.input)),
    );
    if (t.error) header.append(...fact("Error", h("span", { class: "error" }, t.error)));
    header.dataset.status = t.status;
    stop.disabled = t.status !== "running";
  }

  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      const r = await trae.stopTask({ taskId });
      setText(notice, "");
      setText(conn, r.message);
    } catch (e) {
      notice.textContent = `Stop failed: ${errorText(e)}`;
      stop.disabled = false;
    }
    void refresh();
  });

  let lastSeq = 0;
  async function follow(): Promise<void> {
    while (!abort.signal.aborted) {
      try {
        setText(conn, lastSeq ? `reconnecting after #${lastSeq}…` : "connecting…");
        let ended = false;
        for await (const e of trae.streamTask({ taskId, afterSeq: lastSeq }, { signal: abort.signal })) {
          setText(conn, "live");
          if (e.type === "heartbeat" || e.seq <= lastSeq) continue;
          lastSeq = e.seq;
          // Follow the log only while the reader is at its end.
          const following = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
          log.append(renderEvent(e));
          if (following) log.lastElementChild?.scrollIntoView({ block: "nearest" });
          if (e.type === "end") ended = true;
          if (["start", "step", "usage", "complete", "error", "stopped", "end"].includes(e.type)) void refresh();
          if (e.type === "end" || e.type === "patch") refreshArtifacts();
        }
        if (ended) {
          setText(conn, "finished");
          return;
        }
        // The stream ended without `end` (agentd or Envoy went away): resume.
      } catch (e) {
        if (abort.signal.aborted || isAbort(e)) return;
        setText(conn, `connection lost (${errorText(e)}); resuming after #${lastSeq}`);
      }
      await new Promise((r) => setTimeout(r, RECONNECT_MS));
    }
  }

  // The duration of a running task moves on.
  const ticker = setInterval(() => {
    if (row && (row.status === "running" || row.status === "created")) void refresh();
  }, 3000);
  void refresh();
  void follow();
  return () => {
    abort.abort();
    clearInterval(ticker);
  };
}
