// Runs an Agent Protocol task over gRPC and follows it to the end:
//   creates the task (optionally uploading an input file), executes steps
//   until the last while printing its event stream, then downloads an
//   artifact the agent wrote.
//
//   node examples/dist/run-task.js --server http://127.0.0.1:50051 \
//     --input "write hello.txt" [--additional-input '{"config_file":"/abs/trae_config.yaml"}'] \
//     [--upload data.csv --upload-path data] [--artifact hello.txt] [--out downloads/]
//
// Output: one line per item, "task <id>", "uploaded <json>", "event <json>",
// "step <n> …", "saved <path> <bytes>", so that scripts can read it.
import { createWriteStream } from "node:fs";
import { mkdir, open } from "node:fs/promises";
import { basename, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";

import { toJson } from "@bufbuild/protobuf";
import { agent, createAgentClient, errorCode, events } from "@agentd/grpc";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: process.env.AGENTD_GRPC_URL ?? "http://127.0.0.1:50051" },
    "api-key": { type: "string", default: process.env.AGENTD_API_KEY },
    input: { type: "string", default: "Write a short summary of the workspace into summary.md" },
    "additional-input": { type: "string", default: "{}" },
    upload: { type: "string" },
    "upload-path": { type: "string", default: "" },
    artifact: { type: "string" },
    out: { type: "string", default: "." },
    "max-steps": { type: "string", default: "50" },
  },
});

const client = createAgentClient({ baseUrl: args.server!, apiKey: args["api-key"] });
const print = (line: string) => process.stdout.write(line + "\n");

async function main(): Promise<void> {
  const task = await client.createTask({ input: args.input, additionalInput: JSON.parse(args["additional-input"]!) });
  print(`task ${task.taskId}`);
  if (args.upload) await upload(task.taskId, args.upload, args["upload-path"]!);

  // Follow the log while the steps run: it replays from seq 1 and ends with `end`.
  const stop = new AbortController();
  const following = follow(task.taskId, stop.signal);
  following.catch(() => undefined); // awaited below; a failing step must not leave it unhandled
  try {
    let last: agent.Step | undefined;
    for (let n = 1; n <= Number(args["max-steps"]) && !last?.isLast; n++) {
      last = await client.executeStep({ taskId: task.taskId });
      print(`step ${n} ${last.name} state=${last.state} is_last=${last.isLast}: ${last.output}`);
    }
  } catch (err) {
    stop.abort(); // a task that never started would keep the stream open
    throw err;
  }
  await following;

  const { artifacts } = await client.listArtifacts({ taskId: task.taskId, pageSize: 100 });
  const wanted = args.artifact
    ? artifacts.find((a) => a.fileName === args.artifact || join(a.relativePath, a.fileName) === args.artifact)
    : artifacts.filter((a) => a.agentCreated).at(-1);
  if (!wanted) throw new Error(`no artifact ${args.artifact ?? "written by the agent"} among ${artifacts.map((a) => a.fileName)}`);
  await download(task.taskId, wanted);
}

async function follow(taskId: string, signal: AbortSignal): Promise<void> {
  for await (const event of client.streamTaskEvents({ taskId }, { signal })) {
    if (event.type === "heartbeat") continue;
    print(`event ${JSON.stringify(toJson(events.TaskEventSchema, event, { useProtoFieldName: true, alwaysEmitImplicit: true }))}`);
    if (event.type === "end") return;
  }
  throw new Error("the event stream closed before `end`");
}

/** Client streaming: the first message names the file, the rest carry bytes. */
async function upload(taskId: string, path: string, relativePath: string): Promise<void> {
  const file = await open(path);
  async function* messages() {
    yield { taskId, fileName: basename(path), relativePath, file: { contentType: "application/octet-stream" } };
    for await (const chunk of file.createReadStream({ highWaterMark: 64 * 1024 })) {
      yield { file: { data: chunk as Buffer } };
    }
  }
  try {
    const artifact = await client.uploadArtifact(messages());
    print(`uploaded ${JSON.stringify(toJson(agent.ArtifactSchema, artifact, { useProtoFieldName: true, alwaysEmitImplicit: true }))}`);
  } finally {
    await file.close();
  }
}

/** Server streaming: the bytes arrive as a stream of google.api.HttpBody chunks. */
async function download(taskId: string, artifact: agent.Artifact): Promise<void> {
  await mkdir(args.out!, { recursive: true });
  const path = join(args.out!, artifact.fileName);
  const chunks = client.downloadArtifact({ taskId, artifactId: artifact.artifactId });
  const out = createWriteStream(path);
  await pipeline(async function* () {
    for await (const body of chunks) yield body.data;
  }, out);
  print(`saved ${path} ${out.bytesWritten}`);
}

main().catch((err) => {
  const code = errorCode(err);
  console.error(`run-task: ${code ? `${code}: ` : ""}${err instanceof Error ? err.message : err}`);
  process.exitCode = 1;
});
