//! Running tasks: Trae background runs, Agent Protocol steps, stop,
//! restart and shutdown, and the configuration each run resolves.

use std::{path::PathBuf, sync::Arc};

use agentd_engine::{
    agent::{Agent, AgentOptions, RunOutcome},
    config::{self, ConfigError, ConfigRequest, ResolvedConfig},
    llm,
};
use serde_json::{Map, Value};

use super::{
    RunRequest, StepView, TaskEvent, TaskManager,
    runner::{self, Session, StopReason},
};
use crate::{
    clock,
    error::{Error, Result},
    store::{Artifact, Origin, Step, Task, TaskStatus},
};

/// The environment variable naming the default Trae config file.
const CONFIG_FILE_ENV: &str = "TRAE_CONFIG_FILE";

impl TaskManager {
    /// Validates a Trae run (400 for a missing task, a relative working_dir,
    /// bad configuration or a missing API key; 429 when all run slots are
    /// busy), stores the task and starts it in the background.
    pub async fn run_trae(&self, req: RunRequest) -> Result<String> {
        if req.task.trim().is_empty() {
            return Err(Error::invalid("task is required"));
        }
        let working_dir = PathBuf::from(&req.working_dir);
        if req.working_dir.is_empty() || !working_dir.is_absolute() {
            let hint = if req.working_dir.starts_with('~') {
                " (`~` is not expanded: give the full path)"
            } else {
                ""
            };
            return Err(Error::invalid(format!(
                "working_dir must be an absolute path, got {:?}{hint}",
                req.working_dir
            )));
        }
        // Everything that can be refused is checked before anything is created.
        config::validate_agent_type(&req.agent_type).map_err(|e| Error::invalid(e.to_string()))?;
        let cfg = self.run_config(&ConfigRequest {
            config_file: req.config_file.clone(),
            provider: req.provider.clone(),
            model: req.model.clone(),
            max_steps: req.max_steps,
        })?;
        let llm = self.llm_client(&cfg)?;
        // Relative output paths are taken relative to the working directory;
        // with allowed roots, outputs must stay inside them too.
        let in_workdir = |p: &Option<String>| {
            p.as_ref()
                .filter(|p| !p.is_empty())
                .map(|p| working_dir.join(p))
        };
        let (patch_path, trajectory_file) = (
            in_workdir(&req.patch_path),
            in_workdir(&req.trajectory_file),
        );
        for path in [&Some(working_dir.clone()), &patch_path, &trajectory_file]
            .into_iter()
            .flatten()
        {
            self.allowed_roots.check(path)?;
        }
        tokio::fs::create_dir_all(&working_dir).await.map_err(|e| {
            Error::invalid(format!(
                "cannot create working_dir {}: {e}",
                working_dir.display()
            ))
        })?;
        // Again once it exists: a symlink may have appeared meanwhile.
        self.allowed_roots.check(&working_dir)?;
        let task_id = uuid::Uuid::new_v4().to_string();
        let options = AgentOptions {
            must_patch: req.must_patch,
            patch_path,
            trajectory_file,
            max_steps: None,
            tools: self.tool_options(&task_id),
            // A background run has nobody to retry a step: a provider failure ends it.
            retry_failed_steps: false,
        };
        let permit = self.runner.reserve()?;
        let sink = self.runner.sink(&task_id);
        let agent = Agent::new(
            &cfg,
            llm,
            req.task.clone(),
            &working_dir,
            options,
            Arc::new(sink.clone()),
        )
        .await
        .map_err(|e| Error::invalid(e.to_string()))?;
        let now = clock::now_ms();
        let run_spec = serde_json::json!({
            "working_dir": working_dir, "provider": cfg.provider, "model": cfg.model,
            "max_steps": cfg.max_steps, "must_patch": req.must_patch,
            "patch_path": req.patch_path, "trajectory_file": req.trajectory_file,
        });
        let task = Task {
            status: TaskStatus::Running,
            run_spec: Some(run_spec),
            started_at: Some(now),
            ..Task::new(
                task_id.clone(),
                req.task.clone(),
                Map::new(),
                Origin::Trae,
                now,
            )
        };
        self.store.insert_task(&task).await?;
        self.append_start(&task_id, &req.task, &cfg, &working_dir)
            .await?;
        self.runner
            .spawn_run(task, runner::RunPlan { agent, sink }, permit);
        Ok(task_id)
    }

    async fn append_start(
        &self,
        task_id: &str,
        task: &str,
        cfg: &ResolvedConfig,
        dir: &std::path::Path,
    ) -> Result<()> {
        let start = TaskEvent::Start {
            task: task.to_string(),
            max_steps: cfg.max_steps,
            provider: cfg.provider.clone(),
            model: cfg.model.clone(),
            working_dir: dir.display().to_string(),
        };
        self.events.append(task_id, start).await.map(|_| ())
    }

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
        task_id: &str,
        input: String,
        additional_input: Map<String, Value>,
    ) -> Result<StepView> {
        use tracing::Instrument as _;
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
        let task = self.task(task_id).await?;
        if task.status.is_finished() {
            return Err(Error::invalid(format!(
                "task {task_id} is {}; it takes no more steps",
                task.status.as_str()
            )));
        }
        let ws = self.workspaces.dir(task_id);
        tokio::fs::create_dir_all(&ws).await?;
        let before = {
            let ws = ws.clone();
            tokio::task::spawn_blocking(move || runner::snapshot(&ws))
                .await
                .map_err(anyhow::Error::new)?
        };
        let make_session = || async {
            let overrides = |k: &str| {
                task.additional_input.get(k).and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            let cfg = self.run_config(&ConfigRequest {
                config_file: overrides("config_file"),
                provider: overrides("provider"),
                model: overrides("model"),
                max_steps: overrides("max_steps").and_then(|s| s.parse().ok()),
            })?;
            let llm = self.llm_client(&cfg)?;
            let sink = self.runner.sink(task_id);
            let agent = Agent::new(
                &cfg,
                llm,
                task.input.clone(),
                &ws,
                AgentOptions {
                    tools: self.tool_options(task_id),
                    // A provider outage fails the step (502), not the task.
                    retry_failed_steps: true,
                    ..AgentOptions::default()
                },
                Arc::new(sink.clone()),
            )
            .await
            .map_err(|e| Error::invalid(e.to_string()))?;
            let mut running = task.clone();
            let now = clock::now_ms();
            running.status = TaskStatus::Running;
            running.started_at = Some(now);
            running.modified_at = now;
            self.store.update_task(&running).await?;
            self.append_start(task_id, &task.input, &cfg, &ws).await?;
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
        let step_id = uuid::Uuid::new_v4().to_string();
        let now = clock::now_ms();
        let after = {
            let ws = ws.clone();
            tokio::task::spawn_blocking(move || runner::snapshot(&ws))
                .await
                .map_err(anyhow::Error::new)?
        };
        // A step that went on (no outcome yet) completed; otherwise the
        // task's one final-status rule.
        let state = outcome.outcome.as_ref().map_or(TaskStatus::Completed, |o| {
            runner::final_status(o, stop.as_ref())
        });
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
        for (path, meta) in after {
            if before.get(&path) == Some(&meta) {
                continue;
            }
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
                file_size: meta.0 as i64,
                agent_created: true,
                created_at: now,
            };
            artifacts.push(
                self.store
                    .upsert_artifact(&artifact, Some(&step_id))
                    .await?,
            );
        }
        Ok(StepView { step, artifacts })
    }

    /// Stops the task's run, ending every process it started. A task with
    /// no run in progress is left as it is; the message says which.
    pub async fn stop_task(&self, task_id: &str) -> Result<String> {
        let task = self.task(task_id).await?;
        if self.runner.stop(task_id, StopReason::Requested).await? {
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
    pub async fn restart(&self) -> usize {
        self.runner.stop_all(StopReason::Restart).await
    }

    /// Ends every run (their processes too) before the process exits.
    pub async fn shutdown(&self) -> usize {
        self.runner.stop_all(StopReason::Shutdown).await
    }

    /// The environment configuration is resolved against: the process's,
    /// with `--trae-config` (always set, absolute) standing in for TRAE_CONFIG_FILE.
    fn config_env(&self, key: &str) -> Option<String> {
        if key == CONFIG_FILE_ENV {
            return Some(self.settings.trae_config_file.display().to_string());
        }
        config::process_env(key)
    }

    /// The request with its `config_file` absolute: a relative name is
    /// looked for in the directory agentd was started in (never wherever the
    /// process's working directory happens to be later).
    fn absolute_config_file(&self, req: &ConfigRequest) -> ConfigRequest {
        let config_file = req.config_file.as_ref().map(|f| {
            let path = std::path::Path::new(f);
            match path.is_absolute() {
                true => f.clone(),
                false => self.settings.config_dir.join(path).display().to_string(),
            }
        });
        ConfigRequest {
            config_file,
            ..req.clone()
        }
    }

    /// The model client of a run, with the server's default request timeout.
    fn llm_client(&self, cfg: &ResolvedConfig) -> Result<Arc<dyn llm::LlmClient>> {
        let options = llm::ClientOptions {
            request_timeout: self.settings.runner.llm_request_timeout,
            ..llm::ClientOptions::default()
        };
        llm::client_with_options(cfg, &options).map_err(|e| Error::invalid(e.to_string()))
    }

    /// Resolves the configuration of a run (a named file must exist).
    fn run_config(&self, req: &ConfigRequest) -> Result<ResolvedConfig> {
        config::resolve(&self.absolute_config_file(req), &|k| self.config_env(k))
            .map_err(|e| Error::invalid(e.to_string()))
    }

    /// The Trae configuration a run would use, for `/api/config`. A named
    /// file that does not exist is reported (`config_exists: false`, with
    /// defaults) rather than refused: this is a report, not a run. A file
    /// the request named relatively is reported by that name, as asked.
    pub fn resolve_config(&self, req: &ConfigRequest) -> Result<ResolvedConfig> {
        let absolute = self.absolute_config_file(req);
        let resolved = match config::resolve(&absolute, &|k| self.config_env(k)) {
            Err(ConfigError::NotFound { path }) => {
                // Resolve as if the missing file were the default one.
                let as_default = |key: &str| {
                    if key == CONFIG_FILE_ENV {
                        Some(path.display().to_string())
                    } else {
                        config::process_env(key)
                    }
                };
                let req = ConfigRequest {
                    config_file: None,
                    ..req.clone()
                };
                config::resolve(&req, &as_default)
            }
            other => other,
        };
        let mut cfg = resolved.map_err(|e| Error::invalid(e.to_string()))?;
        let named_relatively = req
            .config_file
            .as_ref()
            .is_some_and(|f| std::path::Path::new(f).is_relative());
        if named_relatively && let Ok(rel) = cfg.config_file.strip_prefix(&self.settings.config_dir)
        {
            cfg.config_file = rel.to_path_buf();
        }
        Ok(cfg)
    }
}
