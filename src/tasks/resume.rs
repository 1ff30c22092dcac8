//! Durable runs: a run agentd was running when it stopped (a crash,
//! SIGKILL) goes on from its last checkpoint (see the engine's
//! `agent::checkpoint`, stored per step by `forward`) instead of failing,
//! unless its policy says `fail`, it was resumed `max_resumes` times
//! already, or its wall-clock time (counted from its first start) is up.
//!
//! The log of a resumed run goes on: `interrupted` (the attempt that was
//! cut off) and `resumed` (the next attempt), then the tool results of the
//! step that was cut off (answered as interrupted) and the remaining steps;
//! no second `start`, one `end`. A stopped or deleted task is never running,
//! so never resumed.
//!
//! An Agent Protocol task has no background run to restart: its session is
//! rebuilt from the checkpoint by its next `POST .../steps` (see
//! `agent_step`), which continues the conversation. Its policy is
//! `additional_input.on_interrupt`.

use std::time::Duration;

use agentd_engine::agent::{Checkpoint, CheckpointDelta, RunOutcome};

use super::{
    TaskManager, recovery,
    stop::StopReason,
    task_event::{EventKind, TaskEvent},
};
use crate::{
    clock,
    error::Result,
    store::{Origin, Task, TaskQuery, TaskStatus},
};

/// What becomes of a run that was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInterrupt {
    /// Continue from the last completed step.
    #[default]
    Resume,
    /// Fail it (agentd's behaviour before durable runs).
    Fail,
}

impl OnInterrupt {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "resume" => Ok(OnInterrupt::Resume),
            "fail" => Ok(OnInterrupt::Fail),
            other => Err(format!(
                "on_interrupt must be \"resume\" or \"fail\", got {other:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnInterrupt::Resume => "resume",
            OnInterrupt::Fail => "fail",
        }
    }
}

/// An interrupted run that will be resumed.
pub(super) struct Resumption {
    /// The attempt that was cut off (1 for the first run).
    pub attempt: u32,
    pub checkpoint: Option<Checkpoint>,
    pub started_ago: Duration,
    /// Why it was interrupted, for the `interrupted` event.
    pub reason: String,
}

impl TaskManager {
    /// One node, at start: every run left `running` is resumed or failed.
    pub(super) async fn recover_interrupted_runs(&self) -> Result<()> {
        let query = TaskQuery {
            owner: None,
            status: Some(TaskStatus::Running),
            created_after: None,
            offset: 0,
            limit: i64::MAX,
        };
        let (running, _) = self.store.list_tasks(&query).await?;
        for task in running {
            self.resume_or_fail(task, recovery::INTERRUPTED).await?;
        }
        Ok(())
    }

    /// Resumes an interrupted run, or fails it with `why` and the reason it
    /// is not resumed. True when resumed.
    pub(in crate::tasks) async fn resume_or_fail(&self, task: Task, why: &str) -> Result<bool> {
        if let Some(reason) = self.store.stop_request(&task.task_id).await? {
            // Asked to stop before it was interrupted: it ends as asked.
            self.end_stopped(&task.task_id, reason).await?;
            return Ok(false);
        }
        let failure = match self.resumption(&task, why).await {
            // Its next step rebuilds the session.
            Ok(plan) if task.origin == Origin::AgentProtocol => {
                self.record_resumption(&task.task_id, &plan).await?;
                return Ok(true);
            }
            Ok(plan) => {
                let resumed = match self.runner.admission.reserve() {
                    Ok(slot) => self.resume_trae(task.clone(), plan, Some(slot)).await,
                    // In a cluster, a node with a free slot claims it and resumes it.
                    Err(_) if self.requeue(&task.task_id).await? => return Ok(true),
                    // One node: it waits for a slot (see `Runner::spawn_run`).
                    Err(_) if self.cluster.is_none() => {
                        tracing::warn!(task_id = %task.task_id, "no free run slot to resume an interrupted run: it waits for one");
                        self.resume_trae(task.clone(), plan, None).await
                    }
                    Err(e) => Err(e),
                };
                match resumed {
                    Ok(()) => return Ok(true),
                    Err(e) => format!("{why}; it could not be resumed: {e}"),
                }
            }
            Err(reason) => reason,
        };
        // The task as stored now (resuming may have written its log).
        let task = self.store.get_task(&task.task_id).await?.unwrap_or(task);
        recovery::fail_interrupted(&self.events, task, &failure).await?;
        Ok(false)
    }

    /// Ends an interrupted run that was asked to stop (see `stop_task`),
    /// `stopped`, instead of resuming it.
    pub(in crate::tasks) async fn end_stopped(&self, task_id: &str, reason: String) -> Result<()> {
        let outcome = RunOutcome::Stopped { reason };
        let stop = StopReason::Requested;
        self.runner.finish(task_id, &outcome, Some(&stop)).await?;
        tracing::warn!(%task_id, "an interrupted run that was asked to stop ended stopped");
        Ok(())
    }

    /// Puts the run this node holds for the task back in the cluster's
    /// queue; false on a single node (or when the run is no longer held).
    async fn requeue(&self, task_id: &str) -> Result<bool> {
        let (Some(_), Some(fence)) = (&self.cluster, self.events.fence(task_id)) else {
            return Ok(false);
        };
        if !self.store.requeue_run(&fence).await? {
            return Ok(false);
        }
        self.events.release(task_id);
        tracing::warn!(%task_id, "no free run slot here to resume an interrupted run: queued for another node");
        Ok(true)
    }

    /// The task's policy: its request's, else the server's.
    pub(super) fn on_interrupt(&self, task: &Task) -> OnInterrupt {
        let asked = match task.origin {
            Origin::Trae => match super::trae_run::stored_request(task) {
                Some(req) => req.on_interrupt,
                None => return OnInterrupt::Fail, // stored before durable runs
            },
            Origin::AgentProtocol => ap_on_interrupt(&task.additional_input).unwrap_or(None),
        };
        asked.unwrap_or(self.runner.settings.on_interrupt)
    }

    /// Whether and how `task` is resumed; Err: the error it fails with.
    pub(super) async fn resumption(
        &self,
        task: &Task,
        why: &str,
    ) -> std::result::Result<Resumption, String> {
        if self.on_interrupt(task) == OnInterrupt::Fail {
            return Err(why.to_string());
        }
        let settings = &self.runner.settings;
        let log = self
            .store
            .event_log(&task.task_id)
            .await
            .map_err(|e| e.to_string())?;
        let resumes = log
            .iter()
            .filter(|e| EventKind::of(e) == Some(EventKind::Resumed))
            .count() as u32;
        if resumes >= settings.max_resumes {
            return Err(format!(
                "{why}; not resumed again: it was resumed {resumes} times already (the limit, \
                 --max-resumes)"
            ));
        }
        let started = task.started_at.unwrap_or(task.created_at);
        let started_ago =
            Duration::from_millis(u64::try_from(clock::now_ms() - started).unwrap_or(0));
        let timeout = settings.task_timeout;
        if started_ago >= timeout {
            return Err(format!(
                "{why}; not resumed: timed out after {}s (counted from its first start)",
                timeout.as_secs()
            ));
        }
        let checkpoint = self
            .checkpoint(&task.task_id)
            .await
            .map_err(|e| format!("{why}; not resumed: {e}"))?;
        Ok(Resumption {
            attempt: resumes + 1,
            checkpoint,
            started_ago,
            reason: why.to_string(),
        })
    }

    /// The task's checkpoints folded into one (None: it has none).
    pub(super) async fn checkpoint(
        &self,
        task_id: &str,
    ) -> std::result::Result<Option<Checkpoint>, String> {
        let rows = self
            .store
            .checkpoints(task_id)
            .await
            .map_err(|e| e.to_string())?;
        let deltas = rows
            .iter()
            .map(|r| serde_json::from_str::<CheckpointDelta>(&r.body))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("its checkpoint cannot be read: {e}"))?;
        Checkpoint::from_deltas(deltas).map_err(|e| format!("its checkpoint is incomplete: {e}"))
    }

    /// The `interrupted` and `resumed` events of a resumption.
    pub(super) async fn record_resumption(&self, task_id: &str, plan: &Resumption) -> Result<()> {
        let step = plan.checkpoint.as_ref().map_or(0, |c| c.step);
        let entries = vec![
            TaskEvent::Interrupted {
                attempt: plan.attempt,
                step,
                reason: plan.reason.clone(),
            },
            TaskEvent::Resumed {
                attempt: plan.attempt + 1,
                step,
            },
        ];
        self.events.append_all(task_id, entries, None).await?;
        tracing::warn!(%task_id, attempt = plan.attempt + 1, step, "resumed an interrupted run");
        Ok(())
    }
}

/// An Agent Protocol task's `additional_input.on_interrupt`.
pub(super) fn ap_on_interrupt(
    input: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<OnInterrupt>> {
    match input.get("on_interrupt") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => OnInterrupt::parse(s)
            .map(Some)
            .map_err(|e| crate::error::Error::invalid(format!("additional_input.{e}"))),
        Some(_) => Err(crate::error::Error::invalid(
            "additional_input.on_interrupt must be \"resume\" or \"fail\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_parses_its_two_names_only() {
        for p in [OnInterrupt::Resume, OnInterrupt::Fail] {
            assert_eq!(OnInterrupt::parse(p.as_str()), Ok(p));
        }
        assert!(OnInterrupt::parse("retry").unwrap_err().contains("retry"));
    }
}
