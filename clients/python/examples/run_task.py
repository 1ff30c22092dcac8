#!/usr/bin/env python3
"""Runs a task on agentd over gRPC with the generated stubs: starts it,
follows its event stream to `end` (printing every event), and downloads the
files it produced.

    python run_task.py --server 127.0.0.1:50051 --input "Write hello.txt" --out-dir out/

The task is an Agent Protocol task (AgentService): CreateTask, then
ExecuteStep until the agent says the last step is done, while a second
thread follows StreamTaskEvents (the same log the REST SSE streams serve).
Then ListArtifacts and DownloadArtifact (a stream of google.api.HttpBody
chunks). --server may be agentd itself or Envoy (which passes gRPC through).

Exit status: 0 when the task completed, 1 when it failed or was stopped,
2 on a usage or transport error.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

from agentd.agent.v1 import agent_pb2, agent_pb2_grpc

# A step runs an LLM call and its tools; bash alone may take 120 s per command.
STEP_TIMEOUT = 900
MAX_STEPS_CALLS = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="127.0.0.1:50051", help="host:port of agentd's gRPC (or Envoy's) listener")
    ap.add_argument("--input", default="Write a short README.md describing this workspace.", help="the task")
    ap.add_argument("--config-file", help="Trae config file for the run (additional_input.config_file)")
    ap.add_argument("--max-steps", type=int, help="additional_input.max_steps")
    ap.add_argument("--api-key", help="sent as `authorization: Bearer <key>` when agentd requires keys")
    ap.add_argument("--out-dir", type=Path, default=Path("artifacts"), help="where downloaded artifacts go")
    ap.add_argument("--artifact", help="download only artifacts with this file name (default: all)")
    return ap.parse_args(argv)


def additional_input(args: argparse.Namespace) -> struct_pb2.Struct:
    extra = struct_pb2.Struct()
    if args.config_file:
        extra.update({"config_file": args.config_file})
    if args.max_steps is not None:
        extra.update({"max_steps": args.max_steps})
    return extra


def format_event(ev) -> str:
    """One line per event: seq, type, then its text (result/error when set)."""
    text = ev.message if ev.HasField("message") else ""
    if ev.HasField("result"):
        text += f" | result: {ev.result}"
    if ev.HasField("error"):
        text += f" | error: {ev.error}"
    return f"[{ev.seq:>4}] {ev.type:<12} {text}".rstrip()


class StepRunner(threading.Thread):
    """Executes steps until `is_last`. If stepping fails, it cancels the event
    stream so that the main thread does not wait for an `end` that will not come."""

    def __init__(self, stub, task_id: str, metadata, stream):
        super().__init__(daemon=True)
        self.stub, self.task_id, self.metadata, self.stream = stub, task_id, metadata, stream
        self.steps: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(MAX_STEPS_CALLS):
                step = self.stub.ExecuteStep(
                    agent_pb2.ExecuteStepRequest(task_id=self.task_id), metadata=self.metadata, timeout=STEP_TIMEOUT
                )
                self.steps.append(step)
                if step.is_last:
                    return
            raise RuntimeError(f"no last step after {MAX_STEPS_CALLS} steps")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
            self.stream.cancel()


def follow_events(stream) -> list:
    """Prints every event up to `end` (heartbeats skipped); returns them."""
    seen = []
    for ev in stream:
        if ev.type == "heartbeat":
            continue
        print(format_event(ev), flush=True)
        seen.append(ev)
        if ev.type == "end":
            break
    return seen


def safe_target(out_dir: Path, artifact) -> Path:
    """out_dir/relative_path/file_name, refusing anything that would land outside out_dir."""
    rel = Path(artifact.relative_path or ".")
    if artifact.relative_path.endswith("/" + artifact.file_name) or artifact.relative_path == artifact.file_name:
        rel = rel.parent  # the AutoGPT document's form: relative_path ends in the file name
    target = (out_dir / rel / artifact.file_name).resolve()
    if out_dir.resolve() not in target.parents:
        raise ValueError(f"artifact path {artifact.relative_path!r}/{artifact.file_name!r} leaves {out_dir}")
    return target


def download(stub, task_id: str, artifact, out_dir: Path, metadata) -> Path:
    target = safe_target(out_dir, artifact)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    chunks = stub.DownloadArtifact(
        agent_pb2.DownloadArtifactRequest(task_id=task_id, artifact_id=artifact.artifact_id),
        metadata=metadata,
        timeout=600,
    )
    with open(target, "wb") as f:
        for body in chunks:  # google.api.HttpBody
            f.write(body.data)
            digest.update(body.data)
            size += len(body.data)
    print(f"downloaded {artifact.artifact_id} -> {target} ({size} bytes, sha256 {digest.hexdigest()})")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []
    with grpc.insecure_channel(args.server) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        try:
            return run(stub, args, metadata)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2


def run(stub, args: argparse.Namespace, metadata) -> int:
    task = stub.CreateTask(
        agent_pb2.CreateTaskRequest(input=args.input, additional_input=additional_input(args)),
        metadata=metadata,
        timeout=30,
    )
    print(f"task {task.task_id} created ({task.status})", flush=True)

    # Follow the log from the start; the first step starts the agent.
    stream = stub.StreamTaskEvents(agent_pb2.StreamTaskEventsRequest(task_id=task.task_id), metadata=metadata)
    steps = StepRunner(stub, task.task_id, metadata, stream)
    steps.start()
    try:
        events = follow_events(stream)
    except grpc.RpcError:
        if steps.error is None:
            raise
        events = []
    steps.join()
    if steps.error is not None:
        raise steps.error
    stream.cancel()
    print(f"{len(steps.steps)} step(s); last output: {steps.steps[-1].output!r}")

    listed = stub.ListArtifacts(
        agent_pb2.ListArtifactsRequest(task_id=task.task_id, page_size=100), metadata=metadata, timeout=30
    )
    wanted = [a for a in listed.artifacts if args.artifact in (None, a.file_name)]
    if not wanted:
        print("no artifacts to download")
    for artifact in wanted:
        download(stub, task.task_id, artifact, args.out_dir, metadata)

    final = stub.GetTask(agent_pb2.GetTaskRequest(task_id=task.task_id), metadata=metadata, timeout=30)
    print(f"task {task.task_id} {final.status}")
    print(json_format.MessageToJson(final, preserving_proto_field_name=True, indent=None))
    return 0 if final.status == "completed" and events and events[-1].type == "end" else 1


if __name__ == "__main__":
    sys.exit(main())
