//! On start, what agentd left when it stopped (a crash, SIGKILL) is cleaned
//! up: the process groups its tasks' tools were running are ended, and runs
//! that were in flight are resumed or closed (see `resume`; a closed one's
//! log gets an `error` and an `end`, and it is marked failed). Idempotent,
//! so a crash during recovery is harmless.

use super::cgroups::Cgroups;
use super::events::EventLog;
use super::processes::{ORPHAN_GRACE, ProcessRecords};
use super::task_event::TaskEvent;
use crate::{
    clock,
    error::Result,
    store::{Store, Task, TaskQuery, TaskStatus},
};

pub const INTERRUPTED: &str = "interrupted: agentd stopped while the task was running";
/// What a run taken over from a dead node says (in a cluster).
pub const NODE_LOST: &str = "interrupted: the agentd node running the task stopped";

/// Ends every recorded process group still running (see `processes`),
/// then whatever is left in the tasks' control groups (see `cgroups`).
pub async fn end_orphaned_processes(records: &ProcessRecords, cgroups: &Cgroups) -> Result<()> {
    let report = records.end_orphans(ORPHAN_GRACE).await?;
    let cgroups = cgroups.clone();
    let groups = tokio::task::spawn_blocking(move || cgroups.end_leftovers())
        .await
        .unwrap_or(0);
    if groups > 0 {
        tracing::warn!(
            groups,
            "ended the control groups of tasks a previous agentd left running"
        );
    }
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

/// Fails a run that was interrupted and is not resumed: `error` and `end`
/// with its final status, in one transaction (recovery is all-or-nothing).
pub async fn fail_interrupted(events: &EventLog, mut task: Task, error: &str) -> Result<()> {
    let now = clock::now_ms();
    task.status = TaskStatus::Failed;
    task.error = Some(error.into());
    task.finished_at = Some(now);
    task.modified_at = now;
    let entries = vec![
        TaskEvent::Error {
            error: error.into(),
        },
        TaskEvent::End {
            status: TaskStatus::Failed,
        },
    ];
    events
        .append_all(&task.task_id, entries, Some(&task))
        .await?;
    tracing::warn!(task_id = %task.task_id, %error, "marked an interrupted run as failed");
    Ok(())
}

/// With several nodes on one database: tasks `running` without an unfinished
/// run row (left by an agentd from before runs were rows) have nobody to end
/// them; they are failed (interrupted) like a single node's interrupted runs.
/// A run row is always written with or before its task's `running`, so a
/// live run is never taken for one of these. Another node doing the same at
/// once makes one of the two appends fail (the log's counter): logged only.
pub async fn fail_runless_tasks(store: &dyn Store, events: &EventLog) -> Result<usize> {
    let query = TaskQuery {
        owner: None,
        status: Some(TaskStatus::Running),
        created_after: None,
        offset: 0,
        limit: i64::MAX,
    };
    let (running, _) = store.list_tasks(&query).await?;
    let mut failed = 0;
    for mut task in running {
        if store.active_run(&task.task_id).await?.is_some() {
            continue;
        }
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
        match events.append_all(&task.task_id, entries, Some(&task)).await {
            Ok(_) => {
                failed += 1;
                tracing::warn!(task_id = %task.task_id, "marked a running task without a run as failed");
            }
            Err(e) => {
                tracing::warn!(task_id = %task.task_id, error = %e, "could not end a running task without a run")
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use serde_json::Map;

    use super::*;
    use crate::{
        metrics::Metrics,
        store::{Origin, RunStore as _, SqliteStore, Task},
        tasks::{
            Caller, CgroupMode, Containment, TaskManager, TaskSettings, task_event::EventKind,
            workspace::Workspaces,
        },
    };

    /// agentd as it starts: the task layer over the database file.
    async fn start(db: &Path, data: &Path) -> TaskManager {
        let store = Arc::new(SqliteStore::open(db).await.unwrap());
        let workspaces = Workspaces::open(data).unwrap();
        let settings = TaskSettings {
            containment: Containment {
                cgroups: CgroupMode::Off,
                ..Containment::default()
            },
            ..TaskSettings::default()
        };
        TaskManager::start(store, workspaces, settings, Metrics::new())
            .await
            .unwrap()
    }

    /// The task's status and the kinds of its events, in order.
    async fn kinds(tasks: &TaskManager, task_id: &str) -> (TaskStatus, Vec<&'static str>) {
        let (task, log) = tasks.task_messages(&Caller::Anyone, task_id).await.unwrap();
        let kinds = log.iter().map(|e| EventKind::of(e).unwrap().as_str());
        (task.status, kinds.collect())
    }

    /// A run in flight when agentd died is failed with `error` and `end` on
    /// the next start, once: a second start finds nothing to do. A task
    /// that had ended is left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_a_crash_left_running_is_failed_once_on_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (db, crashed) = (dir.path().join("agentd.db"), dir.path().join("crashed.db"));
        let store = Arc::new(SqliteStore::open(&db).await.unwrap());
        let events = EventLog::new(store.clone(), Metrics::new());
        let now = clock::now_ms();
        for (id, status) in [
            ("running", TaskStatus::Running),
            ("done", TaskStatus::Completed),
        ] {
            let task = Task {
                status,
                started_at: Some(now),
                ..Task::new(id.into(), "a task".into(), Map::new(), Origin::Trae, now)
            };
            store.insert_task(&task).await.unwrap();
            let step = TaskEvent::Step { step: 1 };
            events.append(id, step).await.unwrap();
        }
        events
            .append(
                "done",
                TaskEvent::End {
                    status: TaskStatus::Completed,
                },
            )
            .await
            .unwrap();
        // The files as a SIGKILL leaves them: the store still open, its
        // write-ahead log not checkpointed into the database.
        for suffix in ["", "-wal"] {
            let from = format!("{}{suffix}", db.display());
            if Path::new(&from).exists() {
                std::fs::copy(&from, format!("{}{suffix}", crashed.display())).unwrap();
            }
        }
        let data = dir.path().join("data");

        let tasks = start(&crashed, &data).await;
        assert_eq!(
            kinds(&tasks, "running").await,
            (TaskStatus::Failed, vec!["step", "error", "end"])
        );
        let (task, events) = tasks
            .task_messages(&Caller::Anyone, "running")
            .await
            .unwrap();
        assert_eq!(task.error.as_deref(), Some(INTERRUPTED));
        assert!(task.finished_at.is_some());
        assert_eq!(events[1].body["error"], INTERRUPTED);
        assert_eq!(events[2].body["data"]["status"], "failed");
        assert_eq!(
            kinds(&tasks, "done").await,
            (TaskStatus::Completed, vec!["step", "end"])
        );
        drop(tasks);

        let again = start(&crashed, &data).await;
        assert_eq!(
            kinds(&again, "running").await,
            (TaskStatus::Failed, vec!["step", "error", "end"])
        );
        assert_eq!(
            kinds(&again, "done").await,
            (TaskStatus::Completed, vec!["step", "end"])
        );
    }

    /// A task left `running` with no run row is failed; one whose run row is
    /// unfinished (another node's live run) is left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_tasks_without_a_run_are_failed_and_live_runs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("agentd.db"))
                .await
                .unwrap(),
        );
        let events = EventLog::shared(store.clone(), Metrics::new());
        let now = clock::now_ms();
        let running = |id: &str| Task {
            status: TaskStatus::Running,
            ..Task::new(id.into(), "a task".into(), Map::new(), Origin::Trae, now)
        };
        store.insert_task(&running("orphan")).await.unwrap();
        let live = crate::store::NewRun {
            run_id: "r".into(),
            task_id: "live".into(),
            kind: crate::store::RunKind::Trae,
            claimed_by: Some(("other".into(), now + 10_000)),
            busy: true,
            spec: None,
            created_at: now,
        };
        store
            .insert_run(&live, Some(&running("live")))
            .await
            .unwrap();
        assert_eq!(
            fail_runless_tasks(store.as_ref(), &events).await.unwrap(),
            1
        );
        let orphan = store.get_task("orphan").await.unwrap().unwrap();
        assert_eq!(
            (orphan.status, orphan.error.as_deref()),
            (TaskStatus::Failed, Some(INTERRUPTED))
        );
        let kinds: Vec<String> = store
            .list_events("orphan", 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["error", "end"]);
        assert_eq!(
            store.get_task("live").await.unwrap().unwrap().status,
            TaskStatus::Running
        );
        assert_eq!(
            fail_runless_tasks(store.as_ref(), &events).await.unwrap(),
            0
        );
    }
}
