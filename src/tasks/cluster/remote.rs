//! Runs held by other nodes: stopping them (a durable request, rung to the
//! holder, then waiting for the run to end), starting a run this node
//! claimed from the queue, ending runs taken over from a dead node, and
//! where an Agent Protocol step must run.

use std::{sync::Arc, time::Duration};

use agentd_engine::{agent::RunOutcome, events::FailureKind};

use crate::{
    clock,
    error::Result,
    store::{Run, RunKind, RunStatus},
    tasks::{Caller, TaskManager, admission::RunSlot, lifecycle::final_status, stop::StopReason},
};

/// How long a stop waits for another node to end the run (a dead holder's
/// run is ended by whoever takes it over, within its lease).
const REMOTE_STOP_WAIT: Duration = Duration::from_secs(30);
const STOP_POLL: Duration = Duration::from_millis(100);

/// Where an Agent Protocol step of a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepRoute {
    /// Here: the session lives here, or there is none yet and this node
    /// has a free slot (or no node has).
    Local,
    /// On the node holding the task's session (or, for a first step, a node
    /// with a free slot).
    Node { node_id: String, address: String },
}

/// A stop reason as the durable request names it.
pub(super) fn reason_name(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::Requested => "requested",
        StopReason::Restart => "restart",
        _ => "shutdown",
    }
}

pub(super) fn reason_of(name: &str) -> StopReason {
    match name {
        "requested" => StopReason::Requested,
        "restart" => StopReason::Restart,
        _ => StopReason::Shutdown,
    }
}

impl TaskManager {
    /// Where a step of `task_id` must run: on the node that holds its
    /// agent session, when that is another node; a first step asked of a
    /// full node, on a node with a free slot.
    pub async fn step_route(&self, caller: &Caller, task_id: &str) -> Result<StepRoute> {
        // Another key's task is not found here either, before any forward.
        self.task(caller, task_id).await?;
        let Some(cluster) = &self.cluster else {
            return Ok(StepRoute::Local);
        };
        if self.runner.active().contains_key(task_id) {
            return Ok(StepRoute::Local);
        }
        let Some(run) = self.store.active_run(task_id).await? else {
            // No session yet: it starts here, unless this node is full and
            // another has room (the cluster-wide slot limit).
            let load = self.runner.admission.load();
            if load.running < load.slots {
                return Ok(StepRoute::Local);
            }
            let free = self
                .store
                .node_with_free_slot(cluster.live_since(), cluster.node_id())
                .await?;
            return Ok(match free {
                Some(n) => StepRoute::Node {
                    node_id: n.node_id,
                    address: n.address,
                },
                None => StepRoute::Local, // and its 429
            });
        };
        let holder = run.node_id.clone().unwrap_or_default();
        if run.kind != RunKind::Session
            || run.status != RunStatus::Running
            || holder == cluster.node_id()
        {
            return Ok(StepRoute::Local);
        }
        let nodes = self.store.live_nodes(i64::MIN).await?;
        Ok(match nodes.into_iter().find(|n| n.node_id == holder) {
            Some(n) => StepRoute::Node {
                node_id: n.node_id,
                address: n.address,
            },
            None => StepRoute::Local,
        })
    }

    /// Stops the task's run wherever it runs and waits (bounded) for it to
    /// end. False when the task has no run in progress anywhere.
    pub(in crate::tasks) async fn stop_anywhere(
        &self,
        task_id: &str,
        reason: StopReason,
    ) -> Result<bool> {
        let Some(cluster) = &self.cluster else {
            return self.runner.stop(task_id, reason).await;
        };
        // The request is on the run row first, also for a run held here: a
        // node dying before the run's end is written leaves it to whoever
        // takes the run over, who then ends it instead of resuming it.
        let runs = self
            .store
            .request_cancel(Some(task_id), reason_name(&reason))
            .await?;
        if self.runner.stop(task_id, reason.clone()).await? {
            return Ok(true);
        }
        if runs.is_empty() {
            return Ok(false);
        }
        // Nobody holds a queued run: end it here.
        if runs.iter().any(|r| r.status == RunStatus::Queued)
            && let Some(run) = self
                .store
                .claim_queued_run(cluster.node_id(), cluster.lease_until(), Some(task_id))
                .await?
            && let Some(fence) = run.fence()
        {
            self.events.hold(task_id, fence);
            let outcome = RunOutcome::Stopped {
                reason: reason.describe(),
            };
            self.runner.finish(task_id, &outcome, Some(&reason)).await?;
        }
        self.wait_run_ended(task_id).await?;
        Ok(true)
    }

    /// Waits (bounded) until the task has no unfinished run.
    async fn wait_run_ended(&self, task_id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + REMOTE_STOP_WAIT;
        while self.store.active_run(task_id).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(%task_id, "a stop requested from another node has not ended the run yet");
                break;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        Ok(())
    }

    /// Asks every other node to end its runs (a restart), and waits
    /// (bounded) for them. Returns how many runs were asked.
    pub(in crate::tasks) async fn restart_elsewhere(&self) -> Result<usize> {
        let Some(cluster) = &self.cluster else {
            return Ok(0);
        };
        let runs = self.store.request_cancel(None, "restart").await?;
        let elsewhere: Vec<Run> = runs
            .into_iter()
            .filter(|r| r.node_id.as_deref() != Some(cluster.node_id()))
            .collect();
        for run in &elsewhere {
            if run.status == RunStatus::Queued {
                // Nobody holds it: the stop ends it here.
                self.stop_anywhere(&run.task_id, StopReason::Restart)
                    .await?;
            } else {
                self.wait_run_ended(&run.task_id).await?;
            }
        }
        Ok(elsewhere.len())
    }

    /// Starts a run this node claimed from the queue, in the slot it
    /// reserved for it. A run that cannot start ends failed, with the reason.
    pub(super) async fn start_claimed(self: &Arc<Self>, run: Run, slot: RunSlot) {
        let task_id = run.task_id.clone();
        let Some(fence) = run.fence() else { return };
        self.events.hold(&task_id, fence);
        let outcome = match &run.cancel_reason {
            // Stopped while it waited.
            Some(reason) => Some((
                RunOutcome::Stopped {
                    reason: reason_of(reason).describe(),
                },
                Some(reason_of(reason)),
            )),
            None => match self.start_claimed_trae(&task_id, run.spec, slot).await {
                Ok(()) => None,
                Err(e) => Some((
                    RunOutcome::Failed {
                        error: format!("the run could not start on node {}: {e}", self.node_id()),
                        kind: FailureKind::Internal,
                    },
                    None,
                )),
            },
        };
        if let Some((outcome, reason)) = outcome
            && let Err(e) = self
                .runner
                .finish(&task_id, &outcome, reason.as_ref())
                .await
        {
            tracing::error!(%task_id, error = %e, "could not record the end of a claimed run");
        }
    }

    /// Takes over a run from a node that stopped heartbeating (or from this
    /// node's previous life), under the new attempt: a run nobody asked to
    /// stop is resumed here from its checkpoint when its policy allows (see
    /// `resume`); otherwise it ends, `error` + `end`, status failed, written
    /// once.
    pub(in crate::tasks) async fn end_taken_over(&self, run: Run, error: &str) -> Result<()> {
        let task_id = run.task_id.clone();
        let Some(fence) = run.fence() else {
            return Ok(());
        };
        if self.runner.active().contains_key(&task_id) {
            // Ours and alive (a late heartbeat): keep it, under the new attempt.
            self.events.hold(&task_id, fence);
            return Ok(());
        }
        self.events.hold(&task_id, fence.clone());
        let Some(mut task) = self.store.get_task(&task_id).await? else {
            self.events.release(&task_id);
            return Ok(());
        };
        if task.status.is_finished() {
            // Its end was written; only the run row was left.
            self.store.append_fenced(&[], None, &fence, true).await?;
            self.events.release(&task_id);
            return Ok(());
        }
        if run.cancel_reason.is_none() {
            // Resumed (a Trae run here and now, a session at its next step,
            // which is routed here as this node holds it now), or failed
            // with the reason it was not.
            self.resume_or_fail(task, error).await?;
            return Ok(());
        }
        if run.cancel_reason.as_deref().map(reason_of) == Some(StopReason::Requested) {
            // Asked to stop before its node died: it ends as asked.
            return self
                .end_stopped(&task_id, StopReason::Requested.describe())
                .await;
        }
        let outcome = RunOutcome::Failed {
            error: error.to_string(),
            kind: FailureKind::Internal,
        };
        let now = clock::now_ms();
        task.status = final_status(&outcome, None);
        task.error = Some(error.to_string());
        task.finished_at = Some(now);
        task.modified_at = now;
        let entries = vec![
            crate::tasks::TaskEvent::Error {
                error: error.to_string(),
            },
            crate::tasks::TaskEvent::End {
                status: task.status,
            },
        ];
        self.events
            .append_all(&task_id, entries, Some(&task))
            .await?;
        tracing::warn!(%task_id, attempt = run.attempt, "ended a run whose node stopped: failed (interrupted)");
        Ok(())
    }

    fn node_id(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.node_id())
    }

    /// This node's id in its cluster ("" on a single node).
    pub fn node_name(&self) -> &str {
        self.node_id()
    }
}
