//! Agent Protocol steps (`POST /ap/v1/agent/tasks/{id}/steps`): one step of
//! the task's session (`session`), recorded as a step with the files it
//! created or changed (`snapshot`) as its artifacts.

use std::sync::Arc;

use agentd_engine::{
    agent::{Agent, AgentOptions, RunOutcome},
    config::ConfigRequest,
};
use serde_json::{Map, Value};

use super::{
    Caller, StepView, TaskManager, lifecycle::final_status, session::Session, snapshot::Snapshot,
};
use crate::{
    clock,
    error::{Error, Result},
    store::{Artifact, RunKind, Step, TaskStatus},
};

impl TaskManager {
    /// Executes one step of an Agent Protocol task. The first step starts
    /// the task's agent in its workspace (provider, model, max_steps and
    /// config_file may be given in the task's additional_input); later steps
    /// continue it, with the step's input as a further user message. Files
    /// the step created or changed become artifacts of the step.
    ///
    /// The step runs to its end even when the caller goes away (a client
    /// that hung up, a proxy timeout): a dropped request must not leave a
    /// half-taken step behind, with no record and the session out of step.
    pub async fn execute_step(
        self: &Arc<Self>,
        caller: &Caller,
        task_id: &str,
        input: String,
        additional_input: Map<String, Value>,
    ) -> Result<StepView> {
        use tracing::Instrument as _;
        self.task(caller, task_id).await?;
        let (tasks, task_id) = (self.clone(), task_id.to_string());
        let step = async move { tasks.run_step(&task_id, input, additional_input).await };
        tokio::spawn(step.in_current_span())
            .await
            .map_err(|e| Error::Internal(anyhow::Error::new(e).context("the step's task")))?
    }

    async fn run_step(
        &self,
        task_id: &str,
        input: String,
        additional_input: Map<String, Value>,
    ) -> Result<StepView> {
        let task = self.task_row(task_id).await?;
        if task.status.is_finished() {
            return Err(Error::invalid(format!(
                "task {task_id} is {}; it takes no more steps",
                task.status.as_str()
            )));
        }
        let ws = self.workspaces.dir(task_id);
        tokio::fs::create_dir_all(&ws).await?;
        let before = Snapshot::take(&ws).await?;
        // A task that was running before agentd restarted (or, in a cluster,
        // whose session this node took over from a dead node: it holds the
        // run, and steps are sent to its holder): its session comes back
        // from the checkpoint (see `resume`), with no new `start`.
        let resumed = task.status == TaskStatus::Running
            && (self.cluster.is_none() || self.events.fence(task_id).is_some());
        let make_session = || async {
            super::resume::ap_on_interrupt(&task.additional_input)?;
            let overrides = |k: &str| {
                task.additional_input.get(k).and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            let cfg = self.run_config(
                &ConfigRequest {
                    config_file: overrides("config_file"),
                    provider: overrides("provider"),
                    model: overrides("model"),
                    max_steps: overrides("max_steps").and_then(|s| s.parse().ok()),
                },
                requested_budget(&task.additional_input)?,
            )?;
            let limits = self.task_limits(&requested_limits(&task.additional_input)?)?;
            let llm = self.llm_client(&cfg)?;
            let sink = self.runner.sink(task_id);
            let options = AgentOptions {
                tools: self.tool_options(task_id, &limits),
                // A provider outage fails the step (502), not the task.
                retry_failed_steps: true,
                ..AgentOptions::default()
            };
            let events = Arc::new(sink.clone());
            let mut agent = if resumed {
                let checkpoint = self.checkpoint(task_id).await.map_err(|e| {
                    Error::invalid(format!("task {task_id} cannot be resumed: {e}"))
                })?;
                let started = task.started_at.unwrap_or(task.created_at);
                let ago = u64::try_from(clock::now_ms() - started).unwrap_or(0);
                let ago = std::time::Duration::from_millis(ago);
                let input = task.input.clone();
                Agent::resume(&cfg, llm, input, &ws, options, events, checkpoint, ago).await
            } else {
                Agent::new(&cfg, llm, task.input.clone(), &ws, options, events).await
            }
            .map_err(|e| Error::invalid(e.to_string()))?;
            if let Some(lakeview) = self.lakeview_client(task_id, &cfg, &sink) {
                agent.set_lakeview(lakeview);
            }
            if resumed {
                return Ok(Session::new(agent, sink, cfg.max_steps));
            }
            let mut running = task.clone();
            let now = clock::now_ms();
            running.status = TaskStatus::Running;
            running.started_at = Some(now);
            running.modified_at = now;
            if let Some(cluster) = &self.cluster {
                // The session's run row: where its steps must run, held here.
                let fence = match cluster.claim_new(task_id, RunKind::Session, None).await {
                    Ok(fence) => fence,
                    // Another node started the task's session meanwhile (one
                    // unfinished run per task).
                    Err(_) if self.store.active_run(task_id).await?.is_some() => {
                        return Err(Error::TaskAlreadyRunning(task_id.to_string()));
                    }
                    Err(e) => return Err(e),
                };
                self.events.hold(task_id, fence);
            }
            let started = async {
                self.store.update_task(&running).await?;
                self.runner
                    .record_start(task_id, &task.input, &cfg, &ws)
                    .await
            };
            if let Err(e) = started.await {
                // No session after all: its run row must not hold the task.
                if let Some(fence) = self.events.fence(task_id) {
                    let _ = self.store.append_fenced(&[], None, &fence, true).await;
                    self.events.release(task_id);
                }
                return Err(e);
            }
            Ok(Session::new(agent, sink, cfg.max_steps))
        };
        let extra = (!input.trim().is_empty()).then(|| input.clone());
        let (outcome, max_steps, stop) = self.runner.step(task_id, extra, make_session).await?;
        if let Some(failure) = outcome.provider_error {
            // No step is recorded: the same step may be sent again.
            tracing::warn!(%task_id, provider = %failure.provider, status = ?failure.status,
                error = %failure.message, "step failed: the model call gave up; the task takes the next step");
            return Err(Error::Provider {
                provider: failure.provider,
                status: failure.status,
                message: failure.message,
            });
        }

        let (_, steps_so_far) = self.store.list_steps(task_id, 0, 0).await?;
        let step_id = uuid::Uuid::now_v7().to_string();
        let now = clock::now_ms();
        let after = Snapshot::take(&ws).await?;
        // A step that went on (no outcome yet) completed; otherwise the
        // task's one final-status rule.
        let state = outcome
            .outcome
            .as_ref()
            .map_or(TaskStatus::Completed, |o| final_status(o, stop.as_ref()));
        let tools: Vec<&str> = outcome.tool_calls.iter().map(|c| c.name.as_str()).collect();
        let output = match (&outcome.outcome, &stop) {
            (Some(RunOutcome::Failed { error, .. }), _) if outcome.output.is_empty() => {
                error.clone()
            }
            (Some(RunOutcome::Stopped { .. }), Some(reason)) if outcome.output.is_empty() => {
                reason.describe()
            }
            _ if outcome.output.is_empty() && !tools.is_empty() => {
                format!("Called {}", tools.join(", "))
            }
            _ => outcome.output.clone(),
        };
        let mut additional_output = Map::new();
        additional_output.insert("state".into(), Value::String(state.as_str().into()));
        additional_output.insert("step_number".into(), Value::from(outcome.step_number));
        additional_output.insert("max_steps".into(), Value::from(max_steps));
        additional_output.insert(
            "tool_calls".into(),
            serde_json::to_value(&outcome.tool_calls).unwrap_or_default(),
        );
        additional_output.insert(
            "usage".into(),
            serde_json::to_value(outcome.usage).unwrap_or_default(),
        );
        let step = Step {
            step_id: step_id.clone(),
            task_id: task_id.to_string(),
            number: steps_so_far + 1,
            name: if tools.is_empty() {
                format!("step {}", outcome.step_number)
            } else {
                tools.join(", ")
            },
            status: "completed".into(),
            state: state.as_str().into(),
            input,
            additional_input,
            output,
            additional_output,
            is_last: outcome.is_last,
            created_at: now,
        };
        self.store.save_step(&step).await?;

        let mut artifacts = Vec::new();
        for (path, size) in after.changed_since(&before) {
            let location = path.to_string_lossy().replace('\\', "/");
            let (relative_path, file_name) = match location.rsplit_once('/') {
                Some((dir, name)) => (dir.to_string(), name.to_string()),
                None => (String::new(), location.clone()),
            };
            let artifact = Artifact {
                artifact_id: uuid::Uuid::new_v4().to_string(),
                task_id: task_id.to_string(),
                step_id: Some(step_id.clone()),
                file_name,
                relative_path,
                location,
                file_size: size as i64,
                agent_created: true,
                created_at: now,
            };
            artifacts.push(
                self.store
                    .upsert_artifact(&artifact, Some(&step_id))
                    .await?
                    .into(),
            );
        }
        Ok(StepView {
            step: step.into(),
            artifacts,
        })
    }
}

/// The control-group limits an Agent Protocol task asks for in its
/// `additional_input`: `task_memory_max` (bytes, or a size such as "512M"),
/// `task_pids_max` (a whole number), `task_cpu_max` (CPUs, e.g. 0.5).
fn requested_limits(input: &Map<String, Value>) -> Result<crate::tasks::CgroupLimits> {
    let bad =
        |key: &str, what: &str| Error::invalid(format!("additional_input.{key} must be {what}"));
    let memory_max = match input.get("task_memory_max") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| bad("task_memory_max", "a size"))?),
        Some(Value::String(s)) => crate::tasks::parse_bytes(s)
            .map_err(|e| Error::invalid(format!("additional_input.task_memory_max: {e}")))?,
        Some(_) => return Err(bad("task_memory_max", "a size (bytes, or e.g. \"512M\")")),
    };
    let pids_max = match number_in(input, "task_pids_max")? {
        Some(n) if n.fract() != 0.0 || n < 0.0 => {
            return Err(bad("task_pids_max", "a whole number"));
        }
        n => n.map(|n| n as u64),
    };
    Ok(crate::tasks::CgroupLimits {
        memory_max,
        pids_max,
        cpu_max: number_in(input, "task_cpu_max")?,
    })
}

/// `additional_input.<key>` as a number (a JSON number or a numeric string;
/// absent, null or an empty string: none).
fn number_in(input: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    let bad = || Error::invalid(format!("additional_input.{key} must be a number"));
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// The budget an Agent Protocol task asks for in its `additional_input`
/// (`max_tokens_total`, `max_cost_usd`, `max_wall_secs`: numbers, or numeric
/// strings); anything else there is refused.
fn requested_budget(input: &Map<String, Value>) -> Result<agentd_engine::agent::Budget> {
    let tokens = match number_in(input, "max_tokens_total")? {
        Some(t) if t.fract() != 0.0 || t < 0.0 => {
            return Err(Error::invalid(
                "additional_input.max_tokens_total must be a whole number",
            ));
        }
        t => t.map(|t| t as u64),
    };
    Ok(agentd_engine::agent::Budget {
        max_tokens_total: tokens,
        max_cost_usd: number_in(input, "max_cost_usd")?,
        max_wall_secs: number_in(input, "max_wall_secs")?,
    })
}
