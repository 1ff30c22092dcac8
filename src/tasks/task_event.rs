//! The task event: agentd's public contract. Every stream on every transport,
//! the Trae status, the WebSockets and the CLI read these events, so their
//! types and their JSON shape are defined here and nowhere else.
//!
//! - [`TaskEvent`]: what producers build (the run's start and end, the
//!   engine's progress translated by [`TaskEvent::from_engine`], recovery).
//! - [`TaskEvent::render`]: the one renderer, to the stored and printed form
//!   `{message, result, error, data}` (see `proto/agentd/v1/events.proto`).
//! - [`EventKind`]: the `type` of a stored event, for consumers that react
//!   to kinds (WebSocket statuses, the CLI); no kind is spelled elsewhere.
//!
//! `data` fields are this module's own types: renaming a field of the engine
//! changes nothing on the wire.

use agentd_engine::{
    agent::Budget,
    events::EngineEvent,
    messages::{ToolCall, Usage},
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::store::{Event, TaskStatus};

/// Every event type, as `type` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Start,
    Step,
    LlmDelta,
    LlmResponse,
    Usage,
    ToolCall,
    ToolResult,
    Nudge,
    StepFailed,
    BudgetExceeded,
    Lakeview,
    Patch,
    Trajectory,
    Interrupted,
    Resumed,
    Complete,
    Error,
    Stopped,
    End,
    /// Sent to idle live readers; never stored.
    Heartbeat,
}

impl EventKind {
    pub const ALL: [EventKind; 20] = [
        EventKind::Start,
        EventKind::Step,
        EventKind::LlmDelta,
        EventKind::LlmResponse,
        EventKind::Usage,
        EventKind::ToolCall,
        EventKind::ToolResult,
        EventKind::Nudge,
        EventKind::StepFailed,
        EventKind::BudgetExceeded,
        EventKind::Lakeview,
        EventKind::Patch,
        EventKind::Trajectory,
        EventKind::Interrupted,
        EventKind::Resumed,
        EventKind::Complete,
        EventKind::Error,
        EventKind::Stopped,
        EventKind::End,
        EventKind::Heartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Step => "step",
            EventKind::LlmDelta => "llm_delta",
            EventKind::LlmResponse => "llm_response",
            EventKind::Usage => "usage",
            EventKind::ToolCall => "tool_call",
            EventKind::ToolResult => "tool_result",
            EventKind::Nudge => "nudge",
            EventKind::StepFailed => "step_failed",
            EventKind::BudgetExceeded => "budget_exceeded",
            EventKind::Lakeview => "lakeview",
            EventKind::Patch => "patch",
            EventKind::Trajectory => "trajectory",
            EventKind::Interrupted => "interrupted",
            EventKind::Resumed => "resumed",
            EventKind::Complete => "complete",
            EventKind::Error => "error",
            EventKind::Stopped => "stopped",
            EventKind::End => "end",
            EventKind::Heartbeat => "heartbeat",
        }
    }

    /// The kind a `type` string names (None for one this build does not know).
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of a stored event.
    pub fn of(e: &Event) -> Option<EventKind> {
        EventKind::parse(&e.kind)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts, as `data.usage` / `data.total` print them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub reasoning_tokens: u64,
}

impl From<&Usage> for TokenUsage {
    fn from(u: &Usage) -> Self {
        TokenUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallData {
    pub call_id: String,
    pub name: String,
    pub arguments: Value,
    /// The model's text when it was not valid JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_arguments: Option<String>,
}

impl From<&ToolCall> for ToolCallData {
    fn from(c: &ToolCall) -> Self {
        ToolCallData {
            call_id: c.call_id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
            raw_arguments: c.raw_arguments.clone(),
        }
    }
}

/// One event of a task's log, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// A run (or an Agent Protocol task's first step) began.
    Start {
        task: String,
        max_steps: u32,
        provider: String,
        model: String,
        working_dir: String,
        /// The run's limits (printed only when there is one).
        budget: Budget,
    },
    Step {
        step: u32,
    },
    /// The model's text while it streams (coalesced); `text` is the message.
    LlmDelta {
        step: u32,
        text: String,
    },
    LlmResponse {
        step: u32,
        content: String,
        tool_calls: Vec<ToolCallData>,
        usage: TokenUsage,
        model: String,
        finish_reason: Option<String>,
    },
    /// Tokens and estimated cost after a model call: the call's and the task's.
    Usage {
        step: u32,
        usage: TokenUsage,
        total: TokenUsage,
        cost_usd: f64,
        total_cost_usd: f64,
        /// The call was lakeview's, summarising `step`.
        lakeview: bool,
    },
    ToolCall {
        step: u32,
        call: ToolCallData,
    },
    /// `output` is the message; it is not repeated in `data`.
    ToolResult {
        step: u32,
        call_id: String,
        name: String,
        success: bool,
        output: String,
        error: Option<String>,
    },
    /// The model was sent back to work.
    Nudge {
        step: u32,
        message: String,
    },
    /// An Agent Protocol step whose model call gave up; the task goes on.
    StepFailed {
        step: u32,
        error: String,
        status: Option<u16>,
    },
    /// The run reached a limit of its budget before a model call; `error` follows.
    BudgetExceeded {
        step: u32,
        /// `max_tokens_total`, `max_cost_usd` or `max_wall_secs`.
        budget: &'static str,
        limit: f64,
        spent: f64,
        next_call_at_least: f64,
        message: String,
    },
    /// Lakeview's summary and tags of a finished step.
    Lakeview {
        step: u32,
        task: String,
        details: String,
        tags: Vec<String>,
    },
    Patch {
        path: String,
        bytes: u64,
    },
    Trajectory {
        path: String,
    },
    /// The run's attempt `attempt` was cut off (agentd stopped, or its node
    /// was lost); `step`: the last step its checkpoint has.
    Interrupted {
        attempt: u32,
        step: u32,
        reason: String,
    },
    /// The run goes on as attempt `attempt` from its checkpoint at `step`.
    Resumed {
        attempt: u32,
        step: u32,
    },
    Complete {
        result: String,
    },
    Error {
        error: String,
    },
    Stopped {
        reason: String,
    },
    /// Always last; `status` is the task's final status.
    End {
        status: TaskStatus,
    },
}

/// An event as stored and printed: `message`, `result`, `error`, `data`.
pub type Body = Map<String, Value>;

impl TaskEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            TaskEvent::Start { .. } => EventKind::Start,
            TaskEvent::Step { .. } => EventKind::Step,
            TaskEvent::LlmDelta { .. } => EventKind::LlmDelta,
            TaskEvent::LlmResponse { .. } => EventKind::LlmResponse,
            TaskEvent::Usage { .. } => EventKind::Usage,
            TaskEvent::ToolCall { .. } => EventKind::ToolCall,
            TaskEvent::ToolResult { .. } => EventKind::ToolResult,
            TaskEvent::Nudge { .. } => EventKind::Nudge,
            TaskEvent::StepFailed { .. } => EventKind::StepFailed,
            TaskEvent::BudgetExceeded { .. } => EventKind::BudgetExceeded,
            TaskEvent::Lakeview { .. } => EventKind::Lakeview,
            TaskEvent::Patch { .. } => EventKind::Patch,
            TaskEvent::Trajectory { .. } => EventKind::Trajectory,
            TaskEvent::Interrupted { .. } => EventKind::Interrupted,
            TaskEvent::Resumed { .. } => EventKind::Resumed,
            TaskEvent::Complete { .. } => EventKind::Complete,
            TaskEvent::Error { .. } => EventKind::Error,
            TaskEvent::Stopped { .. } => EventKind::Stopped,
            TaskEvent::End { .. } => EventKind::End,
        }
    }

    /// The engine's progress as task events; the run's end is recorded by
    /// the runner from its outcome instead, and step timings are metrics.
    pub fn from_engine(e: &EngineEvent) -> Option<TaskEvent> {
        Some(match e {
            EngineEvent::StepStarted { step } => TaskEvent::Step { step: *step },
            EngineEvent::LlmDelta { step, text } => TaskEvent::LlmDelta {
                step: *step,
                text: text.clone(),
            },
            EngineEvent::LlmResponse {
                step,
                content,
                tool_calls,
                usage,
                model,
                finish_reason,
            } => TaskEvent::LlmResponse {
                step: *step,
                content: content.clone(),
                tool_calls: tool_calls.iter().map(ToolCallData::from).collect(),
                usage: usage.into(),
                model: model.clone(),
                finish_reason: finish_reason.clone(),
            },
            EngineEvent::ToolCall { step, call } => TaskEvent::ToolCall {
                step: *step,
                call: call.into(),
            },
            EngineEvent::ToolResult { step, result } => TaskEvent::ToolResult {
                step: *step,
                call_id: result.call_id.clone(),
                name: result.name.clone(),
                success: result.success,
                output: result.result.clone(),
                error: result.error.clone(),
            },
            EngineEvent::Nudge { step, message } => TaskEvent::Nudge {
                step: *step,
                message: message.clone(),
            },
            EngineEvent::Usage {
                step,
                usage,
                total,
                cost_usd,
                total_cost_usd,
                lakeview,
            } => TaskEvent::Usage {
                step: *step,
                usage: usage.into(),
                total: total.into(),
                cost_usd: *cost_usd,
                total_cost_usd: *total_cost_usd,
                lakeview: *lakeview,
            },
            EngineEvent::Lakeview {
                step,
                task,
                details,
                tags,
            } => TaskEvent::Lakeview {
                step: *step,
                task: task.clone(),
                details: details.clone(),
                tags: tags.clone(),
            },
            EngineEvent::StepFailed {
                step,
                error,
                status,
            } => TaskEvent::StepFailed {
                step: *step,
                error: error.clone(),
                status: *status,
            },
            EngineEvent::BudgetExceeded { step, exceeded } => TaskEvent::BudgetExceeded {
                step: *step,
                budget: exceeded.budget.as_str(),
                limit: exceeded.limit,
                spent: exceeded.spent,
                next_call_at_least: exceeded.next_call_at_least,
                message: exceeded.message(),
            },
            EngineEvent::PatchWritten { path, bytes } => TaskEvent::Patch {
                path: path.clone(),
                bytes: *bytes,
            },
            EngineEvent::TrajectoryWritten { path } => TaskEvent::Trajectory { path: path.clone() },
            EngineEvent::Completed { .. }
            | EngineEvent::Failed { .. }
            | EngineEvent::Stopped { .. }
            | EngineEvent::StepFinished { .. }
            | EngineEvent::Checkpoint(_) => return None,
        })
    }

    /// The stored and printed form. The one place an event's JSON is shaped.
    pub fn render(self) -> (EventKind, Body) {
        let kind = self.kind();
        let (message, result, error, data) = match self {
            TaskEvent::Start {
                task,
                max_steps,
                provider,
                model,
                working_dir,
                budget,
            } => {
                let mut data = json!({
                    "max_steps": max_steps, "provider": provider, "model": model,
                    "working_dir": working_dir,
                });
                if !budget.is_unlimited() {
                    data["budget"] = json!(budget);
                }
                (format!("Task started: {task}"), None, None, Some(data))
            }
            TaskEvent::Step { step } => (
                format!("Step {step}"),
                None,
                None,
                Some(json!({ "step": step })),
            ),
            TaskEvent::LlmDelta { step, text } => (text, None, None, Some(json!({ "step": step }))),
            TaskEvent::LlmResponse {
                step,
                content,
                tool_calls,
                usage,
                model,
                finish_reason,
            } => {
                let data = json!({
                    "step": step, "content": content, "tool_calls": tool_calls, "usage": usage,
                    "model": model, "finish_reason": finish_reason,
                });
                (content, None, None, Some(data))
            }
            TaskEvent::Usage {
                step,
                usage,
                total,
                cost_usd,
                total_cost_usd,
                lakeview,
            } => {
                let mut data = json!({
                    "step": step, "usage": usage, "total": total, "cost_usd": cost_usd,
                    "total_cost_usd": total_cost_usd,
                });
                if lakeview {
                    data["lakeview"] = true.into();
                }
                let message = format!(
                    "{} input, {} output tokens so far",
                    total.input_tokens, total.output_tokens
                );
                (message, None, None, Some(data))
            }
            TaskEvent::Lakeview {
                step,
                task,
                details,
                tags,
            } => {
                let message = match (task.is_empty(), details.is_empty()) {
                    (true, true) => tags.join(", "),
                    (false, true) => task.clone(),
                    (true, false) => details.clone(),
                    (false, false) => format!("{task} {details}"),
                };
                let data = json!({ "step": step, "task": task, "details": details, "tags": tags });
                (message, None, None, Some(data))
            }
            TaskEvent::ToolCall { step, call } => {
                let message = format!("Calling {}", call.name);
                let mut data = to_map(&call);
                data.insert("step".into(), step.into());
                (message, None, None, Some(Value::Object(data)))
            }
            TaskEvent::ToolResult {
                step,
                call_id,
                name,
                success,
                output,
                error,
            } => {
                let mut data =
                    json!({ "step": step, "call_id": call_id, "name": name, "success": success });
                if let Some(e) = error {
                    data["error"] = e.into();
                }
                (output, None, None, Some(data))
            }
            TaskEvent::Nudge { step, message } => {
                let data = json!({ "step": step, "message": message });
                (message, None, None, Some(data))
            }
            TaskEvent::StepFailed {
                step,
                error,
                status,
            } => (
                format!("Step {step} failed: {error}"),
                None,
                None,
                Some(json!({ "step": step, "error": error, "status": status })),
            ),
            TaskEvent::BudgetExceeded {
                step,
                budget,
                limit,
                spent,
                next_call_at_least,
                message,
            } => (
                message,
                None,
                None,
                Some(json!({
                    "step": step, "budget": budget, "limit": limit, "spent": spent,
                    "next_call_at_least": next_call_at_least,
                })),
            ),
            TaskEvent::Patch { path, bytes } => (
                format!("Patch written to {path} ({bytes} bytes)"),
                None,
                None,
                Some(json!({ "path": path, "bytes": bytes })),
            ),
            TaskEvent::Trajectory { path } => (
                format!("Trajectory written to {path}"),
                None,
                None,
                Some(json!({ "path": path })),
            ),
            TaskEvent::Interrupted {
                attempt,
                step,
                reason,
            } => (
                reason,
                None,
                None,
                Some(json!({ "attempt": attempt, "step": step })),
            ),
            TaskEvent::Resumed { attempt, step } => (
                format!("Resumed after step {step} (attempt {attempt})"),
                None,
                None,
                Some(json!({ "attempt": attempt, "step": step })),
            ),
            TaskEvent::Complete { result } => ("Task completed".into(), Some(result), None, None),
            TaskEvent::Error { error } => ("Task failed".into(), None, Some(error), None),
            TaskEvent::Stopped { reason } => (reason, None, None, None),
            TaskEvent::End { status } => (
                "Stream ended".into(),
                None,
                None,
                Some(json!({ "status": status.as_str() })),
            ),
        };
        let mut body = Map::new();
        body.insert("message".into(), Value::String(message));
        if let Some(r) = result {
            body.insert("result".into(), Value::String(r));
        }
        if let Some(e) = error {
            body.insert("error".into(), Value::String(e));
        }
        if let Some(d) = data {
            body.insert("data".into(), d);
        }
        (kind, body)
    }
}

fn to_map<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: EventKind) -> Option<TaskEvent> {
        let call = ToolCallData {
            call_id: "c1".into(),
            name: "bash".into(),
            arguments: json!({"command": "ls"}),
            raw_arguments: Some("{bad".into()),
        };
        Some(match kind {
            EventKind::Start => TaskEvent::Start {
                task: "t".into(),
                max_steps: 3,
                provider: "openai".into(),
                model: "m".into(),
                working_dir: "/w".into(),
                budget: Budget {
                    max_tokens_total: Some(1000),
                    ..Budget::default()
                },
            },
            EventKind::Step => TaskEvent::Step { step: 1 },
            EventKind::LlmDelta => TaskEvent::LlmDelta {
                step: 1,
                text: "Let me".into(),
            },
            EventKind::LlmResponse => TaskEvent::LlmResponse {
                step: 1,
                content: "hi".into(),
                tool_calls: vec![call],
                usage: TokenUsage::default(),
                model: "m".into(),
                finish_reason: None,
            },
            EventKind::Usage => TaskEvent::Usage {
                step: 1,
                usage: TokenUsage::default(),
                total: TokenUsage::default(),
                cost_usd: 0.0,
                total_cost_usd: 0.0,
                lakeview: true,
            },
            EventKind::Lakeview => TaskEvent::Lakeview {
                step: 1,
                task: "The agent is examining source code.".into(),
                details: "It reads main.rs.".into(),
                tags: vec!["EXAMINE_CODE".into()],
            },
            EventKind::ToolCall => TaskEvent::ToolCall { step: 1, call },
            EventKind::ToolResult => TaskEvent::ToolResult {
                step: 1,
                call_id: "c1".into(),
                name: "bash".into(),
                success: false,
                output: "out".into(),
                error: Some("boom".into()),
            },
            EventKind::Nudge => TaskEvent::Nudge {
                step: 1,
                message: "go on".into(),
            },
            EventKind::StepFailed => TaskEvent::StepFailed {
                step: 1,
                error: "down".into(),
                status: Some(503),
            },
            EventKind::BudgetExceeded => TaskEvent::BudgetExceeded {
                step: 3,
                budget: "max_tokens_total",
                limit: 45.0,
                spent: 45.0,
                next_call_at_least: 10.0,
                message: "Budget exceeded".into(),
            },
            EventKind::Patch => TaskEvent::Patch {
                path: "/p".into(),
                bytes: 3,
            },
            EventKind::Trajectory => TaskEvent::Trajectory { path: "/t".into() },
            EventKind::Interrupted => TaskEvent::Interrupted {
                attempt: 1,
                step: 2,
                reason: "interrupted".into(),
            },
            EventKind::Resumed => TaskEvent::Resumed {
                attempt: 2,
                step: 2,
            },
            EventKind::Complete => TaskEvent::Complete {
                result: "done".into(),
            },
            EventKind::Error => TaskEvent::Error {
                error: "bad".into(),
            },
            EventKind::Stopped => TaskEvent::Stopped {
                reason: "stopped on request".into(),
            },
            EventKind::End => TaskEvent::End {
                status: TaskStatus::Completed,
            },
            EventKind::Heartbeat => return None,
        })
    }

    /// The contract as `events.proto` writes it: `//   - type: key, key?`
    /// lines, each type with its (key, optional) pairs.
    fn documented() -> Vec<(String, Vec<(String, bool)>)> {
        include_str!("../../proto/agentd/v1/events.proto")
            .lines()
            .filter_map(|l| l.strip_prefix("//   - "))
            .map(|l| {
                let (kind, keys) = l.split_once(':').expect("`type: keys`");
                let keys = match keys.trim() {
                    "-" => vec![],
                    keys => keys
                        .split(',')
                        .map(|k| {
                            let k = k.trim();
                            match k.strip_suffix('?') {
                                Some(k) => (k.to_string(), true),
                                None => (k.to_string(), false),
                            }
                        })
                        .collect(),
                };
                (kind.to_string(), keys)
            })
            .collect()
    }

    #[test]
    fn events_proto_lists_every_kind_and_only_those() {
        let documented: Vec<String> = documented().into_iter().map(|(k, _)| k).collect();
        let all: Vec<String> = EventKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(documented, all);
        assert_eq!(EventKind::parse("status"), None);
    }

    #[test]
    fn every_kind_renders_as_events_proto_documents_it() {
        for (name, keys) in documented() {
            let kind = EventKind::parse(&name).expect(&name);
            let Some(event) = sample(kind) else { continue };
            assert_eq!(event.kind(), kind);
            let (rendered, body) = event.render();
            assert_eq!(rendered, kind);
            assert!(body.get("message").is_some_and(Value::is_string), "{kind}");
            for key in body.keys() {
                assert!(
                    ["message", "result", "error", "data"].contains(&key.as_str()),
                    "{kind}: {key}"
                );
            }
            let data = body.get("data").and_then(Value::as_object);
            assert_eq!(data.is_some(), !keys.is_empty(), "{kind}: data");
            let data = data.cloned().unwrap_or_default();
            for key in data.keys() {
                assert!(
                    keys.iter().any(|(k, _)| k == key),
                    "{kind}: undocumented data.{key}"
                );
            }
            // The samples give optional keys a value, so every key appears.
            for (key, optional) in &keys {
                assert!(
                    data.contains_key(key),
                    "{kind}: no data.{key} (optional: {optional})"
                );
            }
        }
    }

    #[test]
    fn a_tool_result_carries_its_output_once() {
        let (_, body) = sample(EventKind::ToolResult).unwrap().render();
        assert_eq!(body["message"], "out");
        assert_eq!(
            body["data"],
            json!({"step": 1, "call_id": "c1", "name": "bash", "success": false, "error": "boom"})
        );
    }

    #[test]
    fn the_terminal_events_keep_the_documents_fields() {
        let (_, c) = sample(EventKind::Complete).unwrap().render();
        assert_eq!(
            Value::Object(c),
            json!({"message": "Task completed", "result": "done"})
        );
        let (_, e) = sample(EventKind::Error).unwrap().render();
        assert_eq!(
            Value::Object(e),
            json!({"message": "Task failed", "error": "bad"})
        );
        let (_, end) = sample(EventKind::End).unwrap().render();
        assert_eq!(
            Value::Object(end),
            json!({"message": "Stream ended", "data": {"status": "completed"}})
        );
    }
}
