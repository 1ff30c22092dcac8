// One task event as the log shows it. The types and their `data` keys are
// agentd's event contract (proto/agentd/v1/events.proto): steps as headings,
// the model's text, tool calls and results folded, patches as diffs, failures
// in red. Unknown types still show their message.

import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { consoleApi, errorText } from "./api";
import { renderDiff } from "./diff";
import { h, tokens, usd } from "./dom";
import type { TaskEvent } from "./gen/agentd/v1/events_pb";

function json(v: JsonValue | undefined): string {
  return JSON.stringify(v ?? null, null, 2);
}

function obj(v: JsonValue | undefined): JsonObject {
  return v && typeof v === "object" && !Array.isArray(v) ? v : {};
}

function folded(summary: string, body: string | Node, open = false): HTMLElement {
  return h(
    "details",
    { open },
    h("summary", {}, summary),
    typeof body === "string" ? h("pre", { class: "fold" }, body) : body,
  );
}

function patchView(taskId: string): HTMLElement {
  const holder = h("div", { class: "patch" });
  const button = h("button", { type: "button", class: "show-patch" }, "Show patch");
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Loading…";
    try {
      const p = await consoleApi.getPatch({ taskId });
      button.remove();
      holder.append(
        p.truncated ? h("p", { class: "muted" }, `${p.size} bytes; the first 2 MiB are shown.`) : "",
        p.diff ? renderDiff(p.diff) : h("p", { class: "muted" }, "The patch is empty."),
      );
    } catch (e) {
      button.disabled = false;
      button.textContent = "Show patch";
      holder.append(h("p", { class: "error" }, `Cannot load the patch: ${errorText(e)}`));
    }
  });
  holder.append(button);
  return holder;
}

export function renderEvent(e: TaskEvent): HTMLElement {
  const d = e.data ?? {};
  const time = new Date(e.timestamp * 1000).toLocaleTimeString();
  let body: (Node | string)[] = [e.message ?? ""];
  let cls = "";
  switch (e.type) {
    case "start":
      body = [e.message ?? "started", " ", h("span", { class: "muted" }, `${d.provider ?? ""} ${d.model ?? ""} · ${d.working_dir ?? ""}`)];
      break;
    case "step":
      cls = "ev-step";
      body = [h("strong", {}, e.message ?? `Step ${d.step}`)];
      break;
    case "llm_response": {
      const calls = Array.isArray(d.tool_calls) ? d.tool_calls : [];
      body = [
        h("div", { class: "model" }, String(d.content ?? e.message ?? "")),
        calls.length ? h("span", { class: "muted" }, `→ ${calls.map((c) => String(obj(c).name ?? "?")).join(", ")}`) : "",
      ];
      break;
    }
    case "usage": {
      const u = obj(d.usage);
      const t = obj(d.total);
      body = [
        h(
          "span",
          { class: "muted" },
          `${tokens(Number(u.input_tokens ?? 0))} in / ${tokens(Number(u.output_tokens ?? 0))} out · ${usd(Number(d.cost_usd ?? 0))}` +
            ` (task: ${tokens(Number(t.input_tokens ?? 0) + Number(t.output_tokens ?? 0))} tokens, ${usd(Number(d.total_cost_usd ?? 0))})`,
        ),
      ];
      break;
    }
    case "tool_call":
      body = [folded(`Calling ${d.name ?? "tool"}`, d.arguments === null && d.raw_arguments ? String(d.raw_arguments) : json(d.arguments))];
      break;
    case "tool_result": {
      const ok = d.success !== false;
      cls = ok ? "" : "ev-error";
      body = [folded(`${d.name ?? "tool"} ${ok ? "returned" : "failed"}${d.error ? `: ${d.error}` : ""}`, e.message ?? "")];
      break;
    }
    case "lakeview": {
      const tags = Array.isArray(d.tags) ? d.tags.map(String).join(" · ") : "";
      body = [
        h("strong", {}, `Step ${d.step ?? "?"}`),
        tags ? h("span", { class: "muted" }, ` ${tags}`) : "",
        d.details ? folded(String(d.task ?? ""), String(d.details)) : h("div", {}, String(d.task ?? "")),
      ];
      break;
    }
    case "patch":
      body = [e.message ?? "patch", patchView(e.taskId)];
      break;
    case "complete":
      cls = "ev-done";
      body = [h("strong", {}, "Completed"), e.result ? h("div", { class: "model" }, e.result) : ""];
      break;
    case "error":
    case "step_failed":
      cls = "ev-error";
      body = [h("strong", {}, e.message ?? "Failed"), " ", e.error ?? String(d.error ?? "")];
      break;
    case "stopped":
      cls = "ev-warn";
      break;
    case "interrupted":
      cls = "ev-warn";
      body = [h("strong", {}, `Interrupted (attempt ${d.attempt ?? "?"})`), " ", e.message ?? ""];
      break;
    case "resumed":
      cls = "ev-warn";
      body = [h("strong", {}, `Resumed: attempt ${d.attempt ?? "?"}, from the checkpoint of step ${d.step ?? 0}`)];
      break;
    case "end":
      cls = "ev-end";
      body = [`End: ${d.status ?? ""}`];
      break;
  }
  return h(
    "li",
    { class: `event ${cls}`, "data-seq": e.seq, "data-type": e.type },
    h("span", { class: "seq", "aria-hidden": "true" }, `#${e.seq}`),
    h("span", { class: `etype t-${e.type}` }, e.type),
    h("time", { datetime: new Date(e.timestamp * 1000).toISOString() }, time),
    h("div", { class: "ebody" }, body),
  );
}
