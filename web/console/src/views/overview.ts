// Overview: tasks by status, the runner's load, and tokens and cost over
// time (GetOverview's buckets of recent tasks) as a small SVG chart.

import { consoleApi, errorText, isAbort } from "../api";
import { clear, h, tokens, usd } from "../dom";
import type { GetOverviewResponse, UsageBucket } from "../gen/agentd/console/v1/console_pb";
import type { Stop } from "../main";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text) el.textContent = text;
  return el;
}

/** Bars: tokens per bucket; the line: cost per bucket (each on its own scale). */
function chart(buckets: UsageBucket[]): Element {
  const W = 600, H = 160, P = 24;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "chart-title" });
  root.append(svg("title", { id: "chart-title" }, "Tokens (bars) and cost (line) of recent tasks over time"));
  if (!buckets.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "No tasks yet"));
    return root;
  }
  const maxTok = Math.max(1, ...buckets.map((b) => b.tokens));
  const topCost = Math.max(0, ...buckets.map((b) => b.costUsd));
  const maxCost = Math.max(1e-9, topCost);
  const bw = (W - 2 * P) / buckets.length;
  const points: string[] = [];
  buckets.forEach((b, i) => {
    const bh = ((H - 2 * P) * b.tokens) / maxTok;
    const bar = svg("rect", { x: P + i * bw + 1, y: H - P - bh, width: Math.max(1, bw - 2), height: bh, class: "bar" });
    bar.append(svg("title", {}, `${new Date(b.startTime * 1000).toLocaleString()}: ${b.tasks} tasks, ${tokens(b.tokens)} tokens, ${usd(b.costUsd)}`));
    root.append(bar);
    points.push(`${P + i * bw + bw / 2},${H - P - ((H - 2 * P) * b.costUsd) / maxCost}`);
  });
  root.append(svg("polyline", { points: points.join(" "), class: "cost-line", fill: "none" }));
  const first = new Date(buckets[0].startTime * 1000).toLocaleTimeString();
  root.append(svg("text", { x: P, y: H - 6, class: "axis" }, first));
  root.append(svg("text", { x: W - P, y: H - 6, "text-anchor": "end", class: "axis" }, "now"));
  root.append(svg("text", { x: P, y: 14, class: "axis" }, `max ${tokens(maxTok)} tokens · ${usd(topCost)}`));
  return root;
}

export function renderOverview(main: HTMLElement): Stop {
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const chartBox = h("figure", { class: "card", id: "usage-chart" });
  const error = h("p", { class: "error", role: "alert" });
  main.append(h("h1", {}, "Overview"), error, cards, chartBox);
  const abort = new AbortController();

  function draw(o: GetOverviewResponse): void {
    clear(cards);
    const card = (id: string, label: string, value: string) =>
      h("div", { class: "card stat", id }, h("div", { class: "big" }, value), h("div", { class: "muted" }, label));
    cards.append(
      card("ov-running", "running", String(o.running)),
      card("ov-queued", "queued steps", String(o.runsQueued)),
      card("ov-finished", "finished", String(o.completed + o.failed + o.stopped)),
      card("ov-created", "created, not run", String(o.created)),
      card("ov-slots", "run slots in use", `${o.runsActive} / ${o.runSlots}`),
      card("ov-tokens", "tokens", tokens(o.inputTokens + o.outputTokens)),
      card("ov-cost", "cost", usd(o.costUsd)),
    );
    cards.append(
      h(
        "p",
        { class: "muted" },
        `Finished: ${o.completed} completed, ${o.failed} failed, ${o.stopped} stopped.`,
      ),
    );
    clear(chartBox);
    chartBox.append(chart(o.usage), h("figcaption", { class: "muted" }, "Tokens (bars) and cost (line) of the most recent tasks, by creation time"));
  }

  async function load(): Promise<void> {
    try {
      draw(await consoleApi.getOverview({}, { signal: abort.signal }));
      error.textContent = "";
    } catch (e) {
      if (!isAbort(e)) error.textContent = errorText(e);
    }
  }
  void load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    abort.abort();
    clearInterval(timer);
  };
}
