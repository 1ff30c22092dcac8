//! Step-by-step runs (Agent Protocol): a task's agent stays in memory
//! between step requests as its session, and each request runs one step of
//! it. Steps of one task queue up behind each other; each holds a run slot
//! only while it runs.

use std::{sync::Arc, time::Duration};

use agentd_engine::agent::{Agent, RunOutcome, StepOutcome};
use tracing::Instrument as _;

use super::{
    forward::LogSink,
    lifecycle::{Runner, outcome_name, task_span},
    stop::{Active, Cancellation, StopReason},
};
use crate::error::{Error, Result};

/// Between a step's model deadline and cutting the step short: time for a
/// model call that just gave up to come back as the step's answer.
const STEP_GRACE: Duration = Duration::from_secs(15);

/// A step-by-step task's agent and what it reports through.
pub struct Session {
    pub(super) agent: Agent,
    pub(super) sink: LogSink,
    max_steps: u32,
}

impl Session {
    pub fn new(agent: Agent, sink: LogSink, max_steps: u32) -> Self {
        Self {
            agent,
            sink,
            max_steps,
        }
    }
}

impl Runner {
    /// Runs one step of a step-by-step task, creating its session on the
    /// first call with `make_session`. Concurrent calls for one task queue up.
    pub async fn step<F, Fut>(
        &self,
        task_id: &str,
        input: Option<String>,
        make_session: F,
    ) -> Result<(StepOutcome, u32, Option<StopReason>)>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Session>>,
    {
        // A slot first: a refused step must not have started anything.
        let slot = self.admission.reserve()?;
        let existing = self
            .active()
            .get(task_id)
            .map(|a| (a.session.clone(), a.cancel.clone()));
        let (session, cancel) = match existing {
            Some((Some(s), c)) => (s, c),
            Some((None, _)) => return Err(Error::TaskAlreadyRunning(task_id.to_string())),
            None => {
                let session = Arc::new(tokio::sync::Mutex::new(make_session().await?));
                let mut active = self.active();
                // Another request may have created the session meanwhile: use theirs.
                let entry = active.entry(task_id.to_string()).or_insert(Active {
                    cancel: Cancellation::default(),
                    finished: None,
                    session: Some(session.clone()),
                });
                match &entry.session {
                    Some(s) => (s.clone(), entry.cancel.clone()),
                    None => return Err(Error::TaskAlreadyRunning(task_id.to_string())),
                }
            }
        };
        // A stop may have ended the task while its session was being made
        // (one resumed from a checkpoint: see `stop::stop_dormant_session`).
        if self
            .store
            .get_task(task_id)
            .await?
            .is_none_or(|t| t.status.is_finished())
        {
            let mut active = self.active();
            if active
                .get(task_id)
                .is_some_and(|a| a.session.as_ref().is_some_and(|x| Arc::ptr_eq(x, &session)))
            {
                active.remove(task_id);
            }
            return Err(Error::invalid(format!(
                "task {task_id} has ended; it takes no more steps"
            )));
        }
        let mut s = {
            let _queued = self.admission.queue();
            session.lock().await
        };
        // Queued behind a step or stop that ended the task (or a shutdown).
        if !self
            .active()
            .get(task_id)
            .is_some_and(|a| a.session.as_ref().is_some_and(|x| Arc::ptr_eq(x, &session)))
        {
            if cancel.suspended().is_cancelled() {
                return Err(shutting_down());
            }
            return Err(Error::invalid(format!(
                "task {task_id} has ended; it takes no more steps"
            )));
        }
        let max_steps = s.max_steps;
        if s.agent.steps_taken() > 0 {
            self.mark_busy(task_id, true).await;
        }
        if s.agent.steps_taken() == 0 {
            s.sink
                .observe_llm(self.metrics.llm(s.agent.provider(), s.agent.model()));
        }
        let span = task_span(task_id, &s.agent);
        // The model gives up at the step's limit (the step answers 502 and
        // the task takes its next step); tools still running a little later
        // are cut short, and that ends the task like a timeout.
        let limit = self.settings.step_timeout.min(self.settings.task_timeout);
        s.agent
            .set_deadline(Some(tokio::time::Instant::now() + limit));
        let step = async {
            tokio::select! {
                out = s.agent.step(cancel.token(), input.clone()).instrument(span.clone()) => out,
                () = tokio::time::sleep(limit + STEP_GRACE) => {
                    cancel.stop(StopReason::TimedOut(limit));
                    s.agent.step(cancel.token(), None).instrument(span.clone()).await
                }
            }
        };
        // A suspension (shutdown) drops the step where it is: the task stays
        // running, and its next step after the restart continues it.
        let outcome = tokio::select! {
            biased;
            () = cancel.suspended().cancelled() => None,
            out = step => Some(out),
        };
        let Some(outcome) = outcome else {
            s.sink.flush().await;
            self.active().remove(task_id);
            return Err(shutting_down());
        };
        if let Some(o) = &outcome.outcome {
            span.record("task.outcome", outcome_name(o));
        }
        s.sink.flush().await;
        if !outcome.is_last {
            self.mark_busy(task_id, false).await;
        }
        drop(slot);
        if outcome.is_last {
            // Removed under the session lock: a concurrent stop now finds
            // nothing to end, so the end is recorded once.
            let ended_here = self.active().remove(task_id).is_some();
            drop(s);
            drop(session); // the agent goes with the last handle: its processes end
            if ended_here {
                let final_outcome = outcome.outcome.clone().unwrap_or(RunOutcome::Stopped {
                    reason: "ended".into(),
                });
                self.finish(task_id, &final_outcome, cancel.reason().as_ref())
                    .await?;
            }
        }
        Ok((outcome, max_steps, cancel.reason()))
    }
}

/// A step cut off or refused by a shutdown (the task stays running).
fn shutting_down() -> Error {
    Error::Unavailable(
        "agentd is shutting down: this step was interrupted; the task goes on from its last \
         completed step with the next step posted after the restart"
            .into(),
    )
}

impl Runner {
    /// In a cluster, whether the task's session holds a run slot now (the
    /// cluster-wide slot count reads it); nothing without a run row.
    async fn mark_busy(&self, task_id: &str, busy: bool) {
        let Some(fence) = self.events.fence(task_id) else {
            return;
        };
        match self.store.set_run_busy(&fence, busy).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%task_id, "the session's run was taken over by another node")
            }
            Err(e) => tracing::warn!(%task_id, error = %e, "could not record the session's slot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        store::TaskStatus,
        tasks::{
            RunnerSettings,
            testkit::{GatedLlm, Harness, task_done, text},
        },
    };

    /// Runs the first step of `task_id` on its own tokio task.
    async fn first_step(
        h: &Harness,
        task_id: &str,
        llm: Arc<GatedLlm>,
    ) -> tokio::task::JoinHandle<Result<(StepOutcome, u32, Option<StopReason>)>> {
        h.running_task(task_id).await;
        let plan = h.agent(task_id, llm, &[]).await;
        let (runner, task_id) = (h.runner.clone(), task_id.to_string());
        tokio::spawn(async move {
            let session = || async move { Ok(Session::new(plan.agent, plan.sink, 20)) };
            runner.step(&task_id, None, session).await
        })
    }

    /// The step that ends the task and a stop arriving meanwhile both may
    /// record the end; the one that takes the task off the active runs
    /// does, so the task ends once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_racing_the_last_step_ends_the_task_once() {
        let h = Harness::new(RunnerSettings::default()).await;
        for i in 0..20 {
            let id = format!("t{i}");
            let llm = GatedLlm::new(vec![task_done()]);
            let step = first_step(&h, &id, llm.clone()).await;
            llm.called().await;
            let stopped = h.answer_racing_a_stop(&id, &llm, i).await;
            let (outcome, _, reason) = step.await.unwrap().unwrap();
            assert!(outcome.is_last);
            let (task, _) = h.ended_once(&id).await;
            match task.status {
                TaskStatus::Completed => {}
                TaskStatus::Stopped => {
                    assert!(stopped);
                    assert_eq!(reason, Some(StopReason::Requested));
                }
                other => panic!("{other:?}"),
            }
            assert!(!h.runner.active().contains_key(&id));
        }
    }

    /// Between steps nobody watches the token: the stop ends the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_between_steps_ends_the_session() {
        let h = Harness::new(RunnerSettings::default()).await;
        let llm = GatedLlm::new(vec![text("looking around")]);
        llm.release();
        let (outcome, max_steps, reason) = first_step(&h, "t", llm).await.await.unwrap().unwrap();
        assert!(!outcome.is_last);
        assert_eq!((max_steps, reason), (20, None));
        assert!(h.runner.stop("t", StopReason::Requested).await.unwrap());
        let (task, log) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Stopped);
        assert_eq!(log[log.len() - 2].body["message"], "stopped on request");
        assert!(!h.runner.stop("t", StopReason::Requested).await.unwrap());
    }

    /// A step queued behind a running one counts as queued, and is refused
    /// once a stop has ended the task in front of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_queued_behind_a_stopped_task_is_refused() {
        let h = Harness::new(RunnerSettings::default()).await;
        let llm = GatedLlm::new(vec![]);
        let running = first_step(&h, "t", llm.clone()).await;
        llm.called().await;
        let queued = {
            let runner = h.runner.clone();
            tokio::spawn(async move {
                let no_session = || async { Err(Error::invalid("a second session")) };
                runner.step("t", Some("more".into()), no_session).await
            })
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            while h.runner.admission.load().queued == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(h.runner.admission.load().running, 2);
        assert!(h.runner.stop("t", StopReason::Requested).await.unwrap());
        let (outcome, _, _) = running.await.unwrap().unwrap();
        assert!(matches!(outcome.outcome, Some(RunOutcome::Stopped { .. })));
        let refused = queued.await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("has ended"), "{refused}");
        let (task, _) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Stopped);
        let load = h.runner.admission.load();
        assert_eq!((load.running, load.queued), (0, 0));
    }
}
