//! Trae's trajectory JSON, rewritten (temp file + rename) as the run goes.
//!
//! Layout and field names follow Trae's recorder so existing trajectory
//! tooling reads it. As in Trae, an LLM interaction's `input_messages` are the
//! messages added since the previous call (concatenated they replay the whole
//! conversation) and a step's `llm_messages` are the messages the step added
//! for the next turn (tool results, nudges).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::messages::{LlmResponse, Message, Role, ToolCall, ToolResult};
use crate::patch::{PatchError, write_file};

#[derive(Debug, Serialize)]
struct TrajectoryData {
    task: String,
    start_time: String,
    end_time: String,
    provider: String,
    model: String,
    max_steps: u32,
    llm_interactions: Vec<Value>,
    agent_steps: Vec<Value>,
    success: bool,
    final_result: Option<String>,
    execution_time: f64,
}

/// One step as recorded in `agent_steps`.
#[derive(Debug, Default)]
pub(crate) struct StepRecord<'a> {
    pub step_number: u32,
    pub state: &'a str,
    pub llm_messages: &'a [Message],
    pub llm_response: Option<&'a LlmResponse>,
    pub tool_calls: &'a [ToolCall],
    pub tool_results: &'a [ToolResult],
    pub error: Option<&'a str>,
}

pub(crate) struct TrajectoryRecorder {
    path: PathBuf,
    data: TrajectoryData,
    started: Instant,
    /// Secrets (API keys) replaced before anything reaches the disk.
    redactions: Vec<String>,
}

impl TrajectoryRecorder {
    pub(crate) fn new(
        path: PathBuf,
        task: &str,
        provider: &str,
        model: &str,
        max_steps: u32,
    ) -> Self {
        Self {
            path,
            data: TrajectoryData {
                task: task.to_string(),
                start_time: now(),
                end_time: String::new(),
                provider: provider.to_string(),
                model: model.to_string(),
                max_steps,
                llm_interactions: Vec::new(),
                agent_steps: Vec::new(),
                success: false,
                final_result: None,
                execution_time: 0.0,
            },
            started: Instant::now(),
            redactions: Vec::new(),
        }
    }

    /// Values never to write out; short strings are ignored (they would
    /// redact ordinary text).
    pub(crate) fn redact(&mut self, secret: &str) {
        if secret.len() >= 8 {
            self.redactions.push(secret.to_string());
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn record_llm_interaction(
        &mut self,
        input_messages: &[Message],
        response: &LlmResponse,
        provider: &str,
        tools_available: &[String],
    ) {
        let u = &response.usage;
        self.data.llm_interactions.push(json!({
            "timestamp": now(),
            "provider": provider,
            "model": self.data.model,
            "input_messages": input_messages.iter().map(message_json).collect::<Vec<_>>(),
            "response": {
                "content": response.content,
                "model": response.model,
                "finish_reason": response.finish_reason,
                "usage": {
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_creation_input_tokens": u.cache_creation_input_tokens,
                    "cache_read_input_tokens": u.cache_read_input_tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                },
                "tool_calls": non_empty(response.tool_calls.iter().map(tool_call_json).collect()),
            },
            "tools_available": non_empty(tools_available.iter().map(|t| json!(t)).collect()),
        }));
    }

    pub(crate) fn record_step(&mut self, step: &StepRecord<'_>) {
        let response = step.llm_response.map(|r| {
            json!({
                "content": r.content,
                "model": r.model,
                "finish_reason": r.finish_reason,
                "usage": { "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens },
                "tool_calls": non_empty(r.tool_calls.iter().map(tool_call_json).collect()),
            })
        });
        self.data.agent_steps.push(json!({
            "step_number": step.step_number,
            "timestamp": now(),
            "state": step.state,
            "llm_messages": non_empty(step.llm_messages.iter().map(message_json).collect()),
            "llm_response": response,
            "tool_calls": non_empty(step.tool_calls.iter().map(tool_call_json).collect()),
            "tool_results": non_empty(step.tool_results.iter().map(tool_result_json).collect()),
            "reflection": null,
            "error": step.error,
        }));
    }

    pub(crate) fn finalize(&mut self, success: bool, final_result: Option<String>) {
        self.data.end_time = now();
        self.data.success = success;
        self.data.final_result = final_result;
        self.data.execution_time = self.started.elapsed().as_secs_f64();
    }

    /// Rewrites the whole file.
    pub(crate) async fn save(&self) -> Result<(), PatchError> {
        let mut text = serde_json::to_string_pretty(&self.data).unwrap_or_else(|_| "{}".into());
        for secret in &self.redactions {
            text = text.replace(secret.as_str(), "[REDACTED]");
        }
        write_file(&self.path, text.as_bytes()).await
    }
}

/// Python's `datetime.isoformat()` of an aware UTC time: always six
/// fractional digits and `+00:00` (what older `fromisoformat`s accept).
fn now() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

fn non_empty(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items)
    }
}

fn message_json(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({ "role": role, "content": m.content });
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = Value::Array(m.tool_calls.iter().map(tool_call_json).collect());
    }
    if let Some(r) = &m.tool_result {
        v["tool_result"] = tool_result_json(r);
    }
    v
}

fn tool_call_json(c: &ToolCall) -> Value {
    json!({ "call_id": c.call_id, "name": c.name, "arguments": c.arguments, "id": null })
}

fn tool_result_json(r: &ToolResult) -> Value {
    json!({ "call_id": r.call_id, "success": r.success, "result": r.result, "error": r.error, "id": null })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Usage;

    #[tokio::test]
    async fn writes_trae_layout_and_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/traj.json");
        let mut rec = TrajectoryRecorder::new(path.clone(), "fix it", "openai", "gpt-x", 7);
        rec.redact("sk-very-secret-key");
        let response = LlmResponse {
            content: "leaking sk-very-secret-key".into(),
            tool_calls: vec![],
            model: "gpt-x-2025".into(),
            finish_reason: Some("stop".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 2,
                ..Usage::default()
            },
        };
        rec.record_llm_interaction(
            &[Message::user("hi")],
            &response,
            "openai",
            &["bash".into()],
        );
        rec.record_step(&StepRecord {
            step_number: 1,
            state: "completed",
            llm_response: Some(&response),
            ..Default::default()
        });
        rec.finalize(true, Some("done".into()));
        rec.save().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-very-secret-key"));
        let v: Value = serde_json::from_str(&text).unwrap();
        for key in [
            "task",
            "start_time",
            "end_time",
            "provider",
            "model",
            "max_steps",
            "llm_interactions",
            "agent_steps",
            "success",
            "final_result",
            "execution_time",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["max_steps"], 7);
        assert_eq!(
            v["llm_interactions"][0]["response"]["usage"]["input_tokens"],
            10
        );
        assert_eq!(
            v["llm_interactions"][0]["input_messages"][0]["role"],
            "user"
        );
        assert_eq!(v["agent_steps"][0]["state"], "completed");
        let start = v["start_time"].as_str().unwrap();
        assert_eq!(
            start.len(),
            "2025-01-01T00:00:00.000000+00:00".len(),
            "{start}"
        );
        assert!(start.ends_with("+00:00"));
    }
}
