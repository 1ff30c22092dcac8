//! Conversions shared by both dialects: JSON objects <-> protobuf `Struct`,
//! and event-log entries -> `TaskEvent` (one at a time, or followed as a
//! gRPC stream).

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use prost_types::{ListValue, Struct, Value as PValue, value::Kind};
use serde_json::{Map, Number, Value};

use super::paging::resume_after;
use crate::{
    clock,
    error::Error,
    proto::{
        TaskEvent,
        agentd::v1::{Budget, Sandbox},
    },
    tasks::Event,
    tasks::{Caller, CgroupStatus, EventKind, SandboxStatus, TaskManager},
};

/// A server-streaming response of either dialect.
pub type ApiStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

pub fn to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    PValue { kind: Some(kind) }
}

/// A free-form JSON object from a request (`additional_input`). Empty keys
/// are refused at any depth: Envoy's transcoder crashes printing them, so
/// storing one would make every later read of the task fail.
pub fn from_struct(s: Option<Struct>, field: &str) -> Result<Map<String, Value>, Error> {
    fn check(s: &Struct, path: &str) -> Result<(), Error> {
        for (k, v) in &s.fields {
            if k.is_empty() {
                return Err(Error::invalid(format!(
                    "{path} has an empty key; every key must be a non-empty string"
                )));
            }
            check_value(v, &format!("{path}.{k}"))?;
        }
        Ok(())
    }
    fn check_value(v: &PValue, path: &str) -> Result<(), Error> {
        match &v.kind {
            Some(Kind::StructValue(s)) => check(s, path),
            Some(Kind::ListValue(l)) => l.values.iter().try_for_each(|v| check_value(v, path)),
            _ => Ok(()),
        }
    }
    let Some(s) = s else { return Ok(Map::new()) };
    check(&s, field)?;
    Ok(struct_to_map(s))
}

fn struct_to_map(s: Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, from_value(v)))
        .collect()
}

fn from_value(v: PValue) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // Whole numbers come back as integers, so {"n": 1} stays 1, not 1.0.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)),
    }
}

/// What a reader gets when its stream fails part-way (then the stream ends).
pub const STREAM_FAILED: &str = "the event stream failed; resume with after_seq";

/// A task's event log after `after_seq`, then its live events, as a gRPC
/// stream (`StreamTask` and `StreamTaskEvents`).
pub async fn follow_events(
    tasks: &TaskManager,
    caller: &Caller,
    task_id: String,
    after_seq: Option<u32>,
) -> Result<ApiStream<TaskEvent>, Error> {
    let events = tasks
        .follow_events(caller, &task_id, resume_after(after_seq, None))
        .await?;
    Ok(event_stream(events, task_id))
}

/// Storage errors end the stream with an in-band `error` event: a gRPC error
/// after the first message would be invisible to SSE clients.
fn event_stream(
    events: impl Stream<Item = crate::error::Result<Arc<Event>>> + Send + 'static,
    task_id: String,
) -> ApiStream<TaskEvent> {
    use tokio_stream::StreamExt as _;
    let mut failed = false;
    Box::pin(events.map_while(move |item| {
        if failed {
            return None;
        }
        Some(Ok(match item {
            Ok(event) => task_event(&event),
            Err(e) => {
                tracing::error!(task_id, error = %e, "event stream failed");
                failed = true;
                TaskEvent {
                    r#type: EventKind::Error.as_str().into(),
                    task_id: task_id.clone(),
                    error: Some(STREAM_FAILED.into()),
                    timestamp: clock::epoch_secs(clock::now_ms()),
                    ..Default::default()
                }
            }
        }))
    }))
}

/// A budget's limits as the API prints them; `spent` (tokens, USD) in a
/// task's status. `None` for no limit at all.
pub fn budget(limits: &crate::tasks::Budget, spent: Option<(f64, f64)>) -> Option<Budget> {
    (!limits.is_unlimited()).then(|| Budget {
        max_tokens_total: limits.max_tokens_total.map(|t| t as f64),
        max_cost_usd: limits.max_cost_usd,
        max_wall_secs: limits.max_wall_secs,
        tokens_used: spent.map(|s| s.0),
        cost_usd: spent.map(|s| s.1),
    })
}

/// What became of `--sandbox` and `--task-cgroups`, as both dialects report it.
pub fn sandbox(status: &SandboxStatus, cgroups: &CgroupStatus) -> Sandbox {
    let (network, detail) = match status {
        SandboxStatus::On { version, network } => (*network, version.clone()),
        SandboxStatus::Off { available: true } => {
            (true, "available; off (start with --sandbox)".into())
        }
        SandboxStatus::Off { available: false } => (true, "bubblewrap not found".into()),
        SandboxStatus::Unavailable { reason } => (true, reason.clone()),
    };
    let (cgroups, kill, task_limits, unenforced_limits) = match cgroups {
        CgroupStatus::On {
            layout,
            kill,
            limits,
            missing,
        } => (
            layout.clone(),
            kill.clone(),
            limits.clone(),
            missing.clone(),
        ),
        CgroupStatus::Off { reason } => (
            format!("off: {reason}"),
            "process group".into(),
            Vec::new(),
            Vec::new(),
        ),
    };
    Sandbox {
        available: status.available(),
        enabled: status.enabled(),
        network,
        detail,
        cgroups,
        kill,
        task_limits,
        unenforced_limits,
    }
}

/// An event-log entry in the shape every stream prints.
pub fn task_event(e: &Event) -> TaskEvent {
    let text = |k: &str| e.body.get(k).and_then(Value::as_str).map(str::to_string);
    TaskEvent {
        r#type: e.kind.clone(),
        task_id: e.task_id.clone(),
        message: text("message"),
        result: text("result"),
        error: text("error"),
        timestamp: clock::epoch_secs(e.timestamp),
        seq: u32::try_from(e.seq).unwrap_or(u32::MAX),
        data: e.body.get("data").and_then(Value::as_object).map(to_struct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_round_trip_through_struct() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x", {"c": 1.5}], "d": {}});
        let map = v.as_object().unwrap().clone();
        assert_eq!(
            Value::Object(from_struct(Some(to_struct(&map)), "x").unwrap()),
            v
        );
    }

    #[test]
    fn empty_keys_are_refused_at_any_depth() {
        for bad in [
            serde_json::json!({"": 1}),
            serde_json::json!({"a": {"": 1}}),
            serde_json::json!({"a": [{"": 1}]}),
        ] {
            let err = from_struct(
                Some(to_struct(bad.as_object().unwrap())),
                "additional_input",
            )
            .unwrap_err();
            assert!(err.to_string().contains("empty key"), "{err}");
        }
    }
}
