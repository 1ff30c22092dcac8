// The console's only way to agentd: the generated clients over gRPC-Web, on
// the origin that served the page (Envoy's REST ports route gRPC-Web to
// agentd). The API key, when one is needed, lives in sessionStorage only.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "./gen/agentd/agent/v1/agent_pb";
import { ConsoleService } from "./gen/agentd/console/v1/console_pb";
import { TraeService } from "./gen/agentd/trae/v1/trae_pb";

const KEY = "agentd.apiKey";

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

const withKey: Interceptor = (next) => async (req) => {
  const key = apiKey();
  if (key) req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

// Told when a call is refused for want of a (valid) key.
let onUnauthenticated: () => void = () => {};
export function whenUnauthenticated(f: () => void): void {
  onUnauthenticated = f;
}
const noticeRefusal: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.Unauthenticated) onUnauthenticated();
    throw e;
  }
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  useBinaryFormat: true,
  interceptors: [noticeRefusal, withKey],
});

export const trae = createClient(TraeService, transport);
export const agent = createClient(AgentService, transport);
export const consoleApi = createClient(ConsoleService, transport);

/** The server's own words for a failed call. */
export function errorText(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage || e.message;
  return e instanceof Error ? e.message : String(e);
}

export function isAbort(e: unknown): boolean {
  return (
    (e instanceof ConnectError && e.code === Code.Canceled) ||
    (e instanceof DOMException && e.name === "AbortError")
  );
}

export { Code, ConnectError };
