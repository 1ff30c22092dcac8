// A task's artifacts: download (the DownloadArtifact stream gathered into a
// file), and upload by drag and drop or a file picker, in 4 MiB chunks
// (ConsoleService.UploadChunk) with a progress bar.

import { agent, consoleApi, errorText, isAbort } from "../api";
import { bytes, clear, h } from "../dom";
import type { Artifact } from "../gen/agentd/agent/v1/agent_pb";

// Large chunks: each is a call, and calls count against agentd's rate limit
// (a 100 MB file is 25 calls); agentd accepts messages up to 4 MiB + 64 KiB.
const CHUNK = 4 << 20;
const SHOWN = 100;

export function renderArtifacts(taskId: string, signal: AbortSignal): { el: HTMLElement; refresh: () => void } {
  const list = h("ul", { class: "artifacts", id: "artifacts" });
  const picker = h("input", { type: "file", id: "upload-file", class: "sr-only" });
  const dir = h("input", { type: "text", id: "upload-path", placeholder: "e.g. data", autocomplete: "off" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const state = h("p", { id: "upload-state", role: "status" });
  const drop = h(
    "label",
    { for: "upload-file", class: "drop", id: "drop-zone", tabindex: 0 },
    "Drop a file here, or press Enter to choose one",
  );
  const el = h(
    "section",
    { class: "card", "aria-labelledby": "artifacts-title" },
    h("h2", { id: "artifacts-title" }, "Artifacts"),
    list,
    h("label", { for: "upload-path" }, "Upload into (relative path, optional)"),
    dir,
    drop,
    picker,
    progress,
    state,
  );

  function draw(artifacts: Artifact[]): void {
    clear(list);
    if (!artifacts.length) list.append(h("li", { class: "muted" }, "No artifacts."));
    for (const a of artifacts) {
      const path = a.relativePath && !a.relativePath.endsWith(a.fileName) ? `${a.relativePath}/${a.fileName}` : a.relativePath || a.fileName;
      const button = h("button", { type: "button", class: "link download", "data-artifact-id": a.artifactId }, `Download ${a.fileName}`);
      button.addEventListener("click", () => void download(a, button));
      list.append(
        h("li", { "data-file-name": a.fileName }, button, " ", h("span", { class: "muted" }, `${path} · ${bytes(a.fileSize)}${a.agentCreated ? " · by the agent" : ""}`)),
      );
    }
  }

  async function refresh(): Promise<void> {
    try {
      const r = await agent.listArtifacts({ taskId, pageSize: SHOWN, currentPage: 1 }, { signal });
      draw(r.artifacts);
    } catch (e) {
      if (!isAbort(e)) state.textContent = `Cannot list artifacts: ${errorText(e)}`;
    }
  }

  async function download(a: Artifact, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      const parts: Uint8Array[] = [];
      let type = "application/octet-stream";
      for await (const chunk of agent.downloadArtifact({ taskId, artifactId: a.artifactId }, { signal })) {
        if (chunk.contentType) type = chunk.contentType;
        parts.push(chunk.data);
      }
      const url = URL.createObjectURL(new Blob(parts as BlobPart[], { type }));
      const link = h("a", { href: url, download: a.fileName, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      if (!isAbort(e)) state.textContent = `Download failed: ${errorText(e)}`;
    } finally {
      button.disabled = false;
    }
  }

  async function upload(file: File): Promise<void> {
    progress.hidden = false;
    progress.max = Math.max(1, file.size);
    progress.value = 0;
    state.className = "";
    state.textContent = `Uploading ${file.name}…`;
    try {
      let uploadId = "";
      let offset = 0;
      do {
        const data = new Uint8Array(await file.slice(offset, offset + CHUNK).arrayBuffer());
        const last = offset + data.length >= file.size;
        const r = await consoleApi.uploadChunk(
          { taskId, uploadId, fileName: file.name, relativePath: dir.value.trim(), offset, data, last },
          { signal },
        );
        uploadId = r.uploadId;
        offset = r.received;
        progress.value = offset;
        if (last) {
          state.textContent = `Uploaded ${file.name} (${bytes(offset)}).`;
          break;
        }
      } while (offset < file.size || file.size === 0);
      await refresh();
    } catch (e) {
      if (isAbort(e)) return;
      state.className = "error";
      state.textContent = `Upload failed: ${errorText(e)}`;
    } finally {
      progress.hidden = true;
      picker.value = "";
    }
  }

  picker.addEventListener("change", () => {
    if (picker.files?.[0]) void upload(picker.files[0]);
  });
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      picker.click();
    }
  });
  for (const t of ["dragenter", "dragover"]) {
    drop.addEventListener(t, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = (ev as DragEvent).dataTransfer?.files?.[0];
    if (file) void upload(file);
  });

  void refresh();
  return { el, refresh: () => void refresh() };
}
