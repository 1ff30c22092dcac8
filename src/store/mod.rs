//! Durable state: tasks, steps, artifact metadata and the per-task event logs.
//!
//! [`Store`] is the seam: SQLite ([`SqliteStore`]) is the embedded default;
//! PostgreSQL ([`PgStore`], `--database-url`) is the database several nodes
//! can share. Both keep the same rows and pass the same contract tests
//! (`contract_tests.rs`). Artifact bytes are not here: they live in each
//! task's workspace directory (see `tasks::workspace`).

mod cache;
mod checkpoints;
mod database_url;
mod decode;
mod model;
mod postgres;
mod runs;
mod sqlite;
mod transient;
mod writer;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod test_cluster;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

pub use checkpoints::{Checkpoint, CheckpointStore, TaskUsage};
pub use database_url::DatabaseUrl;
pub use model::*;
pub use postgres::PgStore;
pub use runs::{Fence, NewRun, Node, Ring, Run, RunKind, RunStatus, RunStore};
pub use sqlite::{DEFAULT_READ_CACHE_BYTES, SqliteStore};
pub use transient::is_transient;

use crate::error::Result;

/// The store agentd serves from: PostgreSQL at `database_url`, else SQLite's
/// `agentd.db` in the data directory. Returns it with where it is, for logs
/// (never a password). Fails, with the reason, when it cannot be opened.
pub async fn open(
    database_url: Option<&DatabaseUrl>,
    data_dir: &Path,
    read_cache_bytes: u64,
) -> anyhow::Result<(Arc<dyn Store>, String)> {
    Ok(match database_url {
        Some(url) => (
            Arc::new(PgStore::connect(url, read_cache_bytes).await?),
            url.to_string(),
        ),
        None => {
            let path = data_dir.join("agentd.db");
            let store = SqliteStore::open_with_cache(&path, read_cache_bytes).await?;
            (Arc::new(store), format!("sqlite:{}", path.display()))
        }
    })
}

#[async_trait]
pub trait Store: RunStore + CheckpointStore + Send + Sync + 'static {
    async fn insert_task(&self, task: &Task) -> Result<()>;
    async fn get_task(&self, task_id: &str) -> Result<Option<Task>>;
    /// Writes every mutable field of the task (status, times, result, usage).
    async fn update_task(&self, task: &Task) -> Result<()>;
    /// Records a running task's token usage and cost (only those columns).
    async fn set_usage(
        &self,
        task_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_usd: f64,
        modified_at: i64,
    ) -> Result<()>;
    /// One page of tasks in creation order, and how many match in all.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<(Vec<Task>, i64)>;
    /// Removes the task with its steps, artifact rows and events. False if absent.
    async fn delete_task(&self, task_id: &str) -> Result<bool>;
    async fn totals(&self) -> Result<Totals>;
    /// The same over one owner's tasks.
    async fn totals_of(&self, owner: &str) -> Result<Totals>;

    /// Inserts the step, or replaces it when its id exists.
    async fn save_step(&self, step: &Step) -> Result<()>;
    async fn get_step(&self, task_id: &str, step_id: &str) -> Result<Option<Step>>;
    async fn list_steps(&self, task_id: &str, offset: i64, limit: i64) -> Result<(Vec<Step>, i64)>;

    /// Records an artifact. One already at the same location in the workspace
    /// (its file was overwritten) is updated and keeps its id; the stored
    /// artifact is returned. With `step_id`, the step is linked to it.
    async fn upsert_artifact(&self, artifact: &Artifact, step_id: Option<&str>)
    -> Result<Artifact>;
    /// The artifacts each of these steps created or changed: (step_id, artifact).
    async fn artifacts_of_steps(&self, step_ids: &[String]) -> Result<Vec<(String, Artifact)>>;
    async fn get_artifact(&self, task_id: &str, artifact_id: &str) -> Result<Option<Artifact>>;
    async fn list_artifacts(
        &self,
        task_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Artifact>, i64)>;
    /// Artifacts of several tasks at once (for task listings), in creation order.
    async fn artifacts_of(&self, task_ids: &[String]) -> Result<Vec<Artifact>>;
    async fn delete_artifact(&self, task_id: &str, artifact_id: &str) -> Result<bool>;

    /// Appends events in one transaction, and with `task`, writes the task in
    /// the same transaction (a run's final status and its last events).
    async fn append_events(&self, events: &[Arc<Event>], task: Option<&Task>) -> Result<()>;
    /// The highest seq of the task's log, 0 when it is empty.
    async fn last_event_seq(&self, task_id: &str) -> Result<i64>;
    /// Events with `seq > after_seq`, in order, at most `limit`.
    async fn list_events(&self, task_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Event>>;
    /// The task's whole log, shared rather than copied (it may be cached).
    async fn event_log(&self, task_id: &str) -> Result<Arc<Vec<Event>>>;
}
