//! Several nodes on one shared database (PostgreSQL): what a node does so
//! that any node can answer for any task (see `store::runs` for the rows).
//!
//! - `Cluster` (here): the node's name, address and lease, and the run rows
//!   it creates: a run it starts itself is inserted already claimed; one it
//!   has no slot for is queued when the cluster has a free slot (else 429).
//! - `heartbeat`: every third of the lease, renews the node and its leases,
//!   stops runs a stop was requested for (or whose lease it lost), takes
//!   over runs of nodes that died and ends them `failed` (interrupted), and
//!   claims queued runs while it has free slots.
//! - `doorbell`: the database's rings: other nodes' events wake followers
//!   here, stop requests reach the run, queued runs are claimed at once.
//! - `remote`: stop, restart and delete of runs held elsewhere, claimed
//!   runs started here, and where an Agent Protocol step must run.
//!
//! On SQLite there is one node and none of this runs: slots, stops and the
//! live broadcast stay in process.

mod doorbell;
mod heartbeat;
pub mod node_id;
mod remote;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

pub use remote::StepRoute;

use crate::{
    clock,
    error::Result,
    store::{Fence, NewRun, Node, RunKind, Store, Task},
    tasks::TaskManager,
};

/// Starts the node's listening connection, then its heartbeat.
pub(super) async fn start(tasks: &Arc<TaskManager>, cluster: Arc<Cluster>) -> Result<()> {
    if let Some(rings) = cluster.store.listen().await? {
        tokio::spawn(doorbell::run(Arc::downgrade(tasks), rings));
    }
    tokio::spawn(heartbeat::run(Arc::downgrade(tasks), cluster));
    Ok(())
}

/// Who this node is in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `--node-id` (default host name + port).
    pub node_id: String,
    /// host:port other nodes reach this node's gRPC port at.
    pub address: String,
    /// How long a run stays this node's without a heartbeat.
    pub lease: Duration,
}

pub(super) struct Cluster {
    store: Arc<dyn Store>,
    pub(super) settings: ClusterSettings,
    slots: usize,
    /// Cancelled when the node shuts down: its heartbeat ends, and it claims
    /// nothing more.
    stopping: CancellationToken,
}

impl Cluster {
    pub(super) fn new(store: Arc<dyn Store>, settings: ClusterSettings, slots: usize) -> Self {
        Self {
            store,
            settings,
            slots,
            stopping: CancellationToken::new(),
        }
    }

    /// The node is shutting down: no more heartbeats or claims.
    pub(super) fn stop_beating(&self) {
        self.stopping.cancel();
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Gives up the leases of the runs this node still holds (those a
    /// shutdown suspended) and its heartbeat, so that the next heartbeat of
    /// another node takes them over and resumes them, as it would a dead
    /// node's, without waiting for the leases to run out.
    pub(super) async fn leave(&self) -> Result<()> {
        self.store
            .renew_leases(&self.settings.node_id, 0, 0)
            .await
            .map(|_| ())
    }

    pub(super) fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    fn lease_ms(&self) -> i64 {
        self.settings.lease.as_millis() as i64
    }

    pub(super) fn lease_until(&self) -> i64 {
        clock::now_ms() + self.lease_ms()
    }

    /// Nodes whose heartbeat is newer than this are live.
    pub(super) fn live_since(&self) -> i64 {
        clock::now_ms() - self.lease_ms()
    }

    /// How often the heartbeat runs: three beats per lease.
    fn beat(&self) -> Duration {
        (self.settings.lease / 3).max(Duration::from_millis(200))
    }

    /// Registers (or re-registers) this node.
    pub(super) async fn register(&self, started_at: i64) -> Result<()> {
        self.store
            .register_node(&Node {
                node_id: self.settings.node_id.clone(),
                address: self.settings.address.clone(),
                slots: self.slots as i64,
                started_at,
                heartbeat_at: clock::now_ms(),
            })
            .await
    }

    /// A run of `task_id` held by this node from now on (with `task`, the
    /// task row is inserted with it, in one transaction).
    pub(super) async fn claim_new(
        &self,
        task_id: &str,
        kind: RunKind,
        task: Option<&Task>,
    ) -> Result<Fence> {
        let run = NewRun {
            run_id: uuid::Uuid::new_v4().to_string(),
            task_id: task_id.to_string(),
            kind,
            claimed_by: Some((self.settings.node_id.clone(), self.lease_until())),
            busy: true,
            spec: None,
            created_at: clock::now_ms(),
        };
        self.store.insert_run(&run, task).await?;
        Ok(Fence {
            run_id: run.run_id,
            node_id: self.settings.node_id.clone(),
            attempt: 1,
        })
    }

    /// Stores the task with a queued run (its `spec` says how to start it)
    /// if a live node has a free slot; false when none has.
    pub(super) async fn queue(&self, task: &Task, spec: serde_json::Value) -> Result<bool> {
        let run = NewRun {
            run_id: uuid::Uuid::new_v4().to_string(),
            task_id: task.task_id.clone(),
            kind: RunKind::Trae,
            claimed_by: None,
            busy: false,
            spec: Some(spec),
            created_at: clock::now_ms(),
        };
        self.store.queue_run(&run, task, self.live_since()).await
    }
}
