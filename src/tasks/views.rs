//! What the task layer shows the API: tasks, steps and artifacts as both
//! dialects present them, and the query that lists tasks. The store's rows
//! stay below this layer (a row carries what only the task layer needs, such
//! as a Trae run's settings and the creating dialect).
//!
//! Two things are shared rather than copied: [`TaskStatus`], the vocabulary
//! every layer speaks, and the event record ([`Event`]), which the event log
//! hands by `Arc` from one append to every reader (a copy per reader would
//! cost fan-out); readers tell its kind by [`super::EventKind`].

use serde_json::{Map, Value};

use crate::store;
pub use crate::store::{Event, Origin, TaskStatus};

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub task_id: String,
    pub input: String,
    pub additional_input: Map<String, Value>,
    pub status: TaskStatus,
    /// Which dialect created it.
    pub origin: Origin,
    /// A Trae run's working directory.
    pub working_dir: Option<String>,
    /// Milliseconds since the epoch, as every time here.
    pub created_at: i64,
    pub modified_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

impl From<store::Task> for Task {
    fn from(t: store::Task) -> Self {
        Task {
            task_id: t.task_id,
            input: t.input,
            additional_input: t.additional_input,
            status: t.status,
            origin: t.origin,
            working_dir: t
                .run_spec
                .as_ref()
                .and_then(|s| s.get("working_dir")?.as_str().map(str::to_string)),
            created_at: t.created_at,
            modified_at: t.modified_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            result: t.result,
            error: t.error,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cost_usd: t.cost_usd,
        }
    }
}

/// One executed Agent Protocol step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub step_id: String,
    pub task_id: String,
    pub number: i64,
    pub name: String,
    /// created, running or completed (the official Agent Protocol values).
    pub status: String,
    /// The outcome: running, completed, failed or stopped.
    pub state: String,
    pub input: String,
    pub additional_input: Map<String, Value>,
    pub output: String,
    pub additional_output: Map<String, Value>,
    pub is_last: bool,
    pub created_at: i64,
}

impl From<store::Step> for Step {
    fn from(s: store::Step) -> Self {
        Step {
            step_id: s.step_id,
            task_id: s.task_id,
            number: s.number,
            name: s.name,
            status: s.status,
            state: s.state,
            input: s.input,
            additional_input: s.additional_input,
            output: s.output,
            additional_output: s.additional_output,
            is_last: s.is_last,
            created_at: s.created_at,
        }
    }
}

/// A file of a task's workspace (uploaded, or created by a step).
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub artifact_id: String,
    pub task_id: String,
    pub file_name: String,
    /// As the client gave it (directory or full path), normalised.
    pub relative_path: String,
    pub file_size: i64,
    pub agent_created: bool,
    pub created_at: i64,
}

impl From<store::Artifact> for Artifact {
    fn from(a: store::Artifact) -> Self {
        Artifact {
            artifact_id: a.artifact_id,
            task_id: a.task_id,
            file_name: a.file_name,
            relative_path: a.relative_path,
            file_size: a.file_size,
            agent_created: a.agent_created,
            created_at: a.created_at,
        }
    }
}

/// Which tasks to list, and which slice of them.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// Only tasks created after this time (ms since the epoch).
    pub created_after: Option<i64>,
    pub offset: i64,
    pub limit: i64,
}

impl From<&TaskQuery> for store::TaskQuery {
    fn from(q: &TaskQuery) -> Self {
        store::TaskQuery {
            owner: None,
            status: q.status,
            created_after: q.created_after,
            offset: q.offset,
            limit: q.limit,
        }
    }
}

/// Converts every element of a list of rows.
pub(super) fn all<R, V: From<R>>(rows: Vec<R>) -> Vec<V> {
    rows.into_iter().map(V::from).collect()
}
