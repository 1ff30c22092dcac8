//! On start, what agentd left when it stopped (a crash, SIGKILL) is cleaned
//! up: the process groups its tasks' tools were running are ended, and runs
//! that were in flight are closed (their log gets an `error` and an `end`,
//! and they are marked failed). Idempotent, so a crash during recovery is
//! harmless.

use super::events::EventLog;
use super::processes::{ORPHAN_GRACE, ProcessRecords};
use super::task_event::TaskEvent;
use crate::{
    clock,
    error::Result,
    store::{Store, TaskQuery, TaskStatus},
};

pub const INTERRUPTED: &str = "interrupted: agentd stopped while the task was running";

/// Ends every recorded process group still running (see `processes`).
pub async fn end_orphaned_processes(records: &ProcessRecords) -> Result<()> {
    let report = records.end_orphans(ORPHAN_GRACE).await?;
    if report.records > 0 {
        tracing::warn!(
            records = report.records,
            groups_ended = report.groups_ended,
            processes_ended = report.processes_ended,
            survivors = ?report.survivors,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "ended the processes of tasks a previous agentd left running"
        );
    }
    Ok(())
}

pub async fn fail_interrupted_runs(store: &dyn Store, events: &EventLog) -> Result<usize> {
    let query = TaskQuery {
        status: Some(TaskStatus::Running),
        created_after: None,
        offset: 0,
        limit: i64::MAX,
    };
    let (running, _) = store.list_tasks(&query).await?;
    for mut task in running.iter().cloned() {
        let now = clock::now_ms();
        task.status = TaskStatus::Failed;
        task.error = Some(INTERRUPTED.into());
        task.finished_at = Some(now);
        task.modified_at = now;
        let entries = vec![
            TaskEvent::Error {
                error: INTERRUPTED.into(),
            },
            TaskEvent::End {
                status: TaskStatus::Failed,
            },
        ];
        // Status and last events in one transaction: recovery is all-or-nothing.
        events
            .append_all(&task.task_id, entries, Some(&task))
            .await?;
        tracing::warn!(task_id = %task.task_id, "marked an interrupted run as failed");
    }
    Ok(running.len())
}
