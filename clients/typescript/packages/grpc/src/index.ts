/**
 * agentd's gRPC API for Node: connect-es clients speaking the gRPC protocol
 * over HTTP/2, straight to agentd (default 127.0.0.1:50051) or through Envoy.
 * The messages and service descriptors under ./gen are generated at build
 * time from proto/ (`npm run generate`), never committed.
 */

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Transport } from "@connectrpc/connect";

import { AgentService } from "./gen/agentd/agent/v1/agent_pb.js";
import { TraeService } from "./gen/agentd/trae/v1/trae_pb.js";

export * as agent from "./gen/agentd/agent/v1/agent_pb.js";
export * as trae from "./gen/agentd/trae/v1/trae_pb.js";
export * as events from "./gen/agentd/v1/events_pb.js";
export { AgentService, TraeService };
export { Code, ConnectError };

export interface AgentdGrpcOptions {
  /** e.g. http://127.0.0.1:50051 (agentd) or http://127.0.0.1:5000 (Envoy). */
  baseUrl: string;
  /** Sent as `authorization: Bearer <apiKey>` when agentd runs with API keys. */
  apiKey?: string;
}

export function createAgentdTransport({ baseUrl, apiKey }: AgentdGrpcOptions): Transport {
  const interceptors: Interceptor[] = [];
  if (apiKey) {
    interceptors.push((next) => async (req) => {
      req.header.set("authorization", `Bearer ${apiKey}`);
      return next(req);
    });
  }
  return createGrpcTransport({ baseUrl, interceptors });
}

/** AgentService (the Agent Protocol dialect). */
export function createAgentClient(options: AgentdGrpcOptions): Client<typeof AgentService> {
  return createClient(AgentService, createAgentdTransport(options));
}

/** TraeService (the Trae Agent dialect). */
export function createTraeClient(options: AgentdGrpcOptions): Client<typeof TraeService> {
  return createClient(TraeService, createAgentdTransport(options));
}

/**
 * The document's error code of a failed call (e.g. "TASK_NOT_FOUND"): agentd
 * sends it as `x-error-code` metadata, and as the reason of an ErrorInfo detail.
 */
export function errorCode(err: unknown): string | undefined {
  return err instanceof ConnectError ? (err.metadata.get("x-error-code") ?? undefined) : undefined;
}
