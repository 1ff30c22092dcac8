/** One HTTP call with the client's cross-cutting concerns: base URL, API key,
 *  per-attempt timeout, retries with backoff, and typed errors. */

import { ApiError, AutoGPTError, ConnectionError, type ErrorEnvelope } from "./errors.js";
import { DEFAULT_RETRY, parseRetryAfter, retryableStatus, retryDelay, sleep, type RetryPolicy } from "./retry.js";

/** Per-call options, accepted as the last argument of every client method. */
export interface RequestOptions {
  /** Cancels the call (and any wait between retries). */
  signal?: AbortSignal;
  /** Overrides the client's timeoutMs for this call. */
  timeoutMs?: number;
}

export interface Call {
  method: "GET" | "POST" | "DELETE";
  /** Path below the API root (/ap/v1/agent), e.g. "/tasks/abc". */
  path: string;
  query?: Record<string, string | number | undefined>;
  json?: unknown;
  /** A body built anew for every attempt (a FormData's file can be read once). */
  body?: () => Promise<RequestInit["body"]>;
  accept?: string;
  /** Resolve as soon as the headers arrive; the timeout then no longer applies. */
  stream?: boolean;
}

export interface HttpConfig {
  apiRoot: string;
  apiKey?: string;
  timeoutMs: number;
  retry: RetryPolicy;
  headers: Record<string, string>;
  fetch: typeof fetch;
}

/** What one attempt came to: a response, or an error and whether to try again. */
type Attempt =
  | { ok: true; response: Response; text?: string }
  | { ok: false; error: AutoGPTError; retry: boolean; retryAfterMs?: number };

const API_PATH = "/ap/v1/agent";

/** Accepts the document's base URL (http://localhost:8000) or the API root itself. */
export function apiRoot(baseURL: string): string {
  const trimmed = baseURL.replace(/\/+$/, "");
  return trimmed.endsWith(API_PATH) ? trimmed : trimmed + API_PATH;
}

export function httpConfig(options: {
  baseURL?: string;
  apiKey?: string;
  maxRetries?: number;
  timeoutMs?: number;
  headers?: Record<string, string>;
  fetch?: typeof fetch;
}): HttpConfig {
  return {
    apiRoot: apiRoot(options.baseURL ?? "http://localhost:8000"),
    apiKey: options.apiKey,
    // A step is one LLM call plus its tools (bash allows 120 s per command).
    timeoutMs: options.timeoutMs ?? 300_000,
    retry: { ...DEFAULT_RETRY, maxRetries: options.maxRetries ?? DEFAULT_RETRY.maxRetries },
    headers: options.headers ?? {},
    fetch: options.fetch ?? globalThis.fetch,
  };
}

export class Http {
  constructor(readonly config: HttpConfig) {}

  /** Sends `call` and parses the JSON answer. */
  async json(call: Call, options: RequestOptions = {}): Promise<unknown> {
    const { text } = await this.send(call, options);
    return text ? JSON.parse(text) : {};
  }

  /** Sends `call`, retrying transient failures; throws ApiError or ConnectionError. */
  async send(call: Call, options: RequestOptions = {}): Promise<{ response: Response; text?: string }> {
    const { retry } = this.config;
    for (let attempt = 0; ; attempt++) {
      const result = await this.attempt(call, options);
      if (result.ok) return result;
      if (!result.retry || attempt >= retry.maxRetries) throw result.error;
      await sleep(retryDelay(retry, attempt + 1, result.retryAfterMs), options.signal);
    }
  }

  url(call: Pick<Call, "path" | "query">): string {
    const url = new URL(this.config.apiRoot + call.path);
    for (const [key, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined && value !== "") url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  private async attempt(call: Call, options: RequestOptions): Promise<Attempt> {
    const url = this.url(call);
    const request = { method: call.method, url };
    // GET and DELETE may be repeated safely; POSTs change state (see retryableStatus).
    const idempotent = call.method !== "POST";
    const timeoutMs = options.timeoutMs ?? this.config.timeoutMs;
    // Built outside the try: a local problem (a missing upload file) is not a network error.
    const body = call.json !== undefined ? JSON.stringify(call.json) : await call.body?.();
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout.signal]) : timeout.signal;
    try {
      const response = await this.config.fetch(url, {
        method: call.method,
        headers: this.headers(call),
        body,
        signal,
      });
      if (!response.ok) {
        const body = await readErrorBody(response);
        return {
          ok: false,
          error: new ApiError(response.status, body, response.headers, request),
          retry: retryableStatus(response.status, idempotent),
          retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
        };
      }
      if (call.stream) return { ok: true, response };
      return { ok: true, response, text: await response.text() };
    } catch (err) {
      // The caller's own cancellation is never retried.
      if (options.signal?.aborted) throw options.signal.reason;
      const timedOut = timeout.signal.aborted;
      const error = new ConnectionError(timedOut ? `timed out after ${timeoutMs} ms` : describe(err), request, {
        cause: err,
        timedOut,
      });
      // A POST is repeated only if it surely never reached the server.
      return { ok: false, error, retry: idempotent || neverSent(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  private headers(call: Call): Record<string, string> {
    const headers: Record<string, string> = {
      accept: call.accept ?? "application/json",
      "user-agent": "autogpt-client-ts/0.1.0",
      ...this.config.headers,
    };
    if (call.json !== undefined) headers["content-type"] = "application/json";
    // README "Security and limits": keys go in Authorization (X-API-Key works too).
    if (this.config.apiKey) headers.authorization = `Bearer ${this.config.apiKey}`;
    return headers;
  }
}

async function readErrorBody(response: Response): Promise<ErrorEnvelope | string> {
  const text = await response.text().catch(() => "");
  try {
    const parsed = JSON.parse(text);
    return typeof parsed === "object" && parsed !== null ? parsed : text;
  } catch {
    return text;
  }
}

/** undici reports network failures as TypeError("fetch failed") with the system error as cause. */
function causeCode(err: unknown): string | undefined {
  const cause = (err as { cause?: { code?: string } })?.cause;
  return cause?.code ?? (err as { code?: string })?.code;
}

function neverSent(err: unknown): boolean {
  return ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"].includes(causeCode(err) ?? "");
}

function describe(err: unknown): string {
  const code = causeCode(err);
  const message = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
