//! What the engine reports while a task runs, for the task layer's event log.
//!
//! Events are emitted as things happen, in order, through an [`EventSink`].
//! They serialize to JSON as `{"type": "step_started", ...}`.

use serde::{Deserialize, Serialize};

use crate::agent::{BudgetExceeded, CheckpointDelta};
use crate::messages::{ToolCall, ToolResult, Usage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A step (one LLM turn plus its tool calls) begins; steps count from 1.
    StepStarted { step: u32 },
    /// Text of the model's answer while it streams, coalesced (see
    /// `agent::deltas`); the `LlmResponse` that follows has all of it.
    LlmDelta { step: u32, text: String },
    /// The model answered.
    LlmResponse {
        step: u32,
        content: String,
        tool_calls: Vec<ToolCall>,
        usage: Usage,
        model: String,
        finish_reason: Option<String>,
    },
    /// A tool is about to run.
    ToolCall { step: u32, call: ToolCall },
    /// A tool finished (every tool call gets exactly one result).
    ToolResult { step: u32, result: ToolResult },
    /// A step's model call failed after its retries and the step was rolled
    /// back, to be tried again under the same number (the next attempt emits
    /// `step_started` again); the run goes on. Only under the agent's
    /// `retry_failed_steps`. `status` is the provider's HTTP status, if any.
    StepFailed {
        step: u32,
        error: String,
        status: Option<u16>,
    },
    /// The model was sent back to work: no tool call, or `task_done` with an
    /// empty patch under `must_patch`.
    Nudge { step: u32, message: String },
    /// Token usage and estimated cost after an LLM call: this call's and the
    /// run's running totals (the agent's calls and lakeview's together).
    Usage {
        step: u32,
        usage: Usage,
        total: Usage,
        cost_usd: f64,
        total_cost_usd: f64,
        /// The call was lakeview's (summarising `step`), not the agent's.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lakeview: bool,
    },
    /// Lakeview's summary of a finished step (see `agent::lakeview`), made
    /// beside the loop, so it may arrive after later steps' events. `task`
    /// is the general what (at most ~10 words), `details` the specifics;
    /// `tags` are Trae's step tags (`WRITE_TEST`, `EXAMINE_CODE`, …). Either
    /// part may be empty when the model's answer could not be read.
    Lakeview {
        step: u32,
        task: String,
        details: String,
        tags: Vec<String>,
    },
    /// A step's wall time: in the model call, in its tools, and the rest
    /// (the engine's own work: history, events, trajectory). Telemetry: the
    /// task layer records it as metrics, not in the task's log.
    StepFinished {
        step: u32,
        llm_seconds: f64,
        tool_seconds: f64,
        overhead_seconds: f64,
    },
    /// The run reached one of its budget's limits (or its next model call
    /// would have passed it) and stops before that call; `Failed` follows.
    BudgetExceeded {
        step: u32,
        #[serde(flatten)]
        exceeded: BudgetExceeded,
    },
    /// What rebuilds the agent after a crash (see `agent::checkpoint`): after
    /// the model's answer when its tool calls are about to run, and when a
    /// step completed. For the task layer to store with the events before
    /// it, never to show in a task's log.
    Checkpoint(Box<CheckpointDelta>),
    /// The git diff was written to `patch_path`.
    PatchWritten { path: String, bytes: u64 },
    /// The trajectory file was finalised.
    TrajectoryWritten { path: String },
    /// The task ended successfully (`task_done`); `result` is the model's last text.
    Completed { result: String },
    /// The task ended in failure.
    Failed { error: String, kind: FailureKind },
    /// The task was cancelled; its processes were ended.
    Stopped { reason: String },
}

/// Why a task failed, so that callers can map it (a provider error is the
/// API's `OPENAI_API_ERROR`, 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The LLM provider failed after its retries.
    Provider,
    /// `max_steps` ran out before `task_done`.
    MaxSteps,
    /// A limit of the task's budget was reached before the next model call.
    Budget,
    /// Anything else (tools could not start, output could not be written, …).
    Internal,
}

/// Where events go. Implemented for an unbounded channel sender and for
/// [`NoEvents`]; the task layer may implement it to append to its log.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: EngineEvent);
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<EngineEvent> {
    fn emit(&self, event: EngineEvent) {
        // The receiver going away only means nobody listens any more.
        let _ = self.send(event);
    }
}

/// Discards events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: EngineEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialize_with_a_type_tag() {
        let e = EngineEvent::Failed {
            error: "boom".into(),
            kind: FailureKind::MaxSteps,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "failed", "error": "boom", "kind": "max_steps"})
        );
        let e = EngineEvent::StepStarted { step: 3 };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"type":"step_started","step":3}"#);
        assert_eq!(serde_json::from_str::<EngineEvent>(&text).unwrap(), e);
        let e = EngineEvent::StepFailed {
            step: 2,
            error: "openai answered HTTP 503: overloaded".into(),
            status: Some(503),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "step_failed", "step": 2,
                   "error": "openai answered HTTP 503: overloaded", "status": 503})
        );
    }
}
