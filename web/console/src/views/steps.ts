// An Agent Protocol task's steps, and "run next step" (one ExecuteStep call:
// it answers when the step is done).

import { agent, errorText, isAbort } from "../api";
import { clear, h } from "../dom";
import type { Step } from "../gen/agentd/agent/v1/agent_pb";

const SHOWN = 100;

export function renderSteps(taskId: string, signal: AbortSignal, stepped: () => void): HTMLElement {
  const input = h("textarea", { id: "step-input", rows: 2, placeholder: "optional: what the agent should do next" });
  const run = h("button", { type: "submit", id: "run-step" }, "Run next step");
  const state = h("p", { id: "step-state", role: "status" });
  const list = h("ol", { class: "steps", id: "steps" });
  const form = h(
    "form",
    { class: "step-form" },
    h("label", { for: "step-input" }, "Step input"),
    input,
    run,
    state,
  );
  const el = h("section", { class: "card", "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), form, list);

  function draw(steps: Step[], total: number): void {
    clear(list);
    for (const s of steps) {
      list.append(
        h(
          "li",
          { "data-step-id": s.stepId, "data-is-last": String(s.isLast), "data-state": s.state },
          h("strong", {}, s.name || "step"),
          ` · ${s.state || s.status}`,
          s.isLast ? [" ", h("span", { class: "badge st-completed" }, "last")] : "",
          s.input ? h("div", { class: "muted" }, `input: ${s.input}`) : "",
          s.output ? h("div", { class: "model" }, s.output) : "",
        ),
      );
    }
    if (total > steps.length) list.append(h("li", { class: "muted" }, `${total - steps.length} more steps not shown`));
    const done = steps.some((s) => s.isLast);
    run.disabled = done;
    if (done) state.textContent = "The agent has finished: the last step is done.";
  }

  async function load(): Promise<void> {
    try {
      const r = await agent.listSteps({ taskId, pageSize: SHOWN, currentPage: 1 }, { signal });
      draw(r.steps, r.pagination?.totalItems ?? r.steps.length);
    } catch (e) {
      if (!isAbort(e)) state.textContent = `Cannot list steps: ${errorText(e)}`;
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    run.disabled = true;
    form.setAttribute("aria-busy", "true");
    state.className = "";
    state.textContent = "Running a step…";
    try {
      const step = await agent.executeStep({ taskId, input: input.value }, { signal });
      input.value = "";
      state.textContent = `Step ${step.name || ""} ${step.state || step.status}${step.isLast ? " (last step)" : ""}.`;
    } catch (e) {
      if (isAbort(e)) return;
      state.className = "error";
      state.textContent = `Step failed: ${errorText(e)}`;
    } finally {
      form.removeAttribute("aria-busy");
      run.disabled = false;
      await load();
      stepped();
    }
  });

  void load();
  return el;
}
