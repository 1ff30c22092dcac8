//! On start, runs that were in flight when agentd stopped (a crash, SIGKILL)
//! are closed: their log gets an `error` and an `end`, and they are marked
//! failed. Idempotent, so a crash during recovery is harmless.

use serde_json::{Map, Value};

use super::events::{END, EventLog};
use crate::{
    clock,
    error::Result,
    store::{Store, TaskQuery, TaskStatus},
};

pub const INTERRUPTED: &str = "interrupted: agentd stopped while the task was running";

pub async fn fail_interrupted_runs(store: &dyn Store, events: &EventLog) -> Result<usize> {
    let query = TaskQuery {
        status: Some(TaskStatus::Running),
        created_after: None,
        offset: 0,
        limit: i64::MAX,
    };
    let (running, _) = store.list_tasks(&query).await?;
    for mut task in running.iter().cloned() {
        let last = store
            .list_events(
                &task.task_id,
                store.last_event_seq(&task.task_id).await? - 1,
                1,
            )
            .await?;
        if last.first().is_none_or(|e| e.kind != END) {
            events
                .append(&task.task_id, "error", body("error", INTERRUPTED))
                .await?;
            let mut end = body("message", "Stream ended");
            end.insert(
                "data".into(),
                serde_json::json!({ "status": TaskStatus::Failed.as_str() }),
            );
            events.append(&task.task_id, END, end).await?;
        }
        let now = clock::now_ms();
        task.status = TaskStatus::Failed;
        task.error = Some(INTERRUPTED.into());
        task.finished_at = Some(now);
        task.modified_at = now;
        store.update_task(&task).await?;
        tracing::warn!(task_id = %task.task_id, "marked an interrupted run as failed");
    }
    Ok(running.len())
}

fn body(key: &str, text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.into(), Value::String(text.into()));
    m
}
