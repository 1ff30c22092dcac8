//! Runs the engine for tasks: background runs (Trae `POST /api/run`) and
//! step-by-step sessions (Agent Protocol `POST .../steps`), within a limit of
//! concurrent runs and a wall-clock timeout, and stops them for real.
//!
//! The engine reports `EngineEvent`s through a channel; one forwarder per run
//! appends them, in order, to the durable event log. The terminal events
//! (`complete` / `error` / `stopped`, then `end`) are written here from the
//! run's outcome, after a flush of the forwarder, so `end` is always last.
//! Exactly one path records a run's end: the one that removes it from the
//! active runs (for step-by-step tasks, while holding the session's lock).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use agentd_engine::{
    agent::{Agent, RunOutcome, StepOutcome},
    events::{EngineEvent, EventSink, FailureKind},
    tools::BUILTIN_TOOL_NAMES,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};

use super::events::EventLog;
use super::task_event::TaskEvent;
use crate::{
    clock,
    error::{Error, Result},
    metrics::{LlmObserver, Metrics, RunLoad},
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
    /// short `STEP_GRACE` later, so agentd always answers before Envoy's
    /// idle timeout of the step route (900 s) would.
    pub step_timeout: Duration,
    /// Default limit of one model request (a model's `timeout` wins).
    pub llm_request_timeout: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            max_running: 5,
            task_timeout: Duration::from_secs(3600),
            step_timeout: Duration::from_secs(840),
            llm_request_timeout: Duration::from_secs(600),
        }
    }
}

/// Between a step's model deadline and cutting the step short: time for a
/// model call that just gave up to come back as the step's answer.
const STEP_GRACE: Duration = Duration::from_secs(15);

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
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::Requested => "stopped on request".into(),
            StopReason::TimedOut(d) => format!("timed out after {}s", d.as_secs()),
            StopReason::Restart => "the agent runtime was restarted".into(),
            StopReason::Shutdown => "interrupted: agentd shut down".into(),
        }
    }
}

/// A run in progress: how to cancel it and learn that it finished.
struct Active {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    /// Background runs: becomes true once the run recorded its end.
    finished: Option<tokio::sync::watch::Receiver<bool>>,
    /// Agent Protocol tasks keep their agent between steps.
    session: Option<Arc<tokio::sync::Mutex<Session>>>,
}

/// A step-by-step task's agent and what it reports through.
pub struct Session {
    agent: Agent,
    sink: LogSink,
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

pub struct Runner {
    store: Arc<dyn Store>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
    settings: RunnerSettings,
    slots: Arc<Semaphore>,
    active: Mutex<HashMap<String, Active>>,
    /// Steps waiting for the previous step of their task (`/metrics`).
    queued: AtomicUsize,
}

/// What a background run needs beyond the task record.
pub struct RunPlan {
    pub agent: Agent,
    pub sink: LogSink,
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        events: Arc<EventLog>,
        metrics: Arc<Metrics>,
        settings: RunnerSettings,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_running));
        Self {
            store,
            events,
            metrics,
            settings,
            slots,
            active: Mutex::new(HashMap::new()),
            queued: AtomicUsize::new(0),
        }
    }

    /// Runs holding a slot, steps queued behind their task's previous step.
    pub fn load(&self) -> RunLoad {
        let slots = self.settings.max_running;
        RunLoad {
            running: slots.saturating_sub(self.slots.available_permits()),
            queued: self.queued.load(Ordering::Relaxed),
            slots,
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a run slot, or refuses with 429 when all are busy.
    pub fn reserve(&self) -> Result<OwnedSemaphorePermit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::InsufficientResources {
                message: format!(
                    "{} tasks are already running (the limit); retry when one finishes",
                    self.settings.max_running
                ),
                retry_after: Some(Duration::from_secs(10)),
            })
    }

    /// The sink an agent reports through. A forwarder task appends what it
    /// receives to the log (usage also to the task record); it ends when the
    /// last sink clone is dropped.
    pub fn sink(&self, task_id: &str) -> LogSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(
            rx,
            self.events.clone(),
            self.store.clone(),
            self.metrics.clone(),
            task_id.to_string(),
        ));
        LogSink { tx }
    }

    /// Starts a background run of an already stored, `running` task. The
    /// permit is held until the run ends.
    pub fn spawn_run(self: &Arc<Self>, task: Task, plan: RunPlan, permit: OwnedSemaphorePermit) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        self.active().insert(
            task.task_id.clone(),
            Active {
                cancel: cancel.clone(),
                reason: reason.clone(),
                finished: Some(done_rx),
                session: None,
            },
        );
        let runner = self.clone();
        plan.sink
            .observe_llm(self.metrics.llm(plan.agent.provider(), plan.agent.model()));
        let span = task_span(&task.task_id, &plan.agent);
        let run = async move {
            let RunPlan { mut agent, sink } = plan;
            let timeout = runner.settings.task_timeout;
            // No model call (retries included) outlives the run's timeout; a
            // moment later than it, so that the timeout itself is what ends the run.
            agent.set_deadline(Some(
                tokio::time::Instant::now() + timeout + Duration::from_secs(1),
            ));
            let outcome = tokio::select! {
                outcome = agent.run(&cancel) => outcome,
                () = tokio::time::sleep(timeout) => {
                    set_reason(&reason, StopReason::TimedOut(timeout));
                    cancel.cancel();
                    agent.run(&cancel).await
                }
            };
            drop(agent); // ends the tools' processes
            tracing::Span::current().record("task.outcome", outcome_name(&outcome));
            sink.flush().await;
            let stop = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Err(e) = runner.finish(&task.task_id, &outcome, stop.as_ref()).await {
                tracing::error!(task_id = %task.task_id, error = %e, "could not record the end of a run");
            }
            runner.active().remove(&task.task_id);
            drop(permit);
            let _ = done_tx.send(true);
        };
        tokio::spawn(run.instrument(span));
    }

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
        let permit = self.reserve()?;
        let existing = self
            .active()
            .get(task_id)
            .map(|a| (a.session.clone(), a.cancel.clone(), a.reason.clone()));
        let (session, cancel, reason) = match existing {
            Some((Some(s), c, r)) => (s, c, r),
            Some((None, ..)) => return Err(Error::TaskAlreadyRunning(task_id.to_string())),
            None => {
                let session = Arc::new(tokio::sync::Mutex::new(make_session().await?));
                let cancel = CancellationToken::new();
                let reason = Arc::new(Mutex::new(None));
                let mut active = self.active();
                // Another request may have created the session meanwhile: use theirs.
                let entry = active.entry(task_id.to_string()).or_insert(Active {
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                    finished: None,
                    session: Some(session.clone()),
                });
                match &entry.session {
                    Some(s) => (s.clone(), entry.cancel.clone(), entry.reason.clone()),
                    None => return Err(Error::TaskAlreadyRunning(task_id.to_string())),
                }
            }
        };
        let mut s = {
            let _queued = Queued::enter(&self.queued);
            session.lock().await
        };
        // Queued behind a step or stop that ended the task.
        if !self
            .active()
            .get(task_id)
            .is_some_and(|a| a.session.as_ref().is_some_and(|x| Arc::ptr_eq(x, &session)))
        {
            return Err(Error::invalid(format!(
                "task {task_id} has ended; it takes no more steps"
            )));
        }
        let max_steps = s.max_steps;
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
        let outcome = tokio::select! {
            out = s.agent.step(&cancel, input.clone()).instrument(span.clone()) => out,
            () = tokio::time::sleep(limit + STEP_GRACE) => {
                set_reason(&reason, StopReason::TimedOut(limit));
                cancel.cancel();
                s.agent.step(&cancel, None).instrument(span.clone()).await
            }
        };
        if let Some(o) = &outcome.outcome {
            span.record("task.outcome", outcome_name(o));
        }
        s.sink.flush().await;
        drop(permit);
        if outcome.is_last {
            // Removed under the session lock: a concurrent stop now finds
            // nothing to end, so the end is recorded once.
            let ended_here = self.active().remove(task_id).is_some();
            drop(s);
            drop(session); // the agent goes with the last handle: its processes end
            if ended_here {
                let stop = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let final_outcome = outcome.outcome.clone().unwrap_or(RunOutcome::Stopped {
                    reason: "ended".into(),
                });
                self.finish(task_id, &final_outcome, stop.as_ref()).await?;
            }
        }
        let stop = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((outcome, max_steps, stop))
    }

    /// Cancels a run and waits (bounded) for it to record its end. Returns
    /// false when the task had no run in progress.
    pub async fn stop(&self, task_id: &str, reason: StopReason) -> Result<bool> {
        let Some((cancel, why, mut finished, session)) = self.active().get(task_id).map(|a| {
            (
                a.cancel.clone(),
                a.reason.clone(),
                a.finished.clone(),
                a.session.clone(),
            )
        }) else {
            return Ok(false);
        };
        set_reason(&why, reason.clone());
        cancel.cancel();
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
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        finished.wait_for(|done| *done),
                    )
                    .await;
                }
            }
        }
        Ok(true)
    }

    /// Stops every run (restart or shutdown).
    pub async fn stop_all(&self, reason: StopReason) -> usize {
        let ids: Vec<String> = self.active().keys().cloned().collect();
        let stops = ids.iter().map(|id| self.stop(id, reason.clone()));
        futures_util::future::join_all(stops)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count()
    }

    /// Records the end of a run: the terminal event, `end`, and the status.
    async fn finish(
        &self,
        task_id: &str,
        outcome: &RunOutcome,
        stop: Option<&StopReason>,
    ) -> Result<()> {
        let Some(mut task) = self.store.get_task(task_id).await? else {
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
fn task_span(task_id: &str, agent: &Agent) -> tracing::Span {
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

fn outcome_name(outcome: &RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Completed { .. } => "completed",
        RunOutcome::Failed { .. } => "failed",
        RunOutcome::Stopped { .. } => "stopped",
    }
}

/// Counts a step while it waits for its task's session.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn set_reason(slot: &Mutex<Option<StopReason>>, reason: StopReason) {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(reason);
}

enum Forward {
    /// With the moment it was emitted (tool calls' durations).
    Event(EngineEvent, Instant),
    Flush(oneshot::Sender<()>),
    /// The run's provider/model metrics, sent before its first event.
    Llm(LlmObserver),
}

/// The engine's event sink: a channel to the run's forwarder.
pub struct LogSink {
    tx: mpsc::UnboundedSender<Forward>,
}

impl LogSink {
    /// Waits until everything emitted so far is in the log.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Forward::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Counts the run's LLM calls, tokens and cost under its provider/model.
    pub fn observe_llm(&self, observer: LlmObserver) {
        let _ = self.tx.send(Forward::Llm(observer));
    }
}

impl EventSink for LogSink {
    fn emit(&self, event: EngineEvent) {
        let _ = self.tx.send(Forward::Event(event, Instant::now()));
    }
}

impl Clone for LogSink {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// Engine messages a forwarder takes into one write at most.
const FORWARD_BATCH: usize = 256;

/// Appends a run's events to its log. Whatever arrived while the previous
/// write was on its way to disk goes into the next one together, so a fast
/// agent costs one transaction per batch rather than one per event.
async fn forward(
    mut rx: mpsc::UnboundedReceiver<Forward>,
    events: Arc<EventLog>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    task_id: String,
) {
    let mut inbox = Vec::with_capacity(FORWARD_BATCH);
    let mut llm: Option<LlmObserver> = None;
    // Tool calls in progress: (call_id, when it started).
    let mut tools_started: Vec<(String, Instant)> = Vec::new();
    while rx.recv_many(&mut inbox, FORWARD_BATCH).await > 0 {
        let mut entries = Vec::new();
        let mut usage = None;
        let mut flushed = Vec::new();
        for msg in inbox.drain(..) {
            let (event, at) = match msg {
                Forward::Flush(done) => {
                    flushed.push(done);
                    continue;
                }
                Forward::Llm(observer) => {
                    llm = Some(observer);
                    continue;
                }
                Forward::Event(e, at) => (e, at),
            };
            match &event {
                EngineEvent::Usage {
                    total,
                    total_cost_usd,
                    cost_usd,
                    ..
                } => {
                    usage = Some((*total, *total_cost_usd));
                    if let Some(llm) = &llm {
                        llm.cost_usd.inc_by(*cost_usd);
                    }
                }
                EngineEvent::LlmResponse { usage, .. } => {
                    if let Some(llm) = &llm {
                        llm.requests.inc();
                        llm.input_tokens.inc_by(usage.input_tokens);
                        llm.output_tokens.inc_by(usage.output_tokens);
                    }
                }
                EngineEvent::Failed {
                    kind: FailureKind::Provider,
                    ..
                }
                | EngineEvent::StepFailed { .. } => {
                    if let Some(llm) = &llm {
                        llm.requests.inc();
                        llm.errors.inc();
                    }
                }
                EngineEvent::ToolCall { call, .. } => {
                    tools_started.push((call.call_id.clone(), at));
                }
                EngineEvent::ToolResult { result, .. } => {
                    if let Some(i) = tools_started
                        .iter()
                        .position(|(id, _)| *id == result.call_id)
                    {
                        let (_, started) = tools_started.swap_remove(i);
                        metrics.observe_tool(
                            tool_label(&result.name),
                            at.saturating_duration_since(started).as_secs_f64(),
                        );
                    }
                }
                EngineEvent::StepFinished {
                    llm_seconds,
                    tool_seconds,
                    overhead_seconds,
                    ..
                } => {
                    metrics.steps.inc();
                    metrics.step_llm.observe(*llm_seconds);
                    metrics.step_tools.observe(*tool_seconds);
                    metrics.step_overhead.observe(*overhead_seconds);
                }
                _ => {}
            }
            entries.extend(TaskEvent::from_engine(&event));
        }
        // Both writes share the store's next group commit.
        let record_usage = async {
            if let Some((total, cost)) = &usage {
                let (input, output) = (total.input_tokens as i64, total.output_tokens as i64);
                let now = clock::now_ms();
                if let Err(e) = store.set_usage(&task_id, input, output, *cost, now).await {
                    tracing::warn!(%task_id, error = %e, "could not record token usage");
                }
            }
        };
        let append = async {
            if !entries.is_empty()
                && let Err(e) = events.append_all(&task_id, entries, None).await
            {
                tracing::error!(%task_id, error = %e, "could not append to the event log");
            }
        };
        tokio::join!(record_usage, append);
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// A tool's metrics label: built-in tools by name, anything a model made up
/// as `other` (labels must stay few).
fn tool_label(name: &str) -> &'static str {
    BUILTIN_TOOL_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("other")
}

/// Files of a workspace with their size and modification time, to tell which
/// ones a step created or changed. Skips `.git`; stops at 10,000 files.
pub fn snapshot(dir: &Path) -> HashMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(path);
                }
            } else if meta.is_file() {
                if out.len() >= 10_000 {
                    return out;
                }
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                out.insert(
                    rel,
                    (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)),
                );
            }
        }
    }
    out
}
