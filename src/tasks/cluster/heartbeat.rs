//! The node's heartbeat, every third of the lease: renew the node row and
//! the leases of its runs (reading stop requests in the same round trip),
//! stop what must stop, end the runs of nodes that died, claim queued runs.

use std::sync::{Arc, Weak};

use super::{Cluster, remote::reason_of};
use crate::{
    clock,
    error::Result,
    tasks::{TaskManager, stop::StopReason},
};

use crate::tasks::recovery::NODE_LOST;

pub(super) async fn run(tasks: Weak<TaskManager>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.beat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cluster.stopping.cancelled() => return,
        }
        let Some(tasks) = tasks.upgrade() else { return };
        // After this node could not reach the database, neither could the
        // others, most likely: their leases ran out while they were alive.
        // Give them a lease to renew before taking anything over.
        let take_over = failed_at.is_none_or(|t| t.elapsed() > cluster.settings.lease);
        match tasks.beat(&cluster, take_over).await {
            Ok(()) => {}
            Err(e) => {
                failed_at = Some(tokio::time::Instant::now());
                tracing::warn!(error = %e, "cluster heartbeat failed; retrying at the next beat");
            }
        }
    }
}

impl TaskManager {
    async fn beat(self: &Arc<Self>, cluster: &Cluster, take_over: bool) -> Result<()> {
        let held = self.events.fences();
        let leases = self
            .store
            .renew_leases(cluster.node_id(), clock::now_ms(), cluster.lease_until())
            .await?;
        for run in &leases {
            if let Some(reason) = &run.cancel_reason {
                self.stop_in_background(&run.task_id, reason_of(reason));
            }
        }
        for (task_id, fence) in held {
            let renewed = leases.iter().any(|r| r.fence().as_ref() == Some(&fence));
            if !renewed && self.events.fence(&task_id).as_ref() == Some(&fence) {
                tracing::warn!(%task_id, "this node lost the lease of a run it holds; stopping it");
                self.stop_in_background(&task_id, StopReason::LeaseLost);
            }
        }
        if take_over {
            let taken = self
                .store
                .take_over_runs(
                    cluster.node_id(),
                    clock::now_ms(),
                    cluster.lease_until(),
                    None,
                )
                .await?;
            for run in taken {
                self.end_taken_over(run, NODE_LOST).await?;
            }
        }
        self.claim_queued().await;
        self.events.forget_idle();
        Ok(())
    }

    /// Ends a local run without holding up the caller (a stop waits for the
    /// run to record its end).
    pub(super) fn stop_in_background(self: &Arc<Self>, task_id: &str, reason: StopReason) {
        if !self.runner.active().contains_key(task_id) {
            return;
        }
        let (tasks, task_id) = (self.clone(), task_id.to_string());
        tokio::spawn(async move {
            let fence = tasks.events.fence(&task_id);
            if let Err(e) = tasks.runner.stop(&task_id, reason.clone()).await {
                tracing::warn!(%task_id, error = %e, "stopping a run failed");
            }
            // A run whose lease was lost could not write its end: forget it.
            if reason == StopReason::LeaseLost && tasks.events.fence(&task_id) == fence {
                tasks.events.release(&task_id);
            }
        });
    }

    /// Claims queued runs while this node has free slots.
    pub(super) async fn claim_queued(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        loop {
            if cluster.is_stopping() {
                return;
            }
            let Ok(slot) = self.runner.admission.reserve() else {
                return;
            };
            let claimed = self
                .store
                .claim_queued_run(cluster.node_id(), cluster.lease_until(), None)
                .await;
            match claimed {
                Ok(Some(run)) => {
                    tracing::info!(task_id = %run.task_id, "claimed a queued run");
                    let tasks = self.clone();
                    tokio::spawn(async move { tasks.start_claimed(run, slot).await });
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming queued runs failed");
                    return;
                }
            }
        }
    }
}
