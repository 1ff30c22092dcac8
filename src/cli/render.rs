//! Events in words: one log line per event (`logs`), and a run's progress as
//! its events tell it (`run --follow`). Payloads are those the task layer
//! writes (README "Events"): `start` carries max_steps, provider and model;
//! `step` its number; `tool_call` the tool's name and arguments; `usage` this
//! call's and the run's token totals; `end` the final status.

use agentd::{proto::TaskEvent, tasks::EventKind};
use prost_types::{Struct, Value, value::Kind};
use serde_json::json;

/// How a task ended, as its `end` event (or its status) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Stopped,
}

impl Outcome {
    pub fn parse(status: &str) -> Option<Self> {
        match status {
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            "stopped" => Some(Self::Stopped),
            _ => None,
        }
    }
}

fn field<'a>(s: &'a Struct, path: &[&str]) -> Option<&'a Kind> {
    let (first, rest) = path.split_first()?;
    let kind = s.fields.get(*first)?.kind.as_ref()?;
    match (rest.is_empty(), kind) {
        (true, kind) => Some(kind),
        (false, Kind::StructValue(inner)) => field(inner, rest),
        _ => None,
    }
}

fn data<'a>(ev: &'a TaskEvent, path: &[&str]) -> Option<&'a Kind> {
    field(ev.data.as_ref()?, path)
}

fn number(ev: &TaskEvent, path: &[&str]) -> Option<f64> {
    match data(ev, path)? {
        Kind::NumberValue(n) => Some(*n),
        _ => None,
    }
}

fn count(ev: &TaskEvent, path: &[&str]) -> Option<u64> {
    number(ev, path).filter(|n| *n >= 0.0).map(|n| n as u64)
}

fn text<'a>(ev: &'a TaskEvent, path: &[&str]) -> Option<&'a str> {
    match data(ev, path)? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

fn flag(ev: &TaskEvent, path: &[&str]) -> Option<bool> {
    match data(ev, path)? {
        Kind::BoolValue(b) => Some(*b),
        _ => None,
    }
}

/// A protobuf `Value` as JSON; whole numbers print as integers.
pub fn to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(to_json).collect(),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

fn struct_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

/// The event as the SSE streams print it (`logs --json`).
pub fn event_json(ev: &TaskEvent) -> serde_json::Value {
    let mut out = json!({
        "type": ev.r#type, "task_id": ev.task_id, "timestamp": ev.timestamp, "seq": ev.seq,
    });
    for (key, value) in [
        ("message", &ev.message),
        ("result", &ev.result),
        ("error", &ev.error),
    ] {
        if let Some(v) = value {
            out[key] = json!(v);
        }
    }
    if let Some(d) = &ev.data {
        out["data"] = struct_json(d);
    }
    out
}

/// The first line of `s`, at most `max` characters (marked when cut).
pub fn one_line(s: &str, max: usize) -> String {
    let s = s.trim();
    let first = s.lines().next().unwrap_or_default();
    let cut = first.chars().count() > max || first.len() < s.len();
    let mut out: String = first.chars().take(max).collect();
    if cut {
        out.push('…');
    }
    out
}

fn tokens(ev: &TaskEvent, key: &str) -> (u64, u64) {
    (
        count(ev, &[key, "input_tokens"]).unwrap_or(0),
        count(ev, &[key, "output_tokens"]).unwrap_or(0),
    )
}

fn tool_call(ev: &TaskEvent) -> String {
    let name = text(ev, &["name"]).unwrap_or("?");
    let args = ev
        .data
        .as_ref()
        .and_then(|d| d.fields.get("arguments"))
        .map(|v| to_json(v).to_string())
        .unwrap_or_default();
    format!("{name} {}", one_line(&args, 160))
        .trim_end()
        .to_string()
}

fn tool_result(ev: &TaskEvent) -> String {
    let name = text(ev, &["name"]).unwrap_or("?");
    match flag(ev, &["success"]) {
        Some(false) => {
            let why = text(ev, &["error"])
                .filter(|e| !e.is_empty())
                .or(ev.message.as_deref())
                .unwrap_or_default();
            format!("{name} failed: {}", one_line(why, 160))
        }
        _ => {
            let out = one_line(ev.message.as_deref().unwrap_or_default(), 120);
            if out.is_empty() {
                format!("{name} ok")
            } else {
                format!("{name} ok: {out}")
            }
        }
    }
}

fn usage(ev: &TaskEvent) -> String {
    let (i, o) = tokens(ev, "usage");
    let (ti, to) = tokens(ev, "total");
    let cost = number(ev, &["total_cost_usd"]).unwrap_or(0.0);
    let mut s = format!("{i} in / {o} out; total {ti} in / {to} out");
    if cost > 0.0 {
        s.push_str(&format!(" (${cost:.4})"));
    }
    s
}

/// A `lakeview` event: its tags as Trae labels them, then the summary.
fn lakeview(ev: &TaskEvent) -> String {
    let tags: Vec<String> = match data(ev, &["tags"]) {
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    let summary = [text(ev, &["task"]), text(ev, &["details"])]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let label = agentd_engine::agent::lakeview::tag_label(&tags);
    let line = match (label.is_empty(), summary.is_empty()) {
        (false, false) => format!("{label} — {summary}"),
        (true, _) => summary,
        (false, true) => label,
    };
    one_line(&line, 240)
}

/// The event's type (None for one this build does not know: printed as is).
pub fn kind(ev: &TaskEvent) -> Option<EventKind> {
    EventKind::parse(&ev.r#type)
}

/// What one event says, without its type.
pub fn detail(ev: &TaskEvent) -> String {
    let message = || ev.message.as_deref().unwrap_or_default().to_string();
    match kind(ev) {
        Some(EventKind::ToolCall) => tool_call(ev),
        Some(EventKind::ToolResult) => tool_result(ev),
        Some(EventKind::Usage) => usage(ev),
        Some(EventKind::Lakeview) => lakeview(ev),
        Some(EventKind::LlmResponse | EventKind::Nudge | EventKind::LlmDelta) => {
            one_line(&message(), 160)
        }
        Some(EventKind::Complete) => ev.result.clone().unwrap_or_else(message),
        Some(EventKind::Error) => ev.error.clone().unwrap_or_else(message),
        Some(EventKind::End) => match text(ev, &["status"]) {
            Some(s) => format!("{} (status {s})", message()),
            None => message(),
        },
        _ => message(),
    }
}

/// A timestamp (seconds since the epoch) as `HH:MM:SSZ`, UTC.
fn clock(ts: f64) -> String {
    let format = time::macros::format_description!("[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos((ts * 1e9) as i128)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "--:--:--Z".into())
}

/// One `logs` line: seq first, so a reader can resume with `--after-seq`.
pub fn log_line(ev: &TaskEvent) -> String {
    format!(
        "{:>5}  {}  {:<12} {}",
        ev.seq,
        clock(ev.timestamp),
        ev.r#type,
        detail(ev)
    )
    .trim_end()
    .to_string()
}

fn labelled(label: &str, s: &str) -> String {
    if s.is_empty() {
        label.to_string()
    } else {
        format!("{label}: {s}")
    }
}

/// A run's progress, updated event by event.
#[derive(Debug, Default, Clone)]
pub struct RunState {
    pub max_steps: Option<u32>,
    pub step: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// The last tool called.
    pub tool: Option<String>,
    pub outcome: Option<Outcome>,
    pub last_seq: u32,
}

impl RunState {
    /// `step 3/20` (or `step 3` before the maximum is known).
    pub fn step_label(&self) -> String {
        match self.max_steps {
            Some(max) => format!("step {}/{max}", self.step),
            None => format!("step {}", self.step),
        }
    }

    /// Token totals in a few words.
    pub fn tokens_label(&self) -> String {
        let mut s = format!(
            "tokens {} in / {} out",
            self.input_tokens, self.output_tokens
        );
        if self.cost_usd > 0.0 {
            s.push_str(&format!(" (${:.4})", self.cost_usd));
        }
        s
    }

    /// Takes in one event; returns the lines it deserves.
    pub fn apply(&mut self, ev: &TaskEvent) -> Vec<String> {
        self.last_seq = self.last_seq.max(ev.seq);
        let at = |s: &Self, what: String| format!("{} {what}", s.step_label());
        match kind(ev) {
            Some(EventKind::Start) => {
                self.max_steps = count(ev, &["max_steps"]).map(|n| n as u32);
                let mut what = vec![];
                if let (Some(p), Some(m)) = (text(ev, &["provider"]), text(ev, &["model"])) {
                    what.push(format!("{p}/{m}"));
                }
                if let Some(max) = self.max_steps {
                    what.push(format!("at most {max} steps"));
                }
                if let Some(dir) = text(ev, &["working_dir"]) {
                    what.push(format!("in {dir}"));
                }
                vec![format!("task {} started: {}", ev.task_id, what.join(", "))]
            }
            Some(EventKind::Step) => {
                self.step = count(ev, &["step"]).map_or(self.step + 1, |n| n as u32);
                vec![self.step_label()]
            }
            Some(EventKind::LlmResponse) => {
                let said = detail(ev);
                if said.is_empty() {
                    vec![]
                } else {
                    vec![at(self, format!("model: {said}"))]
                }
            }
            // The streamed text as it comes; the model's answer follows whole.
            Some(EventKind::LlmDelta) => vec![at(self, format!("model …: {}", detail(ev)))],
            Some(EventKind::ToolCall) => {
                self.tool = text(ev, &["name"]).map(str::to_string);
                vec![at(self, format!("tool: {}", detail(ev)))]
            }
            Some(EventKind::ToolResult) => vec![at(self, format!("result: {}", detail(ev)))],
            Some(EventKind::Usage) => {
                (self.input_tokens, self.output_tokens) = tokens(ev, "total");
                self.cost_usd = number(ev, &["total_cost_usd"]).unwrap_or(self.cost_usd);
                // Lakeview's calls count in the totals; their lines would only be noise.
                if flag(ev, &["lakeview"]) == Some(true) {
                    return vec![];
                }
                vec![at(self, format!("tokens: {}", detail(ev)))]
            }
            // Summarises its own step, which may be behind the current one.
            Some(EventKind::Lakeview) => {
                let step = count(ev, &["step"]).unwrap_or_default();
                vec![format!("lakeview step {step}: {}", detail(ev))]
            }
            Some(EventKind::Nudge) => vec![at(self, format!("nudge: {}", detail(ev)))],
            Some(EventKind::Complete) => vec![labelled("completed", &detail(ev))],
            Some(EventKind::Error) => vec![labelled("failed", &detail(ev))],
            Some(EventKind::Stopped) => vec![labelled("stopped", &detail(ev))],
            Some(EventKind::End) => {
                self.outcome = text(ev, &["status"])
                    .and_then(Outcome::parse)
                    .or(self.outcome);
                vec![]
            }
            Some(EventKind::Heartbeat) => vec![],
            _ => {
                let said = detail(ev);
                if said.is_empty() { vec![] } else { vec![said] }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value as J;

    use super::*;

    fn ev(seq: u32, kind: &str, message: &str, data: J) -> TaskEvent {
        let J::Object(map) = data else {
            panic!("data must be an object")
        };
        TaskEvent {
            r#type: kind.into(),
            task_id: "t1".into(),
            message: (!message.is_empty()).then(|| message.to_string()),
            timestamp: 1_700_000_000.5,
            seq,
            data: Some(to_struct(&map)),
            ..Default::default()
        }
    }

    fn to_struct(map: &serde_json::Map<String, J>) -> Struct {
        fn value(v: &J) -> Value {
            let kind = match v {
                J::Null => Kind::NullValue(0),
                J::Bool(b) => Kind::BoolValue(*b),
                J::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                J::String(s) => Kind::StringValue(s.clone()),
                J::Array(a) => Kind::ListValue(prost_types::ListValue {
                    values: a.iter().map(value).collect(),
                }),
                J::Object(m) => Kind::StructValue(to_struct(m)),
            };
            Value { kind: Some(kind) }
        }
        Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        }
    }

    #[test]
    fn a_run_reads_as_steps_tools_and_tokens() {
        let mut st = RunState::default();
        let lines: Vec<String> = [
            ev(1, "start", "Task started: x", json!({"max_steps": 7, "provider": "openai", "model": "m", "working_dir": "/w"})),
            ev(2, "step", "Step 1", json!({"step": 1})),
            ev(3, "llm_response", "Let me look.\nmore", json!({"step": 1})),
            ev(4, "usage", "", json!({"step": 1, "usage": {"input_tokens": 10, "output_tokens": 5},
                "total": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": 0.0, "total_cost_usd": 0.0})),
            ev(5, "tool_call", "Calling bash", json!({"step": 1, "name": "bash", "call_id": "c", "arguments": {"command": "ls"}})),
            ev(6, "tool_result", "a.txt\nb.txt", json!({"step": 1, "name": "bash", "success": true})),
            ev(7, "step", "Step 2", json!({"step": 2})),
            ev(8, "tool_result", "", json!({"step": 2, "name": "bash", "success": false, "error": "boom"})),
            ev(9, "usage", "", json!({"usage": {"input_tokens": 10, "output_tokens": 5},
                "total": {"input_tokens": 20, "output_tokens": 10}, "total_cost_usd": 0.5})),
            ev(10, "lakeview", "", json!({"step": 1, "task": "The agent is listing files.",
                "details": "Runs ls.", "tags": ["EXAMINE_CODE", "THINK"]})),
            ev(11, "usage", "", json!({"step": 1, "lakeview": true, "usage": {"input_tokens": 3, "output_tokens": 1},
                "total": {"input_tokens": 23, "output_tokens": 11}, "total_cost_usd": 0.5})),
            ev(12, "complete", "", json!({})),
            ev(13, "end", "Stream ended", json!({"status": "completed"})),
        ]
        .iter()
        .flat_map(|e| st.apply(e))
        .collect();
        assert_eq!(
            lines,
            [
                "task t1 started: openai/m, at most 7 steps, in /w",
                "step 1/7",
                "step 1/7 model: Let me look.…",
                "step 1/7 tokens: 10 in / 5 out; total 10 in / 5 out",
                "step 1/7 tool: bash {\"command\":\"ls\"}",
                "step 1/7 result: bash ok: a.txt…",
                "step 2/7",
                "step 2/7 result: bash failed: boom",
                "step 2/7 tokens: 10 in / 5 out; total 20 in / 10 out ($0.5000)",
                "lakeview step 1: 👁️EXAMINE_CODE · 🧠THINK — The agent is listing files. Runs ls.",
                "completed",
            ]
        );
        assert_eq!(st.outcome, Some(Outcome::Completed));
        assert_eq!(
            (st.input_tokens, st.output_tokens, st.last_seq),
            (23, 11, 13)
        );
        assert_eq!(st.tool.as_deref(), Some("bash"));
        assert_eq!(st.tokens_label(), "tokens 23 in / 11 out ($0.5000)");
    }

    #[test]
    fn log_lines_start_with_the_seq() {
        let e = ev(
            42,
            "tool_call",
            "Calling bash",
            json!({"name": "bash", "arguments": {"n": 1}}),
        );
        assert_eq!(
            log_line(&e),
            "   42  22:13:20Z  tool_call    bash {\"n\":1}"
        );
        let j = event_json(&e);
        assert_eq!(j["seq"], 42);
        assert_eq!(j["data"]["arguments"]["n"], 1);
        assert_eq!(j["message"], "Calling bash");
        assert!(j.get("result").is_none());
    }

    #[test]
    fn one_line_clips() {
        assert_eq!(one_line("  abc  ", 5), "abc");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("报告报告", 2), "报告…");
        assert_eq!(one_line("a\nb", 9), "a…");
    }
}
