/** Retry policy: which answers are worth another attempt, and how long to wait. */

export interface RetryPolicy {
  /** Further attempts after the first (0 disables retries). */
  maxRetries: number;
  /** First backoff delay; doubled on every further attempt. */
  initialDelayMs: number;
  /** Upper bound of a computed backoff delay. */
  maxDelayMs: number;
  /** Upper bound of a server's Retry-After (a longer one is cut to this). */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  maxRetries: 3,
  initialDelayMs: 500,
  maxDelayMs: 8_000,
  maxRetryAfterMs: 60_000,
};

/**
 * Whether an HTTP status is transient. A request that may change state
 * (`idempotent` false: create task, execute step, upload, restart) is
 * retried only on answers saying it was refused before anything happened:
 * 429 (rate limit or all run slots busy) and 503 (Envoy could not reach
 * agentd). Repeating it after a 500 could run a step twice.
 */
export function retryableStatus(status: number, idempotent: boolean): boolean {
  if (status === 429 || status === 503) return true;
  return idempotent && status >= 500 && status !== 501;
}

/** Milliseconds to wait as a Retry-After header says (seconds or an HTTP date), or undefined. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/**
 * Delay before retry number `retry` (1-based): the server's Retry-After when
 * it sent one, else exponential backoff with jitter (half fixed, half random,
 * so that clients refused together do not come back together).
 */
export function retryDelay(policy: RetryPolicy, retry: number, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxRetryAfterMs);
  const base = Math.min(policy.initialDelayMs * 2 ** (retry - 1), policy.maxDelayMs);
  return base / 2 + Math.random() * (base / 2);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
