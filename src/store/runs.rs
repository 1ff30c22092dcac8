//! Nodes and runs as rows: what several agentd nodes sharing one database
//! coordinate through ([`RunStore`], a part of every [`super::Store`]).
//!
//! - A node registers itself ([`Node`]) and heartbeats; a node whose
//!   heartbeat is older than the lease is not counted as live.
//! - Every execution (a Trae run, an Agent Protocol task's step session) is
//!   a [`Run`] row. Exactly one node holds a `running` row: it inserted it
//!   claimed, or claimed it from the queue (`FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL). The holder renews its lease with each heartbeat; a row whose
//!   lease ran out is taken over by another node, which bumps `attempt`.
//! - Every write of a holder carries its [`Fence`] (run, node, attempt):
//!   [`RunStore::append_fenced`] writes nothing once the fence no longer holds,
//!   so a node that lost its lease cannot keep writing.
//! - A stop is a durable `cancel_reason` on the row plus a [`Ring`]; the
//!   holder also sees it in its next heartbeat's leases.
//!
//! Times are epoch milliseconds given by the caller (the node's clock), so
//! the rules can be tested without waiting.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{Event, Task};
use crate::error::Result;

/// One agentd process sharing the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub node_id: String,
    /// host:port of its gRPC listener, for other nodes (step forwarding).
    pub address: String,
    /// Its `--max-running-tasks`.
    pub slots: i64,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// A background Trae run (`POST /api/run`).
    Trae,
    /// An Agent Protocol task's agent session: its steps run where it lives.
    Session,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Trae => "trae",
            RunKind::Session => "session",
        }
    }
    pub fn parse(s: &str) -> Self {
        if s == "trae" {
            RunKind::Trae
        } else {
            RunKind::Session
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Waiting for a node with a free slot.
    Queued,
    /// Held by `node_id` under a lease.
    Running,
    /// Ended; its task's final status and `end` event were written with it.
    Done,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            _ => RunStatus::Done,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub task_id: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub node_id: Option<String>,
    pub attempt: i64,
    pub lease_until: i64,
    /// Holds a run slot now (a session between steps does not).
    pub busy: bool,
    /// What a claiming node needs to start a queued run.
    pub spec: Option<Value>,
    /// A durable stop request ("requested", "restart").
    pub cancel_reason: Option<String>,
    pub created_at: i64,
}

impl Run {
    /// The fence of this row's current holder (None while queued).
    pub fn fence(&self) -> Option<Fence> {
        Some(Fence {
            run_id: self.run_id.clone(),
            node_id: self.node_id.clone()?,
            attempt: self.attempt,
        })
    }
}

/// A new run row: claimed by `node` (running, attempt 1) or queued.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub task_id: String,
    pub kind: RunKind,
    /// Some((node, lease_until)): inserted already claimed by that node.
    pub claimed_by: Option<(String, i64)>,
    pub busy: bool,
    pub spec: Option<Value>,
    pub created_at: i64,
}

/// Who may write for a run: its holder at one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub run_id: String,
    pub node_id: String,
    pub attempt: i64,
}

/// A notification from the shared database: a doorbell only; what changed is
/// always read back from the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ring {
    /// Events `first..=seq` were committed to the task's log.
    Events {
        task_id: String,
        first: i64,
        seq: i64,
    },
    /// A run was queued: a node with a free slot may claim it.
    RunQueued,
    /// A stop was requested for the task's run.
    Cancel { task_id: String, reason: String },
    /// The listening connection was lost and is back: anything may have been
    /// missed, so every follower should read again.
    Reconnected,
}

#[async_trait]
pub trait RunStore: Send + Sync {
    /// Inserts the node, or updates its address, slots and times.
    async fn register_node(&self, node: &Node) -> Result<()>;
    /// Nodes whose heartbeat is at or after `since`.
    async fn live_nodes(&self, since: i64) -> Result<Vec<Node>>;

    /// A live node (heartbeat at or after `live_since`) other than `except`
    /// with a slot no busy run of it holds: the one with the most free.
    async fn node_with_free_slot(&self, live_since: i64, except: &str) -> Result<Option<Node>>;

    /// Inserts a run (claimed or queued, see [`NewRun`]); with `task`, the
    /// task row is inserted in the same transaction.
    async fn insert_run(&self, run: &NewRun, task: Option<&Task>) -> Result<()>;
    /// Inserts the task with a queued run if the live nodes (heartbeat at or
    /// after `live_since`) have a slot that no busy or queued run takes;
    /// false (nothing written) when they have none.
    async fn queue_run(&self, run: &NewRun, task: &Task, live_since: i64) -> Result<bool>;
    /// Claims the oldest queued run (of `task_id`, when given) for `node_id`:
    /// running, busy, attempt + 1. Concurrent claimers never get the same row.
    async fn claim_queued_run(
        &self,
        node_id: &str,
        lease_until: i64,
        task_id: Option<&str>,
    ) -> Result<Option<Run>>;
    /// The node's heartbeat: its row, and the lease of every run it holds.
    /// Returns those runs (with any stop requested for them).
    async fn renew_leases(&self, node_id: &str, now: i64, lease_until: i64) -> Result<Vec<Run>>;
    /// Takes over, for `node_id`, the running runs whose lease ended before
    /// `now`, and with `of_node` every running run of that node (a restarted
    /// node's own): attempt + 1, so their old holder's writes fail.
    async fn take_over_runs(
        &self,
        node_id: &str,
        now: i64,
        lease_until: i64,
        of_node: Option<&str>,
    ) -> Result<Vec<Run>>;
    /// Whether the run holds a slot; false when the fence no longer holds.
    async fn set_run_busy(&self, fence: &Fence, busy: bool) -> Result<bool>;
    /// Puts a running run back in the queue (nobody holds it, no slot
    /// taken), for a node with a free slot to claim: a run taken over by a
    /// node that has none. False when the fence no longer holds.
    async fn requeue_run(&self, fence: &Fence) -> Result<bool>;
    /// Records a stop request on the unfinished runs of the task (every
    /// task's with None; a first reason is kept) and rings their holders.
    /// Returns those runs.
    async fn request_cancel(&self, task_id: Option<&str>, reason: &str) -> Result<Vec<Run>>;
    /// The task's unfinished (queued or running) run, if any.
    async fn active_run(&self, task_id: &str) -> Result<Option<Run>>;
    /// Appends events (and writes `task`) as [`super::Store::append_events`]
    /// does, only if `fence` still holds its run; with `finish`, the run is
    /// marked done in the same transaction. False: the fence was lost and
    /// nothing was written.
    async fn append_fenced(
        &self,
        events: &[Arc<Event>],
        task: Option<&Task>,
        fence: &Fence,
        finish: bool,
    ) -> Result<bool>;
    /// The notifications of other nodes' writes, from one listening
    /// connection; None for a store no other node shares (SQLite).
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Ring>>>;
}

/// A run row, from either backend's columns.
pub(super) fn decode_run(r: &impl super::decode::Columns) -> Result<Run> {
    Ok(Run {
        run_id: r.text("run_id")?,
        task_id: r.text("task_id")?,
        kind: RunKind::parse(&r.text("kind")?),
        status: RunStatus::parse(&r.text("status")?),
        node_id: r.opt_text("node_id")?,
        attempt: r.int("attempt")?,
        lease_until: r.int("lease_until")?,
        busy: r.flag("busy")?,
        spec: r
            .opt_text("spec")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        cancel_reason: r.opt_text("cancel_reason")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn decode_node(r: &impl super::decode::Columns) -> Result<Node> {
    Ok(Node {
        node_id: r.text("node_id")?,
        address: r.text("address")?,
        slots: r.int("slots")?,
        started_at: r.int("started_at")?,
        heartbeat_at: r.int("heartbeat_at")?,
    })
}
