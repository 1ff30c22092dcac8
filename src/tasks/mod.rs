//! The task layer: one core behind both API dialects. By concern:
//!
//! - this file: creating, listing and deleting tasks, steps, runtime status;
//! - `trae_run`, `agent_step`: a Trae run and an Agent Protocol step, from
//!   request to records; `run_config`: the configuration a run resolves;
//! - `admission`: run slots, the 429 when all are busy, queued steps;
//! - `lifecycle`: a run from start to its end, and the single place that
//!   records that end and the final status; `session`: Agent Protocol tasks
//!   run one step per request;
//! - `stop`: the stop protocol, from a request to the run's process groups;
//! - `forward`: engine events into the event log (and metrics);
//!   `events`: the durable per-task event log (append, replay, follow);
//!   `task_event`: the events' types and JSON;
//! - `snapshot`: workspace snapshots (the files a step changed);
//! - `artifacts`, `workspace`: task files (uploads, downloads, path checks);
//! - `recovery`, `processes`, `containment`: what a crash left behind, the
//!   tasks' process groups, allowed roots and the bash sandbox.

mod admission;
mod agent_step;
mod artifacts;
mod budget_view;
mod caller;
mod cgroups;
mod cluster;
mod containment;
mod events;
mod forward;
mod lifecycle;
mod processes;
mod recovery;
mod resume;
mod run_config;
mod session;
mod snapshot;
mod stop;
pub mod task_event;
#[cfg(test)]
mod testkit;
mod trae_run;
mod views;
mod workspace;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde_json::{Map, Value};

use crate::{
    clock,
    error::{Error, Resource, Result},
    metrics::Metrics,
    store::{self, Store, Totals},
};
pub use agentd_engine::agent::Budget;
use agentd_engine::tools::{BashSandbox, ToolSetOptions};
pub use budget_view::budget_spent;
pub use caller::Caller;
use cgroups::Cgroups;
pub use cgroups::{CgroupLimits, CgroupMode, CgroupStatus, parse_bytes};
pub use cluster::{ClusterSettings, StepRoute, node_id};
use containment::AllowedRoots;
pub use containment::Containment;
pub use containment::SandboxStatus;
use events::EventLog;
use lifecycle::Runner;
pub use lifecycle::RunnerSettings;
use processes::ProcessRecords;
pub use resume::OnInterrupt;
pub use run_config::{ConfigQuery, ConfigReport, ToolInfo};
pub use stop::{Shutdown, StopReason};
pub use task_event::{EventKind, TaskEvent};
pub use views::{Artifact, Event, Origin, Step, Task, TaskQuery, TaskStatus};
pub use workspace::{MAX_UPLOAD_BYTES, Upload, Workspaces, sanitize_relative_path};

/// A task together with its artifacts, as both dialects show it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task: Task,
    pub artifacts: Vec<Artifact>,
}

/// Settings the task layer needs from the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct TaskSettings {
    /// `--trae-config` / TRAE_CONFIG_FILE (absolute; default
    /// `trae_config.yaml` in the start directory): the default Trae config file.
    pub trae_config_file: PathBuf,
    /// Where a request's relative `config_file` is looked for: the directory
    /// agentd was started in (absolute).
    pub config_dir: PathBuf,
    pub runner: RunnerSettings,
    /// Allowed roots of `working_dir` and the bash sandbox.
    pub containment: Containment,
    /// One node of several sharing the store (PostgreSQL); None: the only one.
    pub cluster: Option<ClusterSettings>,
}

/// A Trae `POST /api/run` request, in domain terms.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub task: String,
    pub working_dir: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_steps: Option<u32>,
    pub must_patch: bool,
    pub agent_type: String,
    pub config_file: Option<String>,
    pub trajectory_file: Option<String>,
    pub patch_path: Option<String>,
    /// Limits over the config's and the server's.
    pub budget: agentd_engine::agent::Budget,
    /// The task's control-group limits, each at most the server's
    /// (`--task-memory-max`, ...); unset: the server's.
    pub limits: CgroupLimits,
    /// What becomes of the run if agentd stops while it runs (None: the
    /// server's `--on-interrupt`).
    pub on_interrupt: Option<OnInterrupt>,
}

/// What one executed Agent Protocol step returns.
#[derive(Debug, Clone)]
pub struct StepView {
    pub step: Step,
    pub artifacts: Vec<Artifact>,
}

/// What `GET /ap/v1/agent/status` reports.
#[derive(Debug, Clone)]
pub struct RuntimeStatus {
    pub started_at: i64,
    pub uptime_secs: f64,
    pub totals: Totals,
    pub process_rss_bytes: u64,
    pub machine_total_bytes: u64,
    pub machine_available_bytes: u64,
}

pub struct TaskManager {
    store: Arc<dyn Store>,
    events: Arc<EventLog>,
    runner: Arc<Runner>,
    workspaces: Workspaces,
    settings: TaskSettings,
    started_at: i64,
    /// The process groups of running tasks, recorded for crash recovery.
    processes: ProcessRecords,
    allowed_roots: AllowedRoots,
    sandbox: Option<BashSandbox>,
    sandbox_status: SandboxStatus,
    cgroups: Cgroups,
    /// This node's part in a cluster (None on a single node).
    cluster: Option<Arc<cluster::Cluster>>,
}

impl TaskManager {
    /// Opens the task layer over a store. What a previous process left
    /// behind is cleaned up first: process groups its tasks were running are
    /// ended, and its unfinished runs are marked failed (interrupted).
    pub async fn start(
        store: Arc<dyn Store>,
        workspaces: Workspaces,
        settings: TaskSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let allowed_roots = AllowedRoots::resolve(&settings.containment.allowed_roots)?;
        if allowed_roots.is_restricted() {
            tracing::info!(roots = ?allowed_roots.roots(), "working_dir of /api/run must lie inside an allowed root");
        }
        let node_id = settings.cluster.as_ref().map(|c| c.node_id.as_str());
        // Each agentd (each node of a shared data directory) its own groups.
        let cgroups_of = match node_id {
            Some(node) => workspaces.data_dir().join("nodes").join(node),
            None => workspaces.data_dir().to_path_buf(),
        };
        let cgroups = Cgroups::probe(
            settings.containment.cgroups,
            &cgroups::id_for(&cgroups_of),
            settings.containment.task_limits,
        );
        match cgroups.status() {
            CgroupStatus::On {
                layout,
                kill,
                limits,
                missing,
            } => {
                tracing::info!(%layout, %kill, ?limits, ?missing, "each task runs in its own control group")
            }
            CgroupStatus::Off { reason } => tracing::warn!(
                %reason,
                "no control groups: a task's processes that leave its process group (setsid) survive a stop, and tasks have no memory or process limits"
            ),
        }
        let processes =
            ProcessRecords::open_for_node(workspaces.data_dir(), node_id, cgroups.clone())?;
        recovery::end_orphaned_processes(&processes, &cgroups).await?;
        let started_at = clock::now_ms();
        let cluster = settings.cluster.clone().map(|c| {
            Arc::new(cluster::Cluster::new(
                store.clone(),
                c,
                settings.runner.max_running.max(1),
            ))
        });
        let events = Arc::new(match &cluster {
            Some(_) => EventLog::shared(store.clone(), metrics.clone()),
            None => EventLog::new(store.clone(), metrics.clone()),
        });
        let (sandbox, sandbox_status) = containment::prepare_sandbox(
            &settings.containment,
            sandbox_hidden(&workspaces, &settings),
        )
        .await;
        let runner = Arc::new(Runner::new(
            store.clone(),
            events.clone(),
            metrics,
            settings.runner.clone(),
            processes.clone(),
        ));
        let tasks = Self {
            store,
            events,
            runner,
            workspaces,
            settings,
            started_at,
            processes,
            allowed_roots,
            sandbox,
            sandbox_status,
            cgroups,
            cluster,
        };
        if let Some(cluster) = &tasks.cluster {
            // Only this node's own runs: the others' may still be running.
            cluster.register(started_at).await?;
            let own = tasks
                .store
                .take_over_runs(
                    cluster.node_id(),
                    started_at,
                    cluster.lease_until(),
                    Some(cluster.node_id()),
                )
                .await?;
            for run in own {
                tasks.end_taken_over(run, recovery::INTERRUPTED).await?;
            }
            recovery::fail_runless_tasks(tasks.store.as_ref(), &tasks.events).await?;
        } else {
            // Resumed or failed, each under its policy (see `resume`).
            tasks.recover_interrupted_runs().await?;
        }
        Ok(tasks)
    }

    /// In a cluster: starts this node's heartbeat and its listening
    /// connection (before anything else, so that no ring is missed).
    pub async fn start_cluster_work(self: &Arc<Self>) -> Result<()> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        cluster::start(self, cluster).await
    }

    /// A run's control-group limits: what it asks for within the server's
    /// (400 for more, or for zero), else the server's.
    fn task_limits(&self, asked: &CgroupLimits) -> Result<CgroupLimits> {
        self.cgroups.limits_for(asked).map_err(Error::invalid)
    }

    /// Whether tasks run in control groups, with which limits (`/api/config`, `/ap/v1/agent/status`).
    pub fn cgroup_status(&self) -> &CgroupStatus {
        self.cgroups.status()
    }

    /// Whether the bash sandbox is available and on (`/api/config`, `/ap/v1/agent/status`).
    pub fn sandbox_status(&self) -> &SandboxStatus {
        &self.sandbox_status
    }

    /// The tool options of a task's run: its process groups are recorded
    /// (in a control group with `limits`, from [`TaskManager::task_limits`]),
    /// and bash runs in the sandbox when it is on.
    fn tool_options(&self, task_id: &str, limits: &CgroupLimits) -> ToolSetOptions {
        ToolSetOptions {
            process_observer: Some(self.processes.observer(task_id, limits)),
            sandbox: self.sandbox.clone(),
            ..ToolSetOptions::default()
        }
    }

    pub async fn create_task(
        &self,
        caller: &Caller,
        input: String,
        additional_input: Map<String, Value>,
    ) -> Result<TaskView> {
        // Time-ordered (v7): a new id lands at the end of the primary-key
        // index, one page per commit, where a random one dirtied (and wrote
        // to the WAL) a page of its own per create.
        let task_id = uuid::Uuid::now_v7().to_string();
        let task = store::Task::new(
            task_id,
            input,
            additional_input,
            Origin::AgentProtocol,
            clock::now_ms(),
        );
        let task = store::Task {
            owner: caller.new_owner(),
            ..task
        };
        self.store.insert_task(&task).await?;
        self.audit(caller, "create", &task.task_id);
        Ok(TaskView {
            task: task.into(),
            artifacts: Vec::new(),
        })
    }

    /// The task's row, whoever owns it (for the task layer's own work).
    async fn task_row(&self, task_id: &str) -> Result<store::Task> {
        self.store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Task, task_id))
    }

    /// The task's row if the caller may see it; another key's task is not
    /// found, exactly as a missing one.
    async fn task(&self, caller: &Caller, task_id: &str) -> Result<store::Task> {
        let task = self.task_row(task_id).await?;
        if !caller.may_see(task.owner.as_deref()) {
            return Err(Error::not_found(Resource::Task, task_id));
        }
        Ok(task)
    }

    /// One log line (target `agentd::audit`) and one count per change a key
    /// made to a task: who (the key's name), what, which.
    fn audit(&self, caller: &Caller, action: &'static str, task_id: &str) {
        if let Some(key) = caller.name() {
            tracing::info!(target: "agentd::audit", key, action, task_id, "audit");
            self.runner.metrics.audit(key, action);
        }
    }

    /// Whether the caller may see the task (the logs WebSocket, which
    /// carries every task's events, asks once per task).
    pub async fn may_see(&self, caller: &Caller, task_id: &str) -> bool {
        match caller {
            Caller::Anyone | Caller::Admin(_) => true,
            Caller::User(_) => self.task(caller, task_id).await.is_ok(),
        }
    }

    pub async fn get_task(&self, caller: &Caller, task_id: &str) -> Result<TaskView> {
        let task = self.task(caller, task_id).await?;
        let artifacts = self
            .store
            .artifacts_of(std::slice::from_ref(&task.task_id))
            .await?;
        Ok(TaskView {
            task: task.into(),
            artifacts: views::all(artifacts),
        })
    }

    /// One page of tasks with their artifacts, and the number matching in all.
    pub async fn list_tasks(
        &self,
        caller: &Caller,
        query: &TaskQuery,
    ) -> Result<(Vec<TaskView>, i64)> {
        let query = store::TaskQuery {
            owner: caller.owner_filter(),
            ..query.into()
        };
        let (tasks, total) = self.store.list_tasks(&query).await?;
        let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        let mut by_task: HashMap<String, Vec<Artifact>> = HashMap::new();
        for a in self.store.artifacts_of(&ids).await? {
            by_task.entry(a.task_id.clone()).or_default().push(a.into());
        }
        let views = tasks
            .into_iter()
            .map(|task| {
                let artifacts = by_task.remove(&task.task_id).unwrap_or_default();
                TaskView {
                    task: task.into(),
                    artifacts,
                }
            })
            .collect();
        Ok((views, total))
    }

    /// Task rows without their artifacts (the Trae listing), oldest first:
    /// from `offset`, or without one the most recent `limit`.
    pub async fn list_recent_tasks(
        &self,
        caller: &Caller,
        status: Option<TaskStatus>,
        limit: i64,
        offset: Option<i64>,
    ) -> Result<(Vec<Task>, i64)> {
        let mut query = store::TaskQuery {
            owner: caller.owner_filter(),
            status,
            created_after: None,
            offset: offset.unwrap_or(0),
            limit,
        };
        if offset.is_none() {
            // Count first (no rows), then read the last page.
            let (_, total) = self
                .store
                .list_tasks(&store::TaskQuery {
                    limit: 0,
                    ..query.clone()
                })
                .await?;
            query.offset = (total - limit).max(0);
        }
        let (tasks, total) = self.store.list_tasks(&query).await?;
        Ok((views::all(tasks), total))
    }

    /// Removes the task, its steps, events, artifact records and workspace
    /// files. A Trae task's `working_dir` belongs to the user and is kept.
    pub async fn delete_task(&self, caller: &Caller, task_id: &str) -> Result<()> {
        self.task(caller, task_id).await?;
        self.stop_anywhere(task_id, StopReason::Requested).await?;
        if !self.store.delete_task(task_id).await? {
            return Err(Error::not_found(Resource::Task, task_id));
        }
        self.audit(caller, "delete", task_id);
        self.events.close(task_id);
        self.workspaces.remove(task_id).await
    }

    /// The task and its whole event log so far (Trae `/status`).
    pub async fn task_messages(
        &self,
        caller: &Caller,
        task_id: &str,
    ) -> Result<(Task, Arc<Vec<Event>>)> {
        let task = self.task(caller, task_id).await?;
        let events = self.store.event_log(task_id).await?;
        Ok((task.into(), events))
    }

    /// The task's event log after `after_seq`, then live events until `end`.
    pub async fn follow_events(
        &self,
        caller: &Caller,
        task_id: &str,
        after_seq: i64,
    ) -> Result<impl futures_util::Stream<Item = Result<Arc<Event>>> + Send + 'static> {
        self.task(caller, task_id).await?;
        self.events.follow(task_id, after_seq)
    }

    /// The seq of the task's latest event (0 when there is none).
    pub async fn last_event_seq(&self, task_id: &str) -> Result<i64> {
        self.store.last_event_seq(task_id).await
    }

    /// Live events of every task (the logs WebSocket).
    pub fn subscribe_all_events(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.events.subscribe_all()
    }

    /// Cancelled at shutdown, when every stream is to end (readers
    /// reconnect after their last seq once agentd is back).
    pub fn streams_closing(&self) -> tokio_util::sync::CancellationToken {
        self.events.closing()
    }

    pub async fn get_step(
        &self,
        caller: &Caller,
        task_id: &str,
        step_id: &str,
    ) -> Result<StepView> {
        self.task(caller, task_id).await?;
        let step = self
            .store
            .get_step(task_id, step_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Step, step_id))?;
        Ok(self.with_artifacts(vec![step]).await?.remove(0))
    }

    pub async fn list_steps(
        &self,
        caller: &Caller,
        task_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<StepView>, i64)> {
        self.task(caller, task_id).await?;
        let (steps, total) = self.store.list_steps(task_id, offset, limit).await?;
        Ok((self.with_artifacts(steps).await?, total))
    }

    /// Each step with the artifacts it created or changed.
    async fn with_artifacts(&self, steps: Vec<store::Step>) -> Result<Vec<StepView>> {
        let ids: Vec<String> = steps.iter().map(|s| s.step_id.clone()).collect();
        let mut by_step: HashMap<String, Vec<Artifact>> = HashMap::new();
        for (step_id, artifact) in self.store.artifacts_of_steps(&ids).await? {
            by_step.entry(step_id).or_default().push(artifact.into());
        }
        Ok(steps
            .into_iter()
            .map(|step| {
                let artifacts = by_step.remove(&step.step_id).unwrap_or_default();
                StepView {
                    step: step.into(),
                    artifacts,
                }
            })
            .collect())
    }

    /// Tasks by status (`/metrics`, at scrape time).
    pub async fn task_counts(&self) -> Result<Vec<(TaskStatus, i64)>> {
        Ok(self.store.totals().await?.by_status)
    }

    /// Runs executing, steps queued, and the limit (`/metrics`).
    pub fn run_load(&self) -> crate::metrics::RunLoad {
        self.runner.admission.load()
    }

    pub async fn runtime_status(&self, caller: &Caller) -> Result<RuntimeStatus> {
        let totals = match caller.owner_filter() {
            Some(owner) => self.store.totals_of(&owner).await?,
            None => self.store.totals().await?,
        };
        let (machine_total_bytes, machine_available_bytes) = crate::host::machine_memory_bytes();
        let now = clock::now_ms();
        Ok(RuntimeStatus {
            started_at: self.started_at,
            uptime_secs: (now - self.started_at) as f64 / 1000.0,
            totals,
            process_rss_bytes: crate::host::process_rss_bytes(),
            machine_total_bytes,
            machine_available_bytes,
        })
    }
}

/// What sandboxed commands must not see: agentd's data (other tasks, the
/// database) and the default configuration file (provider keys).
fn sandbox_hidden(workspaces: &Workspaces, settings: &TaskSettings) -> Vec<PathBuf> {
    [
        Some(workspaces.data_dir().to_path_buf()),
        Some(settings.trae_config_file.clone()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| std::fs::canonicalize(p).ok())
    .collect()
}
