//! Trae runs (`POST /api/run`): a request is checked in full before
//! anything is created (400, or 429 without a free run slot), then the task
//! is stored `running` and its run starts in the background.

use std::{path::PathBuf, sync::Arc};

use agentd_engine::{
    agent::{Agent, AgentOptions},
    config::{self, ConfigRequest},
};
use serde_json::Map;

use super::{RunRequest, TaskManager, lifecycle::RunPlan};
use crate::{
    clock,
    error::{Error, Result},
    store::{Origin, Task, TaskStatus},
};

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
        config::validate_agent_type(&req.agent_type)?;
        let cfg = self.run_config(
            &ConfigRequest {
                config_file: req.config_file.clone(),
                provider: req.provider.clone(),
                model: req.model.clone(),
                max_steps: req.max_steps,
            },
            req.budget,
        )?;
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
            // The request's limits are in `cfg.budget` already.
            budget: Default::default(),
        };
        let slot = self.runner.admission.reserve()?;
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
        self.runner
            .record_start(&task_id, &req.task, &cfg, &working_dir)
            .await?;
        self.runner.spawn_run(task, RunPlan { agent, sink }, slot);
        Ok(task_id)
    }
}
