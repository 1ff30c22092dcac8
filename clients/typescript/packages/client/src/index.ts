export { AutoGPTClient } from "./client.js";
export type { AutoGPTClientOptions, EventsOptions, ListTasksOptions, PageOptions, TaskInput, UploadInput } from "./client.js";
export { ApiError, AutoGPTError, ConnectionError } from "./errors.js";
export type { ErrorEnvelope } from "./errors.js";
export type { RequestOptions } from "./http.js";
export type * from "./types.js";
