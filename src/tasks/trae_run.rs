//! Trae runs (`POST /api/run`): a request is checked in full before
//! anything is created (400, or 429 without a free run slot), then the task
//! is stored `running` and its run starts in the background.

use std::{path::PathBuf, sync::Arc};

use agentd_engine::{
    agent::{Agent, AgentOptions},
    config::{self, ConfigRequest, ResolvedConfig},
};
use serde_json::{Map, Value};

use super::{
    Caller, CgroupLimits, OnInterrupt, RunRequest, TaskManager, admission::RunSlot,
    lifecycle::RunPlan, resume::Resumption,
};
use crate::{
    clock,
    error::{Error, Result},
    store::{Origin, RunKind, Task, TaskStatus},
};

/// A validated Trae run: its configuration and paths.
struct PreparedRun {
    cfg: ResolvedConfig,
    llm: Arc<dyn agentd_engine::llm::LlmClient>,
    working_dir: PathBuf,
    patch_path: Option<PathBuf>,
    trajectory_file: Option<PathBuf>,
    limits: CgroupLimits,
}

impl TaskManager {
    /// Validates a Trae run (400 for a missing task, a relative working_dir,
    /// bad configuration or a missing API key; 429 when all run slots are
    /// busy, in a cluster on every node), stores the task and starts it in
    /// the background (in a cluster, on another node when this one is full).
    pub async fn run_trae(&self, caller: &Caller, req: RunRequest) -> Result<String> {
        let prepared = self.prepare_trae(&req).await?;
        let task_id = uuid::Uuid::now_v7().to_string();
        let task = Task {
            owner: caller.new_owner(),
            ..running_task(&task_id, &req, &prepared)
        };
        self.audit(caller, "create", &task_id);
        let slot = match self.runner.admission.reserve() {
            Ok(slot) => slot,
            Err(full) => return self.queue_trae(task, &req, full).await,
        };
        self.launch_trae(task, &req, prepared, slot, true).await?;
        Ok(task_id)
    }

    /// This node is full: the run waits for a free slot on another node
    /// (which claims it), or is refused when the cluster has none.
    async fn queue_trae(&self, task: Task, req: &RunRequest, full: Error) -> Result<String> {
        let Some(cluster) = &self.cluster else {
            return Err(full);
        };
        if cluster.queue(&task, spec_of(req)).await? {
            return Ok(task.task_id);
        }
        Err(Error::InsufficientResources {
            message: "every run slot of every node is busy (the limit); retry when a task finishes"
                .into(),
            retry_after: Some(std::time::Duration::from_secs(10)),
        })
    }

    /// Starts a queued run this node claimed (its task row is stored).
    pub(super) async fn start_claimed_trae(
        &self,
        task_id: &str,
        spec: Option<Value>,
        slot: RunSlot,
    ) -> Result<()> {
        let task = self.task_row(task_id).await?;
        if self.store.last_event_seq(task_id).await? > 0 {
            // An interrupted run queued again (see `resume`): it goes on.
            let plan = self
                .resumption(&task, super::recovery::NODE_LOST)
                .await
                .map_err(Error::invalid)?;
            return self.resume_trae(task, plan, Some(slot)).await;
        }
        let req = request_of(spec.unwrap_or_default());
        let prepared = self.prepare_trae(&req).await?;
        self.launch_trae(task, &req, prepared, slot, false).await
    }

    /// Everything that can be refused, checked before anything is created.
    async fn prepare_trae(&self, req: &RunRequest) -> Result<PreparedRun> {
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
        config::validate_agent_type(&req.agent_type)?;
        let limits = self.task_limits(&req.limits)?;
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
        Ok(PreparedRun {
            cfg,
            llm,
            working_dir,
            patch_path,
            trajectory_file,
            limits,
        })
    }

    /// The agent options of a Trae run.
    fn trae_options(&self, task_id: &str, req: &RunRequest, p: &PreparedRun) -> AgentOptions {
        AgentOptions {
            must_patch: req.must_patch,
            patch_path: p.patch_path.clone(),
            trajectory_file: p.trajectory_file.clone(),
            max_steps: None,
            tools: self.tool_options(task_id, &p.limits),
            // A background run has nobody to retry a step: a provider failure ends it.
            retry_failed_steps: false,
            // The request's limits are in `cfg.budget` already.
            budget: Default::default(),
        }
    }

    /// Continues an interrupted run (see `resume`): its request is checked
    /// and its configuration resolved again (the API key is never stored),
    /// `interrupted` and `resumed` are logged, and the agent goes on from
    /// the checkpoint in a fresh tool environment.
    pub(super) async fn resume_trae(
        &self,
        task: Task,
        plan: Resumption,
        slot: Option<RunSlot>,
    ) -> Result<()> {
        let req = stored_request(&task).ok_or_else(|| Error::invalid("no stored request"))?;
        let prepared = self.prepare_trae(&req).await?;
        let task_id = task.task_id.clone();
        self.record_resumption(&task_id, &plan).await?;
        let options = self.trae_options(&task_id, &req, &prepared);
        let sink = self.runner.sink(&task_id);
        let mut agent = Agent::resume(
            &prepared.cfg,
            prepared.llm,
            req.task.clone(),
            &prepared.working_dir,
            options,
            Arc::new(sink.clone()),
            plan.checkpoint,
            plan.started_ago,
        )
        .await
        .map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(lakeview) = self.lakeview_client(&task_id, &prepared.cfg, &sink) {
            agent.set_lakeview(lakeview);
        }
        let plan = RunPlan {
            agent,
            sink,
            started_ago: plan.started_ago,
        };
        self.runner.spawn_run(task, plan, slot);
        Ok(())
    }

    /// Builds the agent and starts the run in `slot`; with `insert`, the
    /// task row is stored first (in a cluster, with its run claimed here).
    async fn launch_trae(
        &self,
        task: Task,
        req: &RunRequest,
        p: PreparedRun,
        slot: RunSlot,
        insert: bool,
    ) -> Result<()> {
        let task_id = task.task_id.clone();
        let options = self.trae_options(&task_id, req, &p);
        let sink = self.runner.sink(&task_id);
        let mut agent = Agent::new(
            &p.cfg,
            p.llm,
            req.task.clone(),
            &p.working_dir,
            options,
            Arc::new(sink.clone()),
        )
        .await
        .map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(lakeview) = self.lakeview_client(&task_id, &p.cfg, &sink) {
            agent.set_lakeview(lakeview);
        }
        if insert {
            match &self.cluster {
                Some(cluster) => {
                    let fence = cluster
                        .claim_new(&task_id, RunKind::Trae, Some(&task))
                        .await?;
                    self.events.hold(&task_id, fence);
                }
                None => self.store.insert_task(&task).await?,
            }
        }
        self.runner
            .record_start(&task_id, &req.task, &p.cfg, &p.working_dir)
            .await?;
        let plan = RunPlan {
            agent,
            sink,
            started_ago: std::time::Duration::ZERO,
        };
        self.runner.spawn_run(task, plan, Some(slot));
        Ok(())
    }
}

/// The stored task of a run that starts now.
fn running_task(task_id: &str, req: &RunRequest, p: &PreparedRun) -> Task {
    let now = clock::now_ms();
    let run_spec = serde_json::json!({
        "working_dir": p.working_dir, "provider": p.cfg.provider, "model": p.cfg.model,
        "max_steps": p.cfg.max_steps, "must_patch": req.must_patch,
        "patch_path": req.patch_path, "trajectory_file": req.trajectory_file,
        // What resuming the run after a crash starts from again (no API key:
        // the configuration is resolved again).
        "request": spec_of(req),
    });
    Task {
        status: TaskStatus::Running,
        run_spec: Some(run_spec),
        started_at: Some(now),
        ..Task::new(
            task_id.to_string(),
            req.task.clone(),
            Map::new(),
            Origin::Trae,
            now,
        )
    }
}

/// The request of a queued run, as the node that claims it reads it back.
fn spec_of(req: &RunRequest) -> Value {
    serde_json::json!({
        "task": req.task, "working_dir": req.working_dir, "provider": req.provider,
        "model": req.model, "max_steps": req.max_steps, "must_patch": req.must_patch,
        "agent_type": req.agent_type, "config_file": req.config_file,
        "trajectory_file": req.trajectory_file, "patch_path": req.patch_path,
        "budget": req.budget,
        "limits": {"memory_max": req.limits.memory_max, "pids_max": req.limits.pids_max,
                   "cpu_max": req.limits.cpu_max},
        "on_interrupt": req.on_interrupt.map(OnInterrupt::as_str),
    })
}

/// The request a Trae task was started with, when it was stored (by an
/// agentd with durable runs).
pub(super) fn stored_request(task: &Task) -> Option<RunRequest> {
    let spec = task.run_spec.as_ref()?.get("request")?;
    Some(request_of(spec.clone()))
}

fn request_of(spec: Value) -> RunRequest {
    let text = |k: &str| spec.get(k).and_then(Value::as_str).map(str::to_string);
    RunRequest {
        task: text("task").unwrap_or_default(),
        working_dir: text("working_dir").unwrap_or_default(),
        provider: text("provider"),
        model: text("model"),
        max_steps: spec
            .get("max_steps")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        must_patch: spec
            .get("must_patch")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        agent_type: text("agent_type").unwrap_or_default(),
        config_file: text("config_file"),
        trajectory_file: text("trajectory_file"),
        patch_path: text("patch_path"),
        budget: spec
            .get("budget")
            .and_then(|b| serde_json::from_value(b.clone()).ok())
            .unwrap_or_default(),
        limits: CgroupLimits {
            memory_max: spec.pointer("/limits/memory_max").and_then(Value::as_u64),
            pids_max: spec.pointer("/limits/pids_max").and_then(Value::as_u64),
            cpu_max: spec.pointer("/limits/cpu_max").and_then(Value::as_f64),
        },
        on_interrupt: text("on_interrupt").and_then(|p| OnInterrupt::parse(&p).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_request_reads_back_as_it_was() {
        let req = RunRequest {
            task: "t".into(),
            working_dir: "/w".into(),
            provider: Some("openai".into()),
            model: None,
            max_steps: Some(7),
            must_patch: true,
            agent_type: "trae_agent".into(),
            config_file: Some("c.yaml".into()),
            trajectory_file: None,
            patch_path: Some("p.diff".into()),
            budget: crate::tasks::Budget {
                max_tokens_total: Some(1000),
                max_cost_usd: None,
                max_wall_secs: Some(60.0),
            },
            limits: CgroupLimits {
                memory_max: Some(64 << 20),
                pids_max: None,
                cpu_max: Some(0.5),
            },
            on_interrupt: Some(OnInterrupt::Fail),
        };
        let back = request_of(spec_of(&req));
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
    }
}
