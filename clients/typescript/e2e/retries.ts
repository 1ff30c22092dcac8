// Makes one call (get, create or events) against the scripted HTTP server of
// tests/e2e/test_client_typescript.py and prints its outcome as JSON.
//   node e2e/dist/retries.js <baseURL> <get|create|events>
import { ApiError, AutoGPTClient, ConnectionError } from "@autogpt/client";

const [baseURL, call] = process.argv.slice(2);
const maxRetries = Number(process.env.MAX_RETRIES ?? 3);
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 10_000);
const client = new AutoGPTClient({ baseURL, apiKey: "k-retry-test", maxRetries, timeoutMs });

const calls: Record<string, () => Promise<Record<string, unknown>>> = {
  get: async () => ({ taskId: (await client.getTask("t1")).taskId }),
  create: async () => ({ taskId: (await client.createTask({ input: "x" })).taskId }),
  events: async () => {
    const seqs = [];
    for await (const event of client.events("t1")) seqs.push([event.seq, event.type]);
    return { events: seqs };
  },
};

const started = Date.now();
try {
  const result = await calls[call]();
  console.log(JSON.stringify({ ok: true, ...result, ms: Date.now() - started }));
} catch (err) {
  const out: Record<string, unknown> = { ok: false, name: (err as Error).name, message: String(err), ms: Date.now() - started };
  if (err instanceof ApiError) Object.assign(out, { status: err.status, code: err.code, details: err.details });
  if (err instanceof ConnectionError) out.timedOut = err.timedOut;
  console.log(JSON.stringify(out));
}
