// A unified diff as lines coloured by kind (added, removed, hunk, file).

import { h } from "./dom";

export function renderDiff(diff: string): HTMLElement {
  const pre = h("pre", { class: "diff", tabindex: 0, "aria-label": "Patch" });
  for (const line of diff.split("\n")) {
    let kind = "ctx";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ")) kind = "file";
    else if (line.startsWith("@@")) kind = "hunk";
    else if (line.startsWith("+")) kind = "add";
    else if (line.startsWith("-")) kind = "del";
    pre.append(h("span", { class: `d-${kind}` }, line), "\n");
  }
  return pre;
}
