//! A run's lifecycle: it starts (a `start` event, an entry among the active
//! runs), runs to an outcome, and ends once, in [`Runner::finish`]: the one
//! place that writes a run's terminal event (`complete` / `error` /
//! `stopped`), its `end` and its final status ([`final_status`]), together.
//!
//! Who calls `finish`, so that it happens exactly once:
//! - a background run ([`Runner::spawn_run`]) itself, after its agent
//!   returned (a stop only cancels it and waits);
//! - a step-by-step task: whoever removes it from the active runs while
//!   holding its session, the step that ended it (`session`) or a stop
//!   between steps (`stop`).
//!
//! `finish` flushes nothing itself: callers flush the run's sink first, so
//! `end` is always the last event.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use agentd_engine::{
    agent::{Agent, RunOutcome},
    config::ResolvedConfig,
};
use tracing::{Instrument as _, field::Empty};

use super::{
    admission::{Admission, RunSlot},
    events::EventLog,
    forward::LogSink,
    processes::ProcessRecords,
    resume::OnInterrupt,
    stop::{Active, Cancellation, KILL_GRACE, StopReason},
    task_event::TaskEvent,
};
use crate::{
    clock,
    error::Result,
    metrics::Metrics,
    store::{Store, Task, TaskStatus},
};

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Runs (background or step) at once; more are refused with 429.
    pub max_running: usize,
    /// Wall-clock limit of a task's run, after which it fails.
    pub task_timeout: Duration,
    /// Wall-clock limit of one synchronous Agent Protocol step: its model
    /// calls give up by then (a 502 the task survives), and the step is cut
    /// short `session::STEP_GRACE` later, so agentd always answers before Envoy's
    /// idle timeout of the step route (900 s) would.
    pub step_timeout: Duration,
    /// Default limit of one model request (a model's `timeout` wins).
    pub llm_request_timeout: Duration,
    /// Each task's budget where neither its request nor its Trae config
    /// sets a limit (`--max-tokens-total`, `--max-cost-usd`, `--max-wall-secs`).
    pub default_budget: agentd_engine::agent::Budget,
    /// What becomes of an interrupted run, unless its request says (see `resume`).
    pub on_interrupt: OnInterrupt,
    /// Resumes of one run at most; interrupted again, it fails.
    pub max_resumes: u32,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            max_running: 5,
            task_timeout: Duration::from_secs(3600),
            step_timeout: Duration::from_secs(840),
            llm_request_timeout: Duration::from_secs(600),
            default_budget: agentd_engine::agent::Budget::default(),
            on_interrupt: OnInterrupt::Resume,
            max_resumes: 3,
        }
    }
}

/// Runs the engine for tasks: background runs here, step-by-step sessions
/// in `session`, stops in `stop`.
pub struct Runner {
    pub(super) store: Arc<dyn Store>,
    pub(super) events: Arc<EventLog>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: RunnerSettings,
    pub(super) admission: Admission,
    /// The tasks' process groups: a stop ends them directly.
    pub(super) processes: ProcessRecords,
    /// Runs in progress, by task id: what a stop needs of each.
    active: Mutex<HashMap<String, Active>>,
}

/// What a background run needs beyond the task record.
pub struct RunPlan {
    pub agent: Agent,
    pub sink: LogSink,
    /// Since the run first started (a resumed run's earlier attempts count
    /// toward its timeout).
    pub started_ago: Duration,
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<EventLog>,
        metrics: Arc<Metrics>,
        settings: RunnerSettings,
        processes: ProcessRecords,
    ) -> Self {
        Self {
            admission: Admission::new(settings.max_running),
            processes,
            store,
            events,
            metrics,
            settings,
            active: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn active(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sink an agent of `task_id` reports through (see `forward`).
    pub fn sink(&self, task_id: &str) -> LogSink {
        LogSink::start(self.events.clone(), self.metrics.clone(), task_id)
    }

    /// Writes the `start` event of a run (or of an Agent Protocol task's first step).
    pub async fn record_start(
        &self,
        task_id: &str,
        task: &str,
        cfg: &ResolvedConfig,
        dir: &Path,
    ) -> Result<()> {
        let start = TaskEvent::Start {
            task: task.to_string(),
            max_steps: cfg.max_steps,
            provider: cfg.provider.clone(),
            model: cfg.model.clone(),
            working_dir: dir.display().to_string(),
            budget: cfg.budget,
        };
        self.events.append(task_id, start).await.map(|_| ())
    }

    /// Starts a background run of an already stored, `running` task. The
    /// slot is held until the run ends; without one (a resumed run on a node
    /// whose slots are taken), the run waits for the next free slot, ahead
    /// of new runs, and can be stopped or suspended meanwhile.
    pub fn spawn_run(self: &Arc<Self>, task: Task, plan: RunPlan, slot: Option<RunSlot>) {
        let cancel = Cancellation::default();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        self.active().insert(
            task.task_id.clone(),
            Active {
                cancel: cancel.clone(),
                finished: Some(done_rx),
                session: None,
            },
        );
        let runner = self.clone();
        plan.sink
            .observe_llm(self.metrics.llm(plan.agent.provider(), plan.agent.model()));
        let span = task_span(&task.task_id, &plan.agent);
        let run = async move {
            let RunPlan {
                mut agent,
                sink,
                started_ago,
            } = plan;
            let timeout = runner.settings.task_timeout;
            let left = timeout.saturating_sub(started_ago);
            // No model call (retries included) outlives the run's timeout; a
            // moment later than it, so that the timeout itself is what ends the run.
            agent.set_deadline(Some(
                tokio::time::Instant::now() + left + Duration::from_secs(1),
            ));
            // A stop cancels the token: the engine ends the step and, on its
            // way out, every process group its tools started.
            let mut slot = slot;
            let run = async {
                let go = async {
                    if slot.is_none() {
                        // A stop meanwhile: the agent then ends at once, stopped.
                        tokio::select! {
                            s = runner.admission.wait() => slot = Some(s),
                            () = cancel.token().cancelled() => {}
                        }
                    }
                    agent.run(cancel.token()).await
                };
                tokio::select! {
                    outcome = go => outcome,
                    () = tokio::time::sleep(left) => {
                        cancel.stop(StopReason::TimedOut(timeout));
                        agent.run(cancel.token()).await
                    }
                }
            };
            // A suspension drops the run where it is (see `Runner::suspend`).
            let outcome = tokio::select! {
                biased;
                () = cancel.suspended().cancelled() => None,
                outcome = run => Some(outcome),
            };
            if outcome.is_none() {
                // Before the agent goes: it would only signal them.
                runner.processes.end_task(&task.task_id, KILL_GRACE).await;
            }
            drop(agent); // ends the tools' processes
            sink.flush().await;
            match outcome {
                Some(outcome) => {
                    tracing::Span::current().record("task.outcome", outcome_name(&outcome));
                    let stop = cancel.reason();
                    if let Err(e) = runner.finish(&task.task_id, &outcome, stop.as_ref()).await {
                        tracing::error!(task_id = %task.task_id, error = %e, "could not record the end of a run");
                    }
                }
                None => {
                    tracing::info!(task_id = %task.task_id, "run suspended; it resumes at the next start")
                }
            }
            runner.active().remove(&task.task_id);
            drop(slot);
            let _ = done_tx.send(true);
        };
        tokio::spawn(run.instrument(span));
    }

    /// Records the end of a run: the terminal event, `end`, and the status.
    pub(super) async fn finish(
        &self,
        task_id: &str,
        outcome: &RunOutcome,
        stop: Option<&StopReason>,
    ) -> Result<()> {
        let read = || self.store.get_task(task_id);
        let Some(mut task) = self.events.retrying(read).await? else {
            return Ok(()); // deleted meanwhile
        };
        let status = final_status(outcome, stop);
        let last = match (outcome, status) {
            (RunOutcome::Completed { result }, _) => {
                task.result = Some(result.clone());
                TaskEvent::Complete {
                    result: result.clone(),
                }
            }
            (RunOutcome::Failed { error, .. }, _) => {
                task.error = Some(error.clone());
                TaskEvent::Error {
                    error: error.clone(),
                }
            }
            (RunOutcome::Stopped { .. }, TaskStatus::Stopped) => {
                let reason = StopReason::Requested.describe();
                task.error = Some(reason.clone());
                TaskEvent::Stopped { reason }
            }
            (RunOutcome::Stopped { .. }, _) => {
                let error = stop.map_or_else(|| "stopped".into(), StopReason::describe);
                task.error = Some(error.clone());
                TaskEvent::Error { error }
            }
        };
        if status == TaskStatus::Failed {
            let reason = task.error.as_deref().unwrap_or_default();
            tracing::warn!(%task_id, %reason, "task failed");
        }
        // `task` was read after the forwarder's flush, so it has the final usage.
        let now = clock::now_ms();
        task.status = status;
        task.finished_at = Some(now);
        task.modified_at = now;
        let entries = vec![last, TaskEvent::End { status }];
        self.events
            .append_all(task_id, entries, Some(&task))
            .await
            .map(|_| ())
    }
}

/// The one rule for a run's final status: only a requested stop is
/// `stopped`; a timeout, restart or shutdown that cancelled it failed it.
pub fn final_status(outcome: &RunOutcome, stop: Option<&StopReason>) -> TaskStatus {
    match (outcome, stop) {
        (RunOutcome::Completed { .. }, _) => TaskStatus::Completed,
        (RunOutcome::Failed { .. }, _) => TaskStatus::Failed,
        (RunOutcome::Stopped { .. }, None | Some(StopReason::Requested)) => TaskStatus::Stopped,
        (RunOutcome::Stopped { .. }, Some(_)) => TaskStatus::Failed,
    }
}

/// The span of a task's run (or of one Agent Protocol step of it); the
/// engine's step, LLM and tool spans nest in it.
pub(super) fn task_span(task_id: &str, agent: &Agent) -> tracing::Span {
    tracing::info_span!(
        "task",
        otel.name = "invoke_agent agentd",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.system = agent.provider(),
        gen_ai.provider.name = agent.provider(),
        gen_ai.request.model = agent.model(),
        task.id = task_id,
        task.outcome = Empty,
    )
}

pub(super) fn outcome_name(outcome: &RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Completed { .. } => "completed",
        RunOutcome::Failed { .. } => "failed",
        RunOutcome::Stopped { .. } => "stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::testkit::{GatedLlm, Harness, task_done};

    fn settings() -> RunnerSettings {
        RunnerSettings::default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completed_run_records_complete_then_end() {
        let h = Harness::new(settings()).await;
        let llm = GatedLlm::new(vec![task_done()]);
        h.start_run("t", llm.clone(), &[]).await;
        llm.called().await;
        llm.release();
        h.wait_ended("t").await;
        let (task, _) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.result.as_deref(), Some("all done"));
        assert_eq!(h.runner.admission.load().running, 0);
    }

    /// A stop that arrives while the model's answer completes the run: either
    /// may win, but the task ends once, with the status its last events say.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_racing_completion_ends_the_run_once() {
        let h = Harness::new(settings()).await;
        for i in 0..20 {
            let id = format!("t{i}");
            let llm = GatedLlm::new(vec![task_done()]);
            h.start_run(&id, llm.clone(), &[]).await;
            llm.called().await;
            let stopped = h.answer_racing_a_stop(&id, &llm, i).await;
            // Whether or not the stop still found it, the run has ended.
            assert!(!h.runner.stop(&id, StopReason::Requested).await.unwrap());
            let (task, _) = h.ended_once(&id).await;
            match task.status {
                TaskStatus::Completed => {}
                TaskStatus::Stopped => assert!(stopped),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requested_stop_ends_the_run_stopped() {
        let h = Harness::new(settings()).await;
        let llm = GatedLlm::new(vec![]);
        h.start_run("t", llm.clone(), &[]).await;
        llm.called().await; // and never answered
        assert!(h.runner.stop("t", StopReason::Requested).await.unwrap());
        let (task, log) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Stopped);
        assert_eq!(task.error.as_deref(), Some("stopped on request"));
        assert_eq!(log[log.len() - 2].body["message"], "stopped on request");
    }

    /// A timeout cancels the run like a stop, but fails it; a stop that
    /// comes later finds nothing to stop and changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_fails_the_run_and_a_later_stop_changes_nothing() {
        let h = Harness::new(RunnerSettings {
            task_timeout: Duration::from_secs(1),
            ..settings()
        })
        .await;
        let llm = GatedLlm::new(vec![]);
        h.start_run("t", llm.clone(), &[]).await;
        llm.called().await; // and never answered
        h.wait_ended("t").await;
        assert!(!h.runner.stop("t", StopReason::Requested).await.unwrap());
        let (task, _) = h.ended_once("t").await;
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.error.as_deref(), Some("timed out after 1s"));
    }

    /// Restart and shutdown stop runs too, but a run they end has failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_fails_every_run_it_stops() {
        let h = Harness::new(settings()).await;
        let llms = [GatedLlm::new(vec![]), GatedLlm::new(vec![])];
        for (i, llm) in llms.iter().enumerate() {
            h.start_run(&format!("t{i}"), llm.clone(), &[]).await;
            llm.called().await;
        }
        assert_eq!(h.runner.stop_all(StopReason::Restart).await, 2);
        for i in 0..2 {
            let (task, _) = h.ended_once(&format!("t{i}")).await;
            assert_eq!(task.status, TaskStatus::Failed);
            assert_eq!(
                task.error.as_deref(),
                Some("the agent runtime was restarted")
            );
        }
        assert_eq!(h.runner.stop_all(StopReason::Shutdown).await, 0);
    }

    /// A run's steps leave their checkpoints in the store, in order (each
    /// step with tools in flight, then completed; those forwarded together
    /// are one row), the last one completed; folded, they are the whole
    /// conversation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runs_steps_are_checkpointed_in_the_store() {
        use agentd_engine::agent::{Checkpoint, CheckpointDelta};
        let h = Harness::new(settings()).await;
        let bash = crate::tasks::testkit::tool_call("bash", serde_json::json!({"command": "true"}));
        let llm = GatedLlm::new(vec![bash, task_done()]);
        h.start_run("t", llm.clone(), &["bash"]).await;
        for _ in 0..2 {
            llm.called().await;
            llm.release();
        }
        h.wait_ended("t").await;
        let rows = h.store.checkpoints("t").await.unwrap();
        let deltas: Vec<CheckpointDelta> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        let shape: Vec<(i64, i64, bool)> = rows
            .iter()
            .zip(&deltas)
            .map(|(r, d)| (r.n, r.step, d.in_flight))
            .collect();
        let ns: Vec<i64> = shape.iter().map(|s| s.0).collect();
        assert_eq!(ns, (1..=shape.len() as i64).collect::<Vec<_>>());
        assert!(shape.windows(2).all(|w| w[0].1 <= w[1].1), "{shape:?}");
        assert!(shape.len() <= 4, "{shape:?}");
        assert_eq!(shape.last().map(|s| (s.1, s.2)), Some((2, false)));
        let cp = Checkpoint::from_deltas(deltas).unwrap().unwrap();
        let last = cp.messages.last().unwrap().tool_result.as_ref().unwrap();
        assert_eq!(last.name, "task_done");
        // System prompt, task, then two turns of an answer and its result.
        assert_eq!(cp.messages.len(), 6);
    }

    #[test]
    fn only_a_requested_stop_is_stopped() {
        let stopped = RunOutcome::Stopped {
            reason: "cancelled".into(),
        };
        let timed_out = StopReason::TimedOut(Duration::from_secs(5));
        let completed = RunOutcome::Completed { result: "r".into() };
        assert_eq!(final_status(&stopped, None), TaskStatus::Stopped);
        assert_eq!(
            final_status(&stopped, Some(&StopReason::Requested)),
            TaskStatus::Stopped
        );
        for reason in [timed_out, StopReason::Restart, StopReason::Shutdown] {
            assert_eq!(final_status(&stopped, Some(&reason)), TaskStatus::Failed);
            // A run that completed before the cancellation took effect completed.
            assert_eq!(
                final_status(&completed, Some(&reason)),
                TaskStatus::Completed
            );
        }
    }
}
