// The console's shell: hash routes (#/tasks, #/tasks/<id>, #/run,
// #/overview), each a view that draws into <main> and returns how to stop
// its streams and timers; and the API-key prompt, shown when agentd refuses
// a call for want of a key.

import "./style.css";
import { apiKey, consoleApi, errorText, setApiKey, whenUnauthenticated, Code, ConnectError } from "./api";
import { clear, h } from "./dom";
import { renderOverview } from "./views/overview";
import { renderRun } from "./views/run";
import { renderTask } from "./views/task";
import { renderTasks } from "./views/tasks";

export type Stop = () => void;

const main = document.getElementById("main") as HTMLElement;
const authStatus = document.getElementById("auth-status") as HTMLElement;
let stopView: Stop = () => {};
let askingForKey = false;

function route(): void {
  if (askingForKey) return;
  stopView();
  clear(main);
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/tasks";
  const parts = path.split("/").filter(Boolean);
  const section = parts[0] ?? "tasks";
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (section === "tasks" && parts[1]) stopView = renderTask(main, decodeURIComponent(parts[1]));
  else if (section === "run") stopView = renderRun(main);
  else if (section === "overview") stopView = renderOverview(main);
  else stopView = renderTasks(main);
  showAuth();
}

function showAuth(): void {
  clear(authStatus);
  if (apiKey()) {
    authStatus.append(
      "API key set for this tab ",
      h("button", { type: "button", class: "link", onclick: () => { setApiKey(null); location.reload(); } }, "Forget key"),
    );
  }
}

/** The key prompt: replaces the view until a key is accepted. */
function askForKey(message: string): void {
  if (askingForKey) return;
  askingForKey = true;
  stopView();
  stopView = () => {};
  clear(main);
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const error = h("p", { id: "key-error", class: "error", role: "alert" }, message);
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "API key required"),
    h("p", {}, "This agentd requires an API key. It is sent with every call as a header and kept for this tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    error,
    h("button", { type: "submit" }, "Use key"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    error.textContent = "Checking…";
    try {
      await consoleApi.getOverview({});
      askingForKey = false;
      route();
    } catch (e) {
      setApiKey(null);
      error.textContent = `Refused: ${errorText(e)}`;
      input.select();
    }
  });
  main.append(form);
  input.focus();
}

whenUnauthenticated(() => {
  setApiKey(null);
  askForKey("agentd refused the call: a valid API key is needed.");
});

async function start(): Promise<void> {
  window.addEventListener("hashchange", route);
  // One probe: agentd asks for a key (or not) before any view draws.
  try {
    await consoleApi.getOverview({});
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.Unauthenticated) return; // the prompt is up
  }
  route();
}

void start();
