//! Trae's trajectory JSON, rewritten (temp file + rename) as the run goes.
//!
//! Layout and field names follow Trae's recorder so existing trajectory
//! tooling reads it. As in Trae, an LLM interaction's `input_messages` are the
//! messages added since the previous call (concatenated they replay the whole
//! conversation) and a step's `llm_messages` are the messages the step added
//! for the next turn (tool results, nudges).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::messages::{LlmResponse, Message, Role, ToolCall, ToolResult, ToolSpec, Usage};
use crate::patch::{PatchError, write_file};

/// The file's top-level object. Interactions and steps are rendered once,
/// when recorded: each save writes them out as they are instead of
/// serializing the whole run again.
#[derive(Debug, Serialize, Deserialize)]
struct TrajectoryData {
    task: String,
    start_time: String,
    end_time: String,
    provider: String,
    model: String,
    max_steps: u32,
    llm_interactions: Vec<Box<RawValue>>,
    agent_steps: Vec<Box<RawValue>>,
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

    /// The recorder of a resumed run: the file as the interrupted attempt
    /// left it, recorded further (a fresh one when it cannot be read).
    /// `started_ago`: when the run first started.
    pub(crate) async fn reopen(
        path: PathBuf,
        task: &str,
        provider: &str,
        model: &str,
        max_steps: u32,
        started_ago: std::time::Duration,
    ) -> Self {
        let mut rec = Self::new(path, task, provider, model, max_steps);
        let stored = tokio::fs::read(&rec.path).await.ok();
        if let Some(data) = stored.and_then(|b| serde_json::from_slice::<TrajectoryData>(&b).ok()) {
            rec.data = data;
            rec.data.success = false;
            rec.data.final_result = None;
        }
        rec.started = Instant::now()
            .checked_sub(started_ago)
            .unwrap_or(rec.started);
        rec
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
        tools_available: &[ToolSpec],
    ) {
        self.data.llm_interactions.push(entry(&LlmInteraction {
            timestamp: now(),
            provider,
            model: &self.data.model,
            input_messages: Records(input_messages),
            response: ResponseRecord {
                usage: UsageRecord::Full(&response.usage),
                ..ResponseRecord::new(response)
            },
            tools_available: NonEmpty(tools_available),
        }));
    }

    pub(crate) fn record_step(&mut self, step: &StepRecord<'_>) {
        self.data.agent_steps.push(entry(&AgentStep {
            step_number: step.step_number,
            timestamp: now(),
            state: step.state,
            llm_messages: NonEmpty(step.llm_messages),
            llm_response: step.llm_response.map(ResponseRecord::new),
            tool_calls: NonEmpty(step.tool_calls),
            tool_results: NonEmpty(step.tool_results),
            reflection: None,
            error: step.error,
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

/// An element of `llm_interactions` or `agent_steps`, rendered as
/// `to_string_pretty` writes it there, two levels deep (pretty JSON has
/// line breaks only between tokens, so indenting every line is enough).
fn entry(record: &impl Serialize) -> Box<RawValue> {
    // Neither step can fail (`null` would stand in).
    let text = serde_json::to_string_pretty(record).unwrap_or_default();
    RawValue::from_string(text.replace('\n', "\n    ")).unwrap_or_default()
}

/// Python's `datetime.isoformat()` of an aware UTC time: always six
/// fractional digits and `+00:00` (what older `fromisoformat`s accept).
fn now() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    OffsetDateTime::now_utc().format(FORMAT).unwrap_or_default()
}

/// An element of `llm_interactions`.
#[derive(Serialize)]
struct LlmInteraction<'a> {
    timestamp: String,
    provider: &'a str,
    model: &'a str,
    input_messages: Records<'a, Message>,
    response: ResponseRecord<'a>,
    tools_available: NonEmpty<'a, ToolSpec>,
}

/// An element of `agent_steps`.
#[derive(Serialize)]
struct AgentStep<'a> {
    step_number: u32,
    timestamp: String,
    state: &'a str,
    llm_messages: NonEmpty<'a, Message>,
    llm_response: Option<ResponseRecord<'a>>,
    tool_calls: NonEmpty<'a, ToolCall>,
    tool_results: NonEmpty<'a, ToolResult>,
    /// Trae's; always `null` here.
    reflection: Option<()>,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseRecord<'a> {
    content: &'a str,
    model: &'a str,
    finish_reason: Option<&'a str>,
    usage: UsageRecord<'a>,
    tool_calls: NonEmpty<'a, ToolCall>,
}

impl<'a> ResponseRecord<'a> {
    /// As recorded in a step: usage as input and output tokens only.
    fn new(r: &'a LlmResponse) -> Self {
        ResponseRecord {
            content: &r.content,
            model: &r.model,
            finish_reason: r.finish_reason.as_deref(),
            usage: UsageRecord::Tokens {
                input_tokens: r.usage.input_tokens,
                output_tokens: r.usage.output_tokens,
            },
            tool_calls: NonEmpty(&r.tool_calls),
        }
    }
}

/// Interactions record the full usage; steps input and output tokens.
#[derive(Serialize)]
#[serde(untagged)]
enum UsageRecord<'a> {
    Full(&'a Usage),
    Tokens {
        input_tokens: u64,
        output_tokens: u64,
    },
}

/// Items as a list of their [`Record`]s.
struct Records<'a, T>(&'a [T]);

impl<T> Serialize for Records<'_, T>
where
    for<'t> Record<'t, T>: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Record))
    }
}

/// A list as Trae writes most of them: `null` when empty.
struct NonEmpty<'a, T>(&'a [T]);

impl<T> Serialize for NonEmpty<'_, T>
where
    for<'t> Record<'t, T>: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            s.serialize_none()
        } else {
            Records(self.0).serialize(s)
        }
    }
}

/// How an item appears in the trajectory (Trae's field names and order).
struct Record<'a, T>(&'a T);

impl Serialize for Record<'_, Message> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct MessageRecord<'a> {
            role: Role,
            content: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            tool_calls: Option<Records<'a, ToolCall>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tool_result: Option<Record<'a, ToolResult>>,
        }
        let m = self.0;
        MessageRecord {
            role: m.role,
            content: &m.content,
            tool_calls: (!m.tool_calls.is_empty()).then_some(Records(&m.tool_calls)),
            tool_result: m.tool_result.as_ref().map(Record),
        }
        .serialize(s)
    }
}

impl Serialize for Record<'_, ToolCall> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ToolCallRecord<'a> {
            call_id: &'a str,
            name: &'a str,
            arguments: &'a Value,
            id: Option<()>,
        }
        let c = self.0;
        ToolCallRecord {
            call_id: &c.call_id,
            name: &c.name,
            arguments: &c.arguments,
            id: None,
        }
        .serialize(s)
    }
}

impl Serialize for Record<'_, ToolResult> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ToolResultRecord<'a> {
            call_id: &'a str,
            success: bool,
            result: &'a str,
            error: Option<&'a str>,
            id: Option<()>,
        }
        let r = self.0;
        ToolResultRecord {
            call_id: &r.call_id,
            success: r.success,
            result: &r.result,
            error: r.error.as_deref(),
            id: None,
        }
        .serialize(s)
    }
}

/// `tools_available`: the tools' names.
impl Serialize for Record<'_, ToolSpec> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.name)
    }
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
            &[crate::tools::builtin_tool_spec("bash").unwrap()],
        );
        rec.record_step(&StepRecord {
            step_number: 1,
            state: "completed",
            llm_response: Some(&response),
            ..Default::default()
        });
        let call = ToolCall {
            call_id: "c1".into(),
            name: "bash".into(),
            arguments: serde_json::json!({"command": "ls", "opts": [1, {"a": null}], "e": {}}),
            raw_arguments: None,
        };
        rec.record_step(&StepRecord {
            step_number: 2,
            state: "completed",
            llm_messages: &[Message::tool(ToolResult {
                call_id: "c1".into(),
                name: "bash".into(),
                success: false,
                result: String::new(),
                error: Some("exit 1".into()),
            })],
            tool_calls: std::slice::from_ref(&call),
            ..Default::default()
        });
        rec.finalize(true, Some("done".into()));
        rec.save().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-very-secret-key"));
        let v: Value = serde_json::from_str(&text).unwrap();
        // Entries rendered when recorded sit in the file exactly as pretty
        // printing the whole document would put them.
        assert_eq!(serde_json::to_string_pretty(&v).unwrap(), text);
        assert_eq!(
            v["agent_steps"][1]["tool_calls"][0]["arguments"]["opts"][1],
            serde_json::json!({"a": null})
        );
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
