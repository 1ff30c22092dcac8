/** AutoGPTClient: the AutoGPT Agent Protocol API (/ap/v1/agent/...) over fetch. */

import { openAsBlob } from "node:fs";
import { open } from "node:fs/promises";
import { basename } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";

import { fromWire } from "./convert.js";
import { ConnectionError } from "./errors.js";
import { Http, httpConfig, type Call, type RequestOptions } from "./http.js";
import { retryDelay, sleep } from "./retry.js";
import { parseSse } from "./sse.js";
import type {
  AgentStatus,
  ArtifactDownload,
  Artifact,
  ArtifactList,
  JsonObject,
  RestartResult,
  Step,
  StepList,
  SuccessResult,
  Task,
  TaskEvent,
  TaskList,
  TaskStatus,
} from "./types.js";

export interface AutoGPTClientOptions {
  /** Server address, e.g. http://localhost:8000 (the API root /ap/v1/agent is added). */
  baseURL?: string;
  /** Sent as `Authorization: Bearer <apiKey>` when agentd runs with API keys. */
  apiKey?: string;
  /** Retries of transient failures (429, 5xx, network errors); default 3. */
  maxRetries?: number;
  /** Per-attempt timeout in ms, up to the response headers for streams; default 300000. */
  timeoutMs?: number;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** A fetch implementation (default: Node's global fetch). */
  fetch?: typeof fetch;
}

export interface PageOptions {
  page?: number;
  pageSize?: number;
}

export interface ListTasksOptions extends PageOptions {
  status?: TaskStatus;
  /** ISO-8601: only tasks created strictly after it. */
  createdAfter?: string;
}

export interface TaskInput {
  input?: string;
  additionalInput?: JsonObject;
}

export interface UploadInput {
  /** The content, or the path of a local file (streamed from disk, not read into memory). */
  file: Blob | Uint8Array | string;
  /** Defaults to the path's base name (required for a Blob or Buffer). */
  fileName?: string;
  /** Directory, or path ending in the file name, inside the task's workspace. */
  relativePath?: string;
}

export interface EventsOptions extends RequestOptions {
  /** Resume: only events after this seq. */
  afterSeq?: number;
  /** Also yield the `heartbeat` events idle streams get every 15 s. */
  heartbeats?: boolean;
}

const enc = encodeURIComponent;

export class AutoGPTClient {
  private readonly http: Http;

  constructor(options: AutoGPTClientOptions = {}) {
    this.http = new Http(httpConfig(options));
  }

  /** The API root requests go to, e.g. http://localhost:8000/ap/v1/agent. */
  get apiRoot(): string {
    return this.http.config.apiRoot;
  }

  // ---- tasks ----

  createTask(body: TaskInput = {}, options?: RequestOptions): Promise<Task> {
    return this.call({ method: "POST", path: "/tasks", json: taskBody(body) }, options);
  }

  listTasks(query: ListTasksOptions = {}, options?: RequestOptions): Promise<TaskList> {
    const { page, pageSize, status, createdAfter } = query;
    return this.call(
      { method: "GET", path: "/tasks", query: { page, size: pageSize, status, created_after: createdAfter } },
      options,
    );
  }

  getTask(taskId: string, options?: RequestOptions): Promise<Task> {
    return this.call({ method: "GET", path: `/tasks/${enc(taskId)}` }, options);
  }

  /** Removes the task with its steps, artifacts, events and files. */
  deleteTask(taskId: string, options?: RequestOptions): Promise<SuccessResult> {
    return this.call({ method: "DELETE", path: `/tasks/${enc(taskId)}` }, options);
  }

  // ---- steps ----

  /** Runs one step (the first starts the agent); resolves when the step is done. */
  executeStep(taskId: string, body: TaskInput = {}, options?: RequestOptions): Promise<Step> {
    return this.call({ method: "POST", path: `/tasks/${enc(taskId)}/steps`, json: taskBody(body) }, options);
  }

  listSteps(taskId: string, query: PageOptions = {}, options?: RequestOptions): Promise<StepList> {
    return this.call({ method: "GET", path: `/tasks/${enc(taskId)}/steps`, query: pageQuery(query) }, options);
  }

  getStep(taskId: string, stepId: string, options?: RequestOptions): Promise<Step> {
    return this.call({ method: "GET", path: `/tasks/${enc(taskId)}/steps/${enc(stepId)}` }, options);
  }

  // ---- artifacts ----

  getArtifacts(taskId: string, query: PageOptions = {}, options?: RequestOptions): Promise<ArtifactList> {
    return this.call({ method: "GET", path: `/tasks/${enc(taskId)}/artifacts`, query: pageQuery(query) }, options);
  }

  /** Alias of getArtifacts (the official Agent Protocol's name). */
  listArtifacts(taskId: string, query: PageOptions = {}, options?: RequestOptions): Promise<ArtifactList> {
    return this.getArtifacts(taskId, query, options);
  }

  uploadArtifact(taskId: string, upload: UploadInput, options?: RequestOptions): Promise<Artifact> {
    const { file, relativePath } = upload;
    const fileName = upload.fileName ?? (typeof file === "string" ? basename(file) : undefined);
    if (!fileName) throw new TypeError("uploadArtifact: fileName is required unless file is a path");
    const body = async () => {
      const blob = typeof file === "string" ? await openAsBlob(file) : file instanceof Blob ? file : new Blob([file]);
      const form = new FormData();
      if (relativePath !== undefined) form.append("relative_path", relativePath);
      form.append("file", blob, fileName);
      return form;
    };
    return this.call({ method: "POST", path: `/tasks/${enc(taskId)}/artifacts`, body }, options);
  }

  /** The artifact's bytes, in memory. */
  async downloadArtifact(taskId: string, artifactId: string, options?: RequestOptions): Promise<Buffer> {
    const download = await this.streamArtifact(taskId, artifactId, options);
    return Buffer.from(await new Response(download.body).arrayBuffer());
  }

  /** The artifact as a stream, with the name and type the server sent. */
  async streamArtifact(taskId: string, artifactId: string, options?: RequestOptions): Promise<ArtifactDownload> {
    const { response } = await this.http.send(
      { method: "GET", path: artifactPath(taskId, artifactId), accept: "*/*", stream: true },
      options,
    );
    const length = response.headers.get("content-length");
    return {
      fileName: dispositionFileName(response.headers.get("content-disposition")),
      contentType: response.headers.get("content-type") ?? undefined,
      contentLength: length === null ? undefined : Number(length),
      body: response.body ?? new Blob([]).stream(),
    };
  }

  /** Streams the artifact into a file at `path`; resolves to the bytes written. */
  async saveArtifact(taskId: string, artifactId: string, path: string, options?: RequestOptions): Promise<number> {
    const download = await this.streamArtifact(taskId, artifactId, options);
    const file = await open(path, "w");
    try {
      const source = Readable.fromWeb(download.body as NodeReadableStream<Uint8Array>);
      const sink = file.createWriteStream();
      await pipeline(source, sink);
      return sink.bytesWritten;
    } finally {
      await file.close().catch(() => undefined);
    }
  }

  deleteArtifact(taskId: string, artifactId: string, options?: RequestOptions): Promise<SuccessResult> {
    return this.call({ method: "DELETE", path: artifactPath(taskId, artifactId) }, options);
  }

  // ---- agent ----

  getStatus(options?: RequestOptions): Promise<AgentStatus> {
    return this.call({ method: "GET", path: "/status" }, options);
  }

  /** Restarts the agent runtime (stored tasks are kept). */
  restart(options?: RequestOptions): Promise<RestartResult> {
    return this.call({ method: "POST", path: "/restart", json: {} }, options);
  }

  // ---- events ----

  /**
   * The task's event log (SSE at /tasks/{id}/events): the history, then live
   * events, ending after `end`. A dropped connection is resumed after the
   * last seq seen, so no event is lost or repeated.
   */
  async *events(taskId: string, options: EventsOptions = {}): AsyncGenerator<TaskEvent> {
    const { retry } = this.http.config;
    let afterSeq = options.afterSeq;
    let failures = 0;
    for (;;) {
      // Aborted when the consumer stops early too, so that the connection closes.
      const done = new AbortController();
      const signal = options.signal ? AbortSignal.any([options.signal, done.signal]) : done.signal;
      const call: Call = {
        method: "GET",
        path: `/tasks/${enc(taskId)}/events`,
        query: { after_seq: afterSeq },
        accept: "text/event-stream",
        stream: true,
      };
      try {
        // Failing to connect is retried (and finally thrown) by send itself.
        const { response } = await this.http.send(call, { signal, timeoutMs: options.timeoutMs });
        const messages = parseSse(response.body ?? new Blob([]).stream());
        for (;;) {
          let next: IteratorResult<{ data: string }>;
          try {
            next = await messages.next();
          } catch (err) {
            if (options.signal?.aborted) throw options.signal.reason;
            if (++failures > retry.maxRetries) {
              throw new ConnectionError("event stream broke", { method: "GET", url: this.http.url(call) }, { cause: err });
            }
            break;
          }
          if (next.done) {
            failures++; // closed before `end`: resume, but not forever
            break;
          }
          const event = fromWire<TaskEvent>(JSON.parse(next.value.data));
          if (event.type === "heartbeat") {
            if (options.heartbeats) yield event;
            continue;
          }
          afterSeq = event.seq;
          failures = 0;
          yield event;
          if (event.type === "end") return;
        }
      } finally {
        done.abort();
      }
      if (failures > retry.maxRetries) {
        throw new ConnectionError("event stream closed before `end`", { method: "GET", url: this.http.url(call) });
      }
      await sleep(retryDelay(retry, Math.max(failures, 1)), options.signal);
    }
  }

  private async call<T>(call: Call, options?: RequestOptions): Promise<T> {
    return fromWire<T>(await this.http.json(call, options));
  }
}

function taskBody(body: TaskInput & { additional_input?: JsonObject }): JsonObject {
  const out: JsonObject = {};
  if (body.input !== undefined) out.input = body.input;
  // Accept the wire name too, for code ported from the REST examples.
  const additional = body.additionalInput ?? body.additional_input;
  if (additional !== undefined) out.additional_input = additional;
  return out;
}

function pageQuery({ page, pageSize }: PageOptions) {
  return { page, size: pageSize };
}

function artifactPath(taskId: string, artifactId: string): string {
  return `/tasks/${enc(taskId)}/artifacts/${enc(artifactId)}`;
}

/** The file name of a Content-Disposition header (RFC 6266: filename* wins). */
export function dispositionFileName(header: string | null): string | undefined {
  if (!header) return undefined;
  const star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(header);
  if (star) return decodeURIComponent(star[1].trim());
  const plain = /filename\s*=\s*(?:"((?:\\.|[^"\\])*)"|([^;]+))/.exec(header);
  return plain ? (plain[1]?.replace(/\\(.)/g, "$1") ?? plain[2].trim()) : undefined;
}
