//! Task events as JSON, printed as Envoy's transcoder printed
//! `agentd.v1.TaskEvent`: proto field names, primitives always printed,
//! unset optional fields left out. For the routes agentd serves itself (event
//! streams, the Trae status), where every reader would otherwise have its
//! own copy of each event converted to protobuf and then to JSON.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{clock, tasks::Event};

/// `agentd.v1.TaskEvent`, borrowing the event.
#[derive(Serialize)]
pub(super) struct Wire<'a> {
    pub r#type: &'a str,
    pub task_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Seconds since the epoch.
    #[serde(serialize_with = "proto_double")]
    pub timestamp: f64,
    pub seq: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a Map<String, Value>>,
}

impl<'a> Wire<'a> {
    pub fn of(e: &'a Event) -> Self {
        let text = |k: &str| e.body.get(k).and_then(Value::as_str);
        Wire {
            r#type: &e.kind,
            task_id: &e.task_id,
            message: text("message"),
            result: text("result"),
            error: text("error"),
            timestamp: clock::epoch_secs(e.timestamp),
            seq: u32::try_from(e.seq).unwrap_or(u32::MAX),
            data: e.body.get("data").and_then(Value::as_object),
        }
    }
}

/// A `double` as protobuf's JSON printer writes it: whole values without a
/// fraction.
pub(super) fn proto_double<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}
