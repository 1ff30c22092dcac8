/** The error envelope of the Agent Protocol dialect (README "Errors"):
 *  {"success": false, "message": "…", "error": {"code", "message", "details"}}. */
export interface ErrorEnvelope {
  success?: false;
  message?: string;
  error?: { code?: string; message?: string; details?: Record<string, unknown> };
  [key: string]: unknown;
}

/** Base class of everything this client throws. */
export class AutoGPTError extends Error {
  override name = "AutoGPTError";
}

/** The server answered with an HTTP error status (after any retries). */
export class ApiError extends AutoGPTError {
  override name = "ApiError";
  /** HTTP status, e.g. 404. */
  readonly status: number;
  /** Machine-readable code from the envelope, e.g. "TASK_NOT_FOUND" (or "HTTP_<status>" without one). */
  readonly code: string;
  /** The envelope's `error.details` (e.g. {task_id}); keys as the server sent them. */
  readonly details: Record<string, unknown>;
  /** The parsed response body (the error envelope), or the raw text if it was not JSON. */
  readonly body: ErrorEnvelope | string;
  readonly headers: Headers;
  /** Method and URL of the failed request. */
  readonly request: { method: string; url: string };

  constructor(status: number, body: ErrorEnvelope | string, headers: Headers, request: { method: string; url: string }) {
    const envelope = typeof body === "object" && body !== null ? body : undefined;
    const message = envelope?.error?.message ?? envelope?.message ?? (typeof body === "string" && body ? body : `HTTP ${status}`);
    super(`${request.method} ${request.url}: ${status} ${message}`);
    this.status = status;
    this.code = envelope?.error?.code ?? `HTTP_${status}`;
    this.details = envelope?.error?.details ?? {};
    this.body = body;
    this.headers = headers;
    this.request = request;
  }
}

/** No HTTP answer: connection refused or reset, DNS failure, or the request timed out. */
export class ConnectionError extends AutoGPTError {
  override name = "ConnectionError";
  readonly timedOut: boolean;
  readonly request: { method: string; url: string };

  constructor(message: string, request: { method: string; url: string }, options: { cause?: unknown; timedOut?: boolean } = {}) {
    super(`${request.method} ${request.url}: ${message}`, { cause: options.cause });
    this.timedOut = options.timedOut ?? false;
    this.request = request;
  }
}
