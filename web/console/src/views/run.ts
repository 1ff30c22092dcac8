// Start a run: the Trae POST /api/run fields, sent as TraeService.Run. agentd
// validates; its message is shown as it said it.

import { errorText, trae } from "../api";
import { h } from "../dom";
import type { Stop } from "../main";

function field(id: string, label: string, control: HTMLElement, hint?: string): HTMLElement {
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { id: `${id}-hint`, class: "muted" }, hint) : null,
  );
}

export function renderRun(main: HTMLElement): Stop {
  const task = h("textarea", { id: "run-task", name: "task", rows: 4, required: true });
  const workingDir = h("input", { id: "run-working-dir", name: "working_dir", type: "text", autocomplete: "off" });
  const provider = h("input", { id: "run-provider", name: "provider", type: "text", list: "providers", autocomplete: "off" });
  const model = h("input", { id: "run-model", name: "model", type: "text", autocomplete: "off" });
  const maxSteps = h("input", { id: "run-max-steps", name: "max_steps", type: "number", min: 1, step: 1 });
  const mustPatch = h("input", { id: "run-must-patch", name: "must_patch", type: "checkbox" });
  const patchPath = h("input", { id: "run-patch-path", name: "patch_path", type: "text", autocomplete: "off" });
  const configFile = h("input", { id: "run-config-file", name: "config_file", type: "text", autocomplete: "off" });
  const trajectory = h("input", { id: "run-trajectory-file", name: "trajectory_file", type: "text", autocomplete: "off" });
  const error = h("p", { id: "run-error", class: "error", role: "alert", tabindex: -1 });
  const submit = h("button", { type: "submit", id: "run-submit" }, "Start run");
  const providers = h(
    "datalist",
    { id: "providers" },
    ["openai", "anthropic", "azure", "openrouter", "doubao", "google", "ollama"].map((p) => h("option", { value: p })),
  );
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "run-title", novalidate: true },
    h("h1", { id: "run-title" }, "Start a run"),
    field("run-task", "Task", task, "What the agent should do."),
    field("run-working-dir", "Working directory", workingDir, "Absolute path on the agentd host; the agent's tools run there."),
    field("run-provider", "Provider", provider, "Empty: the configuration's default."),
    providers,
    field("run-model", "Model", model, "Empty: the provider's configured model."),
    field("run-max-steps", "Max steps", maxSteps, "Empty: the configuration's max_steps."),
    h("div", { class: "field check" }, mustPatch, h("label", { for: "run-must-patch" }, "Must produce a patch (must_patch)")),
    h(
      "details",
      { class: "more" },
      h("summary", {}, "More options"),
      field("run-patch-path", "Patch file (patch_path)", patchPath, "Where the run's git diff is written; relative paths are inside the working directory."),
      field("run-trajectory-file", "Trajectory file (trajectory_file)", trajectory),
      field("run-config-file", "Config file (config_file)", configFile, "A Trae config file on the agentd host; empty: the default."),
    ),
    error,
    submit,
  );
  main.append(form);
  task.focus();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    form.setAttribute("aria-busy", "true");
    try {
      const r = await trae.run({
        task: task.value,
        workingDir: workingDir.value.trim(),
        provider: provider.value.trim(),
        model: model.value.trim(),
        maxSteps: maxSteps.value === "" ? undefined : Number(maxSteps.value),
        mustPatch: mustPatch.checked,
        patchPath: patchPath.value.trim(),
        trajectoryFile: trajectory.value.trim(),
        configFile: configFile.value.trim(),
      });
      location.hash = `#/tasks/${encodeURIComponent(r.taskId)}`;
    } catch (e) {
      error.textContent = errorText(e);
      error.focus();
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
  return () => {};
}
