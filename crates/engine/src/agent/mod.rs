//! The agent loop: one step = one LLM turn with every tool on offer, then its
//! tool calls, each answered with a result.
//!
//! An [`Agent`] runs to completion ([`Agent::run`]) or one step at a time
//! ([`Agent::step`], for the Agent Protocol, which executes steps across HTTP
//! requests while the same `Agent` stays in memory). Both are cancellable
//! between and during steps; a cancelled or finished run ends every process
//! its tools started, writes the patch and finalises the trajectory.
//!
//! A failed model call (after its retries) ends the run, unless
//! [`AgentOptions::retry_failed_steps`] is set: then the step is undone and
//! reported ([`StepOutcome::provider_error`]) so the caller can try it again.
//! [`Agent::set_deadline`] bounds every model call, retries included.

mod budget;
mod checkpoint;
mod deltas;
pub mod lakeview;
mod prompt;
mod spend;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field::Empty};

use crate::config::{McpServerConfig, ResolvedConfig};
use crate::events::{EngineEvent, EventSink, FailureKind};
use crate::llm::{self, LlmClient};
use crate::messages::{Conversation, LlmResponse, Message, Role, ToolCall, ToolResult, Usage};
use crate::patch::{GitWorkspace, PatchError};
use crate::tools::{TASK_DONE, ToolSet, ToolSetError, ToolSetOptions};
use crate::trajectory::{StepRecord, TrajectoryRecorder};

use lakeview::Lakeview;
use spend::{Call, Ledger};

pub use budget::{Budget, BudgetExceeded, BudgetLimit, call_tokens as budget_tokens};
pub use checkpoint::{
    Checkpoint, CheckpointDelta, CheckpointTotals, INTERRUPTED_TOOL_RESULT, JoinGap,
    RESUMED_BETWEEN_STEPS,
};
pub use prompt::MAX_STEPS_EXCEEDED;

/// Per-run settings that are not part of the Trae configuration.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `task_done` only ends the task once the working directory has a
    /// non-empty diff outside test files (needs a git repository).
    pub must_patch: bool,
    /// Where the git diff of the working directory is written at the end.
    pub patch_path: Option<PathBuf>,
    /// Where Trae's trajectory JSON is written as the run progresses.
    pub trajectory_file: Option<PathBuf>,
    /// Overrides the configuration's `max_steps`.
    pub max_steps: Option<u32>,
    /// Tool limits (bash timeout, kill grace); Trae's by default.
    pub tools: ToolSetOptions,
    /// A model call that failed after its retries does not end the run: the
    /// step is rolled back (its input and step number included) and
    /// [`Agent::step`] reports the failure, so that the next call retries
    /// the step. For step-wise callers (the Agent Protocol); [`Agent::run`]
    /// still ends the run on such a failure.
    pub retry_failed_steps: bool,
    /// Limits given with the request; each one unset here comes from the
    /// configuration's `budget`.
    pub budget: Budget,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// The model called `task_done` (and, under `must_patch`, changed code);
    /// `result` is its last text.
    Completed {
        result: String,
    },
    Failed {
        error: String,
        kind: FailureKind,
    },
    /// Cancelled; every process the tools started was ended.
    Stopped {
        reason: String,
    },
}

impl RunOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Completed { .. })
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepOutcome {
    /// 1-based; after the run ended, the number of the last step taken.
    pub step_number: u32,
    /// The model's text in this step.
    pub output: String,
    pub tool_calls: Vec<ToolCall>,
    pub tool_results: Vec<ToolResult>,
    /// Token usage of this step's LLM call.
    pub usage: Usage,
    /// No further step will run.
    pub is_last: bool,
    /// Set when `is_last`.
    pub outcome: Option<RunOutcome>,
    /// Set when the model call failed under
    /// [`AgentOptions::retry_failed_steps`]: the step was rolled back, and
    /// `step_number` is the step that the next `step()` tries again.
    pub provider_error: Option<ProviderFailure>,
}

/// A failed model call that did not end the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderFailure {
    pub provider: String,
    /// The provider's HTTP status, when it answered with an error.
    pub status: Option<u16>,
    /// The whole error, as [`llm::LlmError`] prints it.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("working directory {0} must be an absolute path to an existing directory")]
    BadWorkingDir(PathBuf),
    #[error(transparent)]
    Tools(#[from] ToolSetError),
    #[error("must_patch needs a git repository, and {0} is not inside one")]
    NotAGitRepository(PathBuf),
    #[error("cannot write the trajectory: {0}")]
    Trajectory(PatchError),
}

pub struct Agent {
    llm: Arc<dyn LlmClient>,
    tools: ToolSet,
    events: Arc<dyn EventSink>,
    provider: String,
    model: String,
    max_steps: u32,
    parallel_tool_calls: bool,
    must_patch: bool,
    retry_failed_steps: bool,
    /// No model call outlives it (see [`Agent::set_deadline`]).
    deadline: Option<tokio::time::Instant>,
    patch_path: Option<PathBuf>,
    workspace: Option<GitWorkspace>,
    trajectory: Option<TrajectoryRecorder>,
    messages: Conversation,
    /// MCP servers (those `allow_mcp_servers` names) still to be started:
    /// at the first step, so creating an agent stays quick and a server
    /// that fails fails the run rather than its request.
    mcp_pending: Vec<(String, McpServerConfig)>,
    /// `messages[..recorded]` were already sent to the model (and recorded as
    /// trajectory input).
    recorded: usize,
    /// `messages[..checkpointed]` are in checkpoints already.
    checkpointed: usize,
    steps_taken: u32,
    /// Tokens and cost of every model call of the run, lakeview's included.
    spend: Ledger,
    /// Summarises each finished step beside the loop (see [`Agent::set_lakeview`]).
    lakeview: Option<Lakeview>,
    budget: Budget,
    /// When the agent was made: the start of `max_wall_secs`.
    created: Instant,
    /// The last model call's usage (the floor of the next call's cost).
    last_usage: Option<Usage>,
    outcome: Option<RunOutcome>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("working_dir", &self.tools.working_dir())
            .field("steps_taken", &self.steps_taken)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares a run: checks the working directory (absolute, existing; a
    /// git repository under `must_patch`), builds the tools named by the
    /// configuration (`task_done` is always offered, or the task could never
    /// end) and starts the trajectory. Nothing runs until `step` or `run`.
    pub async fn new(
        config: &ResolvedConfig,
        llm: Arc<dyn LlmClient>,
        task: impl Into<String>,
        working_dir: impl Into<PathBuf>,
        options: AgentOptions,
        events: Arc<dyn EventSink>,
    ) -> Result<Agent, AgentError> {
        Self::build(
            config,
            llm,
            task.into(),
            working_dir.into(),
            options,
            events,
            None,
        )
        .await
    }

    /// Rebuilds the agent of an interrupted run (see [`checkpoint`]): its
    /// conversation, step counter and totals from `checkpoint` (none: the
    /// run starts over, its first step never completed), fresh tools in the
    /// same working directory, the trajectory file continued. The tool calls
    /// of a step that was in flight are answered now with
    /// [`INTERRUPTED_TOOL_RESULT`] (and that step counts as taken); between
    /// steps the model is told with [`RESUMED_BETWEEN_STEPS`].
    /// `started_ago`: since the run first started (`max_wall_secs`).
    #[allow(clippy::too_many_arguments)]
    pub async fn resume(
        config: &ResolvedConfig,
        llm: Arc<dyn LlmClient>,
        task: impl Into<String>,
        working_dir: impl Into<PathBuf>,
        options: AgentOptions,
        events: Arc<dyn EventSink>,
        checkpoint: Option<Checkpoint>,
        started_ago: std::time::Duration,
    ) -> Result<Agent, AgentError> {
        let (task, working_dir) = (task.into(), working_dir.into());
        let mut agent = Self::build(
            config,
            llm,
            task,
            working_dir,
            options,
            events,
            Some(started_ago),
        )
        .await?;
        agent.created = Instant::now()
            .checked_sub(started_ago)
            .unwrap_or(agent.created);
        if let Some(cp) = checkpoint {
            agent.restore(cp).await;
        }
        Ok(agent)
    }

    async fn build(
        config: &ResolvedConfig,
        llm: Arc<dyn LlmClient>,
        task: String,
        working_dir: PathBuf,
        options: AgentOptions,
        events: Arc<dyn EventSink>,
        resumed: Option<std::time::Duration>,
    ) -> Result<Agent, AgentError> {
        if !working_dir.is_absolute() || !working_dir.is_dir() {
            return Err(AgentError::BadWorkingDir(working_dir));
        }
        let mut tool_names = config.tools.clone();
        if !tool_names.iter().any(|t| t == TASK_DONE) {
            tool_names.push(TASK_DONE.to_string());
        }
        let tools = ToolSet::with_options(&tool_names, working_dir.clone(), options.tools.clone())?;

        let mut workspace = GitWorkspace::open(&working_dir).await;
        if options.must_patch && workspace.is_none() {
            return Err(AgentError::NotAGitRepository(working_dir));
        }
        if let Some(ws) = workspace.as_mut() {
            // The task's own outputs must not count as its patch.
            for output in [&options.patch_path, &options.trajectory_file]
                .into_iter()
                .flatten()
            {
                ws.exclude(output);
            }
        }

        let provider = llm.provider().to_string();
        let model = llm.model().to_string();
        let max_steps = options.max_steps.unwrap_or(config.max_steps);
        let trajectory = match options.trajectory_file {
            Some(path) => {
                let mut rec = match resumed {
                    Some(ago) => {
                        TrajectoryRecorder::reopen(path, &task, &provider, &model, max_steps, ago)
                            .await
                    }
                    None => TrajectoryRecorder::new(path, &task, &provider, &model, max_steps),
                };
                if let Some(key) = &config.api_key {
                    rec.redact(key.expose());
                }
                rec.save().await.map_err(AgentError::Trajectory)?;
                Some(rec)
            }
            None => None,
        };

        let messages = Conversation::new(vec![
            Message::system(prompt::SYSTEM_PROMPT),
            Message::user(prompt::task_message(&working_dir, &task)),
        ]);
        let mcp_pending =
            crate::tools::mcp::allowed_servers(&config.mcp_servers, &config.allow_mcp_servers)
                .into_iter()
                .map(|(name, cfg)| (name.to_string(), cfg.clone()))
                .collect();
        Ok(Agent {
            llm,
            tools,
            mcp_pending,
            events,
            provider,
            model,
            max_steps,
            parallel_tool_calls: config.parallel_tool_calls,
            must_patch: options.must_patch,
            retry_failed_steps: options.retry_failed_steps,
            deadline: None,
            patch_path: options.patch_path,
            workspace,
            trajectory,
            messages,
            recorded: 0,
            checkpointed: 0,
            steps_taken: 0,
            spend: Ledger::default(),
            lakeview: None,
            budget: options.budget.or(config.budget),
            created: Instant::now(),
            last_usage: None,
            outcome: None,
        })
    }

    /// Runs steps until the task ends.
    pub async fn run(&mut self, cancel: &CancellationToken) -> RunOutcome {
        loop {
            let step = self.step(cancel, None).await;
            if let Some(failure) = step.provider_error {
                // Nobody here would retry the step: fail as without the option.
                return self.finish(provider_failure(&failure.message)).await;
            }
            if let (true, Some(outcome)) = (step.is_last, step.outcome) {
                return outcome;
            }
        }
    }

    /// Summarise each finished step with this model (lakeview, see
    /// [`lakeview`]): beside the loop, its tokens and cost counted in the
    /// run's. Build the client from `ResolvedConfig::lakeview_config`.
    pub fn set_lakeview(&mut self, client: Arc<dyn LlmClient>) {
        self.lakeview = Some(Lakeview::new(
            client,
            self.events.clone(),
            self.spend.clone(),
        ));
    }

    /// Bounds every later model call of this agent, retries and backoff
    /// included, until changed (`None`: only the client's own timeouts). A
    /// call that runs out of time fails like any provider failure.
    pub fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
    }

    /// Runs one step. `extra_user_input` (the Agent Protocol's step input) is
    /// added as a user message first. After the run has ended, returns the
    /// final outcome again without doing anything.
    pub async fn step(
        &mut self,
        cancel: &CancellationToken,
        extra_user_input: Option<String>,
    ) -> StepOutcome {
        if self.outcome.is_some() {
            return self.step_traced(cancel, extra_user_input).await;
        }
        if let Some(lakeview) = self.lakeview.as_mut() {
            lakeview.watch(cancel, tracing::Span::current());
        }
        // The step's span: its LLM call and tool calls nest in it. A call
        // that only ends the run (cancelled, out of steps) is `end run`.
        let span = if cancel.is_cancelled() || self.steps_taken >= self.max_steps {
            tracing::info_span!("end_run", otel.name = "end run", error.type = Empty)
        } else {
            let step = self.steps_taken + 1;
            tracing::info_span!(
                "step",
                otel.name = format_args!("step {step}"),
                agent.step = i64::from(step),
                error.type = Empty
            )
        };
        self.step_traced(cancel, extra_user_input)
            .instrument(span)
            .await
    }

    async fn step_traced(
        &mut self,
        cancel: &CancellationToken,
        extra_user_input: Option<String>,
    ) -> StepOutcome {
        if let Some(outcome) = &self.outcome {
            return StepOutcome::ended(self.steps_taken, outcome.clone());
        }
        if cancel.is_cancelled() {
            let outcome = self.finish(stopped()).await;
            return StepOutcome::ended(self.steps_taken, outcome);
        }
        if self.steps_taken >= self.max_steps {
            let outcome = self.finish(max_steps_failure()).await;
            return StepOutcome::ended(self.steps_taken, outcome);
        }
        if let Some(exceeded) = self.over_budget() {
            self.events.emit(EngineEvent::BudgetExceeded {
                step: self.steps_taken,
                exceeded: exceeded.clone(),
            });
            let outcome = self
                .finish(RunOutcome::Failed {
                    error: exceeded.message(),
                    kind: FailureKind::Budget,
                })
                .await;
            return StepOutcome::ended(self.steps_taken, outcome);
        }
        if let Some(outcome) = self.start_mcp_servers(cancel).await {
            return StepOutcome::ended(self.steps_taken, outcome);
        }
        let undo = Undo {
            messages: self.messages.len(),
            recorded: self.recorded,
        };
        if let Some(input) = extra_user_input.filter(|s| !s.trim().is_empty()) {
            self.messages.push(Message::user(input));
        }
        self.steps_taken += 1;
        let step = self.steps_taken;
        let started = Instant::now();
        let step_span = tracing::Span::current();
        self.events.emit(EngineEvent::StepStarted { step });

        // The LLM turn (GenAI semantic conventions on its span).
        let input_start = self.recorded;
        let llm_started = Instant::now();
        let llm_span = tracing::info_span!(
            "chat",
            otel.name = format_args!("chat {}", self.model),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = self.provider.as_str(),
            gen_ai.provider.name = self.provider.as_str(),
            gen_ai.request.model = self.model.as_str(),
            gen_ai.response.model = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
        );
        let deltas = deltas::DeltaPublisher::new(self.events.clone(), step);
        let publish = |text: &str| deltas.push(text);
        let answer = tokio::select! {
            biased;
            // Dropping the call closes its connection: the provider stops too.
            _ = cancel.cancelled() => None,
            r = self.llm.chat_streamed(&self.messages, self.tools.specs(), self.deadline, &publish)
                .instrument(llm_span.clone()) => Some(r),
        };
        deltas.flush();
        let llm_time = llm_started.elapsed();
        match &answer {
            Some(Ok(r)) => {
                llm_span.record("gen_ai.response.model", r.model.as_str());
                // i64: OpenTelemetry has no unsigned integers.
                let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                llm_span.record("gen_ai.usage.input_tokens", tokens(r.usage.input_tokens));
                llm_span.record("gen_ai.usage.output_tokens", tokens(r.usage.output_tokens));
                if let Some(reason) = &r.finish_reason {
                    llm_span.record("gen_ai.response.finish_reasons", reason.as_str());
                }
            }
            Some(Err(e)) => {
                llm_span.record("otel.status_code", "ERROR");
                llm_span.record("error.type", llm_error_type(e));
                step_span.record("error.type", "llm_error");
            }
            None => {
                llm_span.record("error.type", "cancelled");
            }
        }
        drop(llm_span);
        self.recorded = self.messages.len();
        let response = match answer {
            None => return self.end_step_early(step, None, stopped()).await,
            Some(Err(e)) if self.retry_failed_steps => {
                return self.roll_back_step(step, undo, &e).await;
            }
            Some(Err(e)) => {
                return self.end_step_early(step, None, provider_failure(&e)).await;
            }
            Some(Ok(r)) => r,
        };
        self.account(step, &response);
        if let Some(rec) = self.trajectory.as_mut() {
            rec.record_llm_interaction(
                &self.messages[input_start..],
                &response,
                &self.provider,
                self.tools.specs(),
            );
        }
        self.messages.push(Message {
            role: Role::Assistant,
            content: response.content.clone(),
            tool_calls: response.tool_calls.clone(),
            tool_result: None,
        });
        let produced_from = self.messages.len();
        if !response.tool_calls.is_empty() {
            self.checkpoint(true);
        }

        // Its tool calls.
        let tools_started = Instant::now();
        let mut completed = false;
        let mut results = Vec::new();
        if response.tool_calls.is_empty() {
            self.nudge(step, prompt::NO_TOOL_CALL);
        } else {
            let run = Self::run_tool_calls(
                &self.tools,
                &*self.events,
                step,
                &response.tool_calls,
                self.parallel_tool_calls,
            );
            let ran = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                r = run => Some(r),
            };
            let Some(ran) = ran else {
                return self.end_step_early(step, Some(&response), stopped()).await;
            };
            for (call, result) in response.tool_calls.iter().zip(ran) {
                let result = match result {
                    Some(r) => r,
                    None => {
                        let (r, done) = self.answer_task_done(step, call).await;
                        completed |= done;
                        r
                    }
                };
                self.messages.push(Message::tool(result.clone()));
                results.push(result);
            }
        }
        let tool_time = tools_started.elapsed();

        if let Some(rec) = self.trajectory.as_mut() {
            rec.record_step(&StepRecord {
                step_number: step,
                state: "completed",
                llm_messages: &self.messages[produced_from..],
                llm_response: Some(&response),
                tool_calls: &response.tool_calls,
                tool_results: &results,
                error: None,
            });
            save_trajectory(rec).await;
        }
        self.checkpoint(false);

        self.events.emit(EngineEvent::StepFinished {
            step,
            llm_seconds: llm_time.as_secs_f64(),
            tool_seconds: tool_time.as_secs_f64(),
            overhead_seconds: started
                .elapsed()
                .saturating_sub(llm_time + tool_time)
                .as_secs_f64(),
        });
        if let Some(lakeview) = self.lakeview.as_mut() {
            lakeview.summarise(step, &response, self.deadline);
        }
        let outcome = if completed {
            Some(
                self.finish(RunOutcome::Completed {
                    result: response.content.clone(),
                })
                .await,
            )
        } else if step >= self.max_steps {
            Some(self.finish(max_steps_failure()).await)
        } else {
            None
        };
        StepOutcome {
            step_number: step,
            output: response.content,
            tool_calls: response.tool_calls,
            tool_results: results,
            usage: response.usage,
            is_last: outcome.is_some(),
            outcome,
            provider_error: None,
        }
    }

    /// Ends a run that is not over yet (the task was stopped between steps):
    /// kills the tools' processes, writes the patch and trajectory.
    pub async fn stop(&mut self, reason: impl Into<String>) -> RunOutcome {
        match &self.outcome {
            Some(outcome) => outcome.clone(),
            None => {
                self.finish(RunOutcome::Stopped {
                    reason: reason.into(),
                })
                .await
            }
        }
    }

    pub fn outcome(&self) -> Option<&RunOutcome> {
        self.outcome.as_ref()
    }

    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    pub fn steps_taken(&self) -> u32 {
        self.steps_taken
    }

    pub fn max_steps(&self) -> u32 {
        self.max_steps
    }

    /// Token usage summed over the run (lakeview's calls included).
    pub fn usage(&self) -> Usage {
        self.spend.totals().usage
    }

    /// Estimated cost of the run so far, in USD (0 for unknown models).
    pub fn cost_usd(&self) -> f64 {
        self.spend.totals().cost_usd
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn tools(&self) -> &ToolSet {
        &self.tools
    }

    /// The configured provider (openai, anthropic, …).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The configured model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The run's limits: request values over the configuration's.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The limit the next model call would pass, judged from what the run
    /// has recorded (see [`budget`]).
    fn over_budget(&self) -> Option<BudgetExceeded> {
        if self.budget.is_unlimited() {
            return None;
        }
        let (next_tokens, next_cost_usd) = self.last_usage.map_or((0, 0.0), |last| {
            budget::next_call_floor(&self.provider, &self.model, &last)
        });
        let spent = self.spend.totals();
        budget::check(
            &self.budget,
            &budget::Spent {
                tokens: spent.tokens,
                cost_usd: spent.cost_usd,
                wall_secs: self.created.elapsed().as_secs_f64(),
                next_tokens,
                next_cost_usd,
            },
        )
    }

    /// Starts the pending MCP servers; the run's end if that failed or was
    /// cancelled.
    async fn start_mcp_servers(&mut self, cancel: &CancellationToken) -> Option<RunOutcome> {
        if self.mcp_pending.is_empty() {
            return None;
        }
        let pending = std::mem::take(&mut self.mcp_pending);
        let servers: Vec<(&str, &McpServerConfig)> =
            pending.iter().map(|(n, c)| (n.as_str(), c)).collect();
        let started = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = self.tools.start_mcp_servers(&servers) => Some(r),
        };
        match started {
            Some(Ok(())) => None,
            None => Some(self.finish(stopped()).await),
            Some(Err(e)) => Some(
                self.finish(RunOutcome::Failed {
                    error: format!("{e}; the run was not started"),
                    kind: FailureKind::Internal,
                })
                .await,
            ),
        }
    }

    fn account(&mut self, step: u32, response: &LlmResponse) {
        let usage = response.usage;
        self.last_usage = Some(usage);
        self.events.emit(EngineEvent::LlmResponse {
            step,
            content: response.content.clone(),
            tool_calls: response.tool_calls.clone(),
            usage,
            model: response.model.clone(),
            finish_reason: response.finish_reason.clone(),
        });
        self.spend.record(
            Call {
                step,
                provider: &self.provider,
                model: &self.model,
                usage,
                lakeview: false,
            },
            &*self.events,
        );
    }

    /// Emits the messages added since the last checkpoint with the totals.
    fn checkpoint(&mut self, in_flight: bool) {
        let first = self.checkpointed.min(self.messages.len());
        let spent = self.spend.totals();
        let delta = CheckpointDelta {
            step: self.steps_taken,
            in_flight,
            first_message: first,
            messages: self.messages[first..].to_vec(),
            totals: CheckpointTotals {
                usage: spent.usage,
                cost_usd: spent.cost_usd,
                tokens_spent: spent.tokens,
                last_usage: self.last_usage,
                recorded: self.recorded,
            },
        };
        self.checkpointed = self.messages.len();
        self.events.emit(EngineEvent::Checkpoint(Box::new(delta)));
    }

    /// Takes over a checkpoint's state (see [`Agent::resume`]).
    async fn restore(&mut self, cp: Checkpoint) {
        self.messages = Conversation::new(cp.messages);
        self.steps_taken = cp.step;
        self.spend.restore(spend::Totals {
            usage: cp.totals.usage,
            cost_usd: cp.totals.cost_usd,
            tokens: cp.totals.tokens_spent,
        });
        self.last_usage = cp.totals.last_usage;
        self.recorded = cp.totals.recorded.min(self.messages.len());
        self.checkpointed = self.messages.len();
        let cut_off = match self.messages.last() {
            Some(m) if cp.in_flight && m.role == Role::Assistant => Some(m.clone()),
            _ => None,
        };
        let Some(answer) = cut_off else {
            if cp.step > 0 {
                self.messages.push(Message::user(RESUMED_BETWEEN_STEPS));
            }
            return;
        };
        let step = cp.step;
        let results: Vec<ToolResult> = answer
            .tool_calls
            .iter()
            .map(|call| error_result(call, INTERRUPTED_TOOL_RESULT))
            .collect();
        for result in &results {
            self.events.emit(EngineEvent::ToolResult {
                step,
                result: result.clone(),
            });
            self.messages.push(Message::tool(result.clone()));
        }
        if let Some(rec) = self.trajectory.as_mut() {
            // The interrupted attempt saved neither the step nor its model call.
            let response = LlmResponse {
                content: answer.content.clone(),
                tool_calls: answer.tool_calls.clone(),
                model: self.model.clone(),
                finish_reason: Some("tool_calls".into()),
                usage: cp.totals.last_usage.unwrap_or_default(),
            };
            let answered_at = self.messages.len() - results.len() - 1;
            let input_from = self.recorded.min(answered_at);
            rec.record_llm_interaction(
                &self.messages[input_from..answered_at],
                &response,
                &self.provider,
                self.tools.specs(),
            );
            rec.record_step(&StepRecord {
                step_number: step,
                state: "error",
                llm_messages: &self.messages[answered_at + 1..],
                llm_response: Some(&response),
                tool_calls: &answer.tool_calls,
                tool_results: &results,
                error: Some(
                    "interrupted: the agent runtime was restarted while the step's tools ran",
                ),
            });
            save_trajectory(rec).await;
        }
        self.checkpoint(false);
    }

    fn nudge(&mut self, step: u32, message: &str) {
        self.messages.push(Message::user(message));
        self.events.emit(EngineEvent::Nudge {
            step,
            message: message.to_string(),
        });
    }

    /// Runs every call except `task_done` (left `None`, for the caller to
    /// answer after the others ran), concurrently or in order.
    async fn run_tool_calls<'c>(
        tools: &ToolSet,
        events: &dyn EventSink,
        step: u32,
        calls: &'c [ToolCall],
        parallel: bool,
    ) -> Vec<Option<ToolResult>> {
        let run_one = |call: &'c ToolCall| async move {
            if call.name == TASK_DONE {
                return None;
            }
            events.emit(EngineEvent::ToolCall {
                step,
                call: call.clone(),
            });
            let result = tools.call(call).await;
            events.emit(EngineEvent::ToolResult {
                step,
                result: result.clone(),
            });
            Some(result)
        };
        if parallel {
            join_all(calls.iter().map(run_one)).await
        } else {
            let mut results = Vec::with_capacity(calls.len());
            for call in calls {
                results.push(run_one(call).await);
            }
            results
        }
    }

    /// `task_done`: accepted unless `must_patch` finds no change outside tests.
    async fn answer_task_done(&mut self, step: u32, call: &ToolCall) -> (ToolResult, bool) {
        let span = crate::tools::tool_span(call);
        let answered = self
            .answer_task_done_traced(step, call)
            .instrument(span.clone())
            .await;
        crate::tools::record_tool_result(&span, &answered.0);
        answered
    }

    async fn answer_task_done_traced(&mut self, step: u32, call: &ToolCall) -> (ToolResult, bool) {
        self.events.emit(EngineEvent::ToolCall {
            step,
            call: call.clone(),
        });
        let verdict = match (&self.workspace, self.must_patch) {
            (Some(ws), true) => ws
                .has_non_test_changes()
                .await
                .map_err(|e| format!("Could not compute the patch: {e}")),
            _ => Ok(true),
        };
        let (result, done) = match verdict {
            Ok(true) => (ok_result(call, prompt::TASK_DONE_RESULT), true),
            Ok(false) => {
                self.events.emit(EngineEvent::Nudge {
                    step,
                    message: prompt::EMPTY_PATCH.to_string(),
                });
                (error_result(call, prompt::EMPTY_PATCH), false)
            }
            Err(e) => (error_result(call, &e), false),
        };
        self.events.emit(EngineEvent::ToolResult {
            step,
            result: result.clone(),
        });
        (result, done)
    }

    /// A step whose model call failed under `retry_failed_steps`: undone,
    /// so that the next `step()` is a clean retry of it (the caller sends its
    /// input again), and reported without ending the run.
    async fn roll_back_step(&mut self, step: u32, undo: Undo, e: &llm::LlmError) -> StepOutcome {
        let failure = ProviderFailure {
            provider: e.provider().to_string(),
            status: e.status(),
            message: e.to_string(),
        };
        if let Some(rec) = self.trajectory.as_mut() {
            rec.record_step(&StepRecord {
                step_number: step,
                state: "error",
                error: Some(&format!("LLM call failed: {e}")),
                ..Default::default()
            });
            save_trajectory(rec).await;
        }
        self.messages.truncate(undo.messages);
        self.recorded = undo.recorded;
        self.checkpointed = self.checkpointed.min(undo.messages);
        self.steps_taken = step - 1;
        self.events.emit(EngineEvent::StepFailed {
            step,
            error: failure.message.clone(),
            status: failure.status,
        });
        StepOutcome {
            step_number: step,
            output: String::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            usage: Usage::default(),
            is_last: false,
            outcome: None,
            provider_error: Some(failure),
        }
    }

    /// A step cut short by cancellation or a provider failure.
    async fn end_step_early(
        &mut self,
        step: u32,
        response: Option<&LlmResponse>,
        outcome: RunOutcome,
    ) -> StepOutcome {
        if let Some(rec) = self.trajectory.as_mut() {
            let error = match &outcome {
                RunOutcome::Failed { error, .. } => error.clone(),
                RunOutcome::Stopped { reason } => reason.clone(),
                RunOutcome::Completed { .. } => String::new(),
            };
            rec.record_step(&StepRecord {
                step_number: step,
                state: "error",
                llm_response: response,
                tool_calls: response.map_or(&[], |r| &r.tool_calls),
                error: Some(&error),
                ..Default::default()
            });
        }
        let outcome = self.finish(outcome).await;
        StepOutcome {
            step_number: step,
            output: response.map(|r| r.content.clone()).unwrap_or_default(),
            tool_calls: response.map(|r| r.tool_calls.clone()).unwrap_or_default(),
            tool_results: Vec::new(),
            usage: response.map(|r| r.usage).unwrap_or_default(),
            is_last: true,
            outcome: Some(outcome),
            provider_error: None,
        }
    }

    /// Ends the run: processes first (so nothing writes after the diff), then
    /// the patch, the trajectory and the final event.
    async fn finish(&mut self, outcome: RunOutcome) -> RunOutcome {
        self.tools.shutdown().await;
        let mut outcome = outcome;
        if let Some(path) = self.patch_path.clone() {
            let written = match &self.workspace {
                Some(ws) => ws.write_patch(&path).await,
                // Not a repository: like Trae, an empty patch.
                None => crate::patch::write_file(&path, b"").await.map(|()| 0),
            };
            match written {
                Ok(bytes) => self.events.emit(EngineEvent::PatchWritten {
                    path: path.display().to_string(),
                    bytes,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "patch not written");
                    if outcome.is_success() {
                        outcome = RunOutcome::Failed {
                            error: format!(
                                "The task completed but its patch could not be written: {e}"
                            ),
                            kind: FailureKind::Internal,
                        };
                    }
                }
            }
        }
        if let Some(rec) = self.trajectory.as_mut() {
            let final_result = match &outcome {
                RunOutcome::Completed { result } => result.clone(),
                RunOutcome::Failed { error, .. } => error.clone(),
                RunOutcome::Stopped { reason } => format!("Task stopped: {reason}"),
            };
            rec.finalize(outcome.is_success(), Some(final_result));
            if save_trajectory(rec).await {
                self.events.emit(EngineEvent::TrajectoryWritten {
                    path: rec.path().display().to_string(),
                });
            }
        }
        if let Some(lakeview) = self.lakeview.as_mut() {
            // The last steps' summaries before the end (none once stopped).
            let stopped = matches!(outcome, RunOutcome::Stopped { .. });
            lakeview.finish(stopped).await;
        }
        self.events.emit(match &outcome {
            RunOutcome::Completed { result } => EngineEvent::Completed {
                result: result.clone(),
            },
            RunOutcome::Failed { error, kind } => EngineEvent::Failed {
                error: error.clone(),
                kind: *kind,
            },
            RunOutcome::Stopped { reason } => EngineEvent::Stopped {
                reason: reason.clone(),
            },
        });
        self.outcome = Some(outcome.clone());
        outcome
    }
}

impl StepOutcome {
    fn ended(step_number: u32, outcome: RunOutcome) -> Self {
        StepOutcome {
            step_number,
            output: String::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            usage: Usage::default(),
            is_last: true,
            outcome: Some(outcome),
            provider_error: None,
        }
    }
}

/// `error.type` of a failed LLM call's span.
fn llm_error_type(e: &llm::LlmError) -> &'static str {
    match e {
        llm::LlmError::Http { status, .. } if *status >= 500 => "http_5xx",
        llm::LlmError::Http { status: 429, .. } => "http_429",
        llm::LlmError::Http { .. } => "http_4xx",
        llm::LlmError::Transport { .. } => "transport",
        llm::LlmError::Decode { .. } => "decode",
        llm::LlmError::OutOfTime { .. } => "deadline",
    }
}

/// Where the history stood before a step, to undo it.
struct Undo {
    messages: usize,
    recorded: usize,
}

/// The run's end after a failed model call.
fn provider_failure(e: &dyn std::fmt::Display) -> RunOutcome {
    RunOutcome::Failed {
        error: format!("LLM call failed: {e}"),
        kind: FailureKind::Provider,
    }
}

fn stopped() -> RunOutcome {
    RunOutcome::Stopped {
        reason: "cancelled".into(),
    }
}

fn max_steps_failure() -> RunOutcome {
    RunOutcome::Failed {
        error: MAX_STEPS_EXCEEDED.into(),
        kind: FailureKind::MaxSteps,
    }
}

fn ok_result(call: &ToolCall, text: &str) -> ToolResult {
    ToolResult {
        call_id: call.call_id.clone(),
        name: call.name.clone(),
        success: true,
        result: text.into(),
        error: None,
    }
}

fn error_result(call: &ToolCall, error: &str) -> ToolResult {
    ToolResult {
        call_id: call.call_id.clone(),
        name: call.name.clone(),
        success: false,
        result: String::new(),
        error: Some(error.into()),
    }
}

/// Trajectory writes are best effort during the run: a full disk must not
/// kill the task. Returns whether the write succeeded.
async fn save_trajectory(rec: &TrajectoryRecorder) -> bool {
    match rec.save().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "trajectory not written");
            false
        }
    }
}
