//! The engine's event sink of a run and its forwarder: the engine emits
//! [`EngineEvent`]s through a channel (it must never wait on storage), and
//! one forwarder per run turns them into [`TaskEvent`]s, appends them in
//! order to the event log, with the run's checkpoint and the task's token
//! usage in the same write, and counts the run's metrics. A flush lets the
//! run's end wait until all of it is stored, so the terminal events written
//! after it are really last.

use std::{sync::Arc, time::Instant};

use agentd_engine::{
    events::{EngineEvent, EventSink, FailureKind},
    tools::BUILTIN_TOOL_NAMES,
};
use tokio::sync::{mpsc, oneshot};

use super::events::EventLog;
use super::task_event::TaskEvent;
use crate::{
    clock,
    metrics::{LlmObserver, Metrics},
    store::TaskUsage,
};

enum Forward {
    /// With the moment it was emitted (tool calls' durations).
    Event(EngineEvent, Instant),
    Flush(oneshot::Sender<()>),
    /// The run's provider/model metrics, sent before its first event.
    Llm(LlmObserver),
    /// Lakeview's model's, when it has one (its calls are counted apart).
    Lakeview(LlmObserver),
}

/// The engine's event sink: a channel to the run's forwarder.
pub struct LogSink {
    tx: mpsc::UnboundedSender<Forward>,
}

impl LogSink {
    /// A sink for the run of `task_id`, with its forwarder. The forwarder
    /// ends when the last clone of the sink is dropped.
    pub fn start(events: Arc<EventLog>, metrics: Arc<Metrics>, task_id: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(rx, events, metrics, task_id.to_string()));
        Self { tx }
    }

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

    /// Counts the run's lakeview calls under lakeview's provider/model.
    pub fn observe_lakeview(&self, observer: LlmObserver) {
        let _ = self.tx.send(Forward::Lakeview(observer));
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
    metrics: Arc<Metrics>,
    task_id: String,
) {
    let mut inbox = Vec::with_capacity(FORWARD_BATCH);
    let mut llm: Option<LlmObserver> = None;
    let mut lakeview_llm: Option<LlmObserver> = None;
    // Tool calls in progress: (call_id, when it started).
    let mut tools_started: Vec<(String, Instant)> = Vec::new();
    while rx.recv_many(&mut inbox, FORWARD_BATCH).await > 0 {
        let mut entries = Vec::new();
        let mut usage = None;
        let mut flushed = Vec::new();
        // The checkpoints met on the way, joined: stored with every entry of
        // the batch in one write (one per checkpoint made runs wait on
        // several commits per step).
        let mut checkpoint: Option<agentd_engine::agent::CheckpointDelta> = None;
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
                Forward::Lakeview(observer) => {
                    lakeview_llm = Some(observer);
                    continue;
                }
                Forward::Event(EngineEvent::Checkpoint(delta), _) => {
                    // Moved, not cloned: a checkpoint carries the step's messages.
                    checkpoint = Some(match checkpoint.take() {
                        None => *delta,
                        Some(before) => before.then(*delta).unwrap_or_else(|gap| {
                            tracing::error!(%task_id, error = %gap.error, "cannot join checkpoints");
                            *gap.later
                        }),
                    });
                    continue;
                }
                Forward::Event(e, at) => (e, at),
            };
            match &event {
                EngineEvent::Usage {
                    usage: call,
                    total,
                    total_cost_usd,
                    cost_usd,
                    lakeview,
                    ..
                } => {
                    usage = Some((*total, *total_cost_usd));
                    if !*lakeview {
                        // The agent's calls and tokens are counted at its responses.
                        if let Some(llm) = &llm {
                            llm.cost_usd.inc_by(*cost_usd);
                        }
                    } else if let Some(llm) = &lakeview_llm {
                        // Lakeview's call has no response event: all of it here.
                        llm.requests.inc();
                        llm.input_tokens.inc_by(call.input_tokens);
                        llm.output_tokens.inc_by(call.output_tokens);
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
        // The checkpoint (encoded once) and the usage go with the batch's
        // events: one write per batch.
        let checkpoint = checkpoint.and_then(|d| match serde_json::to_string(&d) {
            Ok(body) => Some((d.step, body)),
            Err(e) => {
                tracing::error!(%task_id, error = %e, "cannot encode a checkpoint");
                None
            }
        });
        let usage = usage.map(|(total, cost)| TaskUsage {
            input_tokens: total.input_tokens as i64,
            output_tokens: total.output_tokens as i64,
            cost_usd: cost,
            modified_at: clock::now_ms(),
        });
        if (!entries.is_empty() || checkpoint.is_some() || usage.is_some())
            && let Err(e) = events
                .append_progress(&task_id, entries, checkpoint, usage)
                .await
        {
            tracing::error!(%task_id, error = %e, "could not append to the event log");
        }
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
