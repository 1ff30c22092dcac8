//! The task layer: one core behind both API dialects. Creates, lists and
//! deletes tasks, keeps their artifacts, and reports runtime status.
//!
//! Running tasks (engine runs, steps, stop, the live event log) arrives with
//! the task runner; everything here already goes through the durable store.

pub mod events;
pub mod workspace;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use agentd_engine::config::{self, ConfigError, ConfigRequest, ResolvedConfig};
use serde_json::{Map, Value};

/// The environment variable naming the default Trae config file.
const CONFIG_FILE_ENV: &str = "TRAE_CONFIG_FILE";

use crate::{
    clock,
    error::{Error, Resource, Result},
    store::{Artifact, Event, Origin, Step, Store, Task, TaskQuery, TaskStatus, Totals},
};
pub use workspace::{MAX_UPLOAD_BYTES, Upload};
use events::EventLog;
use workspace::{Workspaces, location, sanitize_file_name, sanitize_relative_path};

/// A task together with its artifacts, as both dialects show it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task: Task,
    pub artifacts: Vec<Artifact>,
}

/// Settings the task layer needs from the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct TaskSettings {
    /// `--trae-config` / TRAE_CONFIG_FILE: the default Trae config file.
    pub trae_config_file: Option<PathBuf>,
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
    workspaces: Workspaces,
    settings: TaskSettings,
    started_at: i64,
}

impl TaskManager {
    pub fn new(store: Arc<dyn Store>, workspaces: Workspaces, settings: TaskSettings) -> Self {
        let events = Arc::new(EventLog::new(store.clone()));
        Self { store, events, workspaces, settings, started_at: clock::now_ms() }
    }

    pub async fn create_task(&self, input: String, additional_input: Map<String, Value>) -> Result<TaskView> {
        let now = clock::now_ms();
        let task = Task {
            task_id: uuid::Uuid::new_v4().to_string(),
            input,
            additional_input,
            status: TaskStatus::Created,
            origin: Origin::AgentProtocol,
            run_spec: None,
            created_at: now,
            modified_at: now,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        };
        self.store.insert_task(&task).await?;
        Ok(TaskView { task, artifacts: Vec::new() })
    }

    async fn task(&self, task_id: &str) -> Result<Task> {
        self.store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Task, task_id))
    }

    pub async fn get_task(&self, task_id: &str) -> Result<TaskView> {
        let task = self.task(task_id).await?;
        let artifacts = self.store.artifacts_of(std::slice::from_ref(&task.task_id)).await?;
        Ok(TaskView { task, artifacts })
    }

    /// One page of tasks with their artifacts, and the number matching in all.
    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<(Vec<TaskView>, i64)> {
        let (tasks, total) = self.store.list_tasks(query).await?;
        let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        let mut by_task: HashMap<String, Vec<Artifact>> = HashMap::new();
        for a in self.store.artifacts_of(&ids).await? {
            by_task.entry(a.task_id.clone()).or_default().push(a);
        }
        let views = tasks
            .into_iter()
            .map(|task| {
                let artifacts = by_task.remove(&task.task_id).unwrap_or_default();
                TaskView { task, artifacts }
            })
            .collect();
        Ok((views, total))
    }

    /// Removes the task, its steps, events, artifact records and workspace
    /// files. A Trae task's `working_dir` belongs to the user and is kept.
    pub async fn delete_task(&self, task_id: &str) -> Result<()> {
        if !self.store.delete_task(task_id).await? {
            return Err(Error::not_found(Resource::Task, task_id));
        }
        self.events.close(task_id);
        self.workspaces.remove(task_id).await
    }

    /// The task and its whole event log so far (Trae `/status`).
    pub async fn task_messages(&self, task_id: &str) -> Result<(Task, Vec<Event>)> {
        let task = self.task(task_id).await?;
        let events = self.store.list_events(task_id, 0, i64::MAX).await?;
        Ok((task, events))
    }

    /// The task's event log after `after_seq`, then live events until `end`.
    pub async fn follow_events(
        &self,
        task_id: &str,
        after_seq: i64,
    ) -> Result<impl futures_util::Stream<Item = Result<Event>> + Send + 'static> {
        self.task(task_id).await?;
        Ok(self.events.follow(task_id, after_seq))
    }

    /// Live events of every task (the logs WebSocket).
    pub fn subscribe_all_events(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.events.subscribe_all()
    }

    pub async fn get_step(&self, task_id: &str, step_id: &str) -> Result<Step> {
        self.task(task_id).await?;
        self.store
            .get_step(task_id, step_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Step, step_id))
    }

    pub async fn list_steps(&self, task_id: &str, offset: i64, limit: i64) -> Result<(Vec<Step>, i64)> {
        self.task(task_id).await?;
        self.store.list_steps(task_id, offset, limit).await
    }

    /// Checks the task exists and opens a temporary file for an upload.
    pub async fn begin_upload(&self, task_id: &str) -> Result<Upload> {
        self.task(task_id).await?;
        self.workspaces.begin_upload().await
    }

    /// Moves a received file into the task workspace and records it. An
    /// earlier artifact at the same place is replaced.
    pub async fn finish_upload(
        &self,
        task_id: &str,
        upload: Upload,
        file_name: &str,
        relative_path: &str,
    ) -> Result<Artifact> {
        let file_name = sanitize_file_name(file_name)?;
        let relative_path = sanitize_relative_path(relative_path)?;
        let location = location(&relative_path, &file_name);
        self.task(task_id).await?;
        let file_size = upload.len() as i64;
        self.workspaces.place(task_id, upload, &location).await?;
        let artifact = Artifact {
            artifact_id: uuid::Uuid::new_v4().to_string(),
            task_id: task_id.to_string(),
            step_id: None,
            file_name,
            relative_path,
            location,
            file_size,
            agent_created: false,
            created_at: clock::now_ms(),
        };
        self.store.upsert_artifact(&artifact).await?;
        Ok(artifact)
    }

    pub async fn list_artifacts(&self, task_id: &str, offset: i64, limit: i64) -> Result<(Vec<Artifact>, i64)> {
        self.task(task_id).await?;
        self.store.list_artifacts(task_id, offset, limit).await
    }

    async fn artifact(&self, task_id: &str, artifact_id: &str) -> Result<Artifact> {
        self.task(task_id).await?;
        self.store
            .get_artifact(task_id, artifact_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Artifact, artifact_id))
    }

    /// The artifact's record and its file, opened for reading.
    pub async fn open_artifact(&self, task_id: &str, artifact_id: &str) -> Result<(Artifact, tokio::fs::File)> {
        let artifact = self.artifact(task_id, artifact_id).await?;
        let path = self.workspaces.dir(task_id).join(&artifact.location);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok((artifact, file)),
            // The agent (or a person) removed the file: the artifact is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(Resource::Artifact, artifact_id))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_artifact(&self, task_id: &str, artifact_id: &str) -> Result<()> {
        let artifact = self.artifact(task_id, artifact_id).await?;
        if !self.store.delete_artifact(task_id, artifact_id).await? {
            return Err(Error::not_found(Resource::Artifact, artifact_id));
        }
        let path = self.workspaces.dir(task_id).join(&artifact.location);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub async fn runtime_status(&self) -> Result<RuntimeStatus> {
        let totals = self.store.totals().await?;
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

    /// The Trae configuration a run would use, for `/api/config`. A named
    /// file that does not exist is reported (`config_exists: false`, with
    /// defaults) rather than refused: this is a report, not a run.
    pub fn resolve_config(&self, req: &ConfigRequest) -> Result<ResolvedConfig> {
        let default_file = self.settings.trae_config_file.clone();
        let env = |key: &str| -> Option<String> {
            match &default_file {
                Some(path) if key == CONFIG_FILE_ENV => Some(path.display().to_string()),
                _ => config::process_env(key),
            }
        };
        match config::resolve(req, &env) {
            Err(ConfigError::NotFound { path }) => {
                // Resolve as if the missing file were the default one.
                let as_default = |key: &str| {
                    if key == CONFIG_FILE_ENV { Some(path.display().to_string()) } else { config::process_env(key) }
                };
                let req = ConfigRequest { config_file: None, ..req.clone() };
                config::resolve(&req, &as_default).map_err(|e| Error::invalid(e.to_string()))
            }
            other => other.map_err(|e| Error::invalid(e.to_string())),
        }
    }
}
