//! Run checkpoints: what the task layer needs to rebuild an interrupted
//! run's agent. The store keeps them as opaque JSON rows, appended (never
//! rewritten) in the same transaction as the events they follow, so a crash
//! leaves either both or neither: a resumed run never sees a checkpoint
//! whose events are missing, nor a torn checkpoint.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Event, Fence};
use crate::error::Result;

/// A running task's token usage and cost, as of an append (the columns
/// `Store::set_usage` writes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskUsage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub modified_at: i64,
}

/// One checkpoint row (the task layer decides what `body` holds).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub task_id: String,
    /// 1, 2, 3, ... per task, in the order they were written.
    pub n: i64,
    /// The run's step when it was written.
    pub step: i64,
    /// JSON.
    pub body: String,
    pub created_at: i64,
}

#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Appends `events` of `task_id`, with a checkpoint of its run (its `n`
    /// is the next one; the one given is ignored) and its token usage when
    /// given, in one transaction: a run's step is one write. With `fence`,
    /// as `RunStore::append_fenced`: false, and nothing written, when the
    /// fence no longer holds.
    async fn append_progress(
        &self,
        task_id: &str,
        events: &[Arc<Event>],
        checkpoint: Option<&Checkpoint>,
        usage: Option<&TaskUsage>,
        fence: Option<&Fence>,
    ) -> Result<bool>;
    /// The task's checkpoints, oldest first.
    async fn checkpoints(&self, task_id: &str) -> Result<Vec<Checkpoint>>;
    /// Records that a stop was asked of the task (the first reason is
    /// kept), durably, so that an interrupted run is never resumed after it.
    async fn request_stop(&self, task_id: &str, reason: &str, at: i64) -> Result<()>;
    /// The reason of the stop asked of the task, if one was.
    async fn stop_request(&self, task_id: &str) -> Result<Option<String>>;
}
