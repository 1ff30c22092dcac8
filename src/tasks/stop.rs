//! The stop protocol: ending a run on request (`StopTask`, delete), on
//! restart or on shutdown, processes included.
//!
//! [`Runner::stop`] records the [`StopReason`] on the run (the first reason
//! given wins: it decides the final status), cancels the run's token, and
//! ends the task's process groups itself: SIGTERM, then SIGKILL after a
//! grace (`ProcessRecords::end_task` in `processes`, which calls
//! `end_recorded_group` in `crates/engine/src/tools/process_group.rs`).
//! Then:
//! - A background run is inside `Agent::run`, which sees the token (and its
//!   command gone), ends the step and shuts the tools down. The run records
//!   its end (`Runner::spawn_run` in `lifecycle`); the stop waits for that,
//!   bounded.
//! - A step-by-step task between steps has nobody watching its token: the
//!   stop takes the session and ends it here (`Agent::stop` writes the
//!   patch and trajectory), unless a step that was running ended the task
//!   first (`session`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use agentd_engine::agent::RunOutcome;
use tokio_util::sync::CancellationToken;

use super::{Caller, TaskManager, lifecycle::Runner, session::Session};
use crate::error::Result;

/// How long a stop waits for a background run to record its end.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the database, per call: an unreachable
/// one must not keep agentd from exiting (the leases run out by themselves).
const SHUTDOWN_DB_WAIT: Duration = Duration::from_secs(2);
/// Between SIGTERM and SIGKILL for a stopped task's processes (the bash
/// tool's own grace).
pub(super) const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a run was cancelled; decides the task's final status.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// `POST /api/tasks/{id}/stop` (or delete): status `stopped`.
    Requested,
    TimedOut(Duration),
    /// `POST /ap/v1/agent/restart`.
    Restart,
    /// agentd is shutting down.
    Shutdown,
    /// Another node took the run over (this one missed its lease).
    LeaseLost,
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::Requested => "stopped on request".into(),
            StopReason::TimedOut(d) => format!("timed out after {}s", d.as_secs()),
            StopReason::Restart => "the agent runtime was restarted".into(),
            StopReason::Shutdown => "interrupted: agentd shut down".into(),
            StopReason::LeaseLost => "interrupted: this node lost the task's lease".into(),
        }
    }
}

/// A run's cancellation: the token its agent watches and the first reason
/// it was stopped for; and its suspension (see [`Runner::suspend`]).
#[derive(Debug, Clone, Default)]
pub struct Cancellation {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    suspend: CancellationToken,
}

impl Cancellation {
    /// Records `reason` unless one already was, then cancels.
    pub fn stop(&self, reason: StopReason) {
        self.slot().get_or_insert(reason);
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancelled when the run is to be left where it is, for the next
    /// start (or another node) to resume: nothing watching it ends the run.
    pub fn suspended(&self) -> &CancellationToken {
        &self.suspend
    }

    /// The reason of the first stop, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.slot().clone()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<StopReason>> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A run in progress: how to cancel it and learn that it finished.
pub struct Active {
    pub cancel: Cancellation,
    /// Background runs: becomes true once the run recorded its end.
    pub finished: Option<tokio::sync::watch::Receiver<bool>>,
    /// Agent Protocol tasks keep their agent between steps.
    pub session: Option<Arc<tokio::sync::Mutex<Session>>>,
}

impl TaskManager {
    /// Stops the task's run, ending every process it started. A task with
    /// no run in progress is left as it is; the message says which.
    pub async fn stop_task(&self, caller: &Caller, task_id: &str) -> Result<String> {
        let task = self.task(caller, task_id).await?;
        self.audit(caller, "stop", task_id);
        if task.status == crate::store::TaskStatus::Running {
            // On disk first: a crash before the run's end is written must
            // not resume it (see `resume`).
            let reason = StopReason::Requested.describe();
            self.store
                .request_stop(task_id, &reason, crate::clock::now_ms())
                .await?;
        }
        if self.stop_anywhere(task_id, StopReason::Requested).await? {
            Ok("Task stopped successfully".into())
        } else {
            Ok(format!(
                "Task is not running (status: {})",
                task.status.as_str()
            ))
        }
    }

    /// Restarts the agent runtime: running tasks end as failed (with the
    /// reason), stored data stays. Configuration is read afresh by every run.
    /// A key that is not an admin restarts only its own tasks.
    pub async fn restart(&self, caller: &Caller) -> Result<usize> {
        let Some(owner) = caller.owner_filter() else {
            return Ok(self.restart_all().await);
        };
        let running = crate::store::TaskQuery {
            owner: Some(owner),
            status: Some(crate::store::TaskStatus::Running),
            limit: i64::MAX,
            ..Default::default()
        };
        let (tasks, _) = self.store.list_tasks(&running).await?;
        let mut stopped = 0;
        for task in tasks {
            if self
                .stop_anywhere(&task.task_id, StopReason::Restart)
                .await?
            {
                self.audit(caller, "stop", &task.task_id);
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    async fn restart_all(&self) -> usize {
        let (here, elsewhere) = tokio::join!(
            self.runner.stop_all(StopReason::Restart),
            self.restart_elsewhere()
        );
        here + elsewhere.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not ask the other nodes to restart");
            0
        })
    }

    /// Before the process exits: every run whose policy resumes it (see
    /// `resume`) is suspended, left `running` for the next start (or, in a
    /// cluster, another node at once) to resume, as after a crash; the
    /// others end `failed`. Either way their processes end here.
    pub async fn shutdown(&self) -> Shutdown {
        // No run starts, no lease is renewed and no queued run is claimed
        // from now on.
        self.runner.admission.close();
        if let Some(cluster) = &self.cluster {
            cluster.stop_beating();
        }
        let ids = self.runner.active_ids();
        let mut suspend = Vec::new();
        let mut stop = Vec::new();
        for id in ids {
            // A database that does not answer cannot take a run's end
            // either: the run is left to resume, like after a crash.
            let task = tokio::time::timeout(SHUTDOWN_DB_WAIT, self.store.get_task(&id)).await;
            match task {
                Ok(Ok(Some(task))) if self.on_interrupt(&task) == super::OnInterrupt::Fail => {
                    stop.push(id)
                }
                Ok(Ok(None)) => stop.push(id), // deleted meanwhile
                _ => suspend.push(id),
            }
        }
        let stops = stop
            .iter()
            .map(|id| self.runner.stop(id, StopReason::Shutdown));
        let suspends = suspend.iter().map(|id| self.runner.suspend(id));
        let (stopped, suspended) = tokio::join!(
            futures_util::future::join_all(stops),
            futures_util::future::join_all(suspends)
        );
        if let Some(cluster) = &self.cluster {
            let error = match tokio::time::timeout(SHUTDOWN_DB_WAIT, cluster.leave()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            if let Some(error) = error {
                tracing::warn!(%error, "could not give up this node's leases: other nodes take its runs over when they run out");
            }
        }
        self.cgroups.close();
        // The runs' last events are stored: streams may end now.
        self.events.close_streams();
        Shutdown {
            failed: stopped
                .into_iter()
                .filter(|r| matches!(r, Ok(true)))
                .count(),
            suspended: suspended.into_iter().filter(|s| *s).count(),
        }
    }
}

/// What a shutdown did with the runs in progress.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shutdown {
    /// Ended `failed` (their policy is `fail`).
    pub failed: usize,
    /// Left to resume.
    pub suspended: usize,
}

impl Runner {
    /// Cancels a run and waits (bounded) for it to record its end. Returns
    /// false when the task had no run in progress.
    pub async fn stop(&self, task_id: &str, reason: StopReason) -> Result<bool> {
        let Some((cancel, mut finished, session)) = self
            .active()
            .get(task_id)
            .map(|a| (a.cancel.clone(), a.finished.clone(), a.session.clone()))
        else {
            return self.stop_dormant_session(task_id, &reason).await;
        };
        cancel.stop(reason.clone());
        self.processes.end_task(task_id, KILL_GRACE).await;
        match session {
            // A step-by-step task between steps: end its session here.
            Some(session) => {
                let mut s = session.lock().await;
                // A step that was running may have ended the session meanwhile.
                if self.active().remove(task_id).is_none() {
                    return Ok(true);
                }
                // Ends the processes and still writes the patch and trajectory.
                s.agent.stop(reason.describe()).await;
                s.sink.flush().await;
                drop(s);
                drop(session);
                let outcome = RunOutcome::Stopped {
                    reason: reason.describe(),
                };
                self.finish(task_id, &outcome, Some(&reason)).await?;
            }
            None => {
                if let Some(finished) = finished.as_mut() {
                    let _ = tokio::time::timeout(STOP_WAIT, finished.wait_for(|done| *done)).await;
                }
            }
        }
        Ok(true)
    }

    /// An Agent Protocol task whose session waits to be rebuilt from its
    /// checkpoint by its next step (after a restart, or taken over from a
    /// dead node: see `resume`): nothing of it runs, so a stop ends it here,
    /// and it is never resumed. False for any other task.
    async fn stop_dormant_session(&self, task_id: &str, reason: &StopReason) -> Result<bool> {
        // In a cluster only the node holding the session's run may end it.
        if self.events.is_shared() && self.events.fence(task_id).is_none() {
            return Ok(false);
        }
        let Some(task) = self.store.get_task(task_id).await? else {
            return Ok(false);
        };
        if task.status != crate::store::TaskStatus::Running
            || task.origin != crate::store::Origin::AgentProtocol
        {
            return Ok(false);
        }
        let taken = {
            let mut active = self.active();
            // A step rebuilding the session from now on finds the task taken.
            let free = !active.contains_key(task_id);
            if free {
                let placeholder = Active {
                    cancel: Cancellation::default(),
                    finished: None,
                    session: None,
                };
                active.insert(task_id.to_string(), placeholder);
            }
            free
        };
        if !taken {
            // A step rebuilt the session meanwhile: stop that.
            return Box::pin(self.stop(task_id, reason.clone())).await;
        }
        let outcome = RunOutcome::Stopped {
            reason: reason.describe(),
        };
        let ended = self.finish(task_id, &outcome, Some(reason)).await;
        self.active().remove(task_id);
        ended.map(|()| true)
    }

    /// Leaves a run as it is in the store, still `running`, with its events
    /// and checkpoints so far, for the next start or another node to resume
    /// (a shutdown under the `resume` policy): the run's future is dropped
    /// where it is, like a crash but with its log flushed, then its
    /// processes are ended. A step in flight answers 503. False when the
    /// task had no run in progress.
    pub async fn suspend(&self, task_id: &str) -> bool {
        let Some((cancel, mut finished, session)) = self
            .active()
            .get(task_id)
            .map(|a| (a.cancel.clone(), a.finished.clone(), a.session.clone()))
        else {
            return false;
        };
        cancel.suspended().cancel();
        match session {
            // A step holds the lock while it runs, and lets go on the token.
            Some(session) => {
                let s = session.lock().await;
                s.sink.flush().await;
                self.processes.end_task(task_id, KILL_GRACE).await;
                self.active().remove(task_id);
                drop(s);
            }
            // The run ends its processes once its future is dropped.
            None => {
                if let Some(finished) = finished.as_mut() {
                    let _ = tokio::time::timeout(STOP_WAIT, finished.wait_for(|done| *done)).await;
                }
            }
        }
        true
    }

    pub(super) fn active_ids(&self) -> Vec<String> {
        self.active().keys().cloned().collect()
    }

    /// Stops every run (a restart).
    pub async fn stop_all(&self, reason: StopReason) -> usize {
        let ids: Vec<String> = self.active().keys().cloned().collect();
        let stops = ids.iter().map(|id| self.stop(id, reason.clone()));
        futures_util::future::join_all(stops)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use agentd_engine::tools::process_is_alive;
    use serde_json::json;

    use super::*;
    use crate::{
        store::TaskStatus,
        tasks::{
            RunnerSettings,
            testkit::{GatedLlm, Harness, tool_call},
        },
    };

    #[test]
    fn the_first_reason_is_kept() {
        let cancel = Cancellation::default();
        assert_eq!(cancel.reason(), None);
        cancel.stop(StopReason::TimedOut(Duration::from_secs(3)));
        cancel.stop(StopReason::Requested);
        assert!(cancel.token().is_cancelled());
        assert_eq!(
            cancel.reason(),
            Some(StopReason::TimedOut(Duration::from_secs(3)))
        );
    }

    /// Starts a run of `task_id` whose command sleeps; returns the sleep's pid.
    async fn run_a_sleeping_command(h: &Harness, task_id: &str) -> i32 {
        let pid_file = h.dir().join("sleep.pid");
        let command = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let llm = GatedLlm::new(vec![tool_call("bash", json!({ "command": command }))]);
        h.start_run(task_id, llm.clone(), &["bash"]).await;
        llm.called().await;
        llm.release();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let written = tokio::fs::read_to_string(&pid_file).await;
                if let Some(pid) = written.ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the command started")
    }

    /// A stop of a run whose command is running returns once that
    /// command's processes are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_ends_the_processes_of_a_running_command() {
        let h = Harness::new(RunnerSettings::default()).await;
        let pid = run_a_sleeping_command(&h, "t").await;
        assert!(process_is_alive(pid));
        assert!(h.runner.stop("t", StopReason::Requested).await.unwrap());
        assert!(!process_is_alive(pid), "the command's process survived");
        let (task, _) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Stopped);
    }

    /// A suspended run ends its processes but not itself: the task stays
    /// `running`, its log without an end, for the next start to resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suspended_run_ends_its_processes_and_stays_running() {
        let h = Harness::new(RunnerSettings::default()).await;
        let pid = run_a_sleeping_command(&h, "t").await;
        assert!(h.runner.suspend("t").await);
        assert!(!process_is_alive(pid), "the command's process survived");
        assert!(!h.runner.suspend("t").await, "suspended twice");
        let task = h.store.get_task("t").await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Running);
        assert!(task.finished_at.is_none());
        let log = h.store.list_events("t", 0, 10_000).await.unwrap();
        let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains(&"tool_call"), "{kinds:?}");
        for end in ["end", "error", "stopped", "complete", "tool_result"] {
            assert!(!kinds.contains(&end), "{end} in {kinds:?}");
        }
    }
}
