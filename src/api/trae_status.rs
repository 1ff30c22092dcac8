//! `GET /api/tasks/{id}/status`, served by agentd itself: Envoy routes it
//! here with its transcoder off. The answer carries every message of the
//! task's log, and through the transcoder each poll converted all of them to
//! protobuf and back to JSON: Envoy's share alone was ~340 µs of CPU for a
//! 3-step run, growing with the log. Here the log comes from the store's read
//! cache and is printed once, in the transcoder's JSON shape of
//! `GetTaskStatusResponse` (the gRPC method stays for gRPC callers).

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
    http::header,
    response::{IntoResponse as _, Response},
    routing::get,
};
use serde::{Serialize, Serializer};

use super::{
    convert::{budget, task_event},
    event_json::{Wire, proto_double},
    trae::{SUCCESS, summary},
};
use crate::{
    clock,
    error::Result,
    proto::{
        agentd::v1::Budget,
        trae::{GetTaskStatusResponse, TaskSummary},
    },
    tasks::Event,
    tasks::{Caller, TaskManager},
};

pub fn routes(tasks: Arc<TaskManager>) -> Router {
    Router::new()
        .route("/api/tasks/{task_id}/status", get(status))
        .with_state(tasks)
}

/// A task's Trae status, read once for either printing: the gRPC response
/// or, for REST, JSON straight from the log.
pub(super) struct TraeStatus {
    summary: TaskSummary,
    log: Arc<Vec<Event>>,
    budget: Option<Budget>,
}

impl TraeStatus {
    pub(super) async fn read(tasks: &TaskManager, caller: &Caller, task_id: &str) -> Result<Self> {
        let (task, log) = tasks.task_messages(caller, task_id).await?;
        Ok(Self {
            summary: summary(&task, clock::now_ms()),
            budget: budget_of(&log),
            log,
        })
    }

    pub(super) fn to_proto(&self) -> GetTaskStatusResponse {
        let s = &self.summary;
        GetTaskStatusResponse {
            status: SUCCESS.into(),
            task_id: s.task_id.clone(),
            task_status: s.status.clone(),
            start_time: s.start_time,
            duration: s.duration,
            messages: self.log.iter().map(task_event).collect(),
            budget: self.budget,
        }
    }

    fn to_json(&self) -> StatusJson<'_> {
        let s = &self.summary;
        StatusJson {
            status: SUCCESS,
            task_id: &s.task_id,
            task_status: &s.status,
            start_time: s.start_time,
            duration: s.duration,
            messages: Messages(&self.log),
            budget: self.budget.as_ref().map(BudgetJson),
        }
    }
}

/// `agentd.trae.v1.GetTaskStatusResponse`, in field order.
#[derive(Serialize)]
struct StatusJson<'a> {
    status: &'static str,
    task_id: &'a str,
    task_status: &'a str,
    #[serde(serialize_with = "proto_double")]
    start_time: f64,
    #[serde(serialize_with = "proto_double")]
    duration: f64,
    messages: Messages<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<BudgetJson<'a>>,
}

/// `agentd.v1.Budget`: only the fields that are set, doubles as the
/// transcoder prints them.
struct BudgetJson<'a>(&'a Budget);

impl Serialize for BudgetJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let b = self.0;
        let mut map = s.serialize_map(None)?;
        for (key, value) in [
            ("max_tokens_total", b.max_tokens_total),
            ("max_cost_usd", b.max_cost_usd),
            ("max_wall_secs", b.max_wall_secs),
            ("tokens_used", b.tokens_used),
            ("cost_usd", b.cost_usd),
        ] {
            if let Some(v) = value {
                map.serialize_entry(key, &Double(v))?;
            }
        }
        map.end()
    }
}

struct Double(f64);

impl Serialize for Double {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        proto_double(&self.0, s)
    }
}

/// A task's budget and what it spent, as the task layer reads them from its log.
fn budget_of(log: &[Event]) -> Option<Budget> {
    let (limits, spent) = crate::tasks::budget_spent(log)?;
    budget(&limits, Some(spent))
}

struct Messages<'a>(&'a [Event]);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Wire::of))
    }
}

async fn status(
    State(tasks): State<Arc<TaskManager>>,
    caller: Option<axum::Extension<Caller>>,
    Path(task_id): Path<String>,
) -> Response {
    let caller = match super::auth::http_caller(caller, "/api/") {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let status = match TraeStatus::read(&tasks, &caller, &task_id).await {
        Ok(found) => found,
        Err(e) => return super::status::http_error(e, "/api/"),
    };
    match serde_json::to_vec(&status.to_json()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            super::status::http_error(anyhow::anyhow!("printing the status: {e}").into(), "/api/")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_prints_like_the_transcoder() {
        let event = |seq: i64, body: serde_json::Value| Event {
            task_id: "t1".into(),
            seq,
            kind: "step".into(),
            timestamp: 1_700_000_000_500,
            body: body.as_object().cloned().unwrap_or_default(),
        };
        let events = [
            event(1, json!({"message": "Step 1", "data": {"step": 1}})),
            event(2, json!({})),
        ];
        let status = TraeStatus {
            summary: TaskSummary {
                task_id: "t1".into(),
                status: "running".into(),
                start_time: 1_700_000_000.0,
                duration: 0.5,
            },
            log: Arc::new(events.to_vec()),
            budget: None,
        };
        assert_eq!(status.to_proto().messages.len(), 2);
        assert_eq!(
            serde_json::to_string(&status.to_json()).unwrap(),
            "{\"status\":\"success\",\"task_id\":\"t1\",\"task_status\":\"running\",\
             \"start_time\":1700000000,\"duration\":0.5,\"messages\":[\
             {\"type\":\"step\",\"task_id\":\"t1\",\"message\":\"Step 1\",\"timestamp\":1700000000.5,\"seq\":1,\"data\":{\"step\":1}},\
             {\"type\":\"step\",\"task_id\":\"t1\",\"timestamp\":1700000000.5,\"seq\":2}]}"
        );
    }
}
