/** Shapes of the Agent Protocol API's answers, in camelCase. Every object also
 *  carries `raw`: the JSON exactly as received (snake_case keys). */

export type Raw = { readonly raw: Record<string, unknown> };
export type JsonObject = Record<string, unknown>;

export type TaskStatus = "created" | "running" | "completed" | "failed" | "stopped";

export interface Artifact extends Raw {
  artifactId: string;
  fileName: string;
  /** As given on upload (a directory, or a path ending in the file name); "" for the workspace root. */
  relativePath: string;
  fileSize: number;
  createdAt: string;
  /** True for files the agent wrote, false for uploads. */
  agentCreated: boolean;
}

export interface Task extends Raw {
  taskId: string;
  input: string;
  additionalInput: JsonObject;
  status: TaskStatus;
  createdAt: string;
  modifiedAt: string;
  artifacts: Artifact[];
}

export interface Step extends Raw {
  stepId: string;
  taskId: string;
  name: string;
  /** created, running or completed; the outcome is in `state`. */
  status: string;
  /** completed, failed or stopped. */
  state: string;
  input: string;
  additionalInput: JsonObject;
  output: string;
  additionalOutput: JsonObject;
  artifacts: Artifact[];
  isLast: boolean;
  createdAt: string;
}

/** Both key sets the server prints: the document's and the official spec's. */
export interface Pagination extends Raw {
  page: number;
  size: number;
  total: number;
  pages: number;
  totalItems: number;
  totalPages: number;
  currentPage: number;
  pageSize: number;
}

export interface TaskList extends Raw {
  tasks: Task[];
  pagination: Pagination;
}

export interface StepList extends Raw {
  steps: Step[];
  pagination: Pagination;
}

export interface ArtifactList extends Raw {
  artifacts: Artifact[];
  pagination: Pagination;
}

export interface SuccessResult extends Raw {
  success: boolean;
  message: string;
}

export interface RestartResult extends SuccessResult {
  estimatedDowntime: string;
}

export interface AgentStatus extends Raw {
  agentId: string;
  status: string;
  version: string;
  capabilities: string[];
  activeTasks: number;
  totalTasks: number;
  uptime: string;
  uptimeSeconds: number;
  memoryUsage: MemoryUsage;
  apiUsage: ApiUsage;
  taskCounts: Record<TaskStatus, number> & Raw;
  sandbox?: Sandbox;
}

export interface MemoryUsage extends Raw {
  /** This process's resident memory, e.g. "12MB". */
  used: string;
  /** The machine's memory, e.g. "24GB". */
  total: string;
  processRssBytes: number;
  machineUsedBytes: number;
  machineTotalBytes: number;
}

export interface ApiUsage extends Raw {
  openaiTokensUsed: number;
  openaiCost: number;
  inputTokens: number;
  outputTokens: number;
}

export interface Sandbox extends Raw {
  available: boolean;
  enabled: boolean;
  network: boolean;
  detail: string;
  /** "cgroup v2", "cgroup v1 + v2 (hybrid)", "cgroup v1", or "off: <why>". */
  cgroups?: string;
  /** How a stopped task's processes are killed: "cgroup.kill", "signal" or "process group". */
  kill?: string;
  /** Limits each task's control group enforces, e.g. "memory=1073741824". */
  taskLimits?: string[];
  unenforcedLimits?: string[];
}

/** One entry of a task's event log (README "Tasks, events and streams"). */
export interface TaskEvent extends Raw {
  /** start, step, llm_response, usage, tool_call, tool_result, nudge,
   *  step_failed, patch, trajectory, complete, error, stopped, end (or
   *  heartbeat); proto/agentd/v1/events.proto lists each one's `data` keys. */
  type: string;
  taskId: string;
  /** Position in the log, from 1; resume a stream with afterSeq = the last seq seen. */
  seq: number;
  /** Seconds since the Unix epoch. */
  timestamp: number;
  message?: string;
  result?: string;
  error?: string;
  /** Type-specific payload, keys as the server sent them. */
  data?: JsonObject;
}

/** A download being received: read `body` (a web ReadableStream) once. */
export interface ArtifactDownload {
  fileName?: string;
  contentType?: string;
  contentLength?: number;
  body: ReadableStream<Uint8Array>;
}
