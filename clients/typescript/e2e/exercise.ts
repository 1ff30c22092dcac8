// Drives every AutoGPTClient method against a live agentd + Envoy for
// tests/e2e/test_client_typescript.py, and prints what it saw as one JSON
// report (the last line of stdout); the test makes the assertions.
//
// The main task is kept for the test to inspect; a second one is deleted.
// Environment: AP_URL (Envoy REST base), CONFIG_FILE (Trae config of the
// scripted LLM route), UPLOAD_PATH (a file to upload), DOWNLOAD_DIR.
import { join } from "node:path";

import { ApiError, AutoGPTClient, type TaskEvent } from "@autogpt/client";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const client = new AutoGPTClient({ baseURL: env("AP_URL") });
const downloads = env("DOWNLOAD_DIR");
const report: Record<string, unknown> = {};

/** The ApiError a call throws, as plain data (or a marker when it did not throw). */
async function failure(call: () => Promise<unknown>): Promise<Record<string, unknown>> {
  try {
    await call();
    return { threw: false };
  } catch (err) {
    if (!(err instanceof ApiError)) return { threw: true, apiError: false, name: (err as Error).name, message: String(err) };
    return { threw: true, apiError: true, name: err.name, status: err.status, code: err.code, details: err.details, body: err.body };
  }
}

async function collect(events: AsyncIterable<TaskEvent>): Promise<Record<string, unknown>[]> {
  const out = [];
  for await (const event of events) out.push({ camel: { type: event.type, seq: event.seq, taskId: event.taskId }, raw: event.raw });
  return out;
}

const status = await client.getStatus();
report.status = { agentId: status.agentId, status: status.status, capabilities: status.capabilities, taskCountsKeys: Object.keys(status.taskCounts), rawAgentId: status.raw.agent_id };

const task = await client.createTask({ input: "exercise every method", additionalInput: { config_file: env("CONFIG_FILE"), priority: "high" } });
report.created = { taskId: task.taskId, rawTaskId: task.raw.task_id, status: task.status, additionalInput: task.additionalInput, json: JSON.parse(JSON.stringify(task)) };

const got = await client.getTask(task.taskId);
report.got = { taskId: got.taskId, input: got.input, createdAt: got.createdAt };

const listed = await client.listTasks({ page: 1, pageSize: 100, status: "created" });
report.listed = { ids: listed.tasks.map((t) => t.taskId), statuses: [...new Set(listed.tasks.map((t) => t.status))], pagination: listed.pagination, rawPagination: listed.raw.pagination };

// Uploads: a file by path (streamed from disk), and bytes from memory.
const fromPath = await client.uploadArtifact(task.taskId, { file: env("UPLOAD_PATH"), relativePath: "data" });
const fromBuffer = await client.uploadArtifact(task.taskId, { file: Buffer.from("tiny\n"), fileName: "tiny.txt" });
report.uploaded = { fromPath, fromBuffer };

// Downloads: into memory and streamed to a file, for the test to hash.
const buffer = await client.downloadArtifact(task.taskId, fromPath.artifactId);
const { writeFile } = await import("node:fs/promises");
await writeFile(join(downloads, "buffer.bin"), buffer);
const saved = await client.saveArtifact(task.taskId, fromPath.artifactId, join(downloads, "stream.bin"));
const streamed = await client.streamArtifact(task.taskId, fromBuffer.artifactId);
const tinyText = Buffer.from(await new Response(streamed.body).arrayBuffer()).toString();
report.downloaded = { bufferBytes: buffer.length, savedBytes: saved, streamedName: streamed.fileName, streamedType: streamed.contentType, tinyText };

// Steps until the last.
const steps = [];
for (let i = 0; i < 5; i++) {
  const step = await client.executeStep(task.taskId, { input: i === 0 ? "" : `continue ${i}`, additionalInput: { note: `step ${i}` } });
  steps.push(step);
  if (step.isLast) break;
}
report.steps = steps.map((s) => ({ stepId: s.stepId, isLast: s.isLast, output: s.output, state: s.state, input: s.input, additionalInput: s.additionalInput, artifacts: s.artifacts.map((a) => [a.relativePath, a.fileName, a.agentCreated]) }));
const stepList = await client.listSteps(task.taskId, { page: 1, pageSize: 10 });
const firstStep = await client.getStep(task.taskId, steps[0].stepId);
report.stepList = { ids: stepList.steps.map((s) => s.stepId), totalItems: stepList.pagination.totalItems };
report.firstStep = { stepId: firstStep.stepId, output: firstStep.output };

const artifacts = await client.getArtifacts(task.taskId, { pageSize: 100 });
const written = artifacts.artifacts.find((a) => a.agentCreated);
report.artifacts = artifacts.artifacts.map((a) => [a.relativePath, a.fileName, a.agentCreated, a.fileSize]);
report.agentFile = written ? (await client.downloadArtifact(task.taskId, written.artifactId)).toString() : null;

// The event log: all of it, then resumed after seq 3.
report.events = await collect(client.events(task.taskId));
report.resumed = await collect(client.events(task.taskId, { afterSeq: 3 }));

// Deleting an artifact, then the typed 404s.
report.deletedArtifact = await client.deleteArtifact(task.taskId, fromBuffer.artifactId);
report.afterDelete = (await client.getArtifacts(task.taskId)).artifacts.map((a) => a.fileName);
report.errors = {
  task: await failure(() => client.getTask("no-such-task")),
  step: await failure(() => client.getStep(task.taskId, "no-such-step")),
  artifact: await failure(() => client.downloadArtifact(task.taskId, fromBuffer.artifactId)),
  events: await failure(() => collect(client.events("no-such-task"))),
  finishedStep: await failure(() => client.executeStep(task.taskId, { input: "one more" })),
};

report.restart = await client.restart();

// Deleting a task (another one: the test inspects the main task afterwards).
const doomed = await client.createTask({ input: "to be deleted" });
report.doomed = doomed.taskId;
report.deletedTask = await client.deleteTask(doomed.taskId);
report.afterDeleteTask = await failure(() => client.getTask(doomed.taskId));

console.log(JSON.stringify(report));
